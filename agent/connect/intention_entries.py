"""Intentions as `service-intentions` config entries, pure: decisions' input (`intentions_of`), Consul's legacy
intention JSON for `/v1/connect/intentions*` (`legacy_json`, `legacy_list`, `match`, `find_by_id`), and the
edits the legacy API makes to an entry (`upsert_source`, `remove_source`).

An entry per destination holds its Sources; a legacy intention is one (destination, source) pair. Its `ID` is
the source's `LegacyID` when it has one, else a UUIDv5 of the pair, so every agent names it alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog.config_entries import ConfigEntryRow
from .entry_validate import normalize_entry
from .intentions import Action, Intention, precedence

KIND = "service-intentions"
DEFAULT_NS = "default"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Consul's zero time.Time, shown for intentions written as config entries
_ID_NAMESPACE = uuid.UUID("6f1d3c1e-6a0b-4f9b-9a55-6d657368a913")  # fixed: IDs must agree across agents
RowOrEntry = ConfigEntryRow | Mapping[str, Any]


def _entry(row: RowOrEntry) -> Mapping[str, Any]:
    return row.entry if isinstance(row, ConfigEntryRow) else row


def _indexes(row: RowOrEntry) -> tuple[int, int]:
    if isinstance(row, ConfigEntryRow):
        return row.create_index, row.modify_index
    return int(row.get("CreateIndex", 0) or 0), int(row.get("ModifyIndex", 0) or 0)


def _ns(source: Mapping[str, Any]) -> str:
    return str(source.get("Namespace") or DEFAULT_NS)


def _sources(row: RowOrEntry) -> list[Mapping[str, Any]]:
    """An intentions entry's well-formed Sources. Stored entries were validated before the write, but the FSM
    checks only structure, so a forged one must not break readers: malformed sources are left out."""
    entry = _entry(row)
    ok = entry.get("Kind", KIND) == KIND and isinstance(entry.get("Name"), str)
    sources = entry.get("Sources") if ok else None
    if not isinstance(sources, list):
        return []
    return [s for s in sources if isinstance(s, Mapping) and isinstance(s.get("Name"), str)]


def intentions_of(rows: Iterable[RowOrEntry]) -> list[Intention]:
    """Every Source of every service-intentions entry as an Intention (L7 Permissions: action None)."""
    out: list[Intention] = []
    for row in rows:
        for src in _sources(row):
            perms = src.get("Permissions")
            perms = tuple(perms) if isinstance(perms, list) else ()
            # fail closed: an action that is neither allow nor deny (only a forged entry has one) denies
            action = None if perms else Action.ALLOW if src.get("Action") == "allow" else Action.DENY
            out.append(Intention(source=str(src["Name"]), destination=str(_entry(row)["Name"]), action=action,
                                 permissions=perms, source_ns=_ns(src)))
    return out


def legacy_id(destination: str, source: str, source_ns: str = DEFAULT_NS) -> str:
    """The ID of the (source, destination) intention when its Source has no LegacyID: a UUIDv5 of the pair."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{DEFAULT_NS}/{destination}\x00{source_ns}/{source}"))


def find_source(entry: Mapping[str, Any] | None, source: str, source_ns: str = DEFAULT_NS) -> dict[str, Any] | None:
    """The entry's Source for `source`, or None."""
    for src in _sources(entry) if entry else []:
        if src.get("Name") == source and _ns(src) == source_ns:
            return dict(src)
    return None


def legacy_json(row_or_entry: RowOrEntry, source: Mapping[str, Any] | str) -> dict[str, Any]:
    """Consul's legacy intention JSON for one Source (a Source map, or a source name looked up in the entry)."""
    entry = _entry(row_or_entry)
    if isinstance(source, str):
        found = find_source(entry, source)
        if found is None:
            raise KeyError(f"no source {source!r} in {entry.get('Name')!r}")
        source = found
    destination = str(entry["Name"])
    name, ns = str(source["Name"]), _ns(source)
    create_index, modify_index = _indexes(row_or_entry)
    l7 = isinstance(source.get("Permissions"), list) and bool(source["Permissions"])
    out: dict[str, Any] = {
        "ID": source.get("LegacyID") or legacy_id(destination, name, ns),
        "Description": source.get("Description", ""),
        "SourceNS": ns, "SourceName": name, "DestinationNS": DEFAULT_NS, "DestinationName": destination,
        "SourceType": source.get("Type", "consul"),
        "Action": "" if l7 else "allow" if source.get("Action") == "allow" else "deny",  # as intentions_of
        "Meta": dict(meta) if isinstance(meta := source.get("LegacyMeta"), Mapping) else {},
        "Precedence": precedence(ns, name, DEFAULT_NS, destination),
        "CreatedAt": source.get("LegacyCreateTime") or ZERO_TIME,
        "UpdatedAt": source.get("LegacyUpdateTime") or ZERO_TIME,
        "CreateIndex": create_index, "ModifyIndex": modify_index,
    }
    if l7:
        out["Permissions"] = [dict(p) for p in source["Permissions"] if isinstance(p, Mapping)]
    return out


def legacy_list(rows: Iterable[RowOrEntry]) -> list[dict[str, Any]]:
    """Every intention as legacy JSON, in evaluation order (highest precedence first, deny first, names)."""
    items = [legacy_json(row, src) for row in rows for src in _sources(row)]
    return sorted(items, key=_order)


def match(rows: Iterable[RowOrEntry], by: str, name: str) -> list[dict[str, Any]]:
    """Intentions whose `by` side ("source" or "destination") matches `name` (exactly or by `*`), as legacy JSON
    in precedence order: Consul's /v1/connect/intentions/match answers `{name: match(...)}`."""
    if by not in ("source", "destination"):
        raise ValueError(f'by must be "source" or "destination", got {by!r}')
    side = "SourceName" if by == "source" else "DestinationName"
    return [i for i in legacy_list(rows) if i[side] in (name, "*")]


def find_by_id(rows: Iterable[RowOrEntry], intention_id: str) -> dict[str, Any] | None:
    """The legacy intention with this ID, or None."""
    for item in legacy_list(rows):
        if item["ID"] == intention_id:
            return item
    return None


def upsert_source(entry: Mapping[str, Any] | None, destination: str, source: Mapping[str, Any]) -> dict[str, Any]:
    """The destination's entry with `source` added or replacing the Source of the same name (keeping its
    LegacyID and LegacyCreateTime, so the legacy ID stays); normalized, raises EntryError."""
    base: dict[str, Any] = dict(entry) if entry else {"Kind": KIND, "Name": destination}
    for key in ("CreateIndex", "ModifyIndex"):
        base.pop(key, None)
    new = dict(source)
    name, ns = new.get("Name"), _ns(new)
    sources: list[dict[str, Any]] = []
    replaced = False
    for old in base.get("Sources") or []:
        if old.get("Name") == name and _ns(old) == ns:
            for key in ("LegacyID", "LegacyCreateTime"):
                if key in old and key not in new:
                    new[key] = old[key]
            sources.append(new)
            replaced = True
        else:
            sources.append(dict(old))
    if not replaced:
        sources.append(new)
    base["Sources"] = sources
    return normalize_entry(base)


def remove_source(entry: Mapping[str, Any], source_name: str, source_ns: str = DEFAULT_NS) -> dict[str, Any] | None:
    """The entry without the Source `source_name`; None when no Source is left (delete the entry then)."""
    kept = [dict(s) for s in entry.get("Sources") or [] if not (s.get("Name") == source_name and _ns(s) == source_ns)]
    if not kept:
        return None
    out = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
    out["Sources"] = kept
    return out


def _order(item: Mapping[str, Any]) -> tuple[int, bool, str, str, str, str]:
    return (-int(item["Precedence"]), item["Action"] != "deny", item["SourceNS"], item["SourceName"],
            item["DestinationNS"], item["DestinationName"])
