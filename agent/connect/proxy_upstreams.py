"""The upstream half of a sidecar's snapshot, pure: listeners, identity, and UpstreamConfig layered
(service-defaults Defaults, its Overrides entry, the upstream's own `config`) for protocol, connect timeout,
limits and passive health checks (docs/sidecar-proxy.md); endpoints, routes and targets come from the
destination's discovery chain (proxy_chain.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...proxy.snapshot import (
    MAX_UPSTREAMS,
    Limits,
    PassiveHealth,
    Retries,
    Upstream,
)
from ..catalog.state import Catalog
from .proxy_chain import ChainReader, compiled_chain
from .proxy_config_read import MAX_RETRIES, MAX_TIMEOUT_MS, Map, SnapshotError, config_get
from .spiffe import SpiffeIDError, service_id

DEFAULT_CONNECT_TIMEOUT_MS = 5000  # UpstreamConfig.ConnectTimeoutMs
L4_PROTOCOLS = ("tcp", "http2", "grpc")  # http2/grpc are proxied at L4 until their own issue
PROTOCOLS = ("tcp", "http", "http2", "grpc")


class UpstreamReader(ChainReader):
    """Builds Upstreams for one sidecar; the snapshot builder sets the attributes below."""

    catalog: Catalog
    datacenter: str
    block: Map  # the proxy block (CamelCase)
    defaults: Map  # the sidecar's service's service-defaults entry
    pd_config: Map  # proxy-defaults Config
    # Per build: upstreams whose discovery chain failed (sent with no endpoints, the rest of the sidecar applied)
    # and routers/splitters an L4 upstream does not apply; the runner logs each once.
    upstream_errors: list[str]
    upstream_notes: list[str]

    def _service_defaults(self, name: str) -> Map:
        row = self.catalog.config_entries.get("service-defaults", name) if name else None
        return row.entry if row is not None else {}

    def _protocol_of(self, value: Any, where: str) -> str:
        proto = self._str(value, where).lower()
        if proto not in PROTOCOLS:
            raise self.fail(where, f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
        return "tcp" if proto in L4_PROTOCOLS else proto

    def _upstreams(self) -> tuple[Upstream, ...]:
        self.upstream_errors, self.upstream_notes = [], []
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
        # As Consul resolves an upstream's protocol: its own config, then the downstream's UpstreamConfig
        # (Overrides over Defaults), then how the destination wants to be addressed, then proxy-defaults.
        protocol, spoken = "tcp", "tcp"
        for value, at in ((config_get(cfg, "protocol"), f"{cw}.protocol"),
                          *((config_get(layer, "protocol"), f"{lat}.Protocol") for layer, lat in reversed(layers)),
                          (dest_defaults.get("Protocol"), f"service-defaults {name} Protocol"),
                          (config_get(self.pd_config, "protocol"), "proxy-defaults global Config.protocol")):
            if value not in (None, ""):
                protocol = self._protocol_of(value, at)
                spoken = str(value).lower()
                break
        connect_timeout, explicit_timeout = DEFAULT_CONNECT_TIMEOUT_MS, 0
        for layer, at in [*layers, (cfg, cw)]:
            value = config_get(layer, "connect_timeout_ms")
            if value:
                connect_timeout = explicit_timeout = self._int(value, f"{at}.connect_timeout_ms", 1, MAX_TIMEOUT_MS)
        limits = Limits()
        health = PassiveHealth()
        for layer, at in [*layers, (cfg, cw)]:
            raw_limits = config_get(layer, "limits")
            if raw_limits is not None:
                limits = self._limits(limits, self._map(raw_limits, f"{at}.limits"), f"{at}.limits")
            raw_health = config_get(layer, "passive_health_check")
            if raw_health is not None:
                health = self._health(health, self._map(raw_health, f"{at}.passive_health_check"),
                                      f"{at}.passive_health_check")
        retries, request_timeout = self._retries(cfg, cw)
        bind_address = self._ip(up.get("LocalBindAddress") or "127.0.0.1", f"{where}.local_bind_address")
        try:
            sid = service_id(self.catalog.connect.trust_domain, dc, name).uri()
        except SpiffeIDError as exc:
            raise self.fail(f"{where}.destination_name", str(exc)) from None
        plain = Upstream(
            destination_name=name, local_bind_address=bind_address,
            local_bind_port=self._int(up.get("LocalBindPort"), f"{where}.local_bind_port", 1, 65535),
            datacenter=dc, protocol=protocol, spiffe_ids=(sid,), connect_timeout_ms=connect_timeout,
            request_timeout_ms=request_timeout,
            load_balancer=self._load_balancer(config_get(cfg, "load_balancer"), f"{cw}.load_balancer"),
            retries=retries, limits=limits, passive_health=health)
        # The destination's discovery chain (proxy_chain.py) decides endpoints, routes and targets. It is
        # compiled with the upstream's protocol and explicit connect timeout as overrides (Consul's
        # OverrideProtocol / OverrideConnectTimeout): tcp, and http2/grpc proxied at L4, skip routers and
        # splitters, and an explicit connect_timeout_ms wins over the resolver's ConnectTimeout.
        if spoken in L4_PROTOCOLS and spoken != "tcp" and any(
                self.catalog.config_entries.get(k, name) is not None for k in ("service-router", "service-splitter")):
            self.upstream_notes.append(f"sidecar {self.proxy_id!r} of {self.service!r}: {where}: service-router/"
                                       f"splitter of {name!r} not applied: protocol {spoken} is proxied at L4")
        try:
            chain = compiled_chain(self.catalog, name, dc, override_protocol=protocol,
                                   override_connect_timeout_ms=explicit_timeout)
            self.explicit_connect_timeout = bool(explicit_timeout)
            upstream = self.chain_upstream(plain, chain)
            self.upstream_notes.extend(f"sidecar {self.proxy_id!r} of {self.service!r}: {where}: {note}"
                                       for note in self.chain_notes)
            return upstream
        except ValueError as exc:
            # Entries written by others (or a service grown past the bounds) fail this upstream only: no
            # endpoints (503 "no healthy upstream") while the rest of the sidecar, its intentions and its
            # leaf rotation keep updating.
            text = str(exc) if isinstance(exc, SnapshotError) else str(
                self.fail(f"{where}.destination_name", f"discovery chain of {name!r}: {exc}"))
            self.upstream_errors.append(f"{text} (the upstream has no endpoints until it is fixed)")
            return plain

    def _limits(self, old: Limits, raw: Map, where: str) -> Limits:
        values: dict[str, int] = {}
        for key, attr in (("max_connections", "max_connections"), ("max_pending_requests", "max_pending_requests"),
                          ("max_concurrent_requests", "max_concurrent_requests")):
            value = config_get(raw, key)
            if value is not None:
                n = self._int(value, f"{where}.{key}", 0, 1_000_000)
                values[attr] = n or 1024  # 0 means the proxy's default, as in Consul
        return replace(old, **values)

    def _health(self, old: PassiveHealth, raw: Map, where: str) -> PassiveHealth:
        values: dict[str, Any] = {}
        for key, attr in (("interval", "interval_s"), ("base_ejection_time", "base_ejection_time_s"),
                          ("max_ejection_time", "max_ejection_time_s")):
            value = config_get(raw, key)
            if value is not None:
                seconds = self._seconds(value, f"{where}.{key}")
                if seconds:  # 0s means the proxy's default, as in Consul
                    values[attr] = seconds
        value = config_get(raw, "max_failures")
        if value:
            values["max_failures"] = self._int(value, f"{where}.max_failures", 1, 1_000_000)
        for key in ("enforcing_consecutive_5xx", "max_ejection_percent"):
            value = config_get(raw, key)
            if value is not None:
                values[key] = self._int(value, f"{where}.{key}", 0, 100)
        new = replace(old, **values)
        if new.max_ejection_time_s < new.base_ejection_time_s:
            new = replace(new, max_ejection_time_s=new.base_ejection_time_s)
        return new

    def _retries(self, cfg: Map, where: str) -> tuple[Retries, int]:
        retries = Retries()
        values: dict[str, Any] = {}
        value = config_get(cfg, "num_retries")
        if value is not None:
            values["num_retries"] = self._int(value, f"{where}.num_retries", 0, MAX_RETRIES)
        value = config_get(cfg, "retry_on_connect_failure")
        if value is not None:
            values["retry_on_connect_failure"] = self._bool(value, f"{where}.retry_on_connect_failure")
        value = config_get(cfg, "retry_on_status_codes")
        if value is not None:
            codes = self._list(value, f"{where}.retry_on_status_codes", 64)
            values["retry_on_status_codes"] = tuple(
                self._int(c, f"{where}.retry_on_status_codes[{k}]", 100, 599) for k, c in enumerate(codes))
        value = config_get(cfg, "request_timeout_ms")
        timeout = 15000 if value is None else self._int(value, f"{where}.request_timeout_ms", 0, MAX_TIMEOUT_MS)
        return replace(retries, **values), timeout
