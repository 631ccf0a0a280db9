"""One config file's keys as settings: each top-level key checked and typed, keyed by AgentConfig field name.

The loader merges the settings of every file (and the flags) into one AgentConfig; service and check
blocks go to their own parsers (services.py, check_defs.py).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ...watch_plan import WatchError, parse_watch
from ..telemetry.config import telemetry_block
from .acl_settings import LEGACY_TOP_LEVEL as _LEGACY_ACL
from .acl_settings import acl_block, legacy_acl_key
from .check_defs import CheckContext, check_from
from .connect_settings import config_entries_block, connect_block
from .errors import Collector
from .services import service_from
from .syntax import LINES, START, SyntaxProblem, load_hcl, load_json
from .tls import LEGACY as _TLS_LEGACY
from .tls import auto_encrypt_block, legacy_key, tls_block
from .types import CheckDefinition, Ports, ServiceDefinition
from .unsupported import DNS as _LATER_DNS
from .unsupported import DNS_HONOURED, DNS_ONLY_REASON, HONOURED, PORT_REASON, TOP_LEVEL, honoured
from .unsupported import PORTS as _LATER_PORTS
from .values import Node, blocks, duration, node_of, one_block, string_map, typed, validate_meta

_SCALARS: dict[str, type] = {
    "datacenter": str, "data_dir": str, "node_name": str, "node_id": str, "server": bool, "dev": bool,
    "bootstrap_expect": int, "bind_addr": str, "advertise_addr": str, "client_addr": str, "domain": str,
    "log_level": str, "log_json": bool, "enable_local_script_checks": bool, "enable_script_checks": bool,
    "encrypt": str, "leave_on_terminate": bool, "skip_leave_on_interrupt": bool, "rejoin_after_leave": bool,
    "encrypt_verify_incoming": bool, "encrypt_verify_outgoing": bool, "retry_max": int,
    "raft_snapshot_threshold": int, "raft_trailing_logs": int,
}
WHERE = "__where__"  # settings key: top-level key → (file, line) of the definition that won the merge
_DURATIONS = frozenset({"check_update_interval", "default_query_time", "max_query_time", "retry_interval",
                        "reconnect_timeout"})
LISTS = frozenset({"recursors", "retry_join"})
PORTS = frozenset(f.name for f in fields(Ports))
_DNS_BOOLS = frozenset({"only_passing"})
_DNS_INTS = frozenset({"udp_answer_limit", "a_record_limit"})
_DNS_DURATIONS = frozenset({"node_ttl", "recursor_timeout", "max_stale"})


def read_file(path: Path, col: Collector) -> dict[str, Any] | None:
    """Parse one file by its extension; syntax errors go to `col` with the parser's line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        col.error("", f"cannot read: {exc}")
        return None
    try:
        data = load_json(text) if path.suffix == ".json" else load_hcl(text)
    except SyntaxProblem as exc:
        col.error("", exc.reason, exc.line)
        return None
    if not isinstance(data, dict):
        col.error("", "the top level must be an object", 1)
        return None
    return data


def file_settings(data: dict[str, Any], col: Collector) -> dict[str, Any]:
    """One file's settings keyed by AgentConfig field name (ports and dns_config as partial dicts)."""
    top = node_of(col, data, "", None)
    out: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    tls_where: dict[str, tuple[str, int | None]] = {}
    mesh_where: dict[str, tuple[str, int | None]] = {}  # connect/acl values: their own file and line
    for key, value in top.raw.items():
        line = top.at(key)
        if key in _SCALARS:
            _put(out, key, typed(col, key, value, _SCALARS[key], line))
        elif key in _DURATIONS:
            _put(out, key, duration(col, key, value, line))
        elif key in LISTS:
            _put(out, key, _string_list(col, key, value, line))
        elif key == "node_meta":
            out[key] = validate_meta(col, key, value, line)
        elif key == "ports":
            out[key] = _ports(col, value, line)
        elif key == "dns_config":
            out[key] = _dns_config(col, value, line)
        elif key == "telemetry":
            out[key] = telemetry_block(col, value, line)
        elif key in ("service", "services"):
            out.setdefault("services", []).extend(_services(col, key, value, line))
        elif key in ("check", "checks"):
            out.setdefault("checks", []).extend(_checks(col, key, value, line))
        elif key == "watches":
            out.setdefault("watches", []).extend(_watches(col, value, line))
        elif key == "tls":
            tls_block(col, value, line, tls, tls_where)
        elif key == "auto_encrypt":
            auto_encrypt_block(col, value, line, tls, tls_where)
        elif key in _TLS_LEGACY:
            legacy_key(col, key, value, line, tls, tls_where)
        elif key == "connect":
            connect_block(col, value, line, out, mesh_where)
        elif key == "acl":
            acl_block(col, value, line, out, mesh_where)
        elif key in _LEGACY_ACL:
            legacy_acl_key(col, key, value, line, out, mesh_where)
        elif key == "config_entries":
            config_entries_block(col, value, line, out)
        elif key in TOP_LEVEL:
            if not honoured(HONOURED, key, value):
                col.error(key, TOP_LEVEL[key], line)
        else:
            col.error(key, "unknown configuration key", line)
    if tls:
        out["tls"] = tls
    out[WHERE] = {key: (col.path, top.at(key)) for key in top.raw} | tls_where | mesh_where
    return out


def _watches(col: Collector, value: Any, line: int | None) -> list[dict[str, Any]]:
    """Consul's `watches`, checked by meshagent/watch_plan.py as `meshagent watch` checks its flags: each a
    plan's parameters plus `args` (the handler; `handler` is run through `sh -c`)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"watches[{i}]"
        if not isinstance(item, dict):
            col.error(where, "must be an object", line)
            continue
        lines = item.get(LINES, {}) if isinstance(item.get(LINES), dict) else {}
        start = item.get(START) if isinstance(item.get(START), int) else line
        item = {k: v for k, v in item.items() if not str(k).startswith("__")}  # the parser's line marks
        try:
            spec = parse_watch(item)
        except WatchError as exc:
            col.error(f"{where}.{exc.field}", exc.message, lines.get(exc.field, start))
            continue
        kind = item.get("handler_type", "script")
        if kind != "script":
            col.error(f"{where}.handler_type", f"{str(kind)[:40]!r} is not supported (only \"script\": `args` or "
                      "`handler`); an http handler would never run", lines.get("handler_type", start))
            continue
        args = item.get("args")
        if args is None and isinstance(item.get("handler"), str):
            args = ["/bin/sh", "-c", item["handler"]]
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            col.error(f"{where}.args", "must be a non-empty list of strings (the handler command)", line)
            continue
        out.append({**spec.params(), "args": list(args)})
    return out


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


def _string_list(col: Collector, key: str, value: Any, line: int | None) -> list[str] | None:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        col.error(key, "must be a list of strings", line)
        return None
    return list(items)


def _services(col: Collector, key: str, value: Any, line: int | None) -> list[ServiceDefinition]:
    found = []
    for i, block in enumerate(blocks(value)):
        svc = service_from(col, block, "service" if key == "service" else f"services[{i}]", line)
        if svc is not None:
            found.append(svc)
    return found


def _checks(col: Collector, key: str, value: Any, line: int | None) -> list[CheckDefinition]:
    found = []
    for i, block in enumerate(blocks(value)):
        check = check_from(col, block, "check" if key == "check" else f"checks[{i}]", CheckContext(), line)
        if check is not None:
            found.append(check)
    return found


def _block_node(col: Collector, name: str, value: Any, line: int | None) -> Node | None:
    data = one_block(value)
    if not isinstance(data, dict):
        string_map(col, name, data, line)  # records "must be a map"
        return None
    return node_of(col, data, name, line)


def _ports(col: Collector, value: Any, line: int | None) -> dict[str, int]:
    node = _block_node(col, "ports", value, line)
    out: dict[str, int] = {}
    for name, port in (node.raw if node else {}).items():
        field_ = f"ports.{name}"
        if name in _LATER_PORTS:
            number = typed(col, field_, port, int, node.at(name) if node else line)
            if number not in (-1, None):
                col.error(field_, PORT_REASON, node.at(name) if node else line)
            elif number == -1 and name in PORTS:
                out[name] = -1
            continue
        if name not in PORTS:
            col.error(field_, f"unknown port (one of {', '.join(sorted(PORTS))})", node.at(name) if node else line)
            continue
        number = typed(col, field_, port, int, node.at(name) if node else line)
        if number is not None and not -1 <= number <= 65535:
            col.error(field_, f"{number} is not a port (0-65535, or -1 to disable)", node.at(name) if node else line)
        elif number is not None:
            out[name] = number
    return out


def _dns_config(col: Collector, value: Any, line: int | None) -> dict[str, Any]:
    node = _block_node(col, "dns_config", value, line)
    if node is None:
        return {}
    out: dict[str, Any] = {}
    for key, item in node.raw.items():
        field_, where = f"dns_config.{key}", node.at(key)
        if key in _DNS_BOOLS:
            _put(out, key, typed(col, field_, item, bool, where))
        elif key in _DNS_INTS:
            _put(out, key, _non_negative(col, field_, typed(col, field_, item, int, where), where))
        elif key in _DNS_DURATIONS:
            _put(out, key, duration(col, field_, item, where))
        elif key == "service_ttl":
            ttls = string_map(col, field_, item, where) or {}
            out[key] = {name: d for name, v in ttls.items()
                        if (d := duration(col, f"{field_}.{name}", v, where)) is not None}
        elif key == "soa":
            out.update(_soa(col, item, where))
        elif key in _LATER_DNS or key in DNS_HONOURED:
            if not honoured(DNS_HONOURED, key, item):
                col.error(field_, _LATER_DNS.get(key) or DNS_ONLY_REASON[key], where)
        else:
            col.error(field_, "unknown field", where)
    return out


def _soa(col: Collector, value: Any, line: int | None) -> dict[str, int]:
    node = _block_node(col, "dns_config.soa", value, line)
    out: dict[str, int] = {}
    for name, item in (node.raw if node else {}).items():
        field_, where = f"dns_config.soa.{name}", node.at(name) if node else line
        if name not in ("refresh", "retry", "expire", "min_ttl"):
            col.error(field_, "unknown field (refresh, retry, expire or min_ttl)", where)
            continue
        _put(out, f"soa_{name}", _non_negative(col, field_, typed(col, field_, item, int, where), where))
    return out


def _non_negative(col: Collector, field_: str, value: int | None, line: int | None) -> int | None:
    if value is not None and value < 0:
        col.error(field_, f"must not be negative, got {value}", line)
        return None
    return value
