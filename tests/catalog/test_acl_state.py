"""AclState in the catalog FSM: reads, commands, refusals, bounds, snapshots and the client replica's redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.agent.acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from meshagent.agent.acl.objects import Link, NodeIdentity, Policy, Role, ServiceIdentity, Token
from meshagent.agent.acl.secrets import ANONYMOUS_ACCESSOR_ID
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.catalog import acl_state as acl_state_module
from meshagent.agent.catalog.acl_state import (
    AclState,
    redacted_acl_command,
    secret_digest,
    token_from_dict,
    token_to_dict,
)
from meshagent.agent.catalog.state import CommandError
from meshagent.agent.rpc.framing import FrameReader
from meshagent.agent.server.feed import CatalogFeed
from meshagent.agent.store import CatalogStore

from tests.support.feed_sink import Sink

INITIAL = "11111111-1111-4111-8111-111111111111"
INITIAL_ACCESSOR = "aaaaaaaa-1111-4111-8111-111111111111"
P1 = "22222222-2222-4222-8222-222222222222"
P2 = "22222222-2222-4222-8222-333333333333"
R1 = "33333333-3333-4333-8333-333333333333"
T1 = "44444444-4444-4444-8444-444444444444"
S1 = "55555555-5555-4555-8555-555555555555"
T2 = "66666666-6666-4666-8666-666666666666"
S2 = "77777777-7777-4777-8777-777777777777"
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


class Applier:
    """A catalog and the next index to apply at (rejected commands use their index, as in Raft)."""

    def __init__(self) -> None:
        self.cat = Catalog()

    def __call__(self, cmd: dict[str, Any]) -> Any:
        return self.cat.apply(self.cat.last_index + 1, cmd)

    def refused(self, cmd: dict[str, Any], match: str) -> str:
        """Apply a command that must be refused; the state must not change."""
        before = AclState.restore(self.cat.acl.snapshot())
        with pytest.raises(CommandError, match=match) as info:
            self(cmd)
        assert self.cat.acl == before
        return str(info.value)


def policy(pid: str = P1, name: str = "p1", rules: str = 'key_prefix "" { policy = "read" }') -> Policy:
    return Policy(id=pid, name=name, rules=rules)


def token(aid: str = T1, secret: str = S1, **kw: Any) -> Token:
    return Token(accessor_id=aid, secret_id=secret, **kw)


@pytest.fixture
def a() -> Applier:
    applier = Applier()
    applier(commands.acl_init(INITIAL, accessor_id=INITIAL_ACCESSOR))
    return applier


def test_init_adds_the_builtins_once_and_the_initial_management_token(a: Applier) -> None:
    acl = a.cat.acl
    gm = acl.policy(GLOBAL_MANAGEMENT_POLICY_ID)
    assert gm is not None and gm.name == "global-management" and acl.policy_by_name("global-management") == gm
    anon = acl.token(ANONYMOUS_ACCESSOR_ID)
    assert anon is not None and anon.policies == () and acl.token_by_secret("anonymous") == anon
    mgmt = acl.token_by_secret(INITIAL)
    assert mgmt is not None and mgmt.accessor_id == INITIAL_ACCESSOR
    assert mgmt.policies == (Link(GLOBAL_MANAGEMENT_POLICY_ID, "global-management"),)
    assert acl.index == 1 and a.cat.index_for(["acl"]) == 1
    # Idempotent: a second leader's init (another random accessor) changes nothing.
    a(commands.acl_init(INITIAL))
    a(commands.acl_init(""))
    assert acl.index == 1 and a.cat.index_for(["acl"]) == 1 and len(acl.tokens()) == 2
    assert acl.bootstrap_index == 1  # the initial management token is the bootstrap (as Consul's leader)


def test_tokens_resolve_by_secret_links_by_name_and_order_by_create_index(a: Applier) -> None:
    a(commands.acl_policy_set(policy()))
    a(commands.acl_role_set(Role(id=R1, name="r1", policies=(Link("", "p1"),))))
    expires = NOW + timedelta(minutes=5)
    a(commands.acl_token_set(token(policies=(Link("", "p1"),), roles=(Link(R1, ""),), description="web",
                                   service_identities=(ServiceIdentity("web", ("dc1",)),),
                                   node_identities=(NodeIdentity("n1", "dc1"),), create_time=NOW,
                                   expiration_time=expires)))
    acl = a.cat.acl
    t = acl.token_by_secret(S1)
    assert t is not None and t == acl.token(T1) and t.secret_id == S1 and t.description == "web"
    assert t.policies == (Link(P1, "p1"),) and t.roles == (Link(R1, "r1"),)
    assert t.expiration_time == expires and t.create_time == NOW
    assert t.create_index == t.modify_index == 4
    assert acl.token_by_secret(S2) is None and acl.token_by_secret("") is None and acl.token(T2) is None
    assert t.expired(expires)  # expired tokens stay stored: the resolver treats them as not found
    role = acl.role_by_name("r1")
    assert role is not None and role.policies == (Link(P1, "p1"),)
    a(commands.acl_token_set(token(T2, S2)))
    assert [x.accessor_id for x in acl.tokens()] == [ANONYMOUS_ACCESSOR_ID, INITIAL_ACCESSOR, T1, T2]
    # An update keeps CreateIndex and, given no secret, the secret.
    a(commands.acl_token_set(token(T1, "", description="web2")))
    t = acl.token(T1)
    assert t is not None and t.secret_id == S1 and t.create_index == 4 and t.modify_index == 6
    assert [x.accessor_id for x in acl.tokens()][2] == T1 and t.expiration_time is None  # a set replaces


def test_links_show_current_names_and_dangling_ones_are_dropped(a: Applier) -> None:
    a(commands.acl_policy_set(policy()))
    a(commands.acl_policy_set(policy(P2, "p2")))
    a(commands.acl_role_set(Role(id=R1, name="r1", policies=(Link(P1, ""), Link(P2, "")))))
    a(commands.acl_token_set(token(policies=(Link(P1, ""), Link(P2, "")), roles=(Link("", "r1"),))))
    acl = a.cat.acl
    assert acl.token(T1).policies == (Link(P1, "p1"), Link(P2, "p2"))  # type: ignore[union-attr]
    a(commands.acl_policy_set(policy(P1, "renamed")))
    assert acl.token(T1).policies[0] == Link(P1, "renamed")  # type: ignore[union-attr]
    assert acl.role(R1).policies[0] == Link(P1, "renamed")  # type: ignore[union-attr]
    assert acl.policy_by_name("p1") is None and acl.policy_by_name("renamed") is not None
    a(commands.acl_policy_delete(P2))
    a(commands.acl_role_delete(R1))
    t = acl.token(T1)
    assert t is not None and t.policies == (Link(P1, "renamed"),) and t.roles == ()
    assert acl.role(R1) is None and acl.role_by_name("r1") is None and acl.roles() == []
    assert acl.roles() == [] and [p.id for p in acl.policies()] == [GLOBAL_MANAGEMENT_POLICY_ID, P1]
    # A new policy named like the deleted one does not revive the dangling link (links are by ID).
    a(commands.acl_policy_set(policy("22222222-2222-4222-8222-444444444444", "p2")))
    assert acl.token(T1).policies == (Link(P1, "renamed"),)  # type: ignore[union-attr]
    # Deleting what is absent is a no-op (no new ACL index).
    before = acl.index
    a(commands.acl_token_delete(T2))
    a(commands.acl_policy_delete(P2))
    assert acl.index == before


def test_watch_key_and_index_move_only_on_changes(a: Applier) -> None:
    a(commands.acl_policy_set(policy()))
    assert a.cat.index_for(["acl"]) == a.cat.acl.index == 2
    a(commands.acl_policy_set(policy()))  # unchanged
    assert a.cat.index_for(["acl"]) == 2 and a.cat.acl.policy(P1).modify_index == 2  # type: ignore[union-attr]
    a(commands.kv_set("k", b"v"))
    assert a.cat.index_for(["acl"]) == 2
    a(commands.acl_token_set(token()))
    assert a.cat.index_for(["acl"]) == a.cat.acl.index == 5


def test_refusals_name_the_field_and_change_nothing(a: Applier) -> None:
    a(commands.acl_policy_set(policy()))
    a(commands.acl_role_set(Role(id=R1, name="r1")))
    a(commands.acl_token_set(token()))
    a.refused(commands.acl_policy_set(policy(P2, "p1")), "policy.name: a policy named 'p1' already exists")
    a.refused(commands.acl_role_set(Role(id="33333333-3333-4333-8333-444444444444", name="r1")),
              "role.name: a role named 'r1' already exists")
    msg = a.refused(commands.acl_token_set(token(T2, S1)), "token.secret_id: already used by another token")
    assert S1 not in msg
    a.refused(commands.acl_token_set(token(T2, INITIAL)), "token.secret_id: already used")
    a.refused(commands.acl_token_set(token(T2, S2, policies=(Link("", "nope"),))),
              r"token.policies\[0\]: no policy with name 'nope'")
    a.refused(commands.acl_token_set(token(T2, S2, roles=(Link(P2, ""),))),
              r"token.roles\[0\]: no role with ID")
    a.refused(commands.acl_role_set(Role(id=R1, name="r1", policies=(Link(P2, ""),))),
              r"role.policies\[0\]: no policy with ID")
    a.refused(commands.acl_token_set(token(T2, "")), "token.secret_id: missing")
    a.refused(commands.acl_policy_delete(GLOBAL_MANAGEMENT_POLICY_ID), "cannot be deleted")
    a.refused(commands.acl_policy_set(Policy(id=GLOBAL_MANAGEMENT_POLICY_ID, name="gm")), "cannot be renamed")
    a.refused(commands.acl_policy_set(Policy(id=GLOBAL_MANAGEMENT_POLICY_ID, name="global-management",
                                             rules='acl = "read"')), "rules and datacenters cannot be changed")
    a.refused(commands.acl_policy_set(Policy(id=P2, name="global-management")), "already exists")
    a.refused(commands.acl_token_delete(ANONYMOUS_ACCESSOR_ID), "anonymous token cannot be deleted")
    a.refused(commands.acl_token_set(token(ANONYMOUS_ACCESSOR_ID, S2)), "anonymous token's secret")
    a.refused(commands.acl_policy_set(policy(P2, "p2", rules="nonsense {")), "policy.rules: ")
    # What builtins allow: a description on global-management, policies on the anonymous token.
    gm = a.cat.acl.policy(GLOBAL_MANAGEMENT_POLICY_ID)
    assert gm is not None
    a(commands.acl_policy_set(Policy(id=gm.id, name=gm.name, rules=gm.rules, description="all")))
    a(commands.acl_token_set(token(ANONYMOUS_ACCESSOR_ID, "anonymous", policies=(Link(P1, ""),))))
    assert a.cat.acl.token_by_secret("anonymous").policies == (Link(P1, "p1"),)  # type: ignore[union-attr]


def test_bootstrap_once_then_refused_with_the_reset_index(a: Applier) -> None:
    # An initial management token was the bootstrap; without one, /v1/acl/bootstrap works once.
    a.refused(commands.acl_bootstrap(token(T2, S2)), r"^ACL bootstrap no longer allowed \(reset index: 1\)$")
    a = Applier()
    a(commands.acl_init(""))
    boot = token(policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, ""),), description="Bootstrap Token")
    a(commands.acl_bootstrap(boot))
    assert a.cat.acl.bootstrap_index == 2 and a.cat.acl.token_by_secret(S1) is not None
    a.refused(commands.acl_bootstrap(token(T2, S2)), r"^ACL bootstrap no longer allowed \(reset index: 2\)$")
    restored = Catalog.restore(a.cat.snapshot())
    assert restored.acl.bootstrap_index == 2 and restored.state_equal(a.cat)


def test_bounds_refuse_beyond_the_maximum(a: Applier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acl_state_module, "MAX_OBJECTS", 3)  # 100,000 in production; the check is the same
    a(commands.acl_token_set(token()))
    a.refused(commands.acl_token_set(token(T2, S2)), "at most 3 tokens")
    a(commands.acl_token_set(token(description="an update is not a new token")))
    a(commands.acl_policy_set(policy()))
    a(commands.acl_policy_set(policy(P2, "p2")))
    a.refused(commands.acl_policy_set(policy("22222222-2222-4222-8222-444444444444", "p3")), "at most 3 policies")


HOSTILE: list[dict[str, Any]] = [
    {"op": "acl"},
    {"op": "acl", "verb": 7},
    {"op": "acl", "verb": "x" * 10_000},
    {"op": "acl", "verb": "token-set"},
    {"op": "acl", "verb": "token-set", "token": []},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": 5}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": "s" * 257}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": "not-a-uuid", "secret_id": S1}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_digest": "ab"}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "policies": "p1"}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "policies": [{}]}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "policies": [[1]]}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1,
                                                 "policies": [{"id": P1}] * 257}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "local": "yes"}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "create_time": "soon"}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1,
                                                 "expiration_time": "2026-01-01T00:00:00"}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "create_index": -1}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "create_index": 2**70}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1, "description": "d" * 9000}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1,
                                                 "service_identities": [{"service_name": 3}]}},
    {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": S1,
                                                 "node_identities": [{"node_name": "n"}]}},
    {"op": "acl", "verb": "policy-set", "policy": {"id": P1, "name": "bad name!"}},
    {"op": "acl", "verb": "policy-set", "policy": {"id": P1, "name": "p", "rules": "x" * (64 * 1024 + 1)}},
    {"op": "acl", "verb": "policy-set", "policy": {"id": P1, "name": "p", "datacenters": [""]}},
    {"op": "acl", "verb": "role-set", "role": {"id": R1, "name": ""}},
    {"op": "acl", "verb": "token-delete", "accessor_id": None},
    {"op": "acl", "verb": "policy-delete"},
    {"op": "acl", "verb": "role-delete", "role_id": ["x"]},
    {"op": "acl", "verb": "init", "initial_management_secret": 12},
    {"op": "acl", "verb": "init", "initial_management_secret": INITIAL},  # no accessor_id
    {"op": "acl", "verb": "init", "initial_management_digest": "zz"},
    {"op": "acl", "verb": "bootstrap", "token": {"accessor_id": T1}},
]


@pytest.mark.parametrize("cmd", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_commands_are_command_errors_on_server_and_replica(cmd: dict[str, Any]) -> None:
    server, replica = Applier(), Applier()
    with pytest.raises(CommandError):
        server(cmd)
    # The replica gets the redacted command and must refuse it too, or the two would diverge.
    with pytest.raises(CommandError):
        replica(redacted_acl_command(cmd))
    assert server.cat.acl == AclState() and server.cat.last_index == 1


_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.just(S1) | st.just(P1)
_json = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.sampled_from(["id", "name", "accessor_id", "secret_id", "policies", "roles", "rules", "x"]), kids,
    max_size=5), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=st.sampled_from(["token-set", "policy-set", "role-set", "bootstrap", "init", "token-delete"]),
       body=_json)
def test_random_acl_commands_never_crash_the_fsm(verb: str, body: Any) -> None:
    server, replica = Applier(), Applier()
    cmd = {"op": "acl", "verb": verb, "token": body, "policy": body, "role": body, "accessor_id": body,
           "initial_management_secret": body}
    verdicts = []
    for target, sent in ((server, cmd), (replica, redacted_acl_command(cmd))):
        try:
            target(sent)
            verdicts.append("applied")
        except CommandError:
            verdicts.append("refused")
    assert verdicts[0] == verdicts[1]  # a replica refuses exactly what the servers refuse


def test_codecs_round_trip_and_snapshot_without_acl_restores_empty() -> None:
    t = token(description="d", policies=(Link(P1, "p1"),), service_identities=(ServiceIdentity("web"),),
              create_time=NOW, expiration_time=NOW + timedelta(hours=1), local=True, hash="h")
    back, digest = token_from_dict(msgpack.unpackb(msgpack.packb(token_to_dict(t)), raw=False))
    assert back == t and digest == secret_digest(S1)
    cat = Catalog()
    cat.apply(1, commands.kv_set("k", b"v"))
    raw = msgpack.unpackb(cat.snapshot(), raw=False)
    del raw["acl"]  # a snapshot from before issue 15
    old = Catalog.restore(msgpack.packb(raw, use_bin_type=True))
    assert old.acl == AclState() and old.acl.tokens() == [] and old.state_equal(cat)


def test_restore_refuses_a_corrupt_acl_section(a: Applier) -> None:
    a(commands.acl_token_set(token()))
    raw = msgpack.unpackb(a.cat.snapshot(), raw=False)
    raw["acl"]["tokens"].append(dict(raw["acl"]["tokens"][-1]))  # the same secret twice
    with pytest.raises(CommandError, match="corrupt catalog snapshot"):
        Catalog.restore(msgpack.packb(raw, use_bin_type=True))
    raw["acl"] = {"tokens": "nope"}
    with pytest.raises(CommandError, match="corrupt catalog snapshot"):
        Catalog.restore(msgpack.packb(raw, use_bin_type=True))


def test_the_feed_gives_clients_no_secret_and_their_replica_resolves_by_digest() -> None:
    store = CatalogStore()
    feed = CatalogFeed(store, lambda: (True, 0))
    sink = Sink()
    store.catalog.apply(1, commands.acl_init(INITIAL, accessor_id=INITIAL_ACCESSOR))
    feed.subscribe(sink, "client")  # a redacted snapshot holding the initial management token
    later = [commands.acl_policy_set(policy()),
             commands.acl_token_set(token(policies=(Link("", "p1"),))),
             commands.acl_token_set(token(T2, S2, policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, ""),))),
             # refused: the initial management token was the bootstrap
             commands.acl_bootstrap(token("88888888-8888-4888-8888-888888888888", S2)),
             commands.acl_token_set(token(T1, "", description="kept secret")),
             commands.acl_init(INITIAL),
             {"op": "acl", "verb": "token-set", "token": {"accessor_id": T1, "secret_id": 7}}]  # refused
    for index, cmd in enumerate(later, start=2):
        try:
            store.catalog.apply(index, cmd)
        except CommandError:
            pass
        feed.publish(index, msgpack.packb(cmd, use_bin_type=True), cmd)
    wire = b"".join(sink.frames)
    for secret in (INITIAL, S1, S2):
        assert secret.encode() not in wire
    frames = FrameReader().feed(wire)
    assert frames[0][0] == "snap" and len(frames) == 1 + len(later)
    replica = Catalog.restore(frames[0][2])
    for _, index, data in frames[1:]:
        try:
            replica.apply(index, msgpack.unpackb(data, raw=False))
        except CommandError:
            pass
    server = store.catalog.acl
    assert replica.last_index == store.catalog.last_index and replica.acl.index == server.index
    for secret in (INITIAL, S1, S2, "anonymous"):
        mine, theirs = server.token_by_secret(secret), replica.acl.token_by_secret(secret)
        assert mine is not None and theirs is not None
        assert theirs.secret_id == "" and theirs == Token(**{**mine.__dict__, "secret_id": ""})
    assert [t.accessor_id for t in replica.acl.tokens()] == [t.accessor_id for t in server.tokens()]
    assert replica.acl.bootstrap_index == server.bootstrap_index == 1
    assert replica.acl.token(T1).description == "kept secret"  # type: ignore[union-attr]
    # The server's own snapshot keeps secrets; the redacted one has none and restores the same digests.
    assert S1.encode() in store.catalog.snapshot()
    redacted = store.catalog.snapshot(redact_secrets=True)
    assert all(s.encode() not in redacted for s in (INITIAL, S1, S2))
    assert Catalog.restore(redacted).acl == replica.acl
