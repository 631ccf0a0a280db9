"""Consul's TLS settings (`tls {}`, `auto_encrypt {}`, the legacy top-level keys) → `TLSConfig`, and their rules.

Settings are kept under the name they were written with (`tls.defaults.ca_file`, legacy `ca_file`), so that
files merge key by key and an error points at the line that set the value which won. The newer spelling
wins over the legacy one, and `tls.internal_rpc` over `tls.defaults`, as in Consul.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import Collector, ConfigError
from .types import TLSConfig
from .values import Node, node_of, one_block, typed

Where = dict[str, tuple[str, int | None]]

_DEFAULTS: dict[str, type] = {"ca_file": str, "ca_path": str, "cert_file": str, "key_file": str,
                               "verify_incoming": bool, "verify_outgoing": bool}
_INTERNAL_RPC: dict[str, type] = {"verify_incoming": bool, "verify_server_hostname": bool}
_AUTO_ENCRYPT: dict[str, type] = {"tls": bool, "allow_tls": bool}
# Consul's pre-1.12 top-level spellings; verify_incoming_rpc is internal_rpc.verify_incoming.
LEGACY: dict[str, type] = {**_DEFAULTS, "verify_server_hostname": bool, "verify_incoming_rpc": bool}
_LATER = "not supported yet; remove it"

# TLSConfig attribute → the written names that set it, the first present winning.
_SOURCES: dict[str, tuple[str, ...]] = {
    "ca_file": ("tls.defaults.ca_file", "ca_file"),
    "ca_path": ("tls.defaults.ca_path", "ca_path"),
    "cert_file": ("tls.defaults.cert_file", "cert_file"),
    "key_file": ("tls.defaults.key_file", "key_file"),
    "verify_incoming": ("tls.internal_rpc.verify_incoming", "tls.defaults.verify_incoming", "verify_incoming_rpc",
                        "verify_incoming"),
    "verify_outgoing": ("tls.defaults.verify_outgoing", "verify_outgoing"),
    "verify_server_hostname": ("tls.internal_rpc.verify_server_hostname", "verify_server_hostname"),
    "auto_encrypt_tls": ("auto_encrypt.tls",),
    "auto_encrypt_allow_tls": ("auto_encrypt.allow_tls",),
}


# ---------------------------------------------------------------------- one file


def _node(col: Collector, name: str, value: Any, line: int | None) -> Node | None:
    data = one_block(value)
    if not isinstance(data, dict):
        col.error(name, "must be a block/object", line)
        return None
    return node_of(col, data, name, line)


def _fields(col: Collector, prefix: str, node: Node, schema: dict[str, type], out: dict[str, Any],
            where: Where, unknown: str) -> None:
    for key, value in node.raw.items():
        name, line = f"{prefix}.{key}", node.at(key)
        if key not in schema:
            col.error(name, unknown, line)
            continue
        typed_value = typed(col, name, value, schema[key], line)
        if typed_value is not None:
            out[name] = typed_value
            where[name] = (col.path, line)


def tls_block(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    """`tls { defaults {...} internal_rpc {...} }` into `out` (written names → values) and `where`."""
    node = _node(col, "tls", value, line)
    for key, sub in (node.raw if node else {}).items():
        at = node.at(key) if node else line
        if key == "defaults":
            block = _node(col, "tls.defaults", sub, at)
            if block:
                _fields(col, "tls.defaults", block, _DEFAULTS, out, where,
                        f"{_LATER} (tls.defaults takes {', '.join(_DEFAULTS)})")
        elif key == "internal_rpc":
            block = _node(col, "tls.internal_rpc", sub, at)
            if block:
                _fields(col, "tls.internal_rpc", block, _INTERNAL_RPC, out, where,
                        f"{_LATER} (tls.internal_rpc takes verify_incoming and verify_server_hostname; "
                        "files go in tls.defaults)")
        elif key in ("https", "grpc"):
            col.error(f"tls.{key}", f"{_LATER} — this agent has no {key.upper()} listener", at)
        else:
            col.error(f"tls.{key}", "unknown field (defaults or internal_rpc)", at)


def auto_encrypt_block(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    """`auto_encrypt { tls, allow_tls }` into `out` and `where`."""
    node = _node(col, "auto_encrypt", value, line)
    if node:
        _fields(col, "auto_encrypt", node, _AUTO_ENCRYPT, out, where,
                f"{_LATER} (auto_encrypt takes tls and allow_tls)")


def legacy_key(col: Collector, key: str, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    """A top-level `ca_file`, `verify_incoming`, ... (Consul's older spelling of the tls block)."""
    typed_value = typed(col, key, value, LEGACY[key], line)
    if typed_value is not None:
        out[key] = typed_value
        where[key] = (col.path, line)


# ---------------------------------------------------------------------- merged


def _winners(written: dict[str, Any]) -> dict[str, str]:
    """TLSConfig attribute → the written name whose value it takes."""
    return {attr: next(n for n in names if n in written)
            for attr, names in _SOURCES.items() if any(n in written for n in names)}


def build_tls(written: dict[str, Any], where: Where) -> TLSConfig:
    """The merged written names → TLSConfig, its source the tls block (else the first TLS setting)."""
    config = TLSConfig()
    for attr, name in _winners(written).items():
        setattr(config, attr, written[name])
    places = [where[n] for n in ("tls", *written) if n in where]
    if places:
        config.source.path, config.source.line = places[0]
    return config


def check_tls(config: TLSConfig, written: dict[str, Any], where: Where, server: bool,
              errors: list[ConfigError]) -> None:
    """Consul's rules: readable files, a CA to verify against, a key with a certificate, auto_encrypt's roles."""
    names = _winners(written)

    def fail(attr: str, reason: str) -> None:
        name = names.get(attr, attr)
        path, line = where.get(name, ("<defaults>", None))
        errors.append(ConfigError(path, line, name, reason))

    for attr in ("ca_file", "cert_file", "key_file"):
        problem = _unreadable(getattr(config, attr), directory=False)
        if problem:
            fail(attr, problem)
    if problem := _unreadable(config.ca_path, directory=True):
        fail("ca_path", problem)
    auto_tls = config.auto_encrypt_tls and not server  # a client whose certificate comes from the servers
    has_ca = bool(config.ca_file or config.ca_path)
    for attr in ("verify_incoming", "verify_outgoing"):
        if getattr(config, attr) and not has_ca and not auto_tls:
            fail(attr, "needs ca_file (or ca_path): the CA that peers' certificates are checked against")
    if config.verify_incoming and not config.cert_file and not auto_tls:
        fail("verify_incoming", "needs cert_file and key_file: this agent's own certificate")
    if config.cert_file and not config.key_file:
        fail("cert_file", "needs key_file (the certificate's private key)")
    if config.key_file and not config.cert_file:
        fail("key_file", "needs cert_file (the certificate of this private key)")
    if config.auto_encrypt_tls and server:
        fail("auto_encrypt_tls", "is for clients only: a server uses its own cert_file and key_file")
    if config.auto_encrypt_allow_tls and not server:
        fail("auto_encrypt_allow_tls", "is for servers only: servers hand certificates out to clients")


def _unreadable(name: str, directory: bool) -> str | None:
    """Why `name` cannot be used (missing, wrong kind, no permission), or None when it can (or is unset)."""
    if not name:
        return None
    path = Path(name)
    if not path.exists():
        return f"{name}: no such file or directory"
    if directory and not path.is_dir():
        return f"{name}: not a directory"
    if not directory and not path.is_file():
        return f"{name}: not a regular file"
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        return f"{name}: permission denied (not readable by this user)"
    return None
