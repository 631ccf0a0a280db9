"""Intentions over service-intentions entries stored in a real catalog: L4 decisions, Consul's legacy JSON
with IDs every agent agrees on, /match ordering, and the legacy API's edits (upsert, remove)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.connect.entry_validate import EntryError, normalize_entry
from meshagent.agent.connect.intention_entries import (
    ZERO_TIME,
    find_by_id,
    intentions_of,
    legacy_id,
    legacy_json,
    legacy_list,
    match,
    remove_source,
    upsert_source,
)
from meshagent.agent.connect.intentions import Action, decide_l4

L7 = [{"Action": "allow", "HTTP": {"PathPrefix": "/v1", "Methods": ["GET"]}}]


def _catalog(*entries: dict[str, Any]) -> Catalog:
    catalog = Catalog()
    for index, raw in enumerate(entries, start=10):
        assert catalog.apply(index, commands.config_entry_set(normalize_entry(raw))) is True
    return catalog


def _intentions(name: str, *sources: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": name, "Sources": list(sources)}


CATALOG_ENTRIES = [
    _intentions("db", {"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}),
    _intentions("api", {"Name": "web", "Permissions": L7}, {"Name": "admin", "Action": "allow",
                                                             "LegacyID": "0b7e4c52-6f0c-4d77-b0a6-5c4d1f0e2a11",
                                                             "LegacyMeta": {"team": "ops"},
                                                             "LegacyCreateTime": "2026-12-01T10:00:00Z"}),
    _intentions("*", {"Name": "web", "Action": "deny"}),
    {"Kind": "service-defaults", "Name": "db", "Protocol": "http"},
]


def test_intentions_of_the_stored_entries_decide_at_l4() -> None:
    rows = _catalog(*CATALOG_ENTRIES).config_entries.all()
    found = intentions_of(rows)
    assert sorted((i.source, i.destination, i.action) for i in found) == [
        ("*", "db", Action.DENY), ("admin", "api", Action.ALLOW), ("web", "*", Action.DENY),
        ("web", "api", None), ("web", "db", Action.ALLOW)]
    assert decide_l4(found, "web", "db").allowed  # exact beats the wildcard source deny
    assert not decide_l4(found, "billing", "db").allowed  # "* -> db" deny
    l7 = decide_l4(found, "web", "api")
    assert not l7.allowed and l7.matched is not None and l7.matched.permissions  # L7 denies at L4
    assert decide_l4(found, "admin", "api").allowed
    assert not decide_l4(found, "web", "cache").allowed  # "web -> *" deny
    assert decide_l4(found, "billing", "cache").allowed  # nothing matches: default allow
    assert not decide_l4(found, "billing", "cache", default_allow=False).allowed


def test_legacy_json_has_consuls_shape_and_a_stable_id() -> None:
    catalog = _catalog(*CATALOG_ENTRIES)
    row = catalog.config_entries.get("service-intentions", "db")
    assert row is not None
    item = legacy_json(row, "web")
    assert item == {
        "ID": legacy_id("db", "web"), "Description": "", "SourceNS": "default", "SourceName": "web",
        "DestinationNS": "default", "DestinationName": "db", "SourceType": "consul", "Action": "allow", "Meta": {},
        "Precedence": 9, "CreatedAt": ZERO_TIME, "UpdatedAt": ZERO_TIME, "CreateIndex": row.create_index,
        "ModifyIndex": row.modify_index}
    assert uuid.UUID(item["ID"]).version == 5
    # Another agent (another catalog, other indexes) names the intention alike; other pairs differ.
    again = _catalog(CATALOG_ENTRIES[3], CATALOG_ENTRIES[0]).config_entries.get("service-intentions", "db")
    assert again is not None and legacy_json(again, "web")["ID"] == item["ID"]
    assert len({legacy_id("db", "web"), legacy_id("web", "db"), legacy_id("db", "*"), legacy_id("*", "db")}) == 4

    api = catalog.config_entries.get("service-intentions", "api")
    assert api is not None
    l7 = legacy_json(api, "web")
    assert l7["Action"] == "" and l7["Permissions"] == L7
    admin = legacy_json(api, "admin")
    assert admin["ID"] == "0b7e4c52-6f0c-4d77-b0a6-5c4d1f0e2a11"
    assert admin["Meta"] == {"team": "ops"} and admin["CreatedAt"] == "2026-12-01T10:00:00Z"
    assert "Permissions" not in admin
    with pytest.raises(KeyError):
        legacy_json(api, "nobody")


def test_match_orders_by_precedence_and_includes_wildcards() -> None:
    rows = _catalog(*CATALOG_ENTRIES).config_entries.all()
    by_dest = match(rows, "destination", "db")
    assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in by_dest] == [
        ("web", "db", 9), ("*", "db", 8), ("web", "*", 6)]
    by_source = match(rows, "source", "web")
    assert [(i["SourceName"], i["DestinationName"]) for i in by_source] == [
        ("web", "api"), ("web", "db"), ("*", "db"), ("web", "*")]
    star = next(r for r in rows if r.name == "*")
    assert match(rows, "destination", "nothing-here") == [legacy_json(star, "web")]  # only "web -> *"
    with pytest.raises(ValueError):
        match(rows, "sideways", "db")


def test_list_and_find_by_id() -> None:
    rows = _catalog(*CATALOG_ENTRIES).config_entries.all()
    items = legacy_list(rows)
    assert len(items) == 5
    assert [i["Precedence"] for i in items] == sorted((i["Precedence"] for i in items), reverse=True)
    for item in items:
        assert find_by_id(rows, item["ID"]) == item
    assert find_by_id(rows, str(uuid.uuid4())) is None


def test_upsert_adds_replaces_and_keeps_the_legacy_id() -> None:
    created = upsert_source(None, "db", {"Name": "web", "Action": "allow", "LegacyID": str(uuid.UUID(int=7))})
    assert created == normalize_entry(created)
    assert created["Name"] == "db" and [s["Name"] for s in created["Sources"]] == ["web"]
    added = upsert_source(created, "db", {"Name": "api", "Action": "deny"})
    assert [(s["Name"], s["Action"]) for s in added["Sources"]] == [("web", "allow"), ("api", "deny")]
    replaced = upsert_source(added, "db", {"Name": "web", "Action": "deny", "Description": "closed"})
    web = replaced["Sources"][0]
    assert (web["Action"], web["Description"], web["LegacyID"]) == ("deny", "closed", str(uuid.UUID(int=7)))
    assert len(replaced["Sources"]) == 2
    # a stored entry echoed back with its indexes is fine; a bad source is refused like any entry
    upsert_source({**replaced, "CreateIndex": 3, "ModifyIndex": 4}, "db", {"Name": "x", "Action": "allow"})
    with pytest.raises(EntryError) as err:
        upsert_source(replaced, "db", {"Name": "web", "Action": "maybe"})
    assert err.value.field == "Sources[0].Action"


def test_remove_source_leaves_the_rest_or_none() -> None:
    entry = normalize_entry(_intentions("db", {"Name": "web", "Action": "allow"}, {"Name": "api", "Action": "deny"}))
    left = remove_source(entry, "web")
    assert left is not None and [s["Name"] for s in left["Sources"]] == ["api"]
    assert remove_source(entry, "nobody") == entry
    assert remove_source(left, "api") is None
    assert [s["Name"] for s in entry["Sources"]] == ["web", "api"]  # the input is not changed


def test_a_forged_entry_in_the_catalog_does_not_break_readers() -> None:
    # The FSM checks only an entry's structure: a command that skipped validation must not crash readers,
    # and an action that is neither allow nor deny denies.
    catalog = _catalog(CATALOG_ENTRIES[0])
    forged = {"Kind": "service-intentions", "Name": "cache", "Sources": [
        {"Name": "web", "Action": "maybe", "LegacyMeta": "x", "Permissions": "all"}, "junk", {"Name": 5},
        {"Action": "allow"}]}
    assert catalog.apply(20, commands.config_entry_set(forged)) is True
    assert catalog.apply(21, commands.config_entry_set({"Kind": "service-intentions", "Name": "queue",
                                                        "Sources": {"Name": "web"}})) is True
    rows = catalog.config_entries.all()
    found = intentions_of(rows)
    assert sorted((i.source, i.destination, i.action) for i in found) == [
        ("*", "db", Action.DENY), ("web", "cache", Action.DENY), ("web", "db", Action.ALLOW)]
    assert not decide_l4(found, "web", "cache").allowed
    items = legacy_list(rows)
    assert [(i["SourceName"], i["DestinationName"], i["Action"]) for i in items] == [
        ("web", "cache", "deny"), ("web", "db", "allow"), ("*", "db", "deny")]
    assert items[0]["Meta"] == {} and "Permissions" not in items[0]
    assert match(rows, "destination", "queue") == []
