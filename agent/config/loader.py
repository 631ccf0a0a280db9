"""Load HCL/JSON config files into one AgentConfig; parse and validate service and check definitions.

Every error names the file, the line where one is known, the field (dotted path) and the reason, and all
errors of all files are collected before anything is reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hcl2.api import loads as hcl_loads

from .types import AgentConfig, CheckDefinition, DNSConfig, Ports, ServiceDefinition, Source, Weights

META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
STATUSES = ("passing", "warning", "critical")

# Consul keys we accept and ignore until the issue that implements them lands.
_LATER_KEYS = {
    "ui", "ui_config", "connect", "telemetry", "acl", "tls", "performance", "autopilot", "retry_interval",
    "retry_max", "rejoin_after_leave", "start_join", "encrypt_verify_incoming", "encrypt_verify_outgoing",
    "addresses", "limits", "reconnect_timeout", "raft_protocol", "server_name", "disable_update_check",
    "log_file", "pid_file", "primary_datacenter", "leave_drain_time", "rpc_hold_timeout", "rejoin",
    "disable_remote_exec", "verify_incoming", "verify_outgoing", "ca_file", "cert_file", "key_file",
}
_AGENT_SCALARS = {
    "datacenter": str, "data_dir": str, "node_name": str, "node_id": str, "server": bool, "dev": bool,
    "bootstrap_expect": int, "bind_addr": str, "advertise_addr": str, "client_addr": str, "domain": str,
    "log_level": str, "log_json": bool, "enable_local_script_checks": bool, "enable_script_checks": bool,
    "encrypt": str, "leave_on_terminate": bool, "skip_leave_on_interrupt": bool,
}
_AGENT_DURATIONS = {"check_update_interval", "default_query_time", "max_query_time"}
_AGENT_LISTS = {"recursors", "retry_join"}


@dataclass(slots=True, frozen=True)
class ConfigError:
    """One problem in one file: where, which field, why."""

    path: str
    line: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class ConfigErrors(Exception):
    """Every error found; str() lists them one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class _Collector:
    """Accumulates errors and warnings for one file, finding lines for fields."""

    def __init__(self, path: str, text: str = "") -> None:
        self.path = path
        self.text = text
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def line_of(self, key: str, near: int | None) -> int | None:
        """The line of `key`: the first mention at or after the enclosing block's line (best effort)."""
        if self.text and key:
            start = 0
            if near is not None:
                for _ in range(near - 1):
                    start = self.text.find("\n", start) + 1
            for pattern in (f'"{key}"', f"{key} ", f"{key}="):
                pos = self.text.find(pattern, start)
                if pos >= 0:
                    return self.text.count("\n", 0, pos) + 1
        return near

    def error(self, field: str, reason: str, line: int | None = None) -> None:
        leaf = field.rsplit(".", 1)[-1].split("[")[0]
        self.errors.append(ConfigError(self.path, self.line_of(leaf, line), field, reason))

    def warn(self, field: str, reason: str) -> None:
        self.warnings.append(f"{self.path}: {field}: {reason}")


def snake_case(key: str) -> str:
    """`EnableTagOverride` → `enable_tag_override`, `TLSSkipVerify` → `tls_skip_verify`, `ID` → `id`."""
    key = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", key)
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return key.lower()


def parse_duration(value: Any) -> float:
    """A Go duration (`10s`, `1m30s`, `500ms`) or a number of seconds, as float seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"invalid duration {value!r}")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f'invalid duration "{value}" (use e.g. 10s, 1m30s, 500ms)')
    return sign * total


def _one_block(value: Any) -> Any:
    """HCL gives `name { ... }` as a one-element list; JSON gives the dict."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return value


def _blocks(value: Any) -> list[Any]:
    """A block or list of blocks as a list."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            out.extend(item if isinstance(item, list) else [item])
        return out
    return [value]


def _normalise(data: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """snake_case keys (schema positions only) and the block's start line."""
    line = data.get("__start_line__")
    return ({snake_case(k): v for k, v in data.items() if not k.startswith("__")},
            line if isinstance(line, int) else None)


def _string_map(col: _Collector, field: str, value: Any, line: int | None) -> dict[str, Any] | None:
    value = _one_block(value)
    if not isinstance(value, dict):
        col.error(field, f"must be a map, got {type(value).__name__}", line)
        return None
    return {k: v for k, v in value.items() if not k.startswith("__")}


def _validate_meta(col: _Collector, field: str, meta: dict[str, Any], line: int | None) -> dict[str, str]:
    if len(meta) > META_MAX_PAIRS:
        col.error(field, f"has {len(meta)} pairs; at most {META_MAX_PAIRS} are allowed", line)
    out = {}
    for key, value in meta.items():
        if not _META_KEY.match(key) or len(key) > META_KEY_MAX:
            col.error(f"{field}.{key}", f"key must be 1-{META_KEY_MAX} characters of [A-Za-z0-9_-]", line)
        elif key.startswith("consul-"):
            col.error(f"{field}.{key}", "keys starting with 'consul-' are reserved", line)
        if not isinstance(value, str | int | float | bool):
            col.error(f"{field}.{key}", "value must be a string", line)
            continue
        text = str(value)
        if len(text) > META_VALUE_MAX:
            col.error(f"{field}.{key}", f"value is {len(text)} characters; at most {META_VALUE_MAX} allowed", line)
        out[key] = text
    return out


def _typed(col: _Collector, field: str, value: Any, kind: type, line: int | None) -> Any:
    """Check a scalar's type (ints and bools from HCL/JSON are strict; strings stay strings)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    col.error(field, f"must be {kind.__name__}, got {value!r}", line)
    return None


def _duration(col: _Collector, field: str, value: Any, line: int | None) -> float | None:
    try:
        return parse_duration(value)
    except ValueError as exc:
        col.error(field, str(exc), line)
        return None


_CHECK_KEYS = {f.name for f in fields(CheckDefinition)} | {"check_id", "script_args", "service_id", "type",
                                                           "output_max_size", "tcp_use_tls", "udp", "grpc"}


def _parse_check(col: _Collector, data: Any, field: str, service_id: str, service_name: str,
                 index: int, total: int, line: int | None) -> CheckDefinition | None:
    if not isinstance(data, dict):
        col.error(field, "must be a block/object", line)
        return None
    raw, own_line = _normalise(data)
    line = own_line or line
    check = CheckDefinition(source=Source(col.path, line))
    for key in raw:
        if key not in _CHECK_KEYS:
            col.error(f"{field}.{key}", "unknown field", line)
    check.id = str(raw.get("check_id") or raw.get("id") or "")
    check.service_id = str(raw.get("service_id") or service_id)
    if not check.id:
        if check.service_id:
            check.id = f"service:{check.service_id}" + (f":{index + 1}" if total > 1 else "")
        else:
            check.id = str(raw.get("name") or "")
    check.name = str(raw.get("name") or (f"Service '{service_name}' check" if service_name else check.id))
    if not check.id:
        col.error(f"{field}.name", "a node check needs a name or id", line)
    check.notes = str(raw.get("notes") or "")
    for name in ("http", "tcp", "method", "body", "tls_server_name"):
        if name in raw and raw[name] is not None:
            value = _typed(col, f"{field}.{name}", raw[name], str, line)
            if value is not None:
                setattr(check, name, value)
    check.method = check.method.upper() or "GET"
    for name in ("tls_skip_verify", "disable_redirects"):
        if name in raw:
            value = _typed(col, f"{field}.{name}", raw[name], bool, line)
            if value is not None:
                setattr(check, name, value)
    args = raw.get("args", raw.get("script_args"))
    if args is not None:
        if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
            check.args = list(args)
        else:
            col.error(f"{field}.args", "must be a non-empty list of strings", line)
    if "header" in raw:
        header = _string_map(col, f"{field}.header", raw["header"], line) or {}
        for key, values in header.items():
            vals = values if isinstance(values, list) else [values]
            check.header[key] = [str(v) for v in vals]
    status = raw.get("status")
    if status is not None:
        if status not in STATUSES:
            col.error(f"{field}.status", f"must be one of {', '.join(STATUSES)}, got {status!r}", line)
        else:
            check.status = status
    for name in ("interval", "timeout", "ttl", "deregister_critical_service_after"):
        if raw.get(name) not in (None, ""):
            setattr(check, name, _duration(col, f"{field}.{name}", raw[name], line))
    for name in ("success_before_passing", "failures_before_warning", "failures_before_critical"):
        if name in raw:
            value = _typed(col, f"{field}.{name}", raw[name], int, line)
            if value is not None and value < 0:
                col.error(f"{field}.{name}", "must not be negative", line)
            elif value is not None:
                setattr(check, name, value)
    kinds = [k for k in ("http", "tcp", "args", "ttl") if getattr(check, k) not in ("", [], None)]
    for unsupported in ("udp", "grpc"):
        if raw.get(unsupported):
            col.error(f"{field}.{unsupported}", f"{unsupported} checks are not supported yet", line)
    if len(kinds) != 1 and not any(raw.get(u) for u in ("udp", "grpc")):
        col.error(field, "a check needs exactly one of http, tcp, args or ttl"
                  + (f" (got {', '.join(kinds)})" if kinds else ""), line)
    if check.ttl is None and kinds:
        if check.interval is None and "interval" not in raw:
            col.error(f"{field}.interval", f"required for {check.type} checks", line)
        elif check.interval is not None and check.interval < 1.0:
            col.warn(f"{field}.interval", f"{check.interval}s is below the 1s minimum; using 1s")
            check.interval = 1.0
    if check.timeout is None and kinds and check.ttl is None:
        check.timeout = 30.0 if check.args else 10.0
    if check.failures_before_warning == 0:
        check.failures_before_warning = check.failures_before_critical
    elif check.failures_before_warning > check.failures_before_critical:
        col.error(f"{field}.failures_before_warning", "must not exceed failures_before_critical", line)
    dcsa = check.deregister_critical_service_after
    if dcsa is not None and 0 < dcsa < 60.0:
        col.warn(f"{field}.deregister_critical_service_after", "below the 1m minimum; using 1m")
        check.deregister_critical_service_after = 60.0
    return check


_SERVICE_KEYS = {"name", "id", "tags", "address", "port", "meta", "weights", "check", "checks",
                 "enable_tag_override", "kind", "tagged_addresses", "proxy", "connect", "token", "socket_path",
                 "locality", "service"}


def _parse_service(col: _Collector, data: Any, field: str, line: int | None = None,
                   sidecar_of: ServiceDefinition | None = None) -> ServiceDefinition | None:
    if not isinstance(data, dict):
        col.error(field, "must be a block/object", line)
        return None
    raw, own_line = _normalise(data)
    line = own_line or line
    for key in raw:
        if key not in _SERVICE_KEYS:
            col.error(f"{field}.{key}", "unknown field", line)
    name = raw.get("name") or raw.get("service")
    if sidecar_of is not None and not name:
        name = f"{sidecar_of.name}-sidecar-proxy"
    if not isinstance(name, str) or not name:
        col.error(f"{field}.name", "is required", line)
        name = ""
    svc = ServiceDefinition(name=name, source=Source(col.path, line))
    svc.id = str(raw.get("id") or (f"{sidecar_of.id}-sidecar-proxy" if sidecar_of else name))
    if "tags" in raw:
        tags = raw["tags"]
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            svc.tags = list(tags)
        else:
            col.error(f"{field}.tags", "must be a list of strings", line)
    if raw.get("address") is not None:
        svc.address = _typed(col, f"{field}.address", raw["address"], str, line) or ""
    if raw.get("port") is not None:
        port = _typed(col, f"{field}.port", raw["port"], int, line)
        if port is not None and not 0 <= port <= 65535:
            col.error(f"{field}.port", f"{port} is not a port (0-65535)", line)
        svc.port = port or 0
    if raw.get("meta") is not None:
        meta = _string_map(col, f"{field}.meta", raw["meta"], line)
        if meta is not None:
            svc.meta = _validate_meta(col, f"{field}.meta", meta, line)
    if raw.get("weights") is not None:
        weights = _string_map(col, f"{field}.weights", raw["weights"], line) or {}
        weights = {snake_case(k): v for k, v in weights.items()}
        svc.weights = Weights()
        for key in ("passing", "warning"):
            if key in weights:
                value = _typed(col, f"{field}.weights.{key}", weights[key], int, line)
                if value is not None and value < 1:
                    col.error(f"{field}.weights.{key}", "must be at least 1", line)
                elif value is not None:
                    setattr(svc.weights, key, value)
    if "enable_tag_override" in raw:
        svc.enable_tag_override = bool(_typed(col, f"{field}.enable_tag_override", raw["enable_tag_override"],
                                              bool, line))
    svc.kind = str(raw.get("kind") or ("connect-proxy" if sidecar_of else ""))
    if raw.get("tagged_addresses") is not None:
        svc.tagged_addresses = _string_map(col, f"{field}.tagged_addresses", raw["tagged_addresses"], line) or {}
    if raw.get("proxy") is not None:
        svc.proxy = _string_map(col, f"{field}.proxy", raw["proxy"], line) or {}
    checks_raw: list[Any] = []
    if raw.get("check") is not None:
        checks_raw.extend(_blocks(raw["check"]))
    if raw.get("checks") is not None:
        checks_raw.extend(_blocks(raw["checks"]))
    for i, cdata in enumerate(checks_raw):
        sub = f"{field}.checks[{i}]" if raw.get("checks") is not None else f"{field}.check"
        check = _parse_check(col, cdata, sub, svc.id, svc.name, i, len(checks_raw), line)
        if check is not None:
            svc.checks.append(check)
    if raw.get("connect") is not None:
        connect = _string_map(col, f"{field}.connect", raw["connect"], line) or {}
        connect = {snake_case(k): v for k, v in connect.items()}
        for key in connect:
            if key not in ("native", "sidecar_service"):
                col.error(f"{field}.connect.{key}", "unknown field", line)
        if connect.get("native") and connect.get("sidecar_service") is not None:
            col.error(f"{field}.connect", "native and sidecar_service are mutually exclusive", line)
        if connect.get("sidecar_service") is not None and sidecar_of is None:
            sidecar = _parse_service(col, _one_block(connect["sidecar_service"]),
                                     f"{field}.connect.sidecar_service", line, sidecar_of=svc)
            if sidecar is not None:
                connect["sidecar_service"] = _plain(connect["sidecar_service"])
        svc.connect = {k: _plain(v) for k, v in connect.items()}
    return svc


def _plain(value: Any) -> Any:
    """Drop HCL line markers and unwrap one-element block lists, for storing opaque config."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and "__start_line__" in value[0]:
        value = value[0]  # an HCL block, not a list attribute
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_service(data: dict[str, Any], source: Source) -> ServiceDefinition:
    """Parse one service (snake_case or CamelCase keys, as in files or API bodies); raises ConfigErrors."""
    col = _Collector(source.path)
    svc = _parse_service(col, data, "service", source.line)
    if col.errors or svc is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "service", "invalid")])
    return svc


def parse_check(data: dict[str, Any], source: Source, service_id: str = "") -> CheckDefinition:
    """Parse one check definition (snake_case or CamelCase); raises ConfigErrors."""
    col = _Collector(source.path)
    check = _parse_check(col, data, "check", service_id, "", 0, 1, source.line)
    if col.errors or check is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "check", "invalid")])
    return check


# ---------------------------------------------------------------------- files


def _read_file(path: Path, col: _Collector) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        col.error("", f"cannot read: {exc}")
        return None
    col.text = text
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            data = hcl_loads(text, with_meta=True) if text.strip() else {}
    except json.JSONDecodeError as exc:
        col.errors.append(ConfigError(str(path), exc.lineno, "", f"invalid JSON: {exc.msg}"))
        return None
    except Exception as exc:  # lark raises many exception types; all mean a syntax error here
        line = getattr(exc, "line", None)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        col.errors.append(ConfigError(str(path), line if isinstance(line, int) else None, "",
                                      f"invalid HCL: {first}"))
        return None
    if not isinstance(data, dict):
        col.error("", "the top level must be an object")
        return None
    return data


def _file_settings(data: dict[str, Any], col: _Collector) -> dict[str, Any]:
    """One file's settings: scalars by AgentConfig name, plus 'services', 'checks', maps and lists."""
    out: dict[str, Any] = {}
    raw, _ = _normalise(data)
    for key, value in raw.items():
        if key in _AGENT_SCALARS:
            typed = _typed(col, key, value, _AGENT_SCALARS[key], None)
            if typed is not None:
                out[key] = typed
        elif key in _AGENT_DURATIONS:
            dur = _duration(col, key, value, None)
            if dur is not None:
                out[key] = dur
        elif key in _AGENT_LISTS:
            items = value if isinstance(value, list) else [value]
            out[key] = [str(v) for v in items]
        elif key == "node_meta":
            meta = _string_map(col, key, value, None)
            if meta is not None:
                out[key] = _validate_meta(col, key, meta, None)
        elif key == "ports":
            ports = _string_map(col, key, value, None) or {}
            out["ports"] = {}
            for name, port in ports.items():
                if name not in {f.name for f in fields(Ports)} and name not in ("https", "grpc", "grpc_tls"):
                    col.error(f"ports.{name}", "unknown port", None)
                    continue
                typed = _typed(col, f"ports.{name}", port, int, None)
                if typed is not None:
                    out["ports"][name] = typed
        elif key == "dns_config":
            out["dns_config"] = _dns_config(col, value)
        elif key in ("service", "services"):
            for i, block in enumerate(_blocks(value)):
                field = "service" if key == "service" else f"services[{i}]"
                svc = _parse_service(col, block, field)
                if svc is not None:
                    out.setdefault("services", []).append(svc)
        elif key in ("check", "checks"):
            for i, block in enumerate(_blocks(value)):
                field = "check" if key == "check" else f"checks[{i}]"
                check = _parse_check(col, block, field, "", "", 0, 1, None)
                if check is not None:
                    out.setdefault("checks", []).append(check)
        elif key in _LATER_KEYS:
            col.warn(key, "accepted but not acted on yet")
        else:
            col.error(key, "unknown configuration key")
    return out


def _dns_config(col: _Collector, value: Any) -> dict[str, Any]:
    block = _string_map(col, "dns_config", value, None) or {}
    out: dict[str, Any] = {}
    for key, item in block.items():
        field = f"dns_config.{key}"
        if key in ("only_passing", "enable_truncate", "allow_stale"):
            out[key] = _typed(col, field, item, bool, None)
        elif key in ("udp_answer_limit", "a_record_limit"):
            out[key] = _typed(col, field, item, int, None)
        elif key in ("node_ttl", "recursor_timeout", "max_stale"):
            out[key] = _duration(col, field, item, None)
        elif key == "service_ttl":
            ttls = _string_map(col, field, item, None) or {}
            out[key] = {name: _duration(col, f"{field}.{name}", v, None) for name, v in ttls.items()}
        elif key == "soa":
            soa = _string_map(col, field, item, None) or {}
            for name, v in soa.items():
                if name not in ("refresh", "retry", "expire", "min_ttl"):
                    col.error(f"{field}.{name}", "unknown field", None)
                else:
                    out[f"soa_{name}"] = _typed(col, f"{field}.{name}", v, int, None)
        else:
            col.error(field, "unknown field", None)
    return {k: v for k, v in out.items() if v is not None}


def _config_paths(config_files: list[str], config_dirs: list[str], col: list[_Collector]) -> list[Path]:
    """Files first in the order given, then each dir's *.hcl/*.json in lexical order (no subdirectories)."""
    paths: list[Path] = []
    for name in config_files:
        path = Path(name)
        if not path.is_file():
            c = _Collector(name)
            c.error("", "no such file")
            col.append(c)
        else:
            paths.append(path)
    for name in config_dirs:
        folder = Path(name)
        if not folder.is_dir():
            c = _Collector(name)
            c.error("", "no such directory")
            col.append(c)
            continue
        paths.extend(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".hcl", ".json")))
    return paths


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Later scalars replace, lists append, maps merge key by key."""
    for key, value in new.items():
        if isinstance(value, list):
            into.setdefault(key, []).extend(value)
        elif isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        else:
            into[key] = value


def _build(settings: dict[str, Any]) -> AgentConfig:
    config = AgentConfig()
    for key, value in settings.items():
        if key == "ports":
            for name, port in value.items():
                if hasattr(config.ports, name):
                    setattr(config.ports, name, port)
        elif key == "dns_config":
            config.dns_config = DNSConfig(**{**_dataclass_values(config.dns_config), **value})
        elif hasattr(config, key):
            setattr(config, key, value)
    if config.domain and not config.domain.endswith("."):
        config.domain += "."
    return config


def _dataclass_values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _check_duplicates(services: list[ServiceDefinition], errors: list[ConfigError]) -> None:
    seen: dict[str, ServiceDefinition] = {}
    for svc in services:
        first = seen.get(svc.id)
        if first is not None:
            errors.append(ConfigError(svc.source.path, svc.source.line, "service.id",
                                      f"duplicate service id {svc.id!r} (also defined at {first.source})"))
        seen[svc.id] = svc


def _load(config_files: list[str], config_dirs: list[str]) -> tuple[dict[str, Any], list[ConfigError], list[str]]:
    collectors: list[_Collector] = []
    settings: dict[str, Any] = {}
    loaded: list[str] = []
    for path in _config_paths(config_files, config_dirs, collectors):
        col = _Collector(str(path))
        collectors.append(col)
        data = _read_file(path, col)
        if data is not None:
            _merge(settings, _file_settings(data, col))
            loaded.append(str(path))
    errors = [e for c in collectors for e in c.errors]
    warnings = [w for c in collectors for w in c.warnings]
    _check_duplicates(settings.get("services", []), errors)
    settings["config_files"] = loaded
    return settings, errors, warnings


def load_config(config_files: list[str], config_dirs: list[str], flags: dict[str, Any]) -> AgentConfig:
    """Defaults < files (given files, then dirs in lexical order) < flags (None = not given)."""
    settings, errors, _ = _load(config_files, config_dirs)
    if errors:
        raise ConfigErrors(errors)
    for key, value in flags.items():
        if value is None:
            continue
        if isinstance(value, list) and key in _AGENT_LISTS:
            settings[key] = value  # a flag replaces the file's list rather than appending
        elif isinstance(value, dict):
            settings.setdefault(key, {}).update(value)
        else:
            settings[key] = value
    return _build(settings)


def validate_paths(paths: list[str]) -> tuple[list[ConfigError], list[str]]:
    """`meshagent validate FILE|DIR...`: every error (and warning) in the merged configuration."""
    files = [p for p in paths if not Path(p).is_dir()]
    dirs = [p for p in paths if Path(p).is_dir()]
    _, errors, warnings = _load(files, dirs)
    return errors, warnings
