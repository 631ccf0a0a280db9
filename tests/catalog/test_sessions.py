"""Sessions and KV locks in the catalog FSM (pure): create/destroy with Consul's checks and texts, acquire and
release, lock-delay, behavior release/delete, watch keys, snapshot round trip, hostile commands, ACL rights."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from meshagent.agent.acl.authorizer import Authorizer
from meshagent.agent.acl.command_rights import MalformedCommand, authorize
from meshagent.agent.acl.identity import ACLIdentity
from meshagent.agent.acl.rules import parse_rules
from meshagent.agent.catalog import CRITICAL, PASSING, Catalog, Check, CommandError, Node, commands, session_state
from meshagent.agent.catalog.session_state import MAX_CHECKS, Session, SessionState

NOW = 1_700_000_000.0


class Cat:
    """A catalog with a node `n1` (serfHealth passing, a service check `web-alive`) that numbers its writes."""

    def __init__(self) -> None:
        self.cat = Catalog()
        self.changes: list[frozenset[str]] = []
        self.cat.add_listener(lambda _i, keys: self.changes.append(keys))
        self.register("n1")

    def apply(self, command: dict[str, Any]) -> Any:
        return self.cat.apply(self.cat.last_index + 1, command)

    def register(self, node: str, serf: str = PASSING) -> None:
        self.apply(commands.register(Node(node=node, address="127.0.0.1"), None,
                                     [Check(node=node, check_id="serfHealth", status=serf)]))

    def session(self, **fields: Any) -> str:
        row = {"id": str(uuid.uuid4()), "node": "n1", **fields}
        sid = self.apply(commands.session_create(row))
        assert sid == row["id"]
        return str(sid)

    def lock(self, key: str, sid: str, value: bytes = b"v", now: float = NOW) -> bool:
        return bool(self.apply(commands.kv_lock(key, value, sid, now)))

    def unlock(self, key: str, sid: str, value: bytes = b"r") -> bool:
        return bool(self.apply(commands.kv_unlock(key, value, sid)))

    def destroy(self, sid: str, now: float = NOW) -> bool:
        return bool(self.apply(commands.session_destroy(sid, now)))


@pytest.fixture
def c() -> Cat:
    return Cat()


# ------------------------------------------------------------------------------------------ create / read


def test_create_defaults_and_reads(c: Cat) -> None:
    sid = c.session(name="leader", ttl="15s")
    row = c.cat.sessions.get(sid)
    assert row is not None
    assert (row.name, row.node, row.node_checks, row.behavior, row.lock_delay, row.ttl) == \
        ("leader", "n1", ["serfHealth"], "release", 15.0, "15s")
    assert row.create_index == row.modify_index == c.cat.last_index
    assert [s.id for s in c.cat.sessions.list()] == [sid]
    assert [s.id for s in c.cat.sessions.for_node("N1")] == [sid]
    assert c.cat.sessions.for_node("other") == []
    assert c.cat.sessions.index == c.cat.last_index
    assert c.changes[-1] == {"sessions", f"session:{sid}", "node-sessions:n1"}
    assert c.cat.index_for(["sessions"]) == c.cat.last_index


def test_create_refuses_unknown_node_and_checks_with_consuls_text(c: Cat) -> None:
    with pytest.raises(CommandError, match="Missing node registration"):
        c.session(node="ghost")
    with pytest.raises(CommandError, match="Missing check 'nope' registration"):
        c.session(node_checks=["nope"])
    with pytest.raises(CommandError, match="Missing check 'svc-check' registration"):
        c.session(node_checks=[], service_checks=[{"ID": "svc-check", "Namespace": ""}])
    c.register("n2", serf=CRITICAL)
    with pytest.raises(CommandError, match="Check 'serfHealth' is in critical state"):
        c.session(node="n2")
    assert c.cat.sessions.list() == []
    sid = c.session(node="n2", node_checks=[])  # no checks: a session only a TTL or destroy ends
    assert c.cat.sessions.get(sid) is not None


@pytest.mark.parametrize("fields, text", [
    ({"id": "not-a-uuid"}, "id must be a lower-case UUID"),
    ({"id": 7}, "id must be a string"),
    ({"node": ""}, "node is required"),
    ({"node": "x" * 300}, "node is longer than 256"),
    ({"name": "x" * 257}, "name is longer than 256"),
    ({"name": ["a"]}, "name must be a string"),
    ({"behavior": "explode"}, "Invalid Behavior setting 'explode'"),
    ({"ttl": "5s"}, "Invalid Session TTL '5s'"),
    ({"ttl": "25h"}, "Invalid Session TTL '25h'"),
    ({"ttl": "soon"}, "invalid TTL"),
    ({"ttl": 10}, "ttl must be a string"),
    ({"lock_delay": 61}, "lock_delay must be between 0 and 60"),
    ({"lock_delay": -1}, "lock_delay must be between 0 and 60"),
    ({"lock_delay": float("nan")}, "lock_delay must be a finite number"),
    ({"lock_delay": True}, "lock_delay must be a finite number"),
    ({"node_checks": "serfHealth"}, "node_checks must be a list"),
    ({"node_checks": ["c"] * (MAX_CHECKS + 1)}, "node_checks must be a list of at most 64"),
    ({"node_checks": [""]}, "node_checks entries must be non-empty"),
    ({"service_checks": [{"ID": 3}]}, "service_checks ID must be"),
    ({"service_checks": ["x"]}, "service_checks entries must be maps"),
    ({"service_checks": [{"ID": "a"}] * (MAX_CHECKS + 1)}, "at most 64"),
])
def test_hostile_create_fails_naming_the_field(c: Cat, fields: dict[str, Any], text: str) -> None:
    with pytest.raises(CommandError, match=text):
        c.session(**fields)
    assert len(c.cat.sessions) == 0


@pytest.mark.parametrize("command", [
    {"op": "session", "verb": "create", "session": "x"},
    {"op": "session", "verb": "create"},
    {"op": "session", "verb": "destroy", "id": 5, "now": NOW},
    {"op": "session", "verb": "destroy", "id": "a", "now": "soon"},
    {"op": "session", "verb": "destroy", "id": "a", "now": float("inf")},
    {"op": "session", "verb": "renew"},
    {"op": "kv", "verb": "lock", "key": "k", "session": 1, "now": NOW},
    {"op": "kv", "verb": "lock", "key": "k", "session": "s", "now": None},
    {"op": "kv", "verb": "lock", "key": "k", "session": "s", "now": NOW, "value": "text"},
    {"op": "kv", "verb": "lock", "key": "k", "session": "s", "now": NOW, "flags": -1},
    {"op": "kv", "verb": "unlock", "key": "k", "session": "", "now": NOW},
    {"op": "kv", "verb": "unlock", "key": "k", "session": "s", "flags": 2**64},
])
def test_hostile_commands_are_command_errors(c: Cat, command: dict[str, Any]) -> None:
    before = c.cat.snapshot()
    with pytest.raises(CommandError):
        c.apply(command)
    after = Catalog.restore(c.cat.snapshot())
    assert Catalog.restore(before).state_equal(after)


def test_duplicate_id_and_the_session_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cat()
    sid = c.session()
    with pytest.raises(CommandError, match="already exists"):
        c.apply(commands.session_create({"id": sid, "node": "n1"}))
    assert session_state.MAX_SESSIONS == 100_000
    monkeypatch.setattr(session_state, "MAX_SESSIONS", 50)  # the same check, without 100,000 rows
    state = SessionState()
    for i in range(50):
        state.create(i + 1, Session(id=f"{i:08x}-0000-0000-0000-000000000000", node="n1", node_checks=[]),
                     lambda _cid: None)
    with pytest.raises(ValueError, match="too many sessions"):
        state.create(51, Session(id=str(uuid.uuid4()), node="n1", node_checks=[]),
                     lambda _cid: None)


# ------------------------------------------------------------------------------------------ locks


def test_acquire_release_and_lock_index(c: Cat) -> None:
    a, b = c.session(), c.session()
    assert c.lock("svc/leader", a, b"A")
    entry = c.cat.kv_get("svc/leader")
    assert entry is not None and (entry.session, entry.lock_index, entry.value) == (a, 1, b"A")
    assert c.changes[-1] == {"kv:svc/leader"}
    assert not c.lock("svc/leader", b)  # held by another
    assert c.lock("svc/leader", a, b"A2")  # re-acquire by the holder: value updated, LockIndex kept
    entry = c.cat.kv_get("svc/leader")
    assert entry is not None and (entry.lock_index, entry.value) == (1, b"A2")
    assert not c.unlock("svc/leader", b)  # not the holder
    assert c.unlock("svc/leader", a, b"bye")
    entry = c.cat.kv_get("svc/leader")
    assert entry is not None and (entry.session, entry.lock_index, entry.value) == ("", 1, b"bye")
    assert c.cat.sessions.held_keys(a) == []
    assert c.lock("svc/leader", b)
    entry = c.cat.kv_get("svc/leader")
    assert entry is not None and (entry.session, entry.lock_index) == (b, 2)
    assert c.cat.sessions.held_keys(b) == ["svc/leader"]


def test_unknown_session_and_unlocking_a_missing_key_are_refused(c: Cat) -> None:
    assert not c.lock("k", str(uuid.uuid4()))
    assert c.cat.kv_get("k") is None
    assert not c.unlock("k", str(uuid.uuid4()))


def test_plain_writes_keep_the_lock_and_delete_releases_it(c: Cat) -> None:
    a = c.session()
    assert c.lock("k", a)
    c.apply(commands.kv_set("k", b"plain"))
    entry = c.cat.kv_get("k")
    assert entry is not None and (entry.session, entry.lock_index, entry.value) == (a, 1, b"plain")
    c.apply(commands.kv_cas("k", b"cas", entry.modify_index))
    entry = c.cat.kv_get("k")
    assert entry is not None and (entry.session, entry.value) == (a, b"cas")
    c.apply(commands.kv_delete("k"))
    assert c.cat.sessions.held_keys(a) == []
    assert c.lock("dir/x", a) and c.lock("dir/y", a)
    c.apply(commands.kv_delete_tree("dir/"))
    assert c.cat.sessions.held_keys(a) == []


def test_destroy_release_keeps_keys_and_applies_lock_delay(c: Cat) -> None:
    a, b = c.session(lock_delay=10), c.session()
    assert c.lock("k1", a, b"v1") and c.lock("k2", a, b"v2")
    assert c.destroy(a, now=NOW)
    assert c.cat.sessions.get(a) is None
    assert {"sessions", f"session:{a}", "node-sessions:n1", "kv:k1", "kv:k2"} <= c.changes[-1]
    for key, value in (("k1", b"v1"), ("k2", b"v2")):
        entry = c.cat.kv_get(key)
        assert entry is not None and (entry.session, entry.lock_index, entry.value) == ("", 1, value)
        assert entry.modify_index == c.cat.last_index
    assert c.cat.sessions.lock_delay_until == {"k1": NOW + 10, "k2": NOW + 10}
    assert not c.lock("k1", b, now=NOW + 9.9)  # lock-delay refuses
    assert c.lock("k1", b, now=NOW + 10)  # ... until it has passed
    assert not c.destroy(a)  # unknown now: False, no error


def test_destroy_delete_removes_held_keys(c: Cat) -> None:
    a = c.session(behavior="delete", lock_delay=0)
    assert c.lock("eph/a", a) and c.lock("eph/b", a)
    c.apply(commands.kv_set("eph/c", b"not locked"))
    assert c.destroy(a)
    assert [e.key for e in c.cat.kv_list("eph/")] == ["eph/c"]
    assert c.cat.sessions.lock_delay_until == {}
    assert c.cat.index_for(["kvprefix:eph/"]) == c.cat.last_index


def test_lock_delays_are_pruned_by_later_invalidations(c: Cat) -> None:
    a = c.session(lock_delay=5)
    assert c.lock("old", a)
    c.destroy(a, now=NOW)
    b = c.session(lock_delay=5)
    assert c.lock("new", b, now=NOW + 100)
    c.destroy(b, now=NOW + 100)
    assert c.cat.sessions.lock_delay_until == {"new": NOW + 105}


# ------------------------------------------------------------------------------------------ snapshot


def test_snapshot_round_trip_keeps_sessions_holds_and_delays(c: Cat) -> None:
    a = c.session(name="x", ttl="30s", behavior="delete", lock_delay=3.5,
                  service_checks=[], node_checks=["serfHealth"])
    b = c.session(lock_delay=20)
    assert c.lock("held", a) and c.lock("gone", b)
    c.destroy(b, now=NOW)
    copy = Catalog.restore(c.cat.snapshot())
    assert copy.state_equal(c.cat)
    assert copy.sessions.held_keys(a) == ["held"]
    assert copy.sessions.lock_delay_until == {"gone": NOW + 20}
    assert copy.sessions.index == c.cat.sessions.index
    # The copy behaves the same: a destroy deletes the held key (behavior delete).
    copy.apply(copy.last_index + 1, commands.session_destroy(a, NOW))
    assert copy.kv_get("held") is None
    assert not copy.state_equal(c.cat)


def test_restore_without_a_sessions_section_is_empty(c: Cat) -> None:
    import msgpack
    raw = msgpack.unpackb(c.cat.snapshot(), raw=False, strict_map_key=False)
    del raw["sessions"]
    copy = Catalog.restore(msgpack.packb(raw, use_bin_type=True))
    assert copy.sessions.list() == []
    raw["sessions"] = {"sessions": [{"id": "bad"}]}
    with pytest.raises(CommandError, match="corrupt catalog snapshot"):
        Catalog.restore(msgpack.packb(raw, use_bin_type=True))


# ------------------------------------------------------------------------------------------ ACL rights


ACCESSOR = "11111111-2222-3333-4444-555555555555"


def ident(rules: str) -> ACLIdentity:
    return ACLIdentity(ACCESSOR, Authorizer([parse_rules(rules)], False))


def test_session_commands_need_session_write_on_the_node(c: Cat) -> None:
    sid = c.session()
    on_n1 = ident('session "n1" { policy = "write" }')
    read_only = ident('session "n1" { policy = "read" }')
    create = commands.session_create({"id": str(uuid.uuid4()), "node": "n1"})
    destroy = commands.session_destroy(sid, NOW)
    assert authorize(on_n1, create, c.cat) is None
    assert authorize(on_n1, destroy, c.cat) is None
    for cmd in (create, destroy):
        decision = authorize(read_only, cmd, c.cat)
        assert decision is not None and "session:write" in decision.denied_message(ACCESSOR)
    assert authorize(on_n1, commands.session_create({"id": str(uuid.uuid4()), "node": "n2"}), c.cat) is not None
    assert authorize(read_only, commands.session_destroy(str(uuid.uuid4()), NOW), c.cat) is None  # unknown
    assert authorize(on_n1, {"op": "session", "verb": "renew"}, c.cat) is not None
    with pytest.raises(MalformedCommand):
        authorize(on_n1, {"op": "session", "verb": "create", "session": []}, c.cat)


def test_lock_verbs_need_key_write_and_session_write(c: Cat) -> None:
    sid = c.session()
    both = ident('key "k" { policy = "write" }\nsession "n1" { policy = "write" }')
    key_only = ident('key "k" { policy = "write" }')
    session_only = ident('session "n1" { policy = "write" }')
    for cmd in (commands.kv_lock("k", b"", sid, NOW), commands.kv_unlock("k", b"", sid)):
        assert authorize(both, cmd, c.cat) is None
        for weak, need in ((key_only, "session:write"), (session_only, "key:write")):
            decision = authorize(weak, cmd, c.cat)
            assert decision is not None and need in decision.denied_message(ACCESSOR)
    with pytest.raises(MalformedCommand):
        authorize(both, {"op": "kv", "verb": "lock", "key": "k", "session": 3}, c.cat)


def test_reads_are_in_id_order_per_node(c: Cat) -> None:
    c.register("n2")
    ids = {c.session(node=node): node for node in ("n1", "n2", "n1", "N2")}
    assert [s.id for s in c.cat.sessions.list()] == sorted(ids)
    assert [s.id for s in c.cat.sessions.for_node("n2")] == sorted(i for i, n in ids.items() if n.lower() == "n2")
    assert {s.node for s in c.cat.sessions.for_node("n2")} == {"n2"}  # the catalog's spelling of the node


def test_random_operations_keep_holds_consistent_and_round_trip() -> None:
    """Whatever the order of writes, each key's Session names a live session, the held-keys index matches the
    KV rows, and a snapshot restores to an equal state."""
    rng = random.Random(16)
    c = Cat()
    sessions = [c.session(behavior=rng.choice(["release", "delete"]), lock_delay=rng.choice([0, 5]))
                for _ in range(4)]
    keys = [f"k/{i}" for i in range(6)]
    now, locked, released_by_destroy = NOW, 0, 0
    for _ in range(400):
        now += rng.random() * 2
        key, sid = rng.choice(keys), rng.choice(sessions)
        roll = rng.random()
        if roll < 0.35:
            locked += c.lock(key, sid, now=now)
        elif roll < 0.55:
            c.unlock(key, sid)
        elif roll < 0.65:
            c.apply(commands.kv_set(key, b"plain"))
        elif roll < 0.72:
            c.apply(commands.kv_delete(key))
        elif roll < 0.75:
            c.apply(commands.kv_delete_tree("k/"))
        elif roll < 0.85:
            released_by_destroy += len(c.cat.sessions.held_keys(sid))
            c.destroy(sid, now=now)
            sessions[sessions.index(sid)] = c.session(behavior=rng.choice(["release", "delete"]), lock_delay=5)
        else:
            continue
        live = {s.id for s in c.cat.sessions.list()}
        holders = {e.key: e.session for e in c.cat.kv_list("k/") if e.session}
        assert set(holders.values()) <= live
        for s in live:
            assert c.cat.sessions.held_keys(s) == sorted(k for k, h in holders.items() if h == s)
    assert locked > 20 and released_by_destroy > 5, (locked, released_by_destroy)
    assert Catalog.restore(c.cat.snapshot()).state_equal(c.cat)
