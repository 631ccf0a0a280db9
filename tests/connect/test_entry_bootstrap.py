"""`config_entries.bootstrap`: entries from the agent's config are written only where absent (a stored entry is
never overwritten), normalized, and a bad one is refused naming its field; applied to a real catalog."""

from __future__ import annotations

from typing import Any

import pytest
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.connect.entry_bootstrap import bootstrap_commands
from meshagent.agent.connect.entry_validate import EntryError

BOOT: list[dict[str, Any]] = [
    {"kind": "proxy-defaults", "name": "global", "config": {"protocol": "http"}},
    {"Kind": "service-defaults", "Name": "web", "Protocol": "HTTP"},
    {"kind": "service-intentions", "name": "db", "sources": [{"name": "web", "action": "allow"}]},
]


def _apply_all(catalog: Catalog, cmds: list[dict[str, Any]], first_index: int) -> list[Any]:
    return [catalog.apply(first_index + i, c) for i, c in enumerate(cmds)]


def test_an_empty_catalog_gets_every_entry_normalized() -> None:
    catalog = Catalog()
    cmds = bootstrap_commands(catalog, BOOT)
    assert [c["cas"] for c in cmds] == [0, 0, 0]
    assert cmds[1] == commands.config_entry_set({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}, cas=0)
    assert _apply_all(catalog, cmds, 5) == [True, True, True]
    row = catalog.config_entries.get("service-intentions", "db")
    assert row is not None and row.entry["Sources"][0]["Name"] == "web" and row.create_index == 7
    assert bootstrap_commands(catalog, BOOT) == []  # a second leadership writes nothing


def test_stored_entries_are_never_overwritten() -> None:
    catalog = Catalog()
    mine = {"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"}
    assert catalog.apply(3, commands.config_entry_set(mine)) is True
    cmds = bootstrap_commands(catalog, BOOT)
    assert [(c["entry"]["Kind"], c["entry"]["Name"]) for c in cmds] == [
        ("proxy-defaults", "global"), ("service-intentions", "db")]
    _apply_all(catalog, cmds, 4)
    stored = catalog.config_entries.get("service-defaults", "web")
    assert stored is not None and stored.entry["Protocol"] == "grpc"


def test_cas_zero_loses_to_a_write_that_lands_first() -> None:
    catalog = Catalog()
    cmds = bootstrap_commands(catalog, BOOT[1:2])
    assert catalog.apply(2, commands.config_entry_set({"Kind": "service-defaults", "Name": "web"})) is True
    assert catalog.apply(3, cmds[0]) is False
    stored = catalog.config_entries.get("service-defaults", "web")
    assert stored is not None and "Protocol" not in stored.entry


def test_the_first_of_two_entries_with_one_identity_wins() -> None:
    cmds = bootstrap_commands(Catalog(), [BOOT[1], {"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}])
    assert [c["entry"]["Protocol"] for c in cmds] == ["http"]


def test_a_bad_entry_is_refused_naming_its_field() -> None:
    with pytest.raises(EntryError) as err:
        bootstrap_commands(Catalog(), [BOOT[0], {"kind": "service-splitter", "name": "web",
                                                 "splits": [{"weight": 60}, {"weight": 30, "service": "b"}]}])
    assert err.value.field == "Splits" and err.value.kind == "service-splitter"
