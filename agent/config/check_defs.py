"""Check definitions: one parser for config files and HTTP API bodies (snake_case or CamelCase).

Alias checks (`alias_service`) mirror a local service's health (agent/checks/alias.py); `alias_node` is not
supported. Consul behaviour kept here: check ids default to `service:<id>` (`:1`, `:2`, … when a service has several),
or to the name for a check registered on its own; an interval under 1s and a
deregister_critical_service_after under 1m are raised to the minimum with a warning (Consul clamps and
logs, it does not refuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Collector, ConfigError, ConfigErrors
from .types import CheckDefinition, Source
from .values import ENTERPRISE, Later, Node, duration, fold_map, kind_of, later, node_of, show, string_map, typed

MIN_INTERVAL = 1.0
MIN_DEREGISTER_AFTER = 60.0
STATUSES = ("passing", "warning", "critical")

_CHECK_KEYS = {
    "id", "check_id", "name", "notes", "service_id", "status", "interval", "timeout", "ttl", "http", "method",
    "header", "body", "tls_skip_verify", "tls_server_name", "disable_redirects", "tcp", "args", "script_args",
    "deregister_critical_service_after", "success_before_passing", "failures_before_warning",
    "failures_before_critical", "output_max_size", "type", "namespace", "partition", "alias_service",
}
_CHECK_FOLD = fold_map(_CHECK_KEYS)
# Consul check types that exist but that this agent does not run yet: an error beats a check that never runs.
_UNSUPPORTED_CHECKS = {"udp", "grpc", "h2ping", "docker_container_id", "os_service", "alias_node", "shell",
                       "grpc_use_tls", "h2ping_use_tls", "tcp_use_tls"}
# Consul fields this agent does not act on: accepted only at a value that asks for what it already does
# (docs/config-keys.md), else an error with the reason; a setting silently dropped is worse than a refusal.
_CHECK_LATER: Later = {
    "output_max_size": ((4096,), "not supported yet: check output is kept up to 4096 bytes (Consul's default), "
                                 "the only value accepted"),
    "namespace": (("", "default"), ENTERPRISE),
    "partition": (("", "default"), ENTERPRISE),
}


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
        col.error(field_, f"must be a block/object, got {kind_of(data)}", line)
        return None
    node = node_of(col, data, field_, line, _CHECK_FOLD)
    raw = node.raw
    check = CheckDefinition(source=Source(col.path, node.line))
    for key in raw:
        if key in _UNSUPPORTED_CHECKS:
            col.error(f"{field_}.{key}", "this check type is not supported yet", node.at(key))
        elif key not in _CHECK_KEYS:
            col.error(f"{field_}.{key}", "unknown field", node.at(key))
        elif key in _CHECK_LATER:
            later(col, _CHECK_LATER, f"{field_}.{key}", key, raw[key], node.at(key))
    _check_ids(col, node, field_, check, ctx)
    _check_strings(col, node, field_, check)
    _check_durations(col, node, field_, check)
    _check_thresholds(col, node, field_, check)
    _check_kind(col, node, field_, check)
    written_type = raw.get("type")
    if written_type not in (None, "") and written_type != check.type and check.type:
        col.error(f"{field_}.type", f"says {show(written_type)} but the check is a {check.type} check",
                  node.at("type"))
    return check


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
    for name in ("http", "tcp", "method", "body", "tls_server_name", "alias_service"):
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
            col.error(f"{field_}.status", f"must be one of {', '.join(STATUSES)}, got {show(status)}",
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
               "ttl": raw.get("ttl"), "alias_service": raw.get("alias_service")}
    kinds = [k for k, v in written.items() if v not in (None, "", [])]
    if len(kinds) != 1:
        got = f" (got {', '.join(kinds)})" if kinds else ""
        col.error(field_, f"a check needs exactly one of http, tcp, args, ttl or alias_service{got}", node.line)
        return
    if kinds == ["ttl"]:
        if check.ttl is not None and check.ttl <= 0:
            col.error(f"{field_}.ttl", "must be more than 0", node.at("ttl"))
        return
    if kinds == ["alias_service"]:
        return  # driven by the aliased service's checks: no interval, no timeout (Consul's rule)
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


def parse_check(data: dict[str, Any], source: Source, service_id: str = "") -> CheckDefinition:
    """Parse one check (snake_case or CamelCase), defaulting its ServiceID; raises ConfigErrors."""
    col = Collector(source.path)
    check = check_from(col, data, "check", CheckContext(service_id=service_id), source.line)
    if col.errors or check is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "check", "invalid")])
    return check
