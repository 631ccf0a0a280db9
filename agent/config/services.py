"""Service and check definitions: one parser for config files and HTTP API bodies (snake_case or CamelCase).

Consul behaviour kept here: the id defaults to the name; check ids default to `service:<id>` (`:1`, `:2`, …
when a service has several); an interval under 1s and a deregister_critical_service_after under 1m are
raised to the minimum with a warning (Consul clamps and logs, it does not refuse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .duration import parse_duration
from .errors import Collector, ConfigError, ConfigErrors
from .syntax import END, LINES, START
from .types import CheckDefinition, ServiceDefinition, Source, Weights

META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
MIN_INTERVAL = 1.0
MIN_DEREGISTER_AFTER = 60.0
STATUSES = ("passing", "warning", "critical")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Maps whose keys belong to the user: never snake_cased, never checked against a schema.
_OPAQUE = {"meta", "config", "header", "env", "node_meta"}

_CHECK_KEYS = {
    "id", "check_id", "name", "notes", "service_id", "status", "interval", "timeout", "ttl", "http", "method",
    "header", "body", "tls_skip_verify", "tls_server_name", "disable_redirects", "tcp", "args", "script_args",
    "deregister_critical_service_after", "success_before_passing", "failures_before_warning",
    "failures_before_critical", "output_max_size", "type", "namespace", "partition",
}
# Consul check types that exist but that this agent does not run yet: an error beats a check that never runs.
_UNSUPPORTED_CHECKS = {"udp", "grpc", "h2ping", "docker_container_id", "os_service", "alias_service",
                       "alias_node", "shell", "grpc_use_tls", "h2ping_use_tls", "tcp_use_tls"}
_SERVICE_KEYS = {
    "name", "service", "id", "tags", "address", "port", "meta", "weights", "check", "checks",
    "enable_tag_override", "kind", "tagged_addresses", "proxy", "connect", "token", "socket_path",
    "locality", "namespace", "partition",
}
_ENTERPRISE = "only \"default\" is accepted: namespaces and partitions are Consul Enterprise features"
# Consul fields this agent does not act on: accepted only at a value that asks for what it already does
# (docs/config-keys.md), else an error with the reason; a setting silently dropped is worse than a refusal.
_SERVICE_LATER: dict[str, tuple[tuple[Any, ...], str]] = {
    "token": (("",), "ACL tokens are not supported yet (ACLs arrive in a later release); remove it"),
    "socket_path": (("",), "not supported yet: services are reached at address and port; remove it"),
    "locality": ((None, {}), "not supported yet: there is no locality-aware routing; remove it"),
    "namespace": (("", "default"), _ENTERPRISE),
    "partition": (("", "default"), _ENTERPRISE),
}
_CHECK_LATER: dict[str, tuple[tuple[Any, ...], str]] = {
    "output_max_size": ((4096,), "not supported yet: check output is kept up to 4096 bytes (Consul's default), "
                                 "the only value accepted"),
    "namespace": (("", "default"), _ENTERPRISE),
    "partition": (("", "default"), _ENTERPRISE),
}
_KINDS = ("", "typical", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway",
          "api-gateway")


def snake_case(key: str) -> str:
    """`EnableTagOverride` → `enable_tag_override`, `TLSSkipVerify` → `tls_skip_verify`, `ID` → `id`."""
    key = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", key)
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return key.lower()


@dataclass(slots=True)
class Node:
    """One object of a definition: snake_case keys, its line and the line of each key."""

    raw: dict[str, Any]
    line: int | None
    lines: dict[str, int] = field(default_factory=dict)

    def at(self, key: str) -> int | None:
        """The line `key` was written on, else the object's own line."""
        return self.lines.get(key, self.line)


def node_of(col: Collector, data: dict[str, Any], field_: str, line: int | None) -> Node:
    """Snake-case the keys of one object, remembering lines; the same key written twice is an error."""
    own = data.get(START)
    line = own if isinstance(own, int) else line
    key_lines = data.get(LINES)
    key_lines = key_lines if isinstance(key_lines, dict) else {}
    node = Node({}, line)
    spelled: dict[str, str] = {}
    for key, value in data.items():
        if key.startswith("__"):
            continue
        name = snake_case(str(key))
        if name in spelled:
            col.error(f"{field_}.{name}", f"given twice (as {spelled[name]!r} and {key!r})",
                      key_lines.get(key, line))
        spelled[name] = str(key)
        node.raw[name] = value
        if isinstance(key_lines.get(key), int):
            node.lines[name] = key_lines[key]
    return node


def one_block(value: Any) -> Any:
    """HCL gives `name { ... }` as a one-element list of dicts; JSON gives the dict itself."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return value


def blocks(value: Any) -> list[Any]:
    """A block, a list of blocks, or HCL's repeated blocks (lists of lists) as one flat list."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            out.extend(item if isinstance(item, list) else [item])
        return out
    return [value]


def plain(value: Any, opaque: bool = False) -> Any:
    """Opaque config as plain data: line markers dropped, HCL blocks unwrapped, schema keys snake_cased."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and END in value[0]:
        value = value[0]  # an HCL block, not a list attribute
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if str(key).startswith("__"):
                continue
            name = str(key) if opaque else snake_case(str(key))
            out[name] = plain(item, opaque=name in _OPAQUE and not opaque)
        return out
    if isinstance(value, list):
        return [plain(v, opaque) for v in value]
    return value


def string_map(col: Collector, field_: str, value: Any, line: int | None) -> dict[str, Any] | None:
    """A map attribute or block, without line markers (keys untouched)."""
    value = one_block(value)
    if not isinstance(value, dict):
        col.error(field_, f"must be a map, got {_kind(value)}", line)
        return None
    return {str(k): v for k, v in value.items() if not str(k).startswith("__")}


def validate_meta(col: Collector, field_: str, value: Any, line: int | None) -> dict[str, str]:
    """Consul's meta rules: ≤ 64 pairs, keys 1-128 of [A-Za-z0-9_-] not starting `consul-`, values ≤ 512."""
    meta = string_map(col, field_, value, line)
    if meta is None:
        return {}
    lines = _lines(value)
    if len(meta) > META_MAX_PAIRS:
        col.error(field_, f"has {len(meta)} pairs; at most {META_MAX_PAIRS} are allowed", line)
    out: dict[str, str] = {}
    for key, item in meta.items():
        where = lines.get(key, line)
        if not _META_KEY.match(key) or len(key) > META_KEY_MAX:
            col.error(f"{field_}.{key}", f"key must be 1-{META_KEY_MAX} characters of [A-Za-z0-9_-]", where)
        elif key.startswith("consul-"):
            col.error(f"{field_}.{key}", "keys starting with 'consul-' are reserved", where)
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            col.error(f"{field_}.{key}", f"value must be a string, got {_kind(item)}", where)
            continue
        text = str(item)
        if len(text) > META_VALUE_MAX:
            col.error(f"{field_}.{key}", f"value is {len(text)} characters; at most {META_VALUE_MAX} allowed",
                      where)
        out[key] = text
    return out


def _lines(value: Any) -> dict[str, int]:
    value = one_block(value)
    lines = value.get(LINES) if isinstance(value, dict) else None
    return lines if isinstance(lines, dict) else {}


def _kind(value: Any) -> str:
    names = {bool: "a bool", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a map", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def typed(col: Collector, field_: str, value: Any, kind: type, line: int | None) -> Any:
    """A scalar of the expected type, or None after recording an error. Numeric strings pass as ints
    and "true"/"false" as bools, as Consul's weakly typed decoder allows."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    what = {bool: "true or false", int: "a whole number", str: "a string"}[kind]
    col.error(field_, f"must be {what}, got {_show(value)}", line)
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def duration(col: Collector, field_: str, value: Any, line: int | None) -> float | None:
    """A Go duration in seconds (negative refused), or None after recording an error."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        col.error(field_, str(exc), line)
        return None
    if seconds < 0:
        col.error(field_, f"must not be negative, got {value!r}", line)
        return None
    return seconds


# ---------------------------------------------------------------------- checks


@dataclass(slots=True)
class CheckContext:
    """What a check inherits from its service: ids for defaults, and its place in the service's list."""

    service_id: str = ""
    service_name: str = ""
    index: int = 0
    total: int = 1
    in_service: bool = False


def check_from(col: Collector, data: Any, field_: str, ctx: CheckContext, line: int | None) -> CheckDefinition | None:
    """Parse and validate one check; errors and warnings go to `col`."""
    if not isinstance(data, dict):
        col.error(field_, f"must be a block/object, got {_kind(data)}", line)
        return None
    node = node_of(col, data, field_, line)
    raw = node.raw
    check = CheckDefinition(source=Source(col.path, node.line))
    for key in raw:
        if key in _UNSUPPORTED_CHECKS:
            col.error(f"{field_}.{key}", "this check type is not supported yet", node.at(key))
        elif key not in _CHECK_KEYS:
            col.error(f"{field_}.{key}", "unknown field", node.at(key))
        elif key in _CHECK_LATER:
            _later(col, _CHECK_LATER, f"{field_}.{key}", key, raw[key], node.at(key))
    _check_ids(col, node, field_, check, ctx)
    _check_strings(col, node, field_, check)
    _check_durations(col, node, field_, check)
    _check_thresholds(col, node, field_, check)
    _check_kind(col, node, field_, check)
    written_type = raw.get("type")
    if written_type not in (None, "") and written_type != check.type and check.type:
        col.error(f"{field_}.type", f"says {_show(written_type)} but the check is a {check.type} check",
                  node.at("type"))
    return check


def _later(col: Collector, table: dict[str, tuple[tuple[Any, ...], str]], field_: str, key: str, value: Any,
           line: int | None) -> None:
    """An error with the reason unless `value` is one the agent already honours."""
    accepted, reason = table[key]
    if not isinstance(value, bool) and value in accepted:  # True == 1: a bool is never an accepted value
        return
    col.error(field_, reason, line)


def _check_ids(col: Collector, node: Node, field_: str, check: CheckDefinition, ctx: CheckContext) -> None:
    raw = node.raw
    for key in ("id", "check_id", "name", "service_id", "notes"):
        if raw.get(key) is not None:
            typed(col, f"{field_}.{key}", raw[key], str, node.at(key))
    given_id = raw.get("check_id") or raw.get("id")
    check.service_id = str(raw.get("service_id") or ctx.service_id)
    if given_id:
        check.id = str(given_id)
    elif ctx.in_service:  # a check registered on its own defaults to its name instead, as in Consul
        check.id = f"service:{ctx.service_id}" + (f":{ctx.index + 1}" if ctx.total > 1 else "")
    else:
        check.id = str(raw.get("name") or "")
    check.name = str(raw.get("name") or (f"Service '{ctx.service_name}' check" if ctx.service_name else check.id))
    if not check.id:
        col.error(f"{field_}.name", "is required (or id) for a check outside a service", node.line)
    check.notes = str(raw.get("notes") or "")


def _check_strings(col: Collector, node: Node, field_: str, check: CheckDefinition) -> None:
    raw = node.raw
    for name in ("http", "tcp", "method", "body", "tls_server_name"):
        if raw.get(name) is not None:
            value = typed(col, f"{field_}.{name}", raw[name], str, node.at(name))
            if value is not None:
                setattr(check, name, value)
    check.method = check.method.strip().upper() or "GET"
    for name in ("tls_skip_verify", "disable_redirects"):
        if raw.get(name) is not None:
            value = typed(col, f"{field_}.{name}", raw[name], bool, node.at(name))
            if value is not None:
                setattr(check, name, value)
    key = "args" if "args" in raw else "script_args"
    args = raw.get(key)
    if args is not None:
        if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
            check.args = list(args)
        elif args != []:
            col.error(f"{field_}.args", "must be a non-empty list of strings", node.at(key))
    if raw.get("header") is not None:
        header = string_map(col, f"{field_}.header", raw["header"], node.at("header")) or {}
        for name, values in header.items():
            values = values if isinstance(values, list) else [values]
            if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
                col.error(f"{field_}.header.{name}", "values must be strings", node.at("header"))
            check.header[name] = [str(v) for v in values]
    status = raw.get("status")
    if status is not None and status != "":
        if status not in STATUSES:
            col.error(f"{field_}.status", f"must be one of {', '.join(STATUSES)}, got {_show(status)}",
                      node.at("status"))
        else:
            check.status = status


def _check_durations(col: Collector, node: Node, field_: str, check: CheckDefinition) -> None:
    raw = node.raw
    for name in ("interval", "timeout", "ttl", "deregister_critical_service_after"):
        if raw.get(name) not in (None, ""):
            setattr(check, name, duration(col, f"{field_}.{name}", raw[name], node.at(name)))
    dcsa = check.deregister_critical_service_after
    if dcsa is not None and 0 < dcsa < MIN_DEREGISTER_AFTER:
        given = raw["deregister_critical_service_after"]
        col.warn(f"{field_}.deregister_critical_service_after", f"{given} is below the 1m minimum; using 1m",
                 node.at("deregister_critical_service_after"))
        check.deregister_critical_service_after = MIN_DEREGISTER_AFTER


def _check_thresholds(col: Collector, node: Node, field_: str, check: CheckDefinition) -> None:
    raw = node.raw
    for name in ("success_before_passing", "failures_before_warning", "failures_before_critical"):
        if raw.get(name) is not None:
            value = typed(col, f"{field_}.{name}", raw[name], int, node.at(name))
            if value is not None and value < 0:
                col.error(f"{field_}.{name}", "must not be negative", node.at(name))
            elif value is not None:
                setattr(check, name, value)
    if check.failures_before_warning == 0:
        check.failures_before_warning = check.failures_before_critical  # Consul's default
    elif check.failures_before_warning > check.failures_before_critical:
        col.error(f"{field_}.failures_before_warning",
                  f"{check.failures_before_warning} exceeds failures_before_critical "
                  f"({check.failures_before_critical})", node.at("failures_before_warning"))


def _check_kind(col: Collector, node: Node, field_: str, check: CheckDefinition) -> None:
    raw = node.raw
    if any(k in raw for k in _UNSUPPORTED_CHECKS):
        return  # already reported
    # Judged on what was written, so that a bad value is reported once, not also as a missing type.
    written = {"http": raw.get("http"), "tcp": raw.get("tcp"), "args": raw.get("args", raw.get("script_args")),
               "ttl": raw.get("ttl")}
    kinds = [k for k, v in written.items() if v not in (None, "", [])]
    if len(kinds) != 1:
        got = f" (got {', '.join(kinds)})" if kinds else ""
        col.error(field_, f"a check needs exactly one of http, tcp, args or ttl{got}", node.line)
        return
    if kinds == ["ttl"]:
        if check.ttl is not None and check.ttl <= 0:
            col.error(f"{field_}.ttl", "must be more than 0", node.at("ttl"))
        return
    _interval(col, node, field_, check)
    if not check.timeout and raw.get("timeout") in (None, "", 0, "0", "0s"):
        check.timeout = 30.0 if kinds == ["args"] else 10.0


def _interval(col: Collector, node: Node, field_: str, check: CheckDefinition) -> None:
    """Required and positive; under 1s is raised to 1s with a warning, as Consul's runners do."""
    given = node.raw.get("interval")
    if given in (None, ""):
        col.error(f"{field_}.interval", f"is required for {check.type or 'this kind of'} checks", node.line)
    elif check.interval is not None and check.interval <= 0:
        col.error(f"{field_}.interval", "must be more than 0", node.at("interval"))
    elif check.interval is not None and check.interval < MIN_INTERVAL:
        col.warn(f"{field_}.interval", f"{given} is below the 1s minimum; using 1s", node.at("interval"))
        check.interval = MIN_INTERVAL


# ---------------------------------------------------------------------- services


def service_from(col: Collector, data: Any, field_: str, line: int | None = None,
                 sidecar_of: ServiceDefinition | None = None) -> ServiceDefinition | None:
    """Parse and validate one service (and its checks and sidecar); errors and warnings go to `col`."""
    if not isinstance(data, dict):
        col.error(field_, f"must be a block/object, got {_kind(data)}", line)
        return None
    node = node_of(col, data, field_, line)
    for key in node.raw:
        if key not in _SERVICE_KEYS:
            col.error(f"{field_}.{key}", "unknown field", node.at(key))
        elif key in _SERVICE_LATER:
            _later(col, _SERVICE_LATER, f"{field_}.{key}", key, plain(node.raw[key]), node.at(key))
    svc = ServiceDefinition(name=_service_name(col, node, field_, sidecar_of), source=Source(col.path, node.line))
    svc.id = _service_id(col, node, field_, svc.name, sidecar_of)
    _service_scalars(col, node, field_, svc, sidecar_of)
    _service_maps(col, node, field_, svc)
    _service_checks(col, node, field_, svc)
    _service_connect(col, node, field_, svc, sidecar_of)
    return svc


def _service_name(col: Collector, node: Node, field_: str, sidecar_of: ServiceDefinition | None) -> str:
    key = "name" if "name" in node.raw else "service"
    name = node.raw.get(key)
    if sidecar_of is not None and not name:
        return f"{sidecar_of.name}-sidecar-proxy"  # Consul's sidecar default
    if name in (None, ""):
        col.error(f"{field_}.name", "is required", node.line)
        return ""
    return typed(col, f"{field_}.name", name, str, node.at(key)) or ""


def _service_id(col: Collector, node: Node, field_: str, name: str, sidecar_of: ServiceDefinition | None) -> str:
    given = node.raw.get("id")
    if given not in (None, ""):
        return typed(col, f"{field_}.id", given, str, node.at("id")) or name
    return f"{sidecar_of.id}-sidecar-proxy" if sidecar_of is not None else name


def _service_scalars(col: Collector, node: Node, field_: str, svc: ServiceDefinition,
                     sidecar_of: ServiceDefinition | None) -> None:
    raw = node.raw
    if raw.get("tags") is not None:
        tags = raw["tags"]
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            svc.tags = list(tags)
        else:
            col.error(f"{field_}.tags", "must be a list of strings", node.at("tags"))
    if raw.get("address") is not None:
        svc.address = typed(col, f"{field_}.address", raw["address"], str, node.at("address")) or ""
    if raw.get("port") is not None:
        port = typed(col, f"{field_}.port", raw["port"], int, node.at("port"))
        if port is not None and not 0 <= port <= 65535:
            col.error(f"{field_}.port", f"{port} is not a port (0-65535)", node.at("port"))
        elif port is not None:
            svc.port = port
    if raw.get("enable_tag_override") is not None:
        value = typed(col, f"{field_}.enable_tag_override", raw["enable_tag_override"], bool,
                      node.at("enable_tag_override"))
        svc.enable_tag_override = bool(value)
    kind = raw.get("kind")
    if kind is not None and kind not in _KINDS:
        col.error(f"{field_}.kind", f"must be one of {', '.join(k for k in _KINDS if k)}, got {_show(kind)}",
                  node.at("kind"))
    svc.kind = "" if kind in (None, "typical") or kind not in _KINDS else str(kind)
    if sidecar_of is not None and not svc.kind:
        svc.kind = "connect-proxy"


def _service_maps(col: Collector, node: Node, field_: str, svc: ServiceDefinition) -> None:
    raw = node.raw
    if raw.get("meta") is not None:
        svc.meta = validate_meta(col, f"{field_}.meta", raw["meta"], node.at("meta"))
    if raw.get("weights") is not None:
        _weights(col, raw["weights"], f"{field_}.weights", node.at("weights"), svc)
    if raw.get("tagged_addresses") is not None:
        tagged = string_map(col, f"{field_}.tagged_addresses", raw["tagged_addresses"], node.at("tagged_addresses"))
        for name, addr in (tagged or {}).items():
            if not isinstance(one_block(addr), dict):
                col.error(f"{field_}.tagged_addresses.{name}", "must be a map with address and port",
                          node.at("tagged_addresses"))
                continue
            svc.tagged_addresses[name] = plain(addr)
    if raw.get("proxy") is not None:
        proxy = plain(raw["proxy"])
        if not isinstance(proxy, dict):
            col.error(f"{field_}.proxy", f"must be a map, got {_kind(proxy)}", node.at("proxy"))
        else:
            svc.proxy = proxy


def _weights(col: Collector, value: Any, field_: str, line: int | None, svc: ServiceDefinition) -> None:
    data = one_block(value)
    if not isinstance(data, dict):
        col.error(field_, f"must be a map, got {_kind(data)}", line)
        return
    node = node_of(col, data, field_, line)
    svc.weights = Weights()
    for key, item in node.raw.items():
        if key not in ("passing", "warning"):
            col.error(f"{field_}.{key}", "unknown field (passing or warning)", node.at(key))
            continue
        number = typed(col, f"{field_}.{key}", item, int, node.at(key))
        if number is not None and number < 1:
            col.error(f"{field_}.{key}", f"must be at least 1, got {number}", node.at(key))
        elif number is not None:
            setattr(svc.weights, key, number)


def _service_checks(col: Collector, node: Node, field_: str, svc: ServiceDefinition) -> None:
    entries: list[tuple[str, Any, int | None]] = []
    if node.raw.get("check") is not None:
        single = blocks(node.raw["check"])
        names = [f"{field_}.check"] if len(single) == 1 else [f"{field_}.check[{i}]" for i in range(len(single))]
        entries += [(name, c, node.at("check")) for name, c in zip(names, single, strict=True)]
    if node.raw.get("checks") is not None:
        entries += [(f"{field_}.checks[{i}]", c, node.at("checks"))
                    for i, c in enumerate(blocks(node.raw["checks"]))]
    for i, (sub, data, line) in enumerate(entries):
        check = check_from(col, data, sub, CheckContext(svc.id, svc.name, i, len(entries), in_service=True), line)
        if check is not None:
            svc.checks.append(check)
    seen: set[str] = set()
    for check in svc.checks:
        if check.id in seen:
            col.error(f"{field_}.checks", f"duplicate check id {check.id!r}", check.source.line)
        seen.add(check.id)


def _service_connect(col: Collector, node: Node, field_: str, svc: ServiceDefinition,
                     sidecar_of: ServiceDefinition | None) -> None:
    if node.raw.get("connect") is None:
        return
    data = one_block(node.raw["connect"])
    sub = f"{field_}.connect"
    if not isinstance(data, dict):
        col.error(sub, f"must be a map, got {_kind(data)}", node.at("connect"))
        return
    connect = node_of(col, data, sub, node.at("connect"))
    out: dict[str, Any] = {}
    for key, value in connect.raw.items():
        if key == "native":
            native = typed(col, f"{sub}.native", value, bool, connect.at(key))
            if native is not None:
                out["native"] = native
        elif key == "sidecar_service":
            if sidecar_of is not None:
                col.error(f"{sub}.sidecar_service", "a sidecar cannot have its own sidecar", connect.at(key))
                continue
            # Kept parsed (and validated) for the Connect issue, but refused: no sidecar would be registered.
            col.error(f"{sub}.sidecar_service", "not supported yet: no sidecar service would be registered and no "
                      "proxy run; register the proxy as its own service with kind = \"connect-proxy\"",
                      connect.at(key))
            block = one_block(value) if value != [] else {}
            if service_from(col, block, f"{sub}.sidecar_service", connect.at(key), sidecar_of=svc) is not None:
                out["sidecar_service"] = plain(block)
        else:
            col.error(f"{sub}.{key}", "unknown field (native or sidecar_service)", connect.at(key))
    if out.get("native") and "sidecar_service" in out:
        col.error(sub, "native and sidecar_service are mutually exclusive", connect.line)
    svc.connect = out


# ---------------------------------------------------------------------- public


def parse_service(data: dict[str, Any], source: Source) -> ServiceDefinition:
    """Parse one service (snake_case or CamelCase keys, as in files or API bodies); raises ConfigErrors."""
    col = Collector(source.path)
    svc = service_from(col, data, "service", source.line)
    if col.errors or svc is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "service", "invalid")])
    return svc


def parse_check(data: dict[str, Any], source: Source, service_id: str = "") -> CheckDefinition:
    """Parse one check (snake_case or CamelCase), defaulting its ServiceID; raises ConfigErrors."""
    col = Collector(source.path)
    check = check_from(col, data, "check", CheckContext(service_id=service_id), source.line)
    if col.errors or check is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "check", "invalid")])
    return check
