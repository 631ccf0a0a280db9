"""One local sidecar's ProxySnapshot, built from what the agent knows, pure (mypy --strict).

Inputs: the sidecar's `connect-proxy` definition (proxy block in Consul's CamelCase, sidecar.py), its leaf
(LeafCache record), the catalog (roots and trust domain, config entries, the upstreams' sidecar instances),
the compiled intentions and the ACL default. Precedence for a setting, as in Consul: the proxy registration's
`Config` > `service-defaults` > `proxy-defaults` `Config` > the built-in default. `Config` maps are user data
(hostile): a bad value raises SnapshotError naming the service and the field, and the caller keeps the last
good snapshot. Keys in those maps are matched ignoring case and underscores (`connect_timeout_ms` is
`ConnectTimeoutMs`). The keys themselves are documented in docs/sidecar-proxy.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ...proxy.snapshot import (
    MAX_LIST,
    MAX_PEM,
    MAX_PERMISSIONS,
    MAX_RULES,
    MAX_STR,
    AccessLog,
    IntentionRule,
    Intentions,
    Permission,
    ProxyConfigError,
    ProxySnapshot,
    TLSMaterial,
)
from ..catalog.state import Catalog
from ..config.types import ServiceDefinition
from .intentions import IntentionIndex
from .leaf_plan import LeafRecord
from .proxy_chain import CHAIN_KEYS, compiled_chain, reached_services
from .proxy_config_read import MAX_TIMEOUT_MS, Map, SnapshotError, config_get, public_bind, public_port
from .proxy_permissions import permission
from .proxy_upstreams import UpstreamReader

__all__ = ["BuildReport", "SnapshotError", "build_report", "build_snapshot", "destination_of", "embedded",
           "same_config", "watch_keys"]

DEFAULT_LOCAL_CONNECT_TIMEOUT_MS = 1000  # Consul's built-in proxy default
MAX_WORKERS = 64


def build_snapshot(proxy: ServiceDefinition, parent: ServiceDefinition | None, catalog: Catalog,
                   leaf: LeafRecord, intentions: IntentionIndex, default_allow: bool, *, datacenter: str,
                   bind_address: str, version: int = 0) -> ProxySnapshot:
    """The snapshot of local sidecar `proxy` (kind connect-proxy) now; raises SnapshotError."""
    return _Builder(proxy, parent, catalog, datacenter).build(leaf, intentions, default_allow, bind_address,
                                                              version)


@dataclass(frozen=True, slots=True)
class BuildReport:
    """What a build applied only in part, for the runner to show and log once: `errors` are upstreams whose
    discovery chain failed (sent with no endpoints), `notes` what was trimmed or not applied."""

    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def build_report(proxy: ServiceDefinition, parent: ServiceDefinition | None, catalog: Catalog,
                 leaf: LeafRecord, intentions: IntentionIndex, default_allow: bool, *, datacenter: str,
                 bind_address: str, version: int = 0) -> tuple[ProxySnapshot, BuildReport]:
    """build_snapshot, with what it applied only in part; raises SnapshotError."""
    builder = _Builder(proxy, parent, catalog, datacenter)
    snap = builder.build(leaf, intentions, default_allow, bind_address, version)
    return snap, BuildReport(tuple(builder.upstream_errors), tuple(builder.upstream_notes))


def same_config(a: ProxySnapshot | None, b: ProxySnapshot) -> bool:
    """Whether two snapshots configure the same thing (their versions aside)."""
    return a is not None and replace(a, version=0) == replace(b, version=0)


def watch_keys(proxy: ServiceDefinition, catalog: Catalog | None = None, datacenter: str = "") -> list[str]:
    """The catalog watch keys whose change can change this sidecar's snapshot. With the catalog, also the
    instances of every service an upstream's discovery chain can reach (splits, redirects, failover)."""
    keys = ["connect-ca", "config-entry:service-intentions", *CHAIN_KEYS]
    seen: set[str] = set()
    ups = proxy.proxy.get("Upstreams")
    for up in ups if isinstance(ups, list) else ():
        name = up.get("DestinationName") if isinstance(up, Mapping) else None
        if not isinstance(name, str) or not name:
            continue
        reached = [name]
        dc = up.get("Datacenter") or datacenter
        if catalog is not None and isinstance(dc, str):
            try:
                reached += reached_services(compiled_chain(catalog, name, dc))
            except Exception:  # the build reports it; the entries' keys are watched for its fix
                pass
        for svc in reached:
            key = f"connect:{svc.lower()}"
            if key not in seen:
                seen.add(key)
                keys.append(key)
    return keys


def embedded(proxy: ServiceDefinition) -> bool:
    """Whether the agent runs this proxy's data plane itself: the default; `Config.embedded = false` leaves it
    to `meshagent connect proxy` (cli/connect_proxy_cmd.py)."""
    config = proxy.proxy.get("Config")
    return not (isinstance(config, Mapping) and config.get("embedded") is False)


def destination_of(proxy: ServiceDefinition) -> str:
    """The service a sidecar fronts (its identity), or "" when it names none."""
    dest = proxy.proxy.get("DestinationServiceName")
    return dest if isinstance(dest, str) else ""


# ---------------------------------------------------------------------- the builder


class _Builder(UpstreamReader):
    """One build: the entries it reads, and where errors point."""

    def __init__(self, proxy: ServiceDefinition, parent: ServiceDefinition | None, catalog: Catalog,
                 datacenter: str) -> None:
        super().__init__(proxy.id, destination_of(proxy))
        self.proxy = proxy
        self.parent = parent
        self.catalog = catalog
        self.datacenter = datacenter
        self.block: Map = proxy.proxy if isinstance(proxy.proxy, Mapping) else {}
        self.config = self._map(self.block.get("Config"), "proxy.config")
        pd = catalog.config_entries.get("proxy-defaults", "global")
        self.proxy_defaults: Map = pd.entry if pd is not None else {}
        self.pd_config = self._map(self.proxy_defaults.get("Config"), "proxy-defaults global Config")
        self.defaults = self._service_defaults(self.service)

    # ------------------------------------------------------------------ the whole snapshot

    def build(self, leaf: LeafRecord, intentions: IntentionIndex, default_allow: bool, bind_address: str,
              version: int) -> ProxySnapshot:
        if not self.service:
            raise self.fail("proxy.destination_service_name", "is missing")
        connect = self.catalog.connect
        if not connect.trust_domain:
            raise self.fail("connect", "the CA is not initialized yet (no trust domain)")
        cfg, where = self.config, "proxy.config"
        protocol = "tcp"
        for value, at in ((config_get(cfg, "protocol"), f"{where}.protocol"),
                          (self.defaults.get("Protocol"), f"service-defaults {self.service} Protocol"),
                          (config_get(self.pd_config, "protocol"), "proxy-defaults global Config.protocol")):
            if value not in (None, ""):
                protocol = self._protocol_of(value, at)
                break
        local_timeout = self._layered_ms("local_connect_timeout_ms", "LocalConnectTimeoutMs",
                                         DEFAULT_LOCAL_CONNECT_TIMEOUT_MS)
        request_timeout = self._layered_ms("local_request_timeout_ms", "LocalRequestTimeoutMs", 0)
        # public_bind/public_port: the same rule the sidecar's listening check dials (sidecar.py)
        port_value, port_at = public_port(cfg, self.proxy.port)
        public_port_ = self.proxy.port if port_at == "port" else self._int(port_value, port_at, 1, 65535)
        if not public_port_:
            raise self.fail("port", "the sidecar has no port for its public listener")
        addr_value, addr_at = public_bind(cfg, self.proxy.address, bind_address)
        public_address = self._ip(addr_value, addr_at)
        local_address = self.block.get("LocalServiceAddress") or (self.parent.address if self.parent else "")
        local_port = self.block.get("LocalServicePort") or (self.parent.port if self.parent else 0)
        rules = self._rules(intentions)
        upstreams = self._upstreams()
        workers_value = config_get(cfg, "workers")
        if workers_value is None:
            workers_value = self.block.get("Workers")
        workers = 1 if workers_value is None else self._int(workers_value, f"{where}.workers", 1, MAX_WORKERS)
        roots = tuple(r.root_cert for r in sorted(connect.roots.values(), key=lambda r: (r.create_index, r.id)))
        if len(roots) > MAX_LIST or any(len(r) > MAX_PEM for r in roots):
            raise self.fail("connect roots", f"{len(roots)} roots or one over {MAX_PEM} characters")
        chain = _chain(leaf)
        if len(chain) > MAX_PEM or len(leaf.private_key_pem) > MAX_PEM:
            raise self.fail("leaf", f"certificate chain or key over {MAX_PEM} characters")
        tls = TLSMaterial(cert_pem=chain, key_pem=leaf.private_key_pem, roots_pem=roots,
                          trust_domain=connect.trust_domain, spiffe_id=leaf.service_uri)
        snap = ProxySnapshot(
            proxy_id=self.proxy.id, service=self.service, datacenter=self.datacenter, tls=tls,
            public_address=public_address, public_port=public_port_,
            local_service_address=self._ip(local_address or "127.0.0.1", "proxy.local_service_address"),
            local_service_port=self._int(local_port or 0, "proxy.local_service_port", 0, 65535),
            local_connect_timeout_ms=local_timeout, local_request_timeout_ms=request_timeout,
            protocol=protocol, intentions=Intentions(default_allow=default_allow, rules=rules),
            upstreams=upstreams, metrics_bind=self._metrics_bind(), access_log=self._access_log(),
            workers=workers, version=version)
        try:
            # Cross-field rules here; sizes were bounded above (what from_wire would refuse in the workers),
            # without a from_wire round trip, which costs a second for a snapshot with thousands of rules.
            snap.check()
        except ProxyConfigError as exc:
            raise self.fail("snapshot", str(exc)) from None
        return snap

    def _layered_ms(self, config_key: str, entry_key: str, default: int) -> int:
        """A timeout: the registration's Config, else service-defaults (0 = unset), else the default."""
        value = config_get(self.config, config_key)
        if value is not None:
            return self._int(value, f"proxy.config.{config_key}", 0, MAX_TIMEOUT_MS)
        value = self.defaults.get(entry_key)
        if value:
            return self._int(value, f"service-defaults {self.service} {entry_key}", 0, MAX_TIMEOUT_MS)
        return default

    def _metrics_bind(self) -> str:
        for cfg, where in ((self.config, "proxy.config"), (self.pd_config, "proxy-defaults global Config")):
            value = config_get(cfg, "envoy_prometheus_bind_addr")
            if value in (None, ""):
                continue
            text = self._str(value, f"{where}.envoy_prometheus_bind_addr")
            host, sep, port = text.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise self.fail(f"{where}.envoy_prometheus_bind_addr", f"{text!r} is not host:port")
            return text
        return ""

    def _access_log(self) -> AccessLog:
        logs = self._map(self.proxy_defaults.get("AccessLogs"), "proxy-defaults global AccessLogs")
        if not logs.get("Enabled"):
            return AccessLog()
        path = logs.get("Path") if logs.get("Type") == "file" else ""
        return AccessLog(enabled=True, path=self._str(path or "", "proxy-defaults global AccessLogs.Path"))

    # ------------------------------------------------------------------ intentions

    def _rules(self, intentions: IntentionIndex) -> tuple[IntentionRule, ...]:
        candidates = intentions.candidates(self.service)
        if len(candidates) > MAX_RULES:
            raise self.fail("intentions", f"{len(candidates)} intentions apply, more than {MAX_RULES}")
        rules = []
        for i in candidates:
            if len(i.source) > MAX_STR - 300 or len(i.source_ns) > MAX_STR:
                continue  # a forged name no SPIFFE ID can carry never matches: leaving it out changes nothing
            perms: tuple[Permission, ...] = ()
            if i.action is None:
                if len(i.permissions) > MAX_PERMISSIONS:
                    raise self.fail(f"intention {i.source} => {i.destination}",
                                    f"{len(i.permissions)} permissions, more than {MAX_PERMISSIONS}")
                perms = tuple(permission(p) for p in i.permissions)
            rules.append(IntentionRule(source=i.source, action=i.action.value if i.action else None,
                                       permissions=perms, name=f"{i.source} => {i.destination}",
                                       source_ns=i.source_ns))
        return tuple(rules)



# ---------------------------------------------------------------------- helpers


def _chain(leaf: LeafRecord) -> str:
    """Consul's CertPEM: the leaf, then the intermediates that chain it to a root (cross-signed in rotations)."""
    parts = [leaf.cert_pem, *leaf.intermediate_pems]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)

