"""Typed values of a definition: snake_cased keys with their lines, scalars, durations, maps and meta.

The service and check parsers (services.py, check_defs.py) and the agent's own settings share these; each
records problems in a Collector with the file, line and dotted field, and returns a usable value or None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .duration import parse_duration
from .errors import Collector
from .syntax import END, LINES, START

META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Maps whose keys belong to the user: never snake_cased, never checked against a schema.
_OPAQUE = {"meta", "config", "header", "env", "node_meta"}
ENTERPRISE = "only \"default\" is accepted: namespaces and partitions are Consul Enterprise features"
# A Consul field this agent does not act on -> (the values that ask only for what it already does, the reason).
Later = dict[str, tuple[tuple[Any, ...], str]]


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


def fold_map(keys: Iterable[str]) -> dict[str, str]:
    """For `node_of(fold=...)`: each known snake_case key by its folded form (lower case, no underscores)."""
    return {k.replace("_", ""): k for k in keys}


def node_of(col: Collector, data: dict[str, Any], field_: str, line: int | None,
            fold: Mapping[str, str] | None = None) -> Node:
    """Snake-case the keys of one object, remembering lines; the same key written twice is an error.
    With `fold` (fold_map of the object's known keys), a key matching none is matched as Go's decoders
    match Consul's fields, ignoring case (py-consul sends `serviceid`, `enabletagoverride`)."""
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
        if fold is not None:
            name = fold.get(name.replace("_", ""), name)
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
        col.error(field_, f"must be a map, got {kind_of(value)}", line)
        return None
    return {str(k): v for k, v in value.items() if not str(k).startswith("__")}


def validate_meta(col: Collector, field_: str, value: Any, line: int | None) -> dict[str, str]:
    """Consul's meta rules: ≤ 64 pairs, keys 1-128 of [A-Za-z0-9_-] not starting `consul-`, values ≤ 512."""
    meta = string_map(col, field_, value, line)
    if meta is None:
        return {}
    lines = lines_of(value)
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
            col.error(f"{field_}.{key}", f"value must be a string, got {kind_of(item)}", where)
            continue
        text = str(item)
        if len(text) > META_VALUE_MAX:
            col.error(f"{field_}.{key}", f"value is {len(text)} characters; at most {META_VALUE_MAX} allowed",
                      where)
        out[key] = text
    return out


def lines_of(value: Any) -> dict[str, int]:
    """The line of each key of a map or block (empty when unknown)."""
    value = one_block(value)
    lines = value.get(LINES) if isinstance(value, dict) else None
    return lines if isinstance(lines, dict) else {}


def kind_of(value: Any) -> str:
    """What a value is, for error messages: "a string", "a map", ..."""
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
    col.error(field_, f"must be {what}, got {show(value)}", line)
    return None


def show(value: Any) -> str:
    """A value as written, cut to 40 characters, for error messages."""
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


def later(col: Collector, table: Later, field_: str, key: str, value: Any, line: int | None) -> None:
    """An error with the reason unless `value` is one the agent already honours."""
    accepted, reason = table[key]
    if not isinstance(value, bool) and value in accepted:  # True == 1: a bool is never an accepted value
        return
    col.error(field_, reason, line)
