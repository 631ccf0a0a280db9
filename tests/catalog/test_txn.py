"""Transactions in the catalog FSM (agent/catalog/txn.py): all or none, Consul's results and error texts."""

from __future__ import annotations

import random
from typing import Any

import msgpack
from meshagent.agent.catalog import Catalog, Check, Node, Service, commands
from meshagent.agent.catalog.model import row_to_dict
from meshagent.agent.catalog.txn import MAX_OPS, is_read_only, read_txn


def kv(verb: str, key: str, value: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {"type": "kv", "verb": verb, "key": key, "value": value, **extra}


def node_op(verb: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "node", "verb": verb, "node": {"node": name, "address": "10.1.0.1"}, **extra}


def apply(cat: Catalog, ops: list[dict[str, Any]], now: float = 0.0) -> Any:
    return cat.apply(cat.last_index + 1, commands.txn(ops, now))


def seeded() -> Catalog:
    cat = Catalog()
    cat.apply(1, commands.register(Node(node="n1", address="10.0.0.1"), Service(node="n1", id="db", service="db"),
                                   [Check(node="n1", check_id="service:db", status="passing", service_id="db")]))
    cat.apply(2, commands.kv_set("a/1", b"one"))
    cat.apply(3, commands.kv_set("a/2", b"two"))
    cat.apply(4, commands.kv_set("b", b"bee"))
    return cat


def state_bytes(cat: Catalog) -> bytes:
    """The snapshot without last_index (a refused command still uses its index, as a log entry does)."""
    raw = msgpack.unpackb(cat.snapshot(), raw=False, strict_map_key=False)
    raw.pop("last_index")
    return msgpack.packb(raw, use_bin_type=True)


def test_all_ops_apply_at_one_index_with_consul_results() -> None:
    cat = seeded()
    events: list[tuple[int, frozenset[str]]] = []
    cat.add_listener(lambda i, keys: events.append((i, keys)))
    out = apply(cat, [kv("set", "a/3", b"three", flags=7), kv("cas", "a/1", b"uno", index=2),
                      kv("get", "b"), kv("delete", "a/2"), kv("get-tree", "a/"),
                      node_op("set", "n2"), {"type": "service", "verb": "set", "node": "n2",
                                             "service": {"service": "web", "port": 80}}])
    assert out["errors"] is None
    results = out["results"]
    assert results[0]["kv"]["key"] == "a/3" and results[0]["kv"]["value"] == b"" and results[0]["kv"]["flags"] == 7
    assert results[1]["kv"]["modify_index"] == 5
    assert results[2]["kv"]["value"] == b"bee"  # a get keeps its value
    assert [r["kv"]["key"] for r in results[3:5]] == ["a/1", "a/3"]  # delete gives no result; tree sees a/2 gone
    assert results[5]["node"]["node"] == "n2" and results[6]["service"]["id"] == "web"
    assert cat.kv_get("a/1").value == b"uno" and cat.kv_get("a/2") is None
    assert [s.service for s in cat.node_services("n2")] == ["web"]
    assert len(events) == 1 and events[0][0] == 5 and {"kv:a/3", "kv:a/1", "kv:a/2", "nodes"} <= events[0][1]


def test_a_failing_op_in_the_middle_leaves_the_catalog_byte_identical() -> None:
    cat = seeded()
    before = state_bytes(cat)
    events: list[Any] = []
    cat.add_listener(lambda i, keys: events.append(keys))
    ops = [kv("set", "a/3", b"x"), kv("delete-tree", "a/"), kv("delete", "b"), node_op("set", "n2"),
           {"type": "service", "verb": "delete", "node": "n1", "service": {"id": "db"}},
           {"type": "check", "verb": "set", "check": {"node": "n1", "check_id": "c2", "status": "passing"}},
           kv("cas", "b", b"stale", index=99),  # fails: everything above is undone
           node_op("delete", "n1"), kv("check-index", "a/1", index=1)]  # a second error, named too
    out = apply(cat, ops)
    assert out["results"] is None
    assert out["errors"] == [{"op_index": 6, "what": "failed to set key 'b', index is stale"},
                             {"op_index": 8, "what": "key 'a/1' doesn't exist"}]
    assert state_bytes(cat) == before
    assert events == []
    # The derived indexes came back too: queries see the old rows, and later writes work on them.
    assert [i.service.id for i in cat.service_instances("db")] == ["db"]
    assert cat.kv_keys("") == ["a/1", "a/2", "b"] and cat.node("n2") is None
    assert apply(cat, [kv("cas", "b", b"new", index=4)])["errors"] is None


def test_consul_error_texts() -> None:
    cat = seeded()
    cases = [
        (kv("get", "nope"), "key 'nope' doesn't exist"),
        (kv("check-index", "b", index=3), "failed index check for key 'b', current modify index 4 != 3"),
        (kv("check-session", "b", session="s"), "failed session check for key 'b', current session '' != 's'"),
        (kv("check-not-exists", "b"), "key 'b' exists"),
        (kv("delete-cas", "b", index=3), "failed to delete key 'b', index is stale"),
        (kv("lock", "b", session=""), "Missing session"),
        (kv("lock", "b", session="gone"), "invalid session 'gone'"),
        (kv("unlock", "b", session="gone"), "failed to unlock key 'b', lock isn't held, or is held by another session"),
        (kv("bogus", "b"), "unknown KV verb 'bogus'"),
        (node_op("get", "n9"), "node 'n9' doesn't exist"),
        (node_op("cas", "n1", index=0), "failed to set node 'n1', index is stale"),
        (node_op("delete-cas", "n9", index=1), "failed to delete node 'n9', index is stale"),
        ({"type": "service", "verb": "set", "node": "n9", "service": {"service": "x"}}, "Missing node registration"),
        ({"type": "service", "verb": "get", "node": "n1", "service": {"id": "x"}},
         "service 'x' on node 'n1' doesn't exist"),
        ({"type": "check", "verb": "set", "check": {"node": "n1", "check_id": "c", "service_id": "x"}},
         "Missing service registration"),
        ({"type": "check", "verb": "get", "check": {"node": "n1", "check_id": "c"}},
         "check 'c' on node 'n1' doesn't exist"),
        ({"type": "acl", "verb": "set"}, "unknown operation type 'acl'"),
    ]
    for op, what in cases:
        out = apply(cat, [op])
        assert out == {"results": None, "errors": [{"op_index": 0, "what": what}]}, op


def test_hostile_ops_are_errors_never_crashes() -> None:
    cat = seeded()
    before = state_bytes(cat)
    for op in [None, 5, {"type": 3}, kv("set", "k", "not-bytes"), kv("set", "k", flags=-1), kv("cas", "k", index="1"),
               {"type": "node", "verb": "set", "node": "n"}, {"type": "node", "verb": "set", "node": {"bogus": 1}},
               {"type": "service", "verb": "set", "node": 7, "service": {"service": "x"}},
               {"type": "check", "verb": "set", "check": [1]}, kv("set", ""), kv("set", ["k"])]:
        out = apply(cat, [kv("set", "ok", b"1"), op])
        assert out["results"] is None and out["errors"][0]["op_index"] == 1, op
        assert state_bytes(cat) == before
    assert apply(cat, [kv("set", "k")] * (MAX_OPS + 1))["errors"][0]["what"].endswith("at most 64 operations")
    assert apply(cat, [kv("set", f"k{i}") for i in range(MAX_OPS)])["errors"] is None


def test_locks_in_a_transaction_and_their_rollback() -> None:
    cat = seeded()
    sid = "11111111-2222-3333-4444-555555555555"
    cat.apply(cat.last_index + 1, commands.session_create({"id": sid, "node": "n1", "node_checks": []}))
    out = apply(cat, [kv("lock", "lk", b"me", session=sid), kv("check-session", "lk", session=sid)], now=100.0)
    assert out["errors"] is None and out["results"][0]["kv"]["session"] == sid
    assert out["results"][0]["kv"]["lock_index"] == 1
    before = state_bytes(cat)
    held_before = cat.sessions.held_keys(sid)
    out = apply(cat, [kv("unlock", "lk", session=sid), kv("delete", "lk"), kv("get", "missing")], now=101.0)
    assert out["errors"][0]["op_index"] == 2
    assert state_bytes(cat) == before and cat.sessions.held_keys(sid) == held_before
    assert cat.kv_get("lk").session == sid


def test_read_only_transactions() -> None:
    cat = seeded()
    reads = [kv("get", "b"), kv("get-tree", "a/"), node_op("get", "n1"),
             {"type": "check", "verb": "get", "check": {"node": "n1", "check_id": "service:db"}}]
    assert is_read_only(reads) and not is_read_only([*reads, kv("set", "x")])
    out = read_txn(cat, reads)
    assert [next(iter(r)) for r in out["results"]] == ["kv", "kv", "kv", "node", "check"]
    assert out["results"][3]["node"] == row_to_dict(cat.node("n1"))
    assert read_txn(cat, [kv("get", "zz")])["errors"] == [{"op_index": 0, "what": "key 'zz' doesn't exist"}]
    assert read_txn(cat, [kv("set", "x")])["errors"] is not None and cat.kv_get("x") is None


def test_snapshot_round_trip_after_a_transaction() -> None:
    cat = seeded()
    apply(cat, [kv("set", "t/1", b"1"), node_op("set", "n3")])
    assert Catalog.restore(cat.snapshot()).state_equal(cat)


def _random_op(rng: random.Random) -> dict[str, Any]:
    key = f"k/{rng.randrange(6)}"
    node, sid = f"n{rng.randrange(3)}", f"s{rng.randrange(3)}"
    kind = rng.choice(["kv", "kv", "kv", "node", "service", "service", "check"])
    if kind == "kv":
        verb = rng.choice(["set", "set", "delete", "delete-tree", "cas", "get-tree", "lock", "unlock"])
        return kv(verb, "k/" if verb == "delete-tree" else key, b"v%d" % rng.randrange(9), index=0,
                  session=SID)
    if kind == "node":
        return node_op(rng.choice(["set", "delete"]), node)
    if kind == "service":
        svc = {"id": sid, "service": rng.choice(["web", "db"]), "kind": rng.choice(["", "connect-proxy"]),
               "proxy": {"destination_service_name": "web"}}
        return {"type": "service", "verb": rng.choice(["set", "set", "delete"]), "node": node, "service": svc}
    return {"type": "check", "verb": rng.choice(["set", "delete"]),
            "check": {"node": node, "check_id": f"c{rng.randrange(3)}", "status": "passing",
                      "service_id": rng.choice(["", sid])}}


SID = "11111111-2222-3333-4444-000000000000"


def _views(cat: Catalog) -> Any:
    """What the derived indexes answer (a broken index shows here, not in the snapshot)."""
    return (cat.kv_keys(""), [(i.node.node, i.service.id) for name in ("web", "db")
                              for i in cat.service_instances(name)],
            [(i.node.node, i.service.id) for i in cat.connect_instances("web")],
            [(n.node, [c.check_id for c in cat.node_checks(n.node)], [s.id for s in cat.node_services(n.node)])
             for n in cat.nodes()], cat.sessions.held_keys(SID))


def test_random_transactions_failing_at_the_end_change_nothing() -> None:
    """Seeded random transactions (KV with locks, nodes, services, checks) made to fail by a last op: the
    snapshot is byte-identical, the derived indexes answer as before, and the catalog then takes the same
    transaction without the failing op exactly as a fresh copy does."""
    rng = random.Random(16)
    cat = Catalog()
    cat.apply(1, commands.register(Node(node="n0", address="10.0.0.1")))
    cat.apply(2, commands.session_create({"id": SID, "node": "n0", "node_checks": []}))
    for round_no in range(300):
        ops = [_random_op(rng) for _ in range(rng.randrange(1, 12))]
        before, views = state_bytes(cat), _views(cat)
        out = apply(cat, [*ops, kv("get", "never/there")], now=float(round_no))
        assert out["errors"][-1]["op_index"] == len(ops), ops
        assert state_bytes(cat) == before, ops
        assert _views(cat) == views, ops
        twin = Catalog.restore(cat.snapshot())
        first = apply(cat, ops, now=float(round_no))
        second = apply(twin, ops, now=float(round_no))
        assert first == second and cat.snapshot() == twin.snapshot() and _views(cat) == _views(twin), ops
