"""ConfigEntryState: the mesh's config entries (service-defaults, proxy-defaults, service-intentions, routers,
splitters, resolvers) in the catalog FSM, pure.

Entries arrive already validated and in canonical form (agent/connect/entry_validate.py, before the write);
the FSM only checks their structure, so a forged command cannot plant a row that breaks the readers' keys.
Op "config-entry": verb `set` (with an optional `cas`: the ModifyIndex the write expects, 0 for "absent")
and `delete` (same `cas`). Every change touches the kind's watch key and the entry's own.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("service-defaults", "proxy-defaults", "service-intentions", "service-router", "service-splitter",
         "service-resolver")
MAX_NAME_LEN = 256


class ConfigEntryError(ValueError):
    """A config-entry command the state refuses (the message says why)."""


def entry_watch_key(kind: str, name: str | None = None) -> str:
    """The watch key of every entry of `kind`, or of one entry."""
    return f"config-entry:{kind}" if name is None else f"config-entry:{kind}/{name}"


@dataclass(frozen=True, slots=True)
class ConfigEntryRow:
    """One stored entry: `entry` is the canonical Consul JSON (Kind, Name, CamelCase fields, no indexes)."""

    kind: str
    name: str
    entry: dict[str, Any]
    create_index: int = 0
    modify_index: int = 0


class ConfigEntryState:
    """Entries by (kind, name); changed only by `apply`."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], ConfigEntryRow] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigEntryState) and self._rows == other._rows

    def get(self, kind: str, name: str) -> ConfigEntryRow | None:
        """One entry, or None."""
        return self._rows.get((kind, name))

    def list(self, kind: str) -> list[ConfigEntryRow]:
        """Every entry of a kind, sorted by name."""
        return sorted((r for (k, _), r in self._rows.items() if k == kind), key=lambda r: r.name)

    def all(self) -> builtins.list[ConfigEntryRow]:
        """Every entry, sorted by kind then name."""
        return sorted(self._rows.values(), key=lambda r: (r.kind, r.name))

    def apply(self, index: int, cmd: dict[str, Any]) -> tuple[bool, tuple[str, str] | None]:
        """Apply one "config-entry" command: (its result, the (kind, name) it changed or None)."""
        verb = cmd["verb"]
        cas = cmd.get("cas")
        if cas is not None and (not isinstance(cas, int) or isinstance(cas, bool) or cas < 0):
            raise ConfigEntryError("cas must be a non-negative integer")
        if verb == "set":
            entry = cmd["entry"]
            kind, name = _identity(entry.get("Kind") if isinstance(entry, dict) else None,
                                   entry.get("Name") if isinstance(entry, dict) else None)
            old = self._rows.get((kind, name))
            if cas is not None and (old.modify_index if old else 0) != cas:
                return False, None
            clean = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
            if old is not None and old.entry == clean:
                return True, None  # unchanged: no new index for readers
            self._rows[(kind, name)] = ConfigEntryRow(kind, name, clean, old.create_index if old else index, index)
            return True, (kind, name)
        if verb == "delete":
            kind, name = _identity(cmd["kind"], cmd["name"])
            old = self._rows.get((kind, name))
            if cas is not None and (old.modify_index if old else 0) != cas:
                return False, None
            if old is None:
                return True, None
            del self._rows[(kind, name)]
            return True, (kind, name)
        raise ConfigEntryError(f"unknown config-entry verb {verb!r}")

    def snapshot(self) -> builtins.list[dict[str, Any]]:
        """As plain data for the catalog snapshot."""
        return [asdict(r) for r in self._rows.values()]

    @classmethod
    def restore(cls, raw: builtins.list[dict[str, Any]] | None) -> ConfigEntryState:
        """From `snapshot()` data; None (a snapshot from before config entries) gives an empty state."""
        state = cls()
        for r in raw or ():
            kind, name = _identity(r["kind"], r["name"])
            if not isinstance(r["entry"], dict):
                raise ConfigEntryError(f"config entry {kind}/{name} is not a map")
            state._rows[(kind, name)] = ConfigEntryRow(kind, name, r["entry"], int(r["create_index"]),
                                                       int(r["modify_index"]))
        return state


def _identity(kind: Any, name: Any) -> tuple[str, str]:
    if kind not in KINDS:
        raise ConfigEntryError(f"unknown config entry kind {kind!r}")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise ConfigEntryError(f"config entry name must be 1-{MAX_NAME_LEN} printable characters")
    if kind == "proxy-defaults" and name != "global":
        raise ConfigEntryError('a proxy-defaults entry must be named "global"')
    return kind, name
