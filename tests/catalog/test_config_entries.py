"""ConfigEntryState in the catalog: set/delete with cas, watch keys, snapshot round trip, refusals."""

from __future__ import annotations

import msgpack
import pytest
from meshagent.agent.catalog import Catalog, CommandError, commands
from meshagent.agent.catalog.config_entries import entry_watch_key


def _defaults(name: str, protocol: str = "http") -> dict[str, object]:
    return {"Kind": "service-defaults", "Name": name, "Protocol": protocol}


def test_set_get_list_and_indexes() -> None:
    cat = Catalog()
    assert cat.apply(1, commands.config_entry_set(_defaults("web"))) is True
    assert cat.apply(2, commands.config_entry_set(_defaults("api"))) is True
    row = cat.config_entries.get("service-defaults", "web")
    assert row is not None and row.entry["Protocol"] == "http" and (row.create_index, row.modify_index) == (1, 1)
    assert [r.name for r in cat.config_entries.list("service-defaults")] == ["api", "web"]
    assert cat.config_entries.list("service-router") == []
    cat.apply(3, commands.config_entry_set(_defaults("web", "tcp")))
    row = cat.config_entries.get("service-defaults", "web")
    assert row is not None and (row.create_index, row.modify_index) == (1, 3)
    assert cat.index_for([entry_watch_key("service-defaults", "web")]) == 3
    assert cat.index_for([entry_watch_key("service-defaults", "api")]) == 2
    assert cat.index_for([entry_watch_key("service-defaults")]) == 3


def test_unchanged_write_bumps_nothing() -> None:
    cat = Catalog()
    cat.apply(1, commands.config_entry_set(_defaults("web")))
    cat.apply(2, commands.config_entry_set({**_defaults("web"), "ModifyIndex": 99}))
    assert cat.index_for([entry_watch_key("service-defaults", "web")]) == 1


def test_cas() -> None:
    cat = Catalog()
    assert cat.apply(1, commands.config_entry_set(_defaults("web"), cas=5)) is False
    assert cat.config_entries.get("service-defaults", "web") is None
    assert cat.apply(2, commands.config_entry_set(_defaults("web"), cas=0)) is True
    assert cat.apply(3, commands.config_entry_set(_defaults("web", "tcp"), cas=0)) is False
    assert cat.apply(4, commands.config_entry_set(_defaults("web", "tcp"), cas=2)) is True
    assert cat.apply(5, commands.config_entry_delete("service-defaults", "web", cas=2)) is False
    assert cat.apply(6, commands.config_entry_delete("service-defaults", "web", cas=4)) is True
    assert cat.config_entries.get("service-defaults", "web") is None
    assert cat.apply(7, commands.config_entry_delete("service-defaults", "web")) is True  # absent: fine
    assert cat.index_for([entry_watch_key("service-defaults", "web")]) == 6


@pytest.mark.parametrize("cmd", [
    commands.config_entry_set({"Kind": "nope", "Name": "x"}),
    commands.config_entry_set({"Kind": "service-defaults", "Name": ""}),
    commands.config_entry_set({"Kind": "service-defaults", "Name": 7}),
    commands.config_entry_set({"Kind": "service-defaults", "Name": "x" * 257}),
    commands.config_entry_set({"Kind": "proxy-defaults", "Name": "web"}),
    commands.config_entry_set("not a map"),  # type: ignore[arg-type]
    commands.config_entry_set(_defaults("web"), cas=-1),
    commands.config_entry_delete("service-defaults", "web\x00"),
    {"op": "config-entry", "verb": "explode"},
    {"op": "config-entry"},
])
def test_refused_commands_change_nothing(cmd: dict[str, object]) -> None:
    cat = Catalog()
    cat.apply(1, commands.config_entry_set(_defaults("web")))
    before = cat.snapshot()
    with pytest.raises(CommandError):
        cat.apply(2, cmd)
    after = msgpack.unpackb(cat.snapshot(), raw=False)
    expected = msgpack.unpackb(before, raw=False)
    after["last_index"] = expected["last_index"]
    assert after == expected


def test_snapshot_round_trip_and_old_snapshots() -> None:
    cat = Catalog()
    cat.apply(1, commands.config_entry_set(_defaults("web")))
    cat.apply(2, commands.config_entry_set({"Kind": "service-intentions", "Name": "db",
                                            "Sources": [{"Name": "web", "Action": "allow"}]}))
    copy = Catalog.restore(cat.snapshot())
    assert copy.state_equal(cat)
    assert copy.config_entries.get("service-intentions", "db") == cat.config_entries.get("service-intentions", "db")
    raw = msgpack.unpackb(cat.snapshot(), raw=False)
    del raw["config_entries"]
    old = Catalog.restore(msgpack.packb(raw, use_bin_type=True))
    assert old.config_entries.all() == []
