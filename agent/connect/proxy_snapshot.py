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

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ...proxy.snapshot import (
    MAX_ENDPOINTS,
    MAX_LIST,
    MAX_PEM,
    MAX_PERMISSIONS,
    MAX_RULES,
    MAX_STR,
    MAX_UPSTREAMS,
    AccessLog,
    Endpoint,
    HashPolicy,
    HeaderMatch,
    IntentionRule,
    Intentions,
    Limits,
    LoadBalancer,
    PassiveHealth,
    Permission,
    ProxyConfigError,
    ProxySnapshot,
    Retries,
    TLSMaterial,
    Upstream,
)
from ..catalog.model import PASSING
from ..catalog.state import Catalog
from ..config.duration import parse_duration
from ..config.types import ServiceDefinition
from .intentions import IntentionIndex
from .leaf_plan import LeafRecord
from .spiffe import SpiffeIDError, service_id

DEFAULT_LOCAL_CONNECT_TIMEOUT_MS = 1000  # Consul's built-in proxy default
DEFAULT_CONNECT_TIMEOUT_MS = 5000  # UpstreamConfig.ConnectTimeoutMs
MAX_TIMEOUT_MS = 3_600_000
MAX_RETRIES = 25
MAX_WORKERS = 64
LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
L4_PROTOCOLS = ("tcp", "http2", "grpc")  # http2/grpc are proxied at L4 until their own issue
PROTOCOLS = ("tcp", "http", "http2", "grpc")

Map = Mapping[str, Any]


class SnapshotError(ValueError):
    """A sidecar whose configuration cannot be turned into a snapshot; the message names service and field."""


def build_snapshot(proxy: ServiceDefinition, parent: ServiceDefinition | None, catalog: Catalog,
                   leaf: LeafRecord, intentions: IntentionIndex, default_allow: bool, *, datacenter: str,
                   bind_address: str, version: int = 0) -> ProxySnapshot:
    """The snapshot of local sidecar `proxy` (kind connect-proxy) now; raises SnapshotError."""
    return _Builder(proxy, parent, catalog, datacenter).build(leaf, intentions, default_allow, bind_address,
                                                              version)


def same_config(a: ProxySnapshot | None, b: ProxySnapshot) -> bool:
    """Whether two snapshots configure the same thing (their versions aside)."""
    return a is not None and replace(a, version=0) == replace(b, version=0)


def watch_keys(proxy: ServiceDefinition) -> list[str]:
    """The catalog watch keys whose change can change this sidecar's snapshot."""
    keys = ["connect-ca", "config-entry:service-defaults", "config-entry:proxy-defaults",
            "config-entry:service-intentions"]
    ups = proxy.proxy.get("Upstreams")
    for up in ups if isinstance(ups, list) else ():
        name = up.get("DestinationName") if isinstance(up, Mapping) else None
        if isinstance(name, str) and name:
            keys.append(f"connect:{name.lower()}")
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


class _Builder:
    """One build: the entries it reads, and where errors point."""

    def __init__(self, proxy: ServiceDefinition, parent: ServiceDefinition | None, catalog: Catalog,
                 datacenter: str) -> None:
        self.proxy = proxy
        self.parent = parent
        self.catalog = catalog
        self.datacenter = datacenter
        self.block: Map = proxy.proxy if isinstance(proxy.proxy, Mapping) else {}
        self.service = destination_of(proxy)
        self.config = self._map(self.block.get("Config"), "proxy.config")
        pd = catalog.config_entries.get("proxy-defaults", "global")
        self.proxy_defaults: Map = pd.entry if pd is not None else {}
        self.pd_config = self._map(self.proxy_defaults.get("Config"), "proxy-defaults global Config")
        self.defaults = self._service_defaults(self.service)

    def fail(self, where: str, message: str) -> SnapshotError:
        return SnapshotError(f"sidecar {self.proxy.id!r} of {self.service!r}: {where}: {message}")

    # ------------------------------------------------------------------ typed reads of hostile maps

    def _map(self, value: Any, where: str) -> Map:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a map, got {type(value).__name__}")
        return value

    def _int(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON numbers from HCL may arrive as floats
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is not between {low} and {high}")
        return value

    def _bool(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {_show(value)}")
        return value

    def _str(self, value: Any, where: str, choices: Sequence[str] = ()) -> str:
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise self.fail(where, f"must be a string, got {_show(value)}")
        if choices and value not in choices:
            shown = ", ".join(c or '""' for c in choices)
            raise self.fail(where, f"{value!r} is not one of {shown}")
        return value

    def _ip(self, value: Any, where: str) -> str:
        """An IP literal: the workers never resolve names (a lookup would block their event loop)."""
        text = self._str(value, where)
        if text.lower() == "localhost":
            return "127.0.0.1"
        if not _is_ip(text):
            raise self.fail(where, f"{text!r} is not an IP address (host names are not resolved here)")
        return text

    def _seconds(self, value: Any, where: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        if not math.isfinite(seconds) or not 0 <= seconds <= 86_400:
            raise self.fail(where, "must be between 0s and 24h")
        return seconds

    def _list(self, value: Any, where: str, limit: int = MAX_LIST) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(where, f"must be a list, got {type(value).__name__}")
        if len(value) > limit:
            raise self.fail(where, f"{len(value)} items, more than {limit}")
        return list(value)

    # ------------------------------------------------------------------ entries

    def _service_defaults(self, name: str) -> Map:
        row = self.catalog.config_entries.get("service-defaults", name) if name else None
        return row.entry if row is not None else {}

    def _protocol_of(self, value: Any, where: str) -> str:
        proto = self._str(value, where).lower()
        if proto not in PROTOCOLS:
            raise self.fail(where, f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
        return "tcp" if proto in L4_PROTOCOLS else proto

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
        for value, at in ((_get(cfg, "protocol"), f"{where}.protocol"),
                          (self.defaults.get("Protocol"), f"service-defaults {self.service} Protocol"),
                          (_get(self.pd_config, "protocol"), "proxy-defaults global Config.protocol")):
            if value not in (None, ""):
                protocol = self._protocol_of(value, at)
                break
        local_timeout = self._layered_ms("local_connect_timeout_ms", "LocalConnectTimeoutMs",
                                         DEFAULT_LOCAL_CONNECT_TIMEOUT_MS)
        request_timeout = self._layered_ms("local_request_timeout_ms", "LocalRequestTimeoutMs", 0)
        port_value = _get(cfg, "bind_port")
        public_port = self.proxy.port if port_value is None else self._int(port_value, f"{where}.bind_port", 1,
                                                                           65535)
        if not public_port:
            raise self.fail("port", "the sidecar has no port for its public listener")
        addr_value = _get(cfg, "bind_address")
        public_address = self._ip(addr_value, f"{where}.bind_address") if addr_value else self._ip(
            self.proxy.address or bind_address, "address")
        local_address = self.block.get("LocalServiceAddress") or (self.parent.address if self.parent else "")
        local_port = self.block.get("LocalServicePort") or (self.parent.port if self.parent else 0)
        rules = self._rules(intentions)
        upstreams = self._upstreams()
        workers_value = _get(cfg, "workers")
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
            public_address=public_address, public_port=public_port,
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
        value = _get(self.config, config_key)
        if value is not None:
            return self._int(value, f"proxy.config.{config_key}", 0, MAX_TIMEOUT_MS)
        value = self.defaults.get(entry_key)
        if value:
            return self._int(value, f"service-defaults {self.service} {entry_key}", 0, MAX_TIMEOUT_MS)
        return default

    def _metrics_bind(self) -> str:
        for cfg, where in ((self.config, "proxy.config"), (self.pd_config, "proxy-defaults global Config")):
            value = _get(cfg, "envoy_prometheus_bind_addr")
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
                perms = tuple(_permission(p) for p in i.permissions)
            rules.append(IntentionRule(source=i.source, action=i.action.value if i.action else None,
                                       permissions=perms, name=f"{i.source} => {i.destination}",
                                       source_ns=i.source_ns))
        return tuple(rules)

    # ------------------------------------------------------------------ upstreams

    def _upstreams(self) -> tuple[Upstream, ...]:
        raw = self.block.get("Upstreams")
        if raw is None:
            return ()
        items = self._list(raw, "proxy.upstreams", MAX_UPSTREAMS)
        out = []
        for n, item in enumerate(items):
            where = f"proxy.upstreams[{n}]"
            up = self._map(item, where)
            if up.get("DestinationType", "service") not in ("service", ""):
                raise self.fail(f"{where}.destination_type", "only service upstreams are proxied")
            out.append(self._upstream(up, where))
        return tuple(out)

    def _upstream(self, up: Map, where: str) -> Upstream:
        name = self._str(up.get("DestinationName"), f"{where}.destination_name")
        if not name:
            raise self.fail(f"{where}.destination_name", "is empty")
        dc = self._str(up.get("Datacenter") or self.datacenter, f"{where}.datacenter")
        cfg = self._map(up.get("Config"), f"{where}.config")
        dest_defaults = self._service_defaults(name)
        upstream_config = self._map(self.defaults.get("UpstreamConfig"),
                                    f"service-defaults {self.service} UpstreamConfig")
        layers: list[tuple[Map, str]] = []
        base = self._map(upstream_config.get("Defaults"), f"service-defaults {self.service} UpstreamConfig.Defaults")
        if base:
            layers.append((base, f"service-defaults {self.service} UpstreamConfig.Defaults"))
        overrides = upstream_config.get("Overrides")
        for k, o in enumerate(overrides if isinstance(overrides, list) else ()):
            if isinstance(o, Mapping) and o.get("Name") == name:
                layers.append((o, f"service-defaults {self.service} UpstreamConfig.Overrides[{k}]"))
        cw = f"{where}.config"
        protocol = "tcp"
        for value, at in ((_get(cfg, "protocol"), f"{cw}.protocol"),
                          (dest_defaults.get("Protocol"), f"service-defaults {name} Protocol"),
                          (_get(self.pd_config, "protocol"), "proxy-defaults global Config.protocol")):
            if value not in (None, ""):
                protocol = self._protocol_of(value, at)
                break
        connect_timeout = DEFAULT_CONNECT_TIMEOUT_MS
        for layer, at in [*layers, (cfg, cw)]:
            value = _get(layer, "connect_timeout_ms")
            if value:
                connect_timeout = self._int(value, f"{at}.connect_timeout_ms", 1, MAX_TIMEOUT_MS)
        limits = Limits()
        health = PassiveHealth()
        for layer, at in [*layers, (cfg, cw)]:
            raw_limits = _get(layer, "limits")
            if raw_limits is not None:
                limits = self._limits(limits, self._map(raw_limits, f"{at}.limits"), f"{at}.limits")
            raw_health = _get(layer, "passive_health_check")
            if raw_health is not None:
                health = self._health(health, self._map(raw_health, f"{at}.passive_health_check"),
                                      f"{at}.passive_health_check")
        retries, request_timeout = self._retries(cfg, cw)
        bind_address = self._ip(up.get("LocalBindAddress") or "127.0.0.1", f"{where}.local_bind_address")
        try:
            sid = service_id(self.catalog.connect.trust_domain, dc, name).uri()
        except SpiffeIDError as exc:
            raise self.fail(f"{where}.destination_name", str(exc)) from None
        return Upstream(
            destination_name=name, local_bind_address=bind_address,
            local_bind_port=self._int(up.get("LocalBindPort"), f"{where}.local_bind_port", 1, 65535),
            datacenter=dc, protocol=protocol, spiffe_ids=(sid,),
            endpoints=self._endpoints(name) if dc == self.datacenter else (),
            connect_timeout_ms=connect_timeout, request_timeout_ms=request_timeout,
            load_balancer=self._load_balancer(_get(cfg, "load_balancer"), f"{cw}.load_balancer"),
            retries=retries, limits=limits, passive_health=health)

    def _endpoints(self, name: str) -> tuple[Endpoint, ...]:
        """The destination's passing mesh instances (sidecars and Connect-native), weighted by Weights.Passing."""
        out: list[Endpoint] = []
        for inst in self.catalog.connect_instances(name):
            if inst.status != PASSING:
                continue
            svc = inst.service
            weight = svc.weights.get("Passing", 1) if isinstance(svc.weights, dict) else 1
            address = svc.address or inst.node.address
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1 or not 1 <= svc.port <= 65535:
                continue  # weight 0 takes no traffic; a row without a port cannot be dialled
            if not _is_ip(address):
                continue  # a host name would be resolved by a blocking lookup in the worker's event loop
            out.append(Endpoint(address=address, port=svc.port, weight=min(weight, 65535),
                                node=inst.node.node[:MAX_STR], service_id=svc.id[:MAX_STR]))  # labels only
            if len(out) == MAX_ENDPOINTS:  # more would be refused by the workers; these are enough to balance
                break
        return tuple(out)

    def _limits(self, old: Limits, raw: Map, where: str) -> Limits:
        values: dict[str, int] = {}
        for key, attr in (("max_connections", "max_connections"), ("max_pending_requests", "max_pending_requests"),
                          ("max_concurrent_requests", "max_concurrent_requests")):
            value = _get(raw, key)
            if value is not None:
                n = self._int(value, f"{where}.{key}", 0, 1_000_000)
                values[attr] = n or 1024  # 0 means the proxy's default, as in Consul
        return replace(old, **values)

    def _health(self, old: PassiveHealth, raw: Map, where: str) -> PassiveHealth:
        values: dict[str, Any] = {}
        for key, attr in (("interval", "interval_s"), ("base_ejection_time", "base_ejection_time_s"),
                          ("max_ejection_time", "max_ejection_time_s")):
            value = _get(raw, key)
            if value is not None:
                seconds = self._seconds(value, f"{where}.{key}")
                if seconds:  # 0s means the proxy's default, as in Consul
                    values[attr] = seconds
        value = _get(raw, "max_failures")
        if value:
            values["max_failures"] = self._int(value, f"{where}.max_failures", 1, 1_000_000)
        for key in ("enforcing_consecutive_5xx", "max_ejection_percent"):
            value = _get(raw, key)
            if value is not None:
                values[key] = self._int(value, f"{where}.{key}", 0, 100)
        new = replace(old, **values)
        if new.max_ejection_time_s < new.base_ejection_time_s:
            new = replace(new, max_ejection_time_s=new.base_ejection_time_s)
        return new

    def _retries(self, cfg: Map, where: str) -> tuple[Retries, int]:
        retries = Retries()
        values: dict[str, Any] = {}
        value = _get(cfg, "num_retries")
        if value is not None:
            values["num_retries"] = self._int(value, f"{where}.num_retries", 0, MAX_RETRIES)
        value = _get(cfg, "retry_on_connect_failure")
        if value is not None:
            values["retry_on_connect_failure"] = self._bool(value, f"{where}.retry_on_connect_failure")
        value = _get(cfg, "retry_on_status_codes")
        if value is not None:
            codes = self._list(value, f"{where}.retry_on_status_codes", 64)
            values["retry_on_status_codes"] = tuple(
                self._int(c, f"{where}.retry_on_status_codes[{k}]", 100, 599) for k, c in enumerate(codes))
        value = _get(cfg, "request_timeout_ms")
        timeout = 15000 if value is None else self._int(value, f"{where}.request_timeout_ms", 0, MAX_TIMEOUT_MS)
        return replace(retries, **values), timeout

    def _load_balancer(self, value: Any, where: str) -> LoadBalancer:
        if value is None:
            return LoadBalancer()
        raw = self._map(value, where)
        values: dict[str, Any] = {}
        policy = _get(raw, "policy")
        if policy is not None:
            values["policy"] = self._str(policy, f"{where}.policy", LB_POLICIES)
        least = self._map(_get(raw, "least_request_config"), f"{where}.least_request_config")
        choice = _get(least, "choice_count", _get(raw, "choice_count"))
        if choice is not None:
            values["choice_count"] = self._int(choice, f"{where}.choice_count", 2, 100)
        ring = self._map(_get(raw, "ring_hash_config"), f"{where}.ring_hash_config")
        for key in ("minimum_ring_size", "maximum_ring_size"):
            size = _get(ring, key, _get(raw, key))
            if size:
                values[key] = self._int(size, f"{where}.{key}", 1, 8_388_608)
        if values.get("minimum_ring_size", 1024) > values.get("maximum_ring_size", 8_388_608):
            raise self.fail(f"{where}.minimum_ring_size", "is above maximum_ring_size")
        policies = _get(raw, "hash_policies")
        if policies is not None:
            values["hash_policies"] = tuple(self._hash_policy(p, f"{where}.hash_policies[{k}]")
                                            for k, p in enumerate(self._list(policies, f"{where}.hash_policies",
                                                                             100)))
        return LoadBalancer(**values)

    def _hash_policy(self, value: Any, where: str) -> HashPolicy:
        raw = self._map(value, where)
        field_ = self._str(_get(raw, "field") or "", f"{where}.field", ("", "header", "cookie", "query_parameter"))
        field_value = self._str(_get(raw, "field_value") or "", f"{where}.field_value")
        source_ip = self._bool(_get(raw, "source_ip", False), f"{where}.source_ip")
        if bool(field_) == source_ip:
            raise self.fail(where, "needs exactly one of field or source_ip")
        if field_ and not field_value:
            raise self.fail(f"{where}.field_value", "is required with field")
        return HashPolicy(field=field_, field_value=field_value, source_ip=source_ip,
                          terminal=self._bool(_get(raw, "terminal", False), f"{where}.terminal"))


# ---------------------------------------------------------------------- helpers


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _get(raw: Map, key: str, default: Any = None) -> Any:
    """`raw[key]`, matching `connect_timeout_ms` to `ConnectTimeoutMs` (and to itself)."""
    if key in raw:
        return raw[key]
    want = _norm(key)
    for k, v in raw.items():
        if isinstance(k, str) and _norm(k) == want:
            return v
    return default


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _chain(leaf: LeafRecord) -> str:
    """Consul's CertPEM: the leaf, then the intermediates that chain it to a root (cross-signed in rotations)."""
    parts = [leaf.cert_pem, *leaf.intermediate_pems]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


class _Malformed(Exception):
    """A stored permission that cannot be read as written."""


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise _Malformed
    return value


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
        raise _Malformed
    return value


DENY_ALL = Permission(action="deny")


def _permission(raw: Any) -> Permission:
    """One stored L7 permission. Stored entries were validated at write, but the FSM checks only structure: a
    malformed one becomes an unconditional deny (fail closed: never a shortened match, which could widen an
    allow) instead of an error that freezes every rule."""
    if not isinstance(raw, Mapping) or raw.get("Action") not in ("allow", "deny"):
        return DENY_ALL
    http = raw.get("HTTP")
    if http is None:
        return Permission(action=str(raw["Action"]))
    if not isinstance(http, Mapping):
        return DENY_ALL
    try:
        methods = tuple(m.upper() for m in _strings(http.get("Methods")))
        headers_raw = http.get("Header")
        if headers_raw is not None and (not isinstance(headers_raw, list) or len(headers_raw) > MAX_LIST):
            raise _Malformed
        headers: list[HeaderMatch] = []
        for h in headers_raw or ():
            if not isinstance(h, Mapping) or not isinstance(h.get("Name"), str) or len(h["Name"]) > MAX_STR:
                raise _Malformed
            exact, prefix, suffix, regex = (_opt_str(h.get(k)) for k in ("Exact", "Prefix", "Suffix", "Regex"))
            present = h.get("Present") is True or (exact, prefix, suffix, regex) == (None, None, None, None)
            headers.append(HeaderMatch(name=h["Name"], present=present, exact=exact, prefix=prefix, suffix=suffix,
                                       regex=regex, invert=h.get("Invert") is True))
        return Permission(action=str(raw["Action"]), path_exact=_opt_str(http.get("PathExact")),
                          path_prefix=_opt_str(http.get("PathPrefix")), path_regex=_opt_str(http.get("PathRegex")),
                          methods=methods, headers=tuple(headers))
    except _Malformed:
        return DENY_ALL
