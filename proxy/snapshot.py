"""ProxySnapshot: everything one sidecar's data plane needs, as typed values the agent (or the standalone
`meshagent connect proxy`) builds and the workers obey.

The data plane never asks the catalog anything: the feeder sends a whole new snapshot whenever something in
it changes (a leaf renewed, a root rotated, an intention written, an endpoint gone critical), and the
workers swap to it. Snapshots cross a process boundary as plain maps (`to_wire`/`from_wire`, msgpack or
JSON), so `from_wire` treats its input as hostile: bounded sizes, checked types, ProxyConfigError naming the
field.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, get_type_hints

MAX_ENDPOINTS = 4096  # per upstream
MAX_UPSTREAMS = 256
MAX_RULES = 4096  # intentions with this service as destination
MAX_PERMISSIONS = 256  # per L7 intention
MAX_PEM = 256 * 1024  # one PEM field: a chain, a key or the roots bundle
MAX_STR = 4096
MAX_LIST = 1024  # any other list
MAX_ROUTES = 256  # per upstream: a router's routes plus the default one
MAX_TARGETS = 256  # per upstream: every (service, subset, datacenter) its chain can reach
MAX_SPLITS = 256  # per route

T = TypeVar("T")


class ProxyConfigError(ValueError):
    """A snapshot that does not hold together; the message names the field."""


# ---------------------------------------------------------------------- policies (UpstreamConfig)


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One input of a ring_hash/maglev key: Consul's `HashPolicies[]` (Field header|cookie|query_parameter,
    or SourceIP)."""

    field: str = ""  # "header" | "cookie" | "query_parameter" | "" with source_ip
    field_value: str = ""
    source_ip: bool = False
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """Consul's `LoadBalancer`: policy is "" (the default: peak-EWMA P2C for http, least_request for tcp),
    round_robin, random, least_request, ring_hash, maglev."""

    policy: str = ""
    choice_count: int = 2
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8_388_608
    hash_policies: tuple[HashPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Retries:
    """When an upstream request is tried again (Consul's router `NumRetries`/`RetryOn*`)."""

    num_retries: int = 0
    retry_on_connect_failure: bool = True
    retry_on_status_codes: tuple[int, ...] = ()
    base_interval_ms: int = 25
    max_interval_ms: int = 250
    budget_percent: float = 20.0  # retries in flight at most this share of active requests …
    budget_min_concurrent: int = 3  # … but always this many


@dataclass(frozen=True, slots=True)
class Limits:
    """Circuit breakers (Consul's `UpstreamConfig.Limits`): 0 means Envoy's default of 1024."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_concurrent_requests: int = 1024


@dataclass(frozen=True, slots=True)
class PassiveHealth:
    """Outlier detection (Consul's `PassiveHealthCheck`)."""

    max_failures: int = 5  # consecutive 5xx / gateway failures that eject a host
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_percent: int = 10  # but at least one host, and never the last one
    enforcing_consecutive_5xx: int = 100


# ---------------------------------------------------------------------- upstreams


@dataclass(frozen=True)  # no slots: the hash is cached in the instance dict, outside the fields and the wire
class Endpoint:
    """One healthy instance of an upstream: its sidecar's public listener."""

    address: str
    port: int
    weight: int = 1  # the catalog's Weights.Passing
    node: str = ""
    service_id: str = ""  # the sidecar's service ID, for metrics and logs
    _hash: ClassVar[int]  # per instance in fact (set in __post_init__); ClassVar keeps it out of the fields

    def __post_init__(self) -> None:
        # Endpoints key the pool, balancer and outlier maps several times per request: the generated
        # __hash__ built a 5-tuple each time (~0.55 us a lookup; cached ~0.2 us).
        object.__setattr__(self, "_hash", hash((self.address, self.port, self.weight, self.node,
                                                self.service_id)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ built two 5-tuples even for the same object (`key != ep` per request).
        if self is other:
            return True
        if type(other) is not Endpoint:
            return NotImplemented
        return (self._hash == other._hash and self.address == other.address and self.port == other.port
                and self.weight == other.weight and self.node == other.node
                and self.service_id == other.service_id)

    def __reduce__(self) -> tuple[type[Endpoint], tuple[str, int, int, str, str]]:
        # Rebuilt from the fields, so a cached str hash never crosses into a process with another seed.
        return (Endpoint, (self.address, self.port, self.weight, self.node, self.service_id))


# ---------------------------------------------------------------------- the discovery chain (issue 17)


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """Consul's router `QueryParam[]`: exactly one of present/exact/regex is set."""

    name: str
    present: bool = False
    exact: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Consul's router `Match.HTTP`; every set part must match; all unset matches every request."""

    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None  # RE2, whole path (without the query)
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    case_insensitive: bool = False  # Consul's CaseInsensitive: path_exact / path_prefix ignore ASCII case


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    """One split of a route: a ChainTarget's id and its share in hundredths of a percent (1-10000)."""

    target: str
    weight: int


@dataclass(frozen=True, slots=True)
class ChainRoute:
    """One route of an http upstream's compiled chain, in order (first match wins): where matching requests
    go (weights summing to 10000) and the router's per-route overrides."""

    match: RouteMatch = field(default_factory=RouteMatch)
    splits: tuple[WeightedTarget, ...] = ()
    prefix_rewrite: str | None = None  # replaces the matched PathPrefix/PathExact
    request_timeout_ms: int = 0  # 0 = the target's, else the upstream's
    retries: Retries | None = None  # None = the upstream's
    name: str = ""  # "web route 0", "web default": for people reading a snapshot (troubleshoot); no metric uses it


@dataclass(frozen=True, slots=True)
class ChainTarget:
    """Where a split's requests go: one (service, subset, datacenter), with its endpoints already resolved
    by the agent (subset filter, OnlyPassing, failover applied: docs/traffic-management.md)."""

    id: str  # Consul's target ID, "v2.web.default.default.dc1"
    endpoints: tuple[Endpoint, ...] = ()
    spiffe_ids: tuple[str, ...] = ()  # identities the endpoints' certificates may carry
    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 0  # 0 = the upstream's
    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One `upstreams` entry: a local listener and where its connections go."""

    destination_name: str
    local_bind_address: str
    local_bind_port: int
    datacenter: str = ""
    protocol: str = "tcp"  # "tcp" | "http"
    spiffe_ids: tuple[str, ...] = ()  # identities the upstream's server certificate may carry
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 15000  # http only; 0 = none
    load_balancer: LoadBalancer = field(default_factory=LoadBalancer)
    retries: Retries = field(default_factory=Retries)
    limits: Limits = field(default_factory=Limits)
    passive_health: PassiveHealth = field(default_factory=PassiveHealth)
    # The compiled discovery chain (http only). No routes: every request goes to `endpoints` as before.
    # With routes: each request takes the first matching route, one of its splits, that ChainTarget.
    routes: tuple[ChainRoute, ...] = ()
    targets: tuple[ChainTarget, ...] = ()

    @property
    def key(self) -> str:
        """How metrics and logs name this upstream."""
        return self.destination_name


# ---------------------------------------------------------------------- intentions


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Consul's `Permissions[].HTTP.Header[]`: exactly one of present/exact/prefix/suffix/regex is set."""

    name: str
    present: bool = False
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    invert: bool = False


@dataclass(frozen=True, slots=True)
class Permission:
    """One L7 permission: action and an HTTP match (all set parts must match)."""

    action: str  # "allow" | "deny"
    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class IntentionRule:
    """An intention whose destination is this proxy's service, in evaluation order: `action` for L4, or
    `permissions` for L7 (action None)."""

    source: str  # a service name or "*"
    action: str | None  # "allow" | "deny" | None (L7)
    permissions: tuple[Permission, ...] = ()
    name: str = ""  # "web => db", for 403 reasons and metric labels
    source_ns: str = "default"


@dataclass(frozen=True, slots=True)
class Intentions:
    """The rules for this service in evaluation order, and the default when none matches."""

    default_allow: bool = True
    rules: tuple[IntentionRule, ...] = ()


# ---------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """This service's leaf (PEM chain: leaf first, then intermediates), its key, and every trusted root."""

    cert_pem: str
    key_pem: str
    roots_pem: tuple[str, ...]
    trust_domain: str
    spiffe_id: str  # this service's own identity

    def __repr__(self) -> str:  # the key must never reach a log line
        return f"TLSMaterial(spiffe_id={self.spiffe_id!r}, roots={len(self.roots_pem)})"


# ---------------------------------------------------------------------- the snapshot


@dataclass(frozen=True, slots=True)
class AccessLog:
    """proxy-defaults `AccessLogs`: off unless enabled; JSON lines to `path` ("" = the worker's stderr)."""

    enabled: bool = False
    path: str = ""


@dataclass(frozen=True, slots=True)
class ProxySnapshot:
    """One sidecar's whole data-plane configuration at one moment."""

    proxy_id: str  # the sidecar's service ID, e.g. "web-sidecar-proxy"
    service: str  # the destination service this sidecar fronts: its identity
    datacenter: str
    tls: TLSMaterial
    public_address: str  # the public (inbound) listener
    public_port: int
    local_service_address: str = "127.0.0.1"
    local_service_port: int = 0  # 0: no inbound listener
    local_connect_timeout_ms: int = 5000
    local_request_timeout_ms: int = 0  # http only; 0 = none
    protocol: str = "tcp"  # this service's protocol (service-defaults), decides L4 or L7 inbound
    intentions: Intentions = field(default_factory=Intentions)
    upstreams: tuple[Upstream, ...] = ()
    metrics_bind: str = ""  # "host:port" for the per-proxy Prometheus listener; "" = none
    access_log: AccessLog = field(default_factory=AccessLog)
    workers: int = 1
    version: int = 0  # bumped by the feeder on every change; workers log it

    def to_wire(self) -> dict[str, Any]:
        """A plain map (str keys; str, int, float, bool, None, lists, maps) for msgpack or JSON."""
        wire: dict[str, Any] = _plain(asdict(self))
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> ProxySnapshot:
        """The snapshot in `raw` (hostile input), or ProxyConfigError naming the first bad field."""
        snap = _build(cls, raw, "snapshot")
        snap.check()
        return snap

    def check(self) -> None:
        """Cross-field rules: ports in range, protocols known, listeners distinct, addresses IP literals; an
        upstream's chain (routes, targets) by chain_check.check_chain."""
        check_port(self.public_port, "public_port")
        check_ip(self.public_address, "public_address")
        check_ip(self.local_service_address, "local_service_address")
        if self.local_service_port:
            check_port(self.local_service_port, "local_service_port")
        _protocol(self.protocol, "protocol")
        if not 1 <= self.workers <= 64:
            raise ProxyConfigError(f"workers: {self.workers} is not between 1 and 64")
        seen = {(self.public_address, self.public_port)}
        for i, up in enumerate(self.upstreams):
            where = f"upstreams[{i}]"
            check_port(up.local_bind_port, f"{where}.local_bind_port")
            _protocol(up.protocol, f"{where}.protocol")
            check_ip(up.local_bind_address, f"{where}.local_bind_address")
            bind = (up.local_bind_address, up.local_bind_port)
            if bind in seen:
                raise ProxyConfigError(f"{where}: {bind[0]}:{bind[1]} is already a listener of this proxy")
            seen.add(bind)
            for j, ep in enumerate(up.endpoints):
                check_port(ep.port, f"{where}.endpoints[{j}].port")
                check_ip(ep.address, f"{where}.endpoints[{j}].address")
                if ep.weight < 1:
                    raise ProxyConfigError(f"{where}.endpoints[{j}].weight: {ep.weight} is below 1")
            if up.routes or up.targets:
                from .chain_check import check_chain  # lazily: it imports this module (and RE2)
                check_chain(up, where)
        for i, rule in enumerate(self.intentions.rules):
            if rule.action not in ("allow", "deny", None):
                raise ProxyConfigError(f"intentions.rules[{i}].action: {rule.action!r} is not allow or deny")
            for j, perm in enumerate(rule.permissions):
                if perm.action not in ("allow", "deny"):
                    raise ProxyConfigError(f"intentions.rules[{i}].permissions[{j}].action: "
                                           f"{perm.action!r} is not allow or deny")


def check_port(value: int, where: str) -> None:
    """A port 1-65535, or ProxyConfigError naming `where`."""
    if not 1 <= value <= 65535:
        raise ProxyConfigError(f"{where}: {value} is not a port (1-65535)")


def check_ip(value: str, where: str) -> None:
    """An IP address literal, or ProxyConfigError naming `where`."""
    # Workers never resolve names: a getaddrinfo would block their event loop (and every connection on it).
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ProxyConfigError(f"{where}: {value!r:.80} is not an IP address (host names are not resolved)"
                               ) from None


def _protocol(value: str, where: str) -> None:
    if value not in ("tcp", "http"):
        raise ProxyConfigError(f"{where}: protocol {value!r} is not tcp or http")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_LIMITS = {"endpoints": MAX_ENDPOINTS, "upstreams": MAX_UPSTREAMS, "rules": MAX_RULES,
           "permissions": MAX_PERMISSIONS, "routes": MAX_ROUTES, "targets": MAX_TARGETS, "splits": MAX_SPLITS}
_PEM_FIELDS = {"cert_pem", "key_pem", "roots_pem"}


def _build(cls: type[T], raw: Any, where: str) -> T:
    """Build dataclass `cls` from a map, field by field, by its type hints; unknown keys are ignored (a newer
    feeder may send more), missing ones take their defaults."""
    if not isinstance(raw, dict):
        raise ProxyConfigError(f"{where}: expected a map, got {type(raw).__name__}")
    kwargs: dict[str, Any] = {}
    for name, hint in _fields_of(cls):
        if name not in raw:
            continue
        kwargs[name] = _value(hint, raw[name], f"{where}.{name}", name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ProxyConfigError(f"{where}: {exc}") from None


_FIELDS: dict[type[Any], tuple[tuple[str, Any], ...]] = {}


def _fields_of(cls: type[Any]) -> tuple[tuple[str, Any], ...]:
    """(name, resolved type) of a dataclass's fields, resolved once per class: resolving hints per object
    made a snapshot with a few thousand rules take over a second to decode."""
    found = _FIELDS.get(cls)
    if found is None:
        hints = get_type_hints(cls)
        found = _FIELDS[cls] = tuple((f.name, hints[f.name]) for f in fields(cls))
    return found


def _value(hint: Any, raw: Any, where: str, name: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    args: tuple[Any, ...] = getattr(hint, "__args__", ())
    if is_dataclass(hint):
        return _build(hint, raw, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            raise ProxyConfigError(f"{where}: expected a list, got {type(raw).__name__}")
        limit = _LIMITS.get(name, MAX_LIST)
        if len(raw) > limit:
            raise ProxyConfigError(f"{where}: {len(raw)} items, more than {limit}")
        return tuple(_value(args[0], item, f"{where}[{i}]", name)
                     for i, item in enumerate(raw))
    if type(None) in args:  # X | None
        if raw is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], raw, where, name)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ProxyConfigError(f"{where}: expected true or false, got {type(raw).__name__}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not -2**53 <= raw <= 2**53:
            raise ProxyConfigError(f"{where}: expected an integer, got {raw!r:.40}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw:
            raise ProxyConfigError(f"{where}: expected a number, got {raw!r:.40}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ProxyConfigError(f"{where}: expected a string, got {type(raw).__name__}")
        limit = MAX_PEM if name in _PEM_FIELDS else MAX_STR
        if len(raw) > limit:
            raise ProxyConfigError(f"{where}: {len(raw)} characters, more than {limit}")
        return raw
    raise ProxyConfigError(f"{where}: no rule for type {hint!r}")  # a bug here, not bad input
