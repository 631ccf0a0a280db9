"""`config_entries { bootstrap = [...] }`: the entries from the agent's config, written on leadership only where
no entry of that kind and name exists yet (Consul's behaviour: bootstrap never overwrites), pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..catalog import commands
from ..catalog.config_entries import ConfigEntryRow
from .entry_validate import normalize_entry


class _Entries(Protocol):
    def get(self, kind: str, name: str) -> ConfigEntryRow | None: ...


class _HasEntries(Protocol):
    @property
    def config_entries(self) -> _Entries: ...


def bootstrap_commands(catalog: _HasEntries, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One `config_entry_set(entry, cas=0)` per entry absent from the catalog (cas=0 also loses a race with a
    write that lands first); entries are normalized here, raising EntryError for a bad one."""
    out: list[dict[str, Any]] = []
    wanted: set[tuple[str, str]] = set()
    for raw in entries:
        entry = normalize_entry(raw)
        key = (entry["Kind"], entry["Name"])
        if key in wanted or catalog.config_entries.get(*key) is not None:
            continue  # the first of two bootstrap entries with one identity wins, as a stored one does
        wanted.add(key)
        out.append(commands.config_entry_set(entry, cas=0))
    return out
