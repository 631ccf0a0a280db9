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

from .acl_settings import build_acl
from .check_defs import parse_check
from .connect_defaults import default_ca_config
from .connect_settings import BOOTSTRAP_SOURCES, check_bootstrap, check_ca
from .duration import parse_duration
from .errors import Collector, ConfigError, ConfigErrors
from .exposure import exposure_warnings
from .services import parse_service
from .settings import LISTS, PORTS, WHERE, file_settings, read_file
from .tls import build_tls, check_tls
from .types import AgentConfig, CheckDefinition, DNSConfig, ServiceDefinition
from .values import snake_case, validate_meta

__all__ = [
    "ConfigError", "ConfigErrors", "load_config", "parse_check", "parse_duration", "parse_service",
    "snake_case", "validate_paths",
]

EXTENSIONS = (".hcl", ".json")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")


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
        if key.endswith("_port") and key[: -len("_port")] in PORTS:
            settings.setdefault("ports", {})[key[: -len("_port")]] = value
        elif key == "node_meta":
            settings.setdefault(key, {}).update(validate_meta(col, "-node-meta", value, None))
        elif key not in known:
            col.error(key, "unknown setting")
        elif isinstance(value, list | tuple) and key in LISTS:
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
        elif key == "ca_config":
            config.ca_config = default_ca_config() | value
        elif key == "acl":
            continue  # built below, with default_policy mirrored from acl_default_policy
        elif hasattr(config, key):
            setattr(config, key, value)
    if config.domain and not config.domain.endswith("."):
        config.domain += "."
    config.acl = build_acl(settings.get("acl"), config.acl_default_policy)
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
    _sidecar_ports(config, where.get("ports", ("<defaults>", None)), errors)
    check_tls(config.tls, settings.get("tls", {}), where, config.server or config.dev, errors)
    check_ca(config.ca_config, config.connect_test_min_leaf_ttl, where, errors)
    check_bootstrap(config.config_entries_bootstrap, settings.get(BOOTSTRAP_SOURCES, []), errors)
    warnings += exposure_warnings(config, where)


def _sidecar_ports(config: AgentConfig, at: tuple[str, int | None], errors: list[ConfigError]) -> None:
    """Consul's rules: 0 in either turns automatic sidecar ports off; otherwise a real range, min <= max."""
    low, high = config.ports.sidecar_min_port, config.ports.sidecar_max_port
    for name, port in (("sidecar_min_port", low), ("sidecar_max_port", high)):
        if port < 0:
            errors.append(ConfigError(*at, f"ports.{name}",
                                      f"{port} is not a port (1-65535, or 0 to turn automatic sidecar ports off)"))
    if low > 0 and high > 0 and low > high:
        errors.append(ConfigError(*at, "ports.sidecar_min_port", f"{low} is above ports.sidecar_max_port ({high})"))


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
