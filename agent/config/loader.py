"""Load HCL/JSON config files into one AgentConfig, and validate them for `meshagent validate`.

Load order: the `config_files` in the order given, then each of `config_dirs` in the order given, a
directory contributing its `*.hcl` and `*.json` files in lexical order (no subdirectories). Merge: later
scalars replace earlier ones, lists append, maps merge key by key; flags come last and win the same way
(a list flag appends, as Consul's flag source does). Every error of every file is collected, each with
file, line (when known), dotted field and reason, before anything is raised.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import fields
from pathlib import Path
from typing import Any

from .duration import parse_duration
from .errors import Collector, ConfigError, ConfigErrors
from .exposure import exposure_warnings
from .services import (
    CheckContext,
    Node,
    blocks,
    check_from,
    duration,
    node_of,
    one_block,
    parse_check,
    parse_service,
    service_from,
    snake_case,
    string_map,
    typed,
    validate_meta,
)
from .syntax import SyntaxProblem, load_hcl, load_json
from .tls import LEGACY as _TLS_LEGACY
from .tls import auto_encrypt_block, build_tls, check_tls, legacy_key, tls_block
from .types import AgentConfig, CheckDefinition, DNSConfig, Ports, ServiceDefinition
from .unsupported import DNS as _LATER_DNS
from .unsupported import DNS_HONOURED, DNS_ONLY_REASON, HONOURED, PORT_REASON, TOP_LEVEL, honoured
from .unsupported import PORTS as _LATER_PORTS

__all__ = [
    "ConfigError", "ConfigErrors", "load_config", "parse_check", "parse_duration", "parse_service",
    "snake_case", "validate_paths",
]

EXTENSIONS = (".hcl", ".json")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")

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
_LISTS = frozenset({"recursors", "retry_join"})
_PORTS = frozenset(f.name for f in fields(Ports))
_DNS_BOOLS = frozenset({"only_passing"})
_DNS_INTS = frozenset({"udp_answer_limit", "a_record_limit"})
_DNS_DURATIONS = frozenset({"node_ttl", "recursor_timeout", "max_stale"})


# ---------------------------------------------------------------------- one file


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
    for key, value in top.raw.items():
        line = top.at(key)
        if key in _SCALARS:
            _put(out, key, typed(col, key, value, _SCALARS[key], line))
        elif key in _DURATIONS:
            _put(out, key, duration(col, key, value, line))
        elif key in _LISTS:
            _put(out, key, _string_list(col, key, value, line))
        elif key == "node_meta":
            out[key] = validate_meta(col, key, value, line)
        elif key == "ports":
            out[key] = _ports(col, value, line)
        elif key == "dns_config":
            out[key] = _dns_config(col, value, line)
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
        elif key in TOP_LEVEL:
            if not honoured(HONOURED, key, value):
                col.error(key, TOP_LEVEL[key], line)
        else:
            col.error(key, "unknown configuration key", line)
    if tls:
        out["tls"] = tls
    out[WHERE] = {key: (col.path, top.at(key)) for key in top.raw} | tls_where
    return out


def _watches(col: Collector, value: Any, line: int | None) -> list[dict[str, Any]]:
    """Consul's `watches`: only type "event" exists yet (a handler run for each user event); others are errors."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        where = f"watches[{i}]"
        if not isinstance(item, dict):
            col.error(where, "must be an object", line)
            continue
        kind = item.get("type")
        if kind != "event":
            col.error(f"{where}.type", f"watch type {kind!r} is not supported yet (only \"event\"); remove it — "
                      "its handler would never run", line)
            continue
        args = item.get("args")
        if args is None and isinstance(item.get("handler"), str):
            args = ["/bin/sh", "-c", item["handler"]]
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            col.error(f"{where}.args", "must be a non-empty list of strings (the handler command)", line)
            continue
        name = item.get("name", "")
        if not isinstance(name, str):
            col.error(f"{where}.name", "must be a string", line)
            continue
        out.append({"type": "event", "name": name, "args": list(args)})
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
            elif number == -1 and name in _PORTS:
                out[name] = -1
            continue
        if name not in _PORTS:
            col.error(field_, f"unknown port (one of {', '.join(sorted(_PORTS))})", node.at(name) if node else line)
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


# ---------------------------------------------------------------------- many files


def _expand(sources: list[str], col: list[Collector]) -> list[Path]:
    """Files as given; directories as their *.hcl/*.json files in lexical order, no subdirectories."""
    paths: list[Path] = []
    for name in sources:
        path = Path(name)
        if path.is_dir():
            try:
                entries = sorted(path.iterdir(), key=lambda p: p.name)
            except OSError as exc:
                _missing(col, name, f"cannot read directory: {exc}")
                continue
            paths.extend(p for p in entries if p.suffix in EXTENSIONS and p.is_file())
        elif not path.exists():
            _missing(col, name, "no such file or directory")
        elif path.suffix not in EXTENSIONS:
            _missing(col, name, "unknown format: config files must end in .hcl or .json")
        else:
            paths.append(path)
    return paths


def _missing(col: list[Collector], name: str, reason: str) -> None:
    c = Collector(name)
    c.error("", reason)
    col.append(c)


def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Later scalars replace, lists append, maps merge key by key (nested maps too)."""
    for key, value in new.items():
        if isinstance(value, list) and isinstance(into.get(key), list):
            into[key] = into[key] + value
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merged = dict(into[key])
            merge(merged, value)
            into[key] = merged
        else:
            into[key] = list(value) if isinstance(value, list) else value


def _load(sources: list[str]) -> tuple[dict[str, Any], list[ConfigError], list[str]]:
    """Read and merge every file; all errors and warnings of all files."""
    collectors: list[Collector] = []
    settings: dict[str, Any] = {"config_files": []}
    for path in _expand(sources, collectors):
        col = Collector(str(path))
        collectors.append(col)
        data = read_file(path, col)
        if data is not None:
            merge(settings, file_settings(data, col))
            settings["config_files"].append(str(path))
    # In file order, and by line within a file, which is how people fix them.
    errors = [e for c in collectors for e in sorted(c.errors, key=lambda e: e.line or 0)]
    warnings = [w for c in collectors for w in c.warnings]
    return settings, errors, warnings


def _apply_flags(settings: dict[str, Any], flags: dict[str, Any], col: Collector) -> None:
    """Flags (AgentConfig names; `<port>_port` for ports; None = not given) over the files' settings."""
    known = {f.name for f in fields(AgentConfig)}
    for key, value in flags.items():
        if value is None:
            continue
        if key.endswith("_port") and key[: -len("_port")] in _PORTS:
            settings.setdefault("ports", {})[key[: -len("_port")]] = value
        elif key == "node_meta":
            settings.setdefault(key, {}).update(validate_meta(col, "-node-meta", value, None))
        elif key not in known:
            col.error(key, "unknown setting")
        elif isinstance(value, list | tuple) and key in _LISTS:
            settings.setdefault(key, []).extend(value)
        elif isinstance(value, dict):
            settings.setdefault(key, {}).update(value)
        else:
            settings[key] = value
        settings.setdefault(WHERE, {})[key] = ("<flags>", None)


def build(settings: dict[str, Any]) -> AgentConfig:
    """An AgentConfig from merged settings (field names as keys)."""
    config = AgentConfig()
    for key, value in settings.items():
        if key == "ports":
            for name, port in value.items():
                setattr(config.ports, name, port)
        elif key == "dns_config":
            current = {f.name: getattr(config.dns_config, f.name) for f in fields(DNSConfig)}
            config.dns_config = DNSConfig(**{**current, **value})
        elif key == "tls":
            config.tls = build_tls(value, settings.get(WHERE, {}))
        elif hasattr(config, key):
            setattr(config, key, value)
    if config.domain and not config.domain.endswith("."):
        config.domain += "."
    return config


def check_agent(config: AgentConfig, settings: dict[str, Any], errors: list[ConfigError],
                warnings: list[str]) -> None:
    """Rules on the merged result, as the agent applies them at start: unique ids, consistent settings,
    usable TLS files; warnings for settings that expose the agent to its network.

    The settings' WHERE says which file and line last set each key, so that the error points there.
    """
    where: dict[str, tuple[str, int | None]] = settings.get(WHERE, {})

    def fail(key: str, reason: str) -> None:
        path, line = where.get(key, ("<defaults>", None))
        errors.append(ConfigError(path, line, key, reason))

    _unique_ids(config, errors)
    if config.log_level.lower() not in LOG_LEVELS:
        fail("log_level", f"{config.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if config.bootstrap_expect < 0:
        fail("bootstrap_expect", "must not be negative")
    elif config.bootstrap_expect and not config.server and not config.dev:
        fail("bootstrap_expect", "requires server = true")
    if config.domain.strip(".") == "":
        fail("domain", "must not be empty")
    if config.encrypt and not _valid_key(config.encrypt):
        fail("encrypt", "must be 16, 24 or 32 bytes, base64-encoded")
    if not (config.enable_local_script_checks or config.enable_script_checks):
        for check in [c for s in config.services for c in s.checks] + config.checks:
            if check.args:
                warnings.append(str(ConfigError(check.source.path, check.source.line, f"check {check.id!r}",
                                                "script checks need enable_local_script_checks = true")))
    check_tls(config.tls, settings.get("tls", {}), where, config.server or config.dev, errors)
    warnings += exposure_warnings(config, where)


def _valid_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) in (16, 24, 32)
    except (binascii.Error, ValueError):
        return False


def _unique_ids(config: AgentConfig, errors: list[ConfigError]) -> None:
    seen: dict[str, ServiceDefinition] = {}
    for svc in config.services:
        first = seen.setdefault(svc.id, svc)
        if first is not svc:
            errors.append(ConfigError(svc.source.path, svc.source.line, "service.id",
                                      f"duplicate service id {svc.id!r} (also defined at {first.source})"))
    owners: dict[str, str] = {}
    checks: dict[str, CheckDefinition] = {}
    pairs = [(s.id, c) for s in config.services for c in s.checks] + [("", c) for c in config.checks]
    for owner, check in pairs:
        other = checks.setdefault(check.id, check)
        owners.setdefault(check.id, owner)
        if other is not check and not (owner and owners[check.id] == owner):  # same service: already reported
            errors.append(ConfigError(check.source.path, check.source.line, "check.id",
                                      f"duplicate check id {check.id!r} (also defined at {other.source})"))


# ---------------------------------------------------------------------- public


def load_config(config_files: list[str], config_dirs: list[str], flags: dict[str, Any]) -> AgentConfig:
    """Defaults < config_files (in order) < config_dirs (each in lexical order) < flags; raises ConfigErrors.

    Warnings (clamped values, settings that expose the agent to its network) are in the result's `warnings`.
    """
    settings, errors, warnings = _load(list(config_files) + list(config_dirs))
    flag_col = Collector("<flags>")
    _apply_flags(settings, flags, flag_col)
    errors += flag_col.errors
    config = build(settings)
    check_agent(config, settings, errors, warnings)
    if errors:
        raise ConfigErrors(errors)
    config.warnings = warnings
    return config


def validate_paths(paths: list[str]) -> tuple[list[ConfigError], list[str]]:
    """`meshagent validate FILE|DIR...`: every error and warning of the merged configuration, paths in order."""
    settings, errors, warnings = _load(list(paths))
    if not paths:
        errors.append(ConfigError("<args>", None, "", "give at least one file or directory"))
    check_agent(build(settings), settings, errors, warnings)
    return errors, warnings
