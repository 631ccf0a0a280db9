"""The CA's part of the catalog FSM: init once, rotate keeping the old root, prune, config, snapshot/restore."""

from __future__ import annotations

import datetime

import msgpack
import pytest
from meshagent.agent.catalog import Catalog, CommandError
from meshagent.agent.catalog.connect_state import WATCH_KEY
from meshagent.agent.connect.ca import CARoot, new_root

TD = "11111111-2222-3333-4444-555555555555.mesh"
NOW = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)


def root_fields(root: CARoot) -> dict[str, object]:
    return {"id": root.id, "name": root.name, "serial_number": str(root.serial_number),
            "signing_key_id": root.signing_key_id, "not_before": root.not_before.timestamp(),
            "not_after": root.not_after.timestamp(), "root_cert": root.root_cert, "private_key": root.private_key,
            "intermediate_certs": list(root.intermediate_certs)}


def init(cat: Catalog, index: int, root: CARoot) -> object:
    return cat.apply(index, {"op": "connect-ca", "action": "init", "cluster_id": TD.split(".")[0],
                             "trust_domain": TD, "root": root_fields(root), "config": {"LeafCertTTL": "72h"}})


def test_init_once_then_rotate_prune_and_configure() -> None:
    cat = Catalog()
    changes: list[frozenset[str]] = []
    cat.add_listener(lambda _i, keys: changes.append(keys))
    first, second = new_root(TD, NOW), new_root(TD, NOW)
    assert init(cat, 1, first) is True
    assert changes == [frozenset({WATCH_KEY})] and cat.index_for([WATCH_KEY]) == 1
    assert cat.connect.trust_domain == TD and cat.connect.active_root is not None
    assert cat.connect.active_root.id == first.id
    with pytest.raises(CommandError, match="already initialized"):
        init(cat, 2, second)  # a second leader racing the first cannot replace the CA
    assert cat.connect.active_root.id == first.id

    cat.apply(3, {"op": "connect-ca", "action": "rotate", "root": root_fields(second), "rotated_at": 1000.0})
    assert cat.connect.active_root is not None and cat.connect.active_root.id == second.id
    old = cat.connect.roots[first.id]
    assert not old.active and old.rotated_out_at == 1000.0 and old.private_key == first.private_key
    assert cat.apply(4, {"op": "connect-ca", "action": "prune", "before": 999.0}) is False
    assert cat.apply(5, {"op": "connect-ca", "action": "prune", "before": 1001.0}) is True
    assert list(cat.connect.roots) == [second.id]

    cat.apply(6, {"op": "connect-ca", "action": "set-config", "config": {"LeafCertTTL": "1h"}})
    assert cat.connect.config == {"LeafCertTTL": "1h"}


@pytest.mark.parametrize("cmd", [
    {"op": "connect-ca", "action": "rotate", "root": {}, "rotated_at": 1.0},
    {"op": "connect-ca", "action": "explode"},
    {"op": "connect-ca"},
])
def test_commands_before_init_or_malformed_are_refused(cmd: dict[str, object]) -> None:
    cat = Catalog()
    with pytest.raises(CommandError):
        cat.apply(1, cmd)
    assert cat.last_index == 1 and not cat.connect.cluster_id  # the index is consumed, nothing changed


def test_a_malformed_root_is_refused_and_changes_nothing() -> None:
    cat = Catalog()
    init(cat, 1, new_root(TD, NOW))
    bad = root_fields(new_root(TD, NOW)) | {"private_key": 7}
    with pytest.raises(CommandError, match="a root needs"):
        cat.apply(2, {"op": "connect-ca", "action": "rotate", "root": bad, "rotated_at": 1.0})
    assert len(cat.connect.roots) == 1


def test_snapshot_and_restore_carry_the_ca_and_an_older_snapshot_restores_empty() -> None:
    cat = Catalog()
    first, second = new_root(TD, NOW), new_root(TD, NOW)
    init(cat, 1, first)
    cat.apply(2, {"op": "connect-ca", "action": "rotate", "root": root_fields(second), "rotated_at": 5.0})
    back = Catalog.restore(cat.snapshot())
    assert back.state_equal(cat) and back.connect == cat.connect
    assert back.connect.roots[first.id].rotated_out_at == 5.0

    raw = msgpack.unpackb(cat.snapshot(), raw=False, strict_map_key=False)
    del raw["connect"]  # as written before the mesh existed
    older = Catalog.restore(msgpack.packb(raw, use_bin_type=True))
    assert older.connect.cluster_id == "" and older.connect.roots == {}
