"""Catalog state machine: apply semantics, watch-key indexes, snapshot round trip."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.agent.catalog import (
    CRITICAL,
    PASSING,
    WARNING,
    Catalog,
    Check,
    CommandError,
    Node,
    Service,
    commands,
)


class Recorder:
    """Collects (index, changed keys) from a catalog."""

    def __init__(self, cat: Catalog) -> None:
        self.events: list[tuple[int, frozenset[str]]] = []
        cat.add_listener(lambda i, keys: self.events.append((i, keys)))


def make(cat: Catalog, node: str = "n1", svc: str | None = "db", sid: str | None = None,
         status: str = PASSING, tags: list[str] | None = None) -> int:
    index = cat.last_index + 1
    service = Service(node=node, id=sid or svc, service=svc, tags=tags or []) if svc else None
    checks = [Check(node=node, check_id=f"service:{sid or svc}", status=status, service_id=sid or svc)] \
        if svc else []
    cat.apply(index, commands.register(Node(node=node, address="10.0.0.1"), service, checks))
    return index


def test_register_and_query() -> None:
    cat = Catalog()
    make(cat, "n1", "db", tags=["primary"])
    make(cat, "n2", "db", tags=["replica"])
    make(cat, "n2", "web")
    assert [n.node for n in cat.nodes()] == ["n1", "n2"]
    assert cat.services() == {"db": ["primary", "replica"], "web": []}
    assert [i.node.node for i in cat.service_instances("db")] == ["n1", "n2"]
    assert [i.node.node for i in cat.service_instances("DB", tag="Primary")] == ["n1"]
    assert [s.id for s in cat.node_services("N2")] == ["db", "web"]


def test_reregistering_unchanged_data_bumps_nothing() -> None:
    cat = Catalog()
    rec = Recorder(cat)
    first = make(cat)
    before = cat.index_for(["service:db", "nodes", "services", "checks"])
    make(cat)  # identical
    assert len(rec.events) == 1
    assert cat.index_for(["service:db", "nodes", "services", "checks"]) == before == first


def test_watch_keys_are_precise() -> None:
    cat = Catalog()
    make(cat, "n1", "db")
    make(cat, "n1", "web")
    rec = Recorder(cat)
    web_index = cat.index_for(["service:web"])
    make(cat, "n1", "db", status=CRITICAL)
    (_, keys), = rec.events
    assert "service:db" in keys and "service:web" not in keys and "kv:x" not in keys
    assert cat.index_for(["service:web"]) == web_index


def test_node_check_changes_every_service_on_the_node() -> None:
    cat = Catalog()
    make(cat, "n1", "db")
    make(cat, "n1", "web")
    rec = Recorder(cat)
    idx = cat.last_index + 1
    cat.apply(idx, commands.register(Node(node="n1", address="10.0.0.1"),
                                     checks=[Check(node="n1", check_id="serfHealth", status=CRITICAL)]))
    keys = rec.events[-1][1]
    assert {"service:db", "service:web", "node:n1", "checks"} <= keys
    assert all(i.status == CRITICAL for i in cat.service_instances("web"))


def test_instance_status_is_worst_of_checks() -> None:
    cat = Catalog()
    make(cat, "n1", "db", status=WARNING)
    (inst,) = cat.service_instances("db")
    assert inst.status == WARNING


def test_deregister_service_node_and_check() -> None:
    cat = Catalog()
    make(cat, "n1", "db")
    make(cat, "n1", "web")
    cat.apply(cat.last_index + 1, commands.deregister("n1", service_id="db"))
    assert cat.service_instances("db") == []
    assert [c.check_id for c in cat.node_checks("n1")] == ["service:web"]
    before = cat.index_for(["service:web"])
    cat.apply(cat.last_index + 1, commands.deregister("n1"))
    assert cat.nodes() == [] and cat.services() == {}
    assert cat.index_for(["service:web"]) > before  # deletion bumps the index watchers use


def test_check_for_unknown_service_is_rejected_without_change() -> None:
    cat = Catalog()
    snap = cat.snapshot()
    with pytest.raises(CommandError):
        cat.apply(1, commands.register(Node(node="n1"), checks=[Check(node="n1", check_id="c",
                                                                      service_id="nope")]))
    assert cat.nodes() == [] and Catalog.restore(snap).state_equal(cat)


def test_unknown_op_and_stale_index_are_errors() -> None:
    cat = Catalog()
    with pytest.raises(CommandError):
        cat.apply(1, {"op": "explode"})
    with pytest.raises(CommandError):
        cat.apply(1, commands.kv_set("a", b"1"))  # index 1 already used


def test_kv_cas_semantics() -> None:
    cat = Catalog()
    assert cat.apply(1, commands.kv_cas("k", b"v1", 0)) is True
    assert cat.apply(2, commands.kv_cas("k", b"v2", 0)) is False  # cas=0 only creates
    assert cat.apply(3, commands.kv_cas("k", b"v3", 99)) is False
    assert cat.apply(4, commands.kv_cas("k", b"v4", 1)) is True
    entry = cat.kv_get("k")
    assert entry is not None and entry.value == b"v4" and entry.create_index == 1 and entry.modify_index == 4
    assert cat.apply(5, commands.kv_delete_cas("k", 1)) is False
    assert cat.apply(6, commands.kv_delete_cas("k", 4)) is True
    assert cat.kv_get("k") is None


def test_kv_prefix_index_never_goes_back_on_delete() -> None:
    cat = Catalog()
    cat.apply(1, commands.kv_set("app/a", b"1"))
    cat.apply(2, commands.kv_set("app/b", b"2"))
    cat.apply(3, commands.kv_set("other", b"3"))
    assert cat.index_for(["kvprefix:app/"]) == 2
    cat.apply(4, commands.kv_delete("app/b"))
    assert cat.index_for(["kvprefix:app/"]) == 4
    cat.apply(5, commands.kv_delete_tree("app/"))
    assert cat.kv_list("app/") == [] and cat.index_for(["kvprefix:app/"]) == 5
    assert cat.index_for(["kv:other"]) == 3


def test_kv_keys_with_separator() -> None:
    cat = Catalog()
    for i, key in enumerate(["a/b/c", "a/b/d", "a/e", "a", "b"], start=1):
        cat.apply(i, commands.kv_set(key, b""))
    assert cat.kv_keys("a/", "/") == ["a/b/", "a/e"]
    assert cat.kv_keys("", "/") == ["a", "a/", "b"]
    assert cat.kv_keys("a") == ["a", "a/b/c", "a/b/d", "a/e"]


def test_restore_rejects_garbage() -> None:
    for data in (b"", b"\x81\xa1x", b"garbage", Catalog().snapshot()[:-3]):
        with pytest.raises(CommandError):
            Catalog.restore(data)


names = st.sampled_from(["db", "web", "cache", "api"])
nodes = st.sampled_from(["n1", "n2", "n3"])
statuses = st.sampled_from([PASSING, WARNING, CRITICAL])
keys = st.sampled_from(["a", "a/b", "a/c", "b", "b/x/y"])
ops = st.one_of(
    st.tuples(st.just("reg"), nodes, names, statuses, st.lists(st.sampled_from(["x", "y"]), max_size=2)),
    st.tuples(st.just("dereg-svc"), nodes, names),
    st.tuples(st.just("dereg-node"), nodes),
    st.tuples(st.just("kv"), keys, st.binary(max_size=8)),
    st.tuples(st.just("cas"), keys, st.integers(0, 30)),
    st.tuples(st.just("del-tree"), keys),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=40))
def test_snapshot_round_trip_and_replay(history: list[tuple]) -> None:  # type: ignore[type-arg]
    cat = Catalog()
    log: list[dict] = []  # type: ignore[type-arg]
    for op in history:
        if op[0] == "reg":
            _, node, svc, status, tags = op
            cmd = commands.register(Node(node=node, address="10.0.0.1"), Service(node=node, id=svc, service=svc,
                                    tags=tags), [Check(node=node, check_id=f"service:{svc}", status=status,
                                                       service_id=svc)])
        elif op[0] == "dereg-svc":
            cmd = commands.deregister(op[1], service_id=op[2])
        elif op[0] == "dereg-node":
            cmd = commands.deregister(op[1])
        elif op[0] == "kv":
            cmd = commands.kv_set(op[1], op[2])
        elif op[0] == "cas":
            cmd = commands.kv_cas(op[1], b"c", op[2])
        else:
            cmd = commands.kv_delete_tree(op[1])
        log.append(cmd)
        cat.apply(cat.last_index + 1, cmd)
    restored = Catalog.restore(cat.snapshot())
    assert restored.state_equal(cat)
    assert restored.last_index == cat.last_index
    assert restored.index_for(["services", "nodes", "kvprefix:", "checks"]) == \
        cat.index_for(["services", "nodes", "kvprefix:", "checks"])
    # Replaying the same commands gives the same state: the property Raft replicas rely on.
    replica = Catalog()
    for i, cmd in enumerate(log, start=1):
        replica.apply(i, cmd)
    assert replica.state_equal(cat)


def test_many_random_ops_keep_indexes_monotonic() -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cat = Catalog()
    last: dict[str, int] = {}
    watch = ["nodes", "services", "checks", "service:db", "kvprefix:a", "node:n1"]
    for _ in range(500):
        choice = rng.random()
        if choice < 0.5:
            make(cat, rng.choice(["n1", "n2"]), rng.choice(["db", "web"]), status=rng.choice([PASSING, CRITICAL]))
        elif choice < 0.7:
            cat.apply(cat.last_index + 1, commands.deregister(rng.choice(["n1", "n2"]), service_id="db"))
        else:
            cat.apply(cat.last_index + 1, commands.kv_set(rng.choice(["a1", "a2", "b"]), b"x"))
        for key in watch:
            now = cat.index_for([key])
            assert now >= last.get(key, 0), f"seed={seed}: index for {key} went backwards"
            last[key] = now
