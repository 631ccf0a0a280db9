"""Config entries' fields, declared per kind with Consul's names and types, and the checks each type makes, pure.

A spec's `check(value, path)` returns the canonical value (CamelCase keys, numbers as numbers, durations as the
string the user gave) or raises FieldProblem naming the dotted path. Keys match Consul's field names
case-insensitively and with or without underscores (`PathPrefix`, `path_prefix`), as `consul config write`
decodes them. Cross-field rules (one path match at most, weights summing to 100 ...) are in entry_validate.py.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from ...proxy.authorize import compile_fullmatch
from ..config.duration import format_duration, parse_duration
from ..http.filter import HEALTH_ENTRY_SCHEMA, FilterError, parse_filter

MAX_STR = 4096
MAX_NAME = 256
MAX_ITEMS = 1000
MAX_FILTER = 1024
MAX_DEPTH = 32  # free-form maps (proxy Config, extension Arguments): how deep they may nest
META_PAIRS, META_KEY_MAX, META_VALUE_MAX = 64, 128, 512  # Consul's limits on Meta
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_META_KEY = re.compile(r"[A-Za-z0-9_-]+")
DROP: Any = object()  # returned by Ignored: the field is accepted on input and left out of the entry


class FieldProblem(ValueError):
    """One field's problem: `path` is dotted (`Routes[0].Match.HTTP.PathPrefix`), `problem` says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '(entry)'}: {problem}")
        self.path = path
        self.problem = problem


def join(path: str, key: str) -> str:
    """`path.key`, or `key` at the top."""
    return f"{path}.{key}" if path else key


def fold(key: str) -> str:
    """How a key is matched to a field: case and underscores do not count (Consul's decoder ignores both)."""
    return key.replace("_", "").lower()


def kind_of(value: Any) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a map"
    return type(value).__name__


class Spec:
    """A field's type: `check` returns the canonical value or raises FieldProblem."""

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError


class Str(Spec):
    """A string up to `limit` characters, optionally one of `choices` (after `lower` when set)."""

    def __init__(self, choices: tuple[str, ...] = (), limit: int = MAX_STR, lower: bool = False) -> None:
        self.choices, self.limit, self.lower = choices, limit, lower

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise FieldProblem(path, f"must be a string, got {kind_of(value)}")
        if len(value) > self.limit:
            raise FieldProblem(path, f"is longer than {self.limit} characters")
        if self.lower:
            value = value.lower()
        if self.choices and value not in self.choices:
            shown = ", ".join(repr(c) for c in self.choices)
            raise FieldProblem(path, f"must be one of {shown}, got {_short(value)}")
        return value


class Name(Str):
    """A service (or subset, datacenter) name: letters, digits, `.`, `_`, `-`; `*` too when `wildcard`."""

    def __init__(self, wildcard: bool = False, empty: bool = True) -> None:
        super().__init__(limit=MAX_NAME)
        self.wildcard, self.empty = wildcard, empty

    def check(self, value: Any, path: str) -> Any:
        text: str = super().check(value, path)
        if text == "" and self.empty:
            return text
        if text == "*" and self.wildcard:
            return text
        if not _NAME.fullmatch(text):
            extra = " or be \"*\"" if self.wildcard else ""
            raise FieldProblem(path, f"must be letters, digits, '.', '_' or '-'{extra}, got {_short(text)}")
        return text


class Namespace(Str):
    """A namespace or partition: Consul Enterprise features, so only "" or "default" (or `*` where allowed)."""

    def __init__(self, wildcard: bool = False) -> None:
        super().__init__(("", "default", "*") if wildcard else ("", "default"), limit=MAX_NAME)


class Int(Spec):
    """An integer in [low, high]; an integral float (as HCL may give) is accepted."""

    def __init__(self, low: int = 0, high: int = 2**31 - 1) -> None:
        self.low, self.high = low, high

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldProblem(path, f"must be an integer, got {kind_of(value)}")
        if not self.low <= value <= self.high:
            raise FieldProblem(path, f"must be between {self.low} and {self.high}, got {value}")
        return value


class Float(Spec):
    """A finite number in [low, high]."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise FieldProblem(path, f"must be a number, got {kind_of(value)}")
        if not self.low <= value <= self.high:
            raise FieldProblem(path, f"must be between {self.low:g} and {self.high:g}, got {value:g}")
        return value


class Bool(Spec):
    """true or false."""

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise FieldProblem(path, f"must be true or false, got {kind_of(value)}")
        return value


class Duration(Spec):
    """A Go duration string ("5s", "1m30s"), kept as written, or an integer of nanoseconds (Consul's API
    accepts both) turned into a string; never negative."""

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise FieldProblem(path, "must not be negative")
            if value > 10**18:
                raise FieldProblem(path, "is too long")
            return format_duration(value / 1e9)
        if not isinstance(value, str) or len(value) > 64:
            raise FieldProblem(path, f'must be a duration such as "5s" or "1m30s", got {kind_of(value)}')
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise FieldProblem(path, str(exc)) from None
        if seconds < 0:
            raise FieldProblem(path, "must not be negative")
        return value


class Regex(Str):
    """A regular expression RE2 accepts: Consul's and Envoy's regex language, the one the data plane runs
    (proxy/authorize.py `compile_fullmatch`, linear time). Backreferences and lookaround are refused here."""

    def check(self, value: Any, path: str) -> Any:
        text: str = super().check(value, path)
        try:
            compile_fullmatch(text)
        except ValueError as exc:
            raise FieldProblem(path, f"is not a valid RE2 regular expression: {exc}") from None
        return text


class Filter(Str):
    """A subset filter: a `?filter=` expression over the health API's entries (Service.Meta.version == v1)."""

    def __init__(self) -> None:
        super().__init__(limit=MAX_FILTER)

    def check(self, value: Any, path: str) -> Any:
        text: str = super().check(value, path)
        try:
            parse_filter(text, HEALTH_ENTRY_SCHEMA)
        except (FilterError, RecursionError) as exc:
            raise FieldProblem(path, f"is not a valid filter: {exc}") from None
        return text


class Ignored(Spec):
    """Accepted and dropped (read-only fields clients echo back: CreateIndex, Precedence)."""

    def check(self, value: Any, path: str) -> Any:
        return DROP


class ListOf(Spec):
    """A list of up to `limit` items of one spec."""

    def __init__(self, item: Spec, limit: int = MAX_ITEMS) -> None:
        self.item, self.limit = item, limit

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise FieldProblem(path, f"must be a list, got {kind_of(value)}")
        if len(value) > self.limit:
            raise FieldProblem(path, f"has more than {self.limit} items")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]


class MapOf(Spec):
    """A map whose keys are the user's (checked by `key`) and whose values share one spec."""

    def __init__(self, value: Spec, key: Spec | None = None, limit: int = MAX_ITEMS) -> None:
        self.value, self.key, self.limit = value, key or Str(limit=MAX_NAME), limit

    def check(self, value: Any, path: str) -> Any:
        value = _one_block(value)
        if not isinstance(value, Mapping):
            raise FieldProblem(path, f"must be a map, got {kind_of(value)}")
        if len(value) > self.limit:
            raise FieldProblem(path, f"has more than {self.limit} keys")
        out: dict[str, Any] = {}
        for k, v in value.items():
            where = join(path, str(k))
            self.key.check(k, where)
            out[k] = self.value.check(v, where)
        return out


class Meta(Spec):
    """Consul's Meta: up to 64 string pairs, keys of letters, digits, `_`, `-` (≤ 128), values ≤ 512."""

    def check(self, value: Any, path: str) -> Any:
        value = _one_block(value)
        if not isinstance(value, Mapping):
            raise FieldProblem(path, f"must be a map of strings, got {kind_of(value)}")
        if len(value) > META_PAIRS:
            raise FieldProblem(path, f"has more than {META_PAIRS} pairs")
        for k, v in value.items():
            if not isinstance(k, str) or not _META_KEY.fullmatch(k) or len(k) > META_KEY_MAX:
                raise FieldProblem(join(path, str(k)), f"key must be 1-{META_KEY_MAX} letters, digits, '_' or '-'")
            if not isinstance(v, str) or len(v) > META_VALUE_MAX:
                raise FieldProblem(join(path, k), f"must be a string of at most {META_VALUE_MAX} characters")
        return dict(value)


class FreeForm(Spec):
    """Opaque JSON (proxy `Config`, extension `Arguments`): any map, bounded in depth and string length."""

    def check(self, value: Any, path: str) -> Any:
        value = _one_block(value)
        if not isinstance(value, Mapping):
            raise FieldProblem(path, f"must be a map, got {kind_of(value)}")
        return _plain(value, path, 0)


class Obj(Spec):
    """A map with known fields (CamelCase canonical names); `required` fields must be present."""

    def __init__(self, fields: Mapping[str, Spec], required: tuple[str, ...] = ()) -> None:
        self.fields = dict(fields)
        self.required = required
        self.by_fold = {fold(name): name for name in self.fields}

    def check(self, value: Any, path: str) -> Any:
        value = _one_block(value)
        if not isinstance(value, Mapping):
            raise FieldProblem(path, f"must be a map, got {kind_of(value)}")
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise FieldProblem(path, f"has a key that is not a string: {_short(key)}")
            name = self.by_fold.get(fold(key))
            if name is None:
                near = difflib.get_close_matches(fold(key[:MAX_NAME]), list(self.by_fold), n=1)
                hint = f" (did you mean {self.by_fold[near[0]]}?)" if near else ""
                raise FieldProblem(join(path, key[:MAX_NAME]), f"unknown field{hint}")
            if name in seen:
                raise FieldProblem(join(path, name), f"given twice (as {seen[name]!r} and {key!r})")
            seen[name] = key
            if item is None:  # JSON null: Go's decoder leaves the zero value, i.e. absent
                continue
            checked = self.fields[name].check(item, join(path, name))
            if checked is not DROP:
                out[name] = checked
        for name in self.required:
            if name not in out:
                raise FieldProblem(join(path, name), "is required")
        return out


def _one_block(value: Any) -> Any:
    """HCL gives a block `Name { ... }` as a one-element list of maps; a map field takes its one map."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        return value[0]
    return value


def _plain(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise FieldProblem(path, f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise FieldProblem(path, f"has more than {MAX_ITEMS} keys")
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > MAX_NAME:
                raise FieldProblem(path, f"keys must be strings of at most {MAX_NAME} characters")
            out[k] = _plain(v, join(path, k), depth + 1)
        return out
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise FieldProblem(path, f"has more than {MAX_ITEMS} items")
        return [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, str):
        if len(value) > MAX_STR:
            raise FieldProblem(path, f"is longer than {MAX_STR} characters")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise FieldProblem(path, f"must be JSON data, got {kind_of(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------- the six kinds

PROTOCOLS = ("tcp", "http", "http2", "grpc")
HTTP_PROTOCOLS = ("http", "http2", "grpc")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
            "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
_PORT = Int(0, 65535)
_COMMON = {"Kind": Str(limit=64), "Name": Name(wildcard=True, empty=False), "Namespace": Namespace(),
           "Partition": Namespace(), "Meta": Meta(), "CreateIndex": Ignored(), "ModifyIndex": Ignored()}

MESH_GATEWAY = Obj({"Mode": Str(("", "none", "local", "remote"))})
EXPOSE = Obj({"Checks": Bool(), "Paths": ListOf(Obj({
    "ListenerPort": _PORT, "Path": Str(), "LocalPathPort": _PORT, "Protocol": Str(("", "http", "http2"))}))})
TRANSPARENT_PROXY = Obj({"OutboundListenerPort": _PORT, "DialedDirectly": Bool()})
MODE = Str(("", "direct", "transparent"))
MTLS_MODE = Str(("", "strict", "permissive"))
ENVOY_EXTENSIONS = ListOf(Obj({"Name": Str(limit=MAX_NAME), "Required": Bool(), "Arguments": FreeForm(),
                               "ConsulVersion": Str(), "EnvoyVersion": Str()}, required=("Name",)), limit=64)
_UPSTREAM = {
    "Protocol": Str(PROTOCOLS, lower=True), "ConnectTimeoutMs": Int(), "MeshGateway": MESH_GATEWAY,
    "BalanceOutboundConnections": Str(("", "exact_balance")),
    "Limits": Obj({"MaxConnections": Int(), "MaxPendingRequests": Int(), "MaxConcurrentRequests": Int()}),
    "PassiveHealthCheck": Obj({"Interval": Duration(), "MaxFailures": Int(), "EnforcingConsecutive5xx": Int(0, 100),
                               "MaxEjectionPercent": Int(0, 100), "BaseEjectionTime": Duration()}),
}
HEADER_MODIFIERS = Obj({"Add": MapOf(Str()), "Set": MapOf(Str()), "Remove": ListOf(Str(limit=MAX_NAME))})
HEADER_MATCH = Obj({"Name": Str(limit=MAX_NAME), "Present": Bool(), "Exact": Str(), "Prefix": Str(),
                    "Suffix": Str(), "Regex": Regex(), "Invert": Bool()}, required=("Name",))
PERMISSION_HTTP = Obj({"PathExact": Str(), "PathPrefix": Str(), "PathRegex": Regex(),
                       "Methods": ListOf(Str(METHODS), limit=len(METHODS)), "Header": ListOf(HEADER_MATCH)})

SERVICE_DEFAULTS = Obj({
    **_COMMON, "Protocol": Str(PROTOCOLS, lower=True), "Mode": MODE, "TransparentProxy": TRANSPARENT_PROXY,
    "MutualTLSMode": MTLS_MODE, "MeshGateway": MESH_GATEWAY, "Expose": EXPOSE, "ExternalSNI": Str(limit=MAX_NAME),
    "Destination": Obj({"Addresses": ListOf(Str(limit=MAX_NAME)), "Port": _PORT}),
    "UpstreamConfig": Obj({"Defaults": Obj(_UPSTREAM), "Overrides": ListOf(Obj({
        **_UPSTREAM, "Name": Name(wildcard=True), "Namespace": Namespace(), "Partition": Namespace(),
        "Peer": Str(limit=MAX_NAME)}, required=("Name",)))}),
    "MaxInboundConnections": Int(), "LocalConnectTimeoutMs": Int(), "LocalRequestTimeoutMs": Int(),
    "BalanceInboundConnections": Str(("", "exact_balance")), "EnvoyExtensions": ENVOY_EXTENSIONS,
}, required=("Kind", "Name"))

PROXY_DEFAULTS = Obj({
    **_COMMON, "Config": FreeForm(), "Mode": MODE, "TransparentProxy": TRANSPARENT_PROXY,
    "MutualTLSMode": MTLS_MODE, "MeshGateway": MESH_GATEWAY, "Expose": EXPOSE,
    "AccessLogs": Obj({"Enabled": Bool(), "DisableListenerLogs": Bool(), "Type": Str(("", "file", "stderr", "stdout")),
                       "Path": Str(), "JSONFormat": Str(), "TextFormat": Str()}),
    "FailoverPolicy": Obj({"Mode": Str(("", "default", "order-by-locality")), "Regions": ListOf(Str(limit=MAX_NAME))}),
    "PrioritizeByLocality": Obj({"Mode": Str(("", "none", "failover"))}), "EnvoyExtensions": ENVOY_EXTENSIONS,
}, required=("Kind", "Name"))

SERVICE_INTENTIONS = Obj({
    **_COMMON,
    "Sources": ListOf(Obj({
        "Name": Name(wildcard=True, empty=False), "Namespace": Namespace(wildcard=True), "Partition": Namespace(),
        "Action": Str(("allow", "deny")),
        "Permissions": ListOf(Obj({"Action": Str(("allow", "deny")), "HTTP": PERMISSION_HTTP},
                                  required=("Action",))),
        "Description": Str(), "Precedence": Ignored(), "Type": Str(("consul",)),
        "LegacyID": Str(limit=64), "LegacyMeta": Meta(), "LegacyCreateTime": Str(limit=64),
        "LegacyUpdateTime": Str(limit=64)}, required=("Name",))),
}, required=("Kind", "Name"))

SERVICE_ROUTER = Obj({
    **_COMMON,
    "Routes": ListOf(Obj({
        "Match": Obj({"HTTP": Obj({
            "PathExact": Str(), "PathPrefix": Str(), "PathRegex": Regex(), "CaseInsensitive": Bool(),
            "Header": ListOf(HEADER_MATCH),
            "QueryParam": ListOf(Obj({"Name": Str(limit=MAX_NAME), "Present": Bool(), "Exact": Str(),
                                      "Regex": Regex()}, required=("Name",))),
            "Methods": ListOf(Str(METHODS), limit=len(METHODS))})}),
        "Destination": Obj({
            "Service": Name(), "ServiceSubset": Name(), "Namespace": Namespace(), "Partition": Namespace(),
            "PrefixRewrite": Str(), "RequestTimeout": Duration(), "IdleTimeout": Duration(), "NumRetries": Int(),
            "RetryOnConnectFailure": Bool(), "RetryOnStatusCodes": ListOf(Int(100, 599)),
            "RetryOn": ListOf(Str(RETRY_ON)), "RequestHeaders": HEADER_MODIFIERS,
            "ResponseHeaders": HEADER_MODIFIERS}),
    })),
}, required=("Kind", "Name"))

SERVICE_SPLITTER = Obj({
    **_COMMON,
    "Splits": ListOf(Obj({"Weight": Float(0, 100), "Service": Name(), "ServiceSubset": Name(),
                          "Namespace": Namespace(), "Partition": Namespace(), "RequestHeaders": HEADER_MODIFIERS,
                          "ResponseHeaders": HEADER_MODIFIERS}, required=("Weight",))),
}, required=("Kind", "Name"))

_TARGET = {"Service": Name(), "ServiceSubset": Name(), "Namespace": Namespace(), "Partition": Namespace(),
           "Datacenter": Name(), "Peer": Str(limit=MAX_NAME)}
SERVICE_RESOLVER = Obj({
    **_COMMON,
    "ConnectTimeout": Duration(), "RequestTimeout": Duration(), "DefaultSubset": Name(),
    "Subsets": MapOf(Obj({"Filter": Filter(), "OnlyPassing": Bool()}), key=Name(empty=False)),
    "Redirect": Obj(_TARGET),
    "Failover": MapOf(Obj({"Service": Name(), "ServiceSubset": Name(), "Namespace": Namespace(),
                           "Datacenters": ListOf(Name(empty=False), limit=100),
                           "Targets": ListOf(Obj(_TARGET), limit=100)}), key=Name(wildcard=True, empty=False)),
    "LoadBalancer": Obj({
        "Policy": Str(LB_POLICIES),
        "RingHashConfig": Obj({"MinimumRingSize": Int(0, 2**23), "MaximumRingSize": Int(0, 2**23)}),
        "LeastRequestConfig": Obj({"ChoiceCount": Int()}),
        "HashPolicies": ListOf(Obj({
            "Field": Str(("", "header", "cookie", "query_parameter")), "FieldValue": Str(limit=MAX_NAME),
            "CookieConfig": Obj({"Session": Bool(), "TTL": Duration(), "Path": Str()}),
            "SourceIP": Bool(), "Terminal": Bool()}), limit=100)}),
}, required=("Kind", "Name"))

KIND_SPECS: dict[str, Obj] = {
    "service-defaults": SERVICE_DEFAULTS, "proxy-defaults": PROXY_DEFAULTS, "service-intentions": SERVICE_INTENTIONS,
    "service-router": SERVICE_ROUTER, "service-splitter": SERVICE_SPLITTER, "service-resolver": SERVICE_RESOLVER,
}
