"""The mesh's agent settings (issue 13): `connect { ... }`, `config_entries { bootstrap }` (`acl { }`: acl_settings.py).

Each block of one file becomes partial settings keyed by AgentConfig field name, with the file and line of
every value in `where` (so that a rule checked on the merged result, such as leaf_cert_ttl against the
minimum, points at the line that set the value). docs/config-keys.md lists the decisions.
"""

from __future__ import annotations

import re
from typing import Any

from .connect_defaults import HOUR, LEAF_TTL_MIN
from .errors import Collector, ConfigError
from .syntax import LINES, START
from .values import Node, blocks, duration, kind_of, node_of, one_block, show, typed

Where = dict[str, tuple[str, int | None]]

PROVIDERS = ("consul",)
_CA_DURATIONS = ("leaf_cert_ttl", "root_cert_ttl", "intermediate_cert_ttl", "rotation_period")
_PEM_MAX = 64 * 1024
BOOTSTRAP_MAX = 1024  # entries in config_entries.bootstrap: a bound, far above any real seed list
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")  # `Routes[0].Match` -> Routes, 0, Match
BOOTSTRAP_SOURCES = "config_entries_sources"  # settings key, not an AgentConfig field


# ---------------------------------------------------------------------- connect { }


def connect_block(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    """`connect { enabled, ca_provider, ca_config { ... }, test_min_leaf_ttl }` into `out` and `where`."""
    for block in blocks(value) or [value]:  # `[]` is no block: an error below
        node = _node(col, "connect", block, line)
        if node is None:
            continue
        for key, item in node.raw.items():
            field_, at = f"connect.{key}", node.at(key)
            if key == "enabled":
                _put(out, where, "connect_enabled", typed(col, field_, item, bool, at), col.path, at)
            elif key == "ca_provider":
                provider = typed(col, field_, item, str, at)
                if provider is not None and provider not in PROVIDERS:
                    col.error(field_, f"{provider!r} is not supported: only the built-in CA (\"consul\") exists", at)
                else:
                    _put(out, where, "ca_provider", provider, col.path, at)
            elif key == "ca_config":
                _ca_config(col, item, at, out.setdefault("ca_config", {}), where)
            elif key == "test_min_leaf_ttl":
                seconds = duration(col, field_, item, at)
                if seconds is not None and not 0 < seconds <= LEAF_TTL_MIN:
                    col.error(field_, f"must be more than 0s and at most 1h, got {show(item)}", at)
                else:
                    _put(out, where, "connect_test_min_leaf_ttl", seconds, col.path, at)
            elif key in ("enable_mesh_gateway_wan_federation", "enable_serverless_plugin"):
                if typed(col, field_, item, bool, at) is True:
                    col.error(field_, "not supported (no mesh gateways, no serverless plugin); remove it", at)
            else:
                col.error(field_, "unknown field (enabled, ca_provider or ca_config)", at)


def _ca_config(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    node = _node(col, "connect.ca_config", value, line)
    for key, item in (node.raw if node else {}).items():
        field_, at = f"connect.ca_config.{key}", node.at(key) if node else line
        result: Any = None
        if key in _CA_DURATIONS:
            result = duration(col, field_, item, at)
            if result == 0:
                col.error(field_, "must be more than 0s", at)
                result = None
        elif key == "private_key_type":
            result = typed(col, field_, item, str, at)
            if result is not None and result != "ec":
                col.error(field_, f"{result!r} is not supported: the built-in CA makes EC P-256 keys (\"ec\")", at)
                result = None
        elif key == "private_key_bits":
            result = typed(col, field_, item, int, at)
            if result is not None and result != 256:
                col.error(field_, f"{result} is not supported: the built-in CA makes EC P-256 keys (256)", at)
                result = None
        elif key == "csr_max_per_second":
            result = _number(col, field_, item, at)
        elif key == "csr_max_concurrent":
            result = typed(col, field_, item, int, at)
            if result is not None and result < 0:
                col.error(field_, f"must not be negative, got {result}", at)
                result = None
        elif key in ("private_key", "root_cert"):
            result = _pem(col, field_, item, at)
        else:
            col.error(field_, "unknown field (leaf_cert_ttl, root_cert_ttl, intermediate_cert_ttl, rotation_period, "
                      "private_key_type, private_key_bits, csr_max_per_second, csr_max_concurrent, private_key, "
                      "root_cert)", at)
        if result is not None:
            out[key] = result
            where[field_] = (col.path, at)


def _number(col: Collector, field_: str, value: Any, line: int | None) -> float | None:
    """A non-negative number (numeric strings pass, as Consul's weak decoding allows)."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        col.error(field_, f"must be a number, got {show(value)}", line)
        return None
    if number < 0:
        col.error(field_, f"must not be negative, got {show(value)}", line)
        return None
    return number


def _pem(col: Collector, field_: str, value: Any, line: int | None) -> str | None:
    if not isinstance(value, str):
        col.error(field_, f"must be a PEM string, got {kind_of(value)}", line)
        return None
    if len(value) > _PEM_MAX:
        col.error(field_, f"is {len(value)} characters; at most {_PEM_MAX} allowed", line)
        return None
    if "-----BEGIN " not in value:
        col.error(field_, "must be PEM text (-----BEGIN ...)", line)
        return None
    return value


def check_ca(config_ca: dict[str, Any], min_leaf_ttl: float, where: Where, errors: list[ConfigError]) -> None:
    """Consul's rules on the merged CA configuration (1h <= leaf TTL <= 8760h, intermediate >= 3 x leaf,
    root >= intermediate; root_cert needs private_key, and the two must belong together)."""

    def fail(key: str, reason: str) -> None:
        path, line = where.get(f"connect.ca_config.{key}", ("<defaults>", None))
        errors.append(ConfigError(path, line, f"connect.ca_config.{key}", reason))

    def blame(first: str, second: str) -> str:
        """Of two keys in a rule, the one the files set (the first when both or neither were)."""
        return second if f"connect.ca_config.{first}" not in where and f"connect.ca_config.{second}" in where \
            else first

    leaf, inter, root = (float(config_ca[k]) for k in ("leaf_cert_ttl", "intermediate_cert_ttl", "root_cert_ttl"))
    if leaf < min_leaf_ttl:
        fail("leaf_cert_ttl", f"must be at least {_hours(min_leaf_ttl)}, got {_hours(leaf)}")
    elif leaf > 8760 * HOUR:
        fail("leaf_cert_ttl", f"must be at most 8760h, got {_hours(leaf)}")
    elif inter < 3 * leaf:  # only between values that are each valid: one error per mistake
        fail(blame("intermediate_cert_ttl", "leaf_cert_ttl"), f"intermediate_cert_ttl ({_hours(inter)}) must be "
             f"at least 3 x leaf_cert_ttl ({_hours(3 * leaf)})")
    elif root < inter:
        fail(blame("root_cert_ttl", "intermediate_cert_ttl"), f"root_cert_ttl ({_hours(root)}) must be at least "
             f"intermediate_cert_ttl ({_hours(inter)})")
    key_pem, cert_pem = config_ca.get("private_key"), config_ca.get("root_cert")
    if cert_pem and not key_pem:
        fail("root_cert", "needs private_key (the root's key) too")
    elif key_pem:
        reason = _key_problem(str(key_pem), str(cert_pem) if cert_pem else None)
        if reason:
            fail(reason[0], reason[1])
    if not errors:
        # The CA's own check last, so that nothing loads here that the leader would refuse at its first
        # election (it would never initialize the CA).
        from ..connect.ca_plan import CAConfigError, config_from_agent

        try:
            config_from_agent(config_ca, min_leaf_ttl=min_leaf_ttl)
        except CAConfigError as exc:
            folded = exc.field.rpartition(".")[2].lower()
            key = next((k for k in config_ca if k.replace("_", "") == folded), exc.field)
            fail(key, exc.problem)


def _key_problem(key_pem: str, cert_pem: str | None) -> tuple[str, str] | None:
    """(field, reason) when the supplied key is not EC P-256 or the certificate is not its CA certificate."""
    # cryptography (already a dependency of meshagent/certs.py) only when a key is supplied.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return "private_key", f"not a readable unencrypted PEM private key ({exc})"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return "private_key", "must be an EC P-256 key (the built-in CA signs with EC P-256 only)"
    if cert_pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        return "root_cert", f"not a readable PEM certificate ({exc})"
    if cert.public_key() != key.public_key():
        return "root_cert", "its public key is not private_key's"
    return None


def _hours(seconds: float) -> str:
    """Seconds in the largest whole unit: 72h, 30m, 2.5s."""
    for unit, size in (("h", HOUR), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------- acl { }: agent/config/acl_settings.py


# ---------------------------------------------------------------------- config_entries { bootstrap = [...] }


def config_entries_block(col: Collector, value: Any, line: int | None, out: dict[str, Any]) -> None:
    """`config_entries { bootstrap = [ {...} ] }` (or repeated `bootstrap { }` blocks): each entry validated in
    full and normalized to Consul's canonical JSON; errors name `config_entries.bootstrap[i].<Field>`.

    `out[BOOTSTRAP_SOURCES]` keeps (file, line, field) of each kept entry, for the duplicate check."""
    entries: list[dict[str, Any]] = out.setdefault("config_entries_bootstrap", [])
    sources: list[tuple[str, int | None, str]] = out.setdefault(BOOTSTRAP_SOURCES, [])
    written = 0  # entries as written in this file, refused ones included, so that indexes match the text
    for block in blocks(value) or [value]:  # `[]` is no block: an error below
        node = _node(col, "config_entries", block, line)
        if node is None:
            continue
        for key, item in node.raw.items():
            at = node.at(key)
            if key != "bootstrap":
                col.error(f"config_entries.{key}", "unknown field (bootstrap)", at)
                continue
            items = blocks(item)
            if written + len(items) > BOOTSTRAP_MAX:
                col.error("config_entries.bootstrap", f"more than {BOOTSTRAP_MAX} entries", at)
                continue
            for raw in items:
                field_ = f"config_entries.bootstrap[{written}]"
                written += 1
                entry = bootstrap_entry(col, field_, raw, at)
                if entry is not None:
                    entries.append(entry)
                    own = raw.get(START) if isinstance(raw, dict) else None
                    sources.append((col.path, own if isinstance(own, int) else at, field_))


def bootstrap_entry(col: Collector, field_: str, raw: Any, line: int | None) -> dict[str, Any] | None:
    """One bootstrap entry normalized, or None after recording an error naming the field and its line."""
    if not isinstance(raw, dict):
        col.error(field_, f"must be a config entry (a map), got {kind_of(raw)}", line)
        return None
    own = raw.get(START)
    at = own if isinstance(own, int) else line
    # The one validator of config entries, shared with the HTTP API; imported only when there are entries.
    from ..connect.entry_validate import EntryError, normalize_entry

    try:
        return normalize_entry(strip_markers(raw))
    except EntryError as exc:
        col.error(f"{field_}.{exc.field}" if exc.field else field_, exc.problem, line_of(raw, exc.field) or at)
        return None


def line_of(tree: Any, path: str) -> int | None:
    """The line where a dotted field path (`Routes[0].Match.HTTP`, any key spelling) was written in a parsed
    tree, as near as known: the deepest key or object on the path that has a line."""
    line = tree.get(START) if isinstance(tree, dict) else None
    node = tree
    for match in _SEGMENT.finditer(path):
        key, index = match.group(1), match.group(2)
        if isinstance(node, list) and key is not None and len(node) == 1 and isinstance(node[0], dict):
            node = node[0]  # an HCL block: `Name { ... }` is a one-element list
        if index is not None:
            if not isinstance(node, list) or int(index) >= len(node):
                break
            node = node[int(index)]
        elif isinstance(node, dict):
            found = next((k for k in node if isinstance(k, str) and not k.startswith("__")
                          and _fold(k) == _fold(key)), None)
            if found is None:
                break
            lines = node.get(LINES)
            if isinstance(lines, dict) and isinstance(lines.get(found), int):
                line = lines[found]
            node = node[found]
        else:
            break
        if isinstance(node, dict) and isinstance(node.get(START), int):
            line = node[START]
    return line if isinstance(line, int) else None


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def strip_markers(value: Any) -> Any:
    """Parsed config as plain data, keys as written, line markers dropped.

    Unlike values.plain, keys keep their spelling (subset and failover names belong to the user) and HCL
    blocks stay one-element lists: `sources { }` is a list of one source, `mesh_gateway { }` a map, which only
    the entry's schema knows (normalize_entry takes a one-element list for a map)."""
    if isinstance(value, dict):
        return {str(k): strip_markers(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


def check_bootstrap(entries: list[dict[str, Any]], sources: list[tuple[str, int | None, str]],
                    errors: list[ConfigError]) -> None:
    """The same kind and name twice in the merged bootstrap list is an error (Consul keeps one, silently)."""
    seen: dict[tuple[str, str], tuple[str, int | None, str]] = {}
    for entry, (path, line, field_) in zip(entries, sources, strict=False):
        lowered = {k.lower(): v for k, v in entry.items()}
        ident = (str(lowered.get("kind")), str(lowered.get("name")))
        first = seen.setdefault(ident, (path, line, field_))
        if first != (path, line, field_):
            where = f"{first[0]}:{first[1]}" if first[1] else first[0]
            errors.append(ConfigError(path, line, field_, f"{ident[0]} {ident[1]!r} is also defined at {where}"))
    _check_bootstrap_chains(entries, sources, errors)


def _check_bootstrap_chains(entries: list[dict[str, Any]], sources: list[tuple[str, int | None, str]],
                            errors: list[ConfigError]) -> None:
    """Routers, splitters and resolvers among the bootstrap entries compiled together: a redirect or splitter
    cycle (or a chain past the compiler's bounds) is an error here, not a chain no proxy can follow."""
    table = {(str(e.get("Kind")), str(e.get("Name"))): e for e in entries}
    if not any(k in ("service-router", "service-splitter", "service-resolver") for k, _ in table):
        return
    from ..connect.entry_validate import EntryError, check_chains  # only when there are chain entries

    for entry, (path, line, field_) in zip(entries, sources, strict=False):
        try:
            check_chains(entry, lambda k, n: table.get((k, n)), partial=True)
        except EntryError as exc:
            if (exc.kind, exc.name) == (entry.get("Kind"), entry.get("Name")):  # each entry on a cycle says so
                errors.append(ConfigError(path, line, f"{field_}.{exc.field}" if exc.field else field_,
                                          f"{exc.kind} {exc.name}: {exc.problem}"))


# ---------------------------------------------------------------------- shared


def _node(col: Collector, name: str, value: Any, line: int | None) -> Node | None:
    data = one_block(value)
    if not isinstance(data, dict):
        col.error(name, f"must be a block/object, got {kind_of(data)}", line)
        return None
    return node_of(col, data, name, line)


def _put(out: dict[str, Any], where: Where, key: str, value: Any, path: str, line: int | None) -> None:
    if value is not None:
        out[key] = value
        where[key] = (path, line)
