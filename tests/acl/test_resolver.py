"""ACLResolver against a real catalog (AclState fed by its commands): tokens, roles, identities, expiry, the
agent recovery token, memoisation, down_policy on a stale client replica, and the builtins' initializer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing
from meshagent.agent.acl import resolver as resolver_module
from meshagent.agent.acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from meshagent.agent.acl.identity import ALLOW_ALL
from meshagent.agent.acl.objects import Link, NodeIdentity, Policy, Role, ServiceIdentity, Token
from meshagent.agent.acl.resolver import AGENT_RECOVERY_ACCESSOR, ACLResolver
from meshagent.agent.acl.secrets import ANONYMOUS_ACCESSOR_ID, MAX_SECRET_LEN
from meshagent.agent.catalog import commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.rpc.errors import ACLNotFound, NoLeader
from meshagent.agent.server.acl_init import ACLInitializer, init_needed
from meshagent.agent.store import CatalogStore

MGMT = "11111111-1111-4111-8111-111111111111"
WEB = "22222222-2222-4222-8222-222222222222"
WEB_ACCESSOR = "aaaaaaaa-2222-4222-8222-222222222222"
RECOVERY = "33333333-3333-4333-8333-333333333333"
WEB_POLICY = "bbbbbbbb-0000-4000-8000-000000000001"
DC2_POLICY = "bbbbbbbb-0000-4000-8000-000000000002"
ROLE = "cccccccc-0000-4000-8000-000000000001"


class Clock:
    """A settable clock for store.stale_since and token_ttl."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(*, enabled: bool = True, default_policy: str = "deny", server: bool = True, **tokens: str) -> AgentConfig:
    cfg = AgentConfig(node_name="node-1", datacenter="dc1", server=server)
    cfg.acl.enabled = enabled
    cfg.acl.default_policy = cfg.acl_default_policy = default_policy
    for kind, secret in tokens.items():
        setattr(cfg.acl.tokens, kind, secret)
    return cfg


def apply(store: CatalogStore, cmd: dict[str, object]) -> None:
    store.catalog.apply(store.catalog.last_index + 1, cmd)


def seeded(cfg: AgentConfig | None = None, clock: Clock | None = None) -> tuple[ACLResolver, CatalogStore]:
    """A store with the builtins (MGMT as initial management), a web policy and a web token."""
    store = CatalogStore()
    apply(store, commands.acl_init(MGMT))
    apply(store, commands.acl_policy_set(Policy(id=WEB_POLICY, name="web-writer",
                                                rules='service "web" { policy = "write" }')))
    apply(store, commands.acl_token_set(Token(accessor_id=WEB_ACCESSOR, secret_id=WEB,
                                              policies=(Link(WEB_POLICY, ""),))))
    resolver = ACLResolver(cfg or config(), store, clock=clock or Clock())
    return resolver, store


def test_acls_off_resolve_to_allow_all_without_looking() -> None:
    resolver = ACLResolver(config(enabled=False), CatalogStore())
    assert resolver.resolve("whatever") is ALLOW_ALL and resolver.resolve(None) is ALLOW_ALL


def test_no_token_is_anonymous_even_before_the_builtins_exist() -> None:
    resolver = ACLResolver(config(), CatalogStore())
    identity = resolver.resolve(None)
    assert identity.accessor_id == ANONYMOUS_ACCESSOR_ID and identity.enabled
    assert not identity.authorizer.service_read("web").allowed
    allow = ACLResolver(config(default_policy="allow"), CatalogStore()).resolve("")
    assert allow.authorizer.service_write("web").allowed


def test_management_token_and_identity_fields() -> None:
    resolver, store = seeded()
    identity = resolver.resolve(MGMT)
    token = store.catalog.acl.token_by_secret(MGMT)
    assert token is not None and identity.token == token and identity.accessor_id == token.accessor_id
    assert identity.cache_key == f"{token.accessor_id}:{store.catalog.acl.index}"
    assert identity.authorizer.acl_write().allowed and identity.authorizer.key_write("any").allowed
    assert MGMT not in repr(identity) and MGMT not in repr(resolver.tokens)


def test_policy_token_gets_its_rules_and_default_deny_for_the_rest() -> None:
    resolver, _ = seeded()
    auth = resolver.resolve(WEB).authorizer
    assert auth.service_write("web").allowed and not auth.service_write("db").allowed
    assert not auth.acl_read().allowed and not auth.keyring_read().allowed


def test_unknown_oversized_and_deleted_tokens_are_not_found() -> None:
    resolver, store = seeded()
    with pytest.raises(ACLNotFound):
        resolver.resolve("44444444-4444-4444-8444-444444444444")
    with pytest.raises(ACLNotFound):
        resolver.resolve("x" * 257)
    resolver.resolve(WEB)
    apply(store, commands.acl_token_delete(WEB_ACCESSOR))
    with pytest.raises(ACLNotFound):  # refused at once: the index moved, the memo is gone
        resolver.resolve(WEB)
    assert resolver.counters() == {"resolve.hits": 1, "resolve.not_found": 3, "down_policy": 0}


def test_expired_token_is_not_found() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    resolver, store = seeded()
    resolver.wall = lambda: now
    expiring = Token(accessor_id="aaaaaaaa-5555-4555-8555-555555555555",
                     secret_id="55555555-5555-4555-8555-555555555555",
                     policies=(Link(WEB_POLICY, ""),), expiration_time=now + timedelta(minutes=5))
    apply(store, commands.acl_token_set(expiring))
    assert resolver.resolve(expiring.secret_id).authorizer.service_write("web").allowed
    resolver.wall = lambda: now + timedelta(minutes=5)
    with pytest.raises(ACLNotFound):
        resolver.resolve(expiring.secret_id)


def test_roles_identities_and_datacenters() -> None:
    resolver, store = seeded()
    apply(store, commands.acl_policy_set(Policy(id=DC2_POLICY, name="dc2-only", datacenters=("dc2",),
                                                rules='key_prefix "" { policy = "write" }')))
    apply(store, commands.acl_role_set(Role(id=ROLE, name="api-role", policies=(Link(WEB_POLICY, ""),),
                                            service_identities=(ServiceIdentity("api"),))))
    token = Token(accessor_id="aaaaaaaa-6666-4666-8666-666666666666", secret_id="66666666-6666-4666-8666-666666666666",
                  policies=(Link(DC2_POLICY, ""),), roles=(Link(ROLE, ""),),
                  service_identities=(ServiceIdentity("billing", ("dc2",)),),
                  node_identities=(NodeIdentity("node-1", "dc1"), NodeIdentity("node-9", "dc2")))
    apply(store, commands.acl_token_set(token))
    auth = resolver.resolve(token.secret_id).authorizer
    assert auth.service_write("web").allowed  # the role's policy
    assert auth.service_write("api").allowed and auth.service_write("api-sidecar-proxy").allowed  # role identity
    assert auth.service_read("anything").allowed  # identities read every service
    assert not auth.service_write("billing").allowed  # its identity is for dc2 only
    assert not auth.key_write("k").allowed  # the policy is for dc2 only
    assert auth.node_write("node-1").allowed and not auth.node_write("node-9").allowed


def test_policy_edit_changes_decisions_and_parsing_is_per_modify_index() -> None:
    resolver, store = seeded()
    first = resolver.resolve(WEB)
    assert resolver.resolve(WEB) is first  # memoised while the ACL index stays
    parsed = dict(resolver._parsed)
    apply(store, commands.acl_token_set(Token(accessor_id="aaaaaaaa-7777-4777-8777-777777777777",
                                              secret_id="77777777-7777-4777-8777-777777777777")))
    second = resolver.resolve(WEB)
    assert second is not first and second.cache_key != first.cache_key
    assert all(resolver._parsed[k] is v for k, v in parsed.items())  # an unrelated change parses nothing again
    old = store.catalog.acl.policy(WEB_POLICY)
    assert old is not None
    apply(store, commands.acl_policy_set(replace(old, rules='service "db" { policy = "write" }')))
    auth = resolver.resolve(WEB).authorizer
    assert auth.service_write("db").allowed and not auth.service_write("web").allowed


def test_memo_and_parse_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "MAX_PARSED", 2)
    monkeypatch.setattr(resolver_module, "MAX_IDENTITIES", 3)
    resolver, store = seeded()
    for i in range(6):
        pid, aid = f"bbbbbbbb-0000-4000-8000-00000000010{i}", f"aaaaaaaa-0000-4000-8000-00000000010{i}"
        apply(store, commands.acl_policy_set(Policy(id=pid, name=f"p{i}", rules=f'key "k{i}" {{ policy = "write" }}')))
        apply(store, commands.acl_token_set(Token(accessor_id=aid, secret_id=f"dddddddd-0000-4000-8000-00000000010{i}",
                                                  policies=(Link(pid, ""),))))
    for i in range(6):
        auth = resolver.resolve(f"dddddddd-0000-4000-8000-00000000010{i}").authorizer
        assert auth.key_write(f"k{i}").allowed and not auth.key_write("other").allowed
        assert len(resolver._parsed) <= 2 and len(resolver._identities) <= 3


def test_default_token_stands_in_for_no_token() -> None:
    resolver, _ = seeded(config(default=WEB))
    assert resolver.resolve(None).accessor_id == WEB_ACCESSOR
    assert resolver.resolve("").authorizer.service_write("web").allowed
    assert resolver.agent_secret() == WEB and resolver.agent_identity().accessor_id == WEB_ACCESSOR
    resolver.tokens.agent = MGMT  # PUT /v1/agent/token/agent changes the resolver's copy
    assert resolver.agent_identity().authorizer.acl_write().allowed


def test_rpc_callers_never_get_the_agents_default_token() -> None:
    # Review F2/F3: one rule for RPC apply, the CA RPCs and acl_http: no token is the anonymous token.
    resolver, _ = seeded(config(default=WEB))
    assert resolver.resolve_rpc(None).accessor_id == ANONYMOUS_ACCESSOR_ID
    assert resolver.resolve_rpc("").accessor_id == ANONYMOUS_ACCESSOR_ID
    assert resolver.resolve_rpc(WEB).accessor_id == WEB_ACCESSOR
    plain, _ = seeded(config())
    assert plain.resolve_rpc("").accessor_id == ANONYMOUS_ACCESSOR_ID
    with pytest.raises(ACLNotFound):
        resolver.resolve_rpc("x" * (MAX_SECRET_LEN + 1))


def test_agent_recovery_needs_no_catalog() -> None:
    resolver = ACLResolver(config(agent_recovery=RECOVERY), CatalogStore())
    identity = resolver.resolve(RECOVERY)
    assert identity.accessor_id == AGENT_RECOVERY_ACCESSOR and identity.token is None
    auth = identity.authorizer
    assert auth.agent_write("node-1").allowed and not auth.agent_write("node-2").allowed
    assert auth.node_read("any-node").allowed and not auth.service_read("web").allowed
    with pytest.raises(ACLNotFound):
        resolver.resolve(RECOVERY[:-1] + "4")


@pytest.mark.parametrize("down,known,unknown", [
    ("extend-cache", "resolves", "denied"),  # unknown: default_policy (deny), as Consul without a cache entry
    ("async-cache", "resolves", "denied"),
    ("allow", "allowed", "allowed"),
    ("deny", "denied", "denied"),
])
def test_down_policy_on_a_stale_client(down: str, known: str, unknown: str) -> None:
    clock = Clock()
    cfg = config(server=False, agent_recovery=RECOVERY)
    cfg.acl.down_policy, cfg.acl.token_ttl = down, 30.0
    resolver, store = seeded(cfg, clock)
    store.stale_since = clock.now
    clock.now += 30.0  # stale, but not for longer than token_ttl: decisions as usual
    assert resolver.resolve(WEB).authorizer.service_write("web").allowed
    with pytest.raises(ACLNotFound):
        resolver.resolve("44444444-4444-4444-8444-444444444444")
    clock.now += 0.5

    def outcome(secret: str) -> str:
        try:
            auth = resolver.resolve(secret).authorizer
        except ACLNotFound:
            return "not-found"
        if auth.key_write("any").allowed and auth.service_write("db").allowed:
            # Review F1: down_policy "allow" is Consul's allow-all, never management: acl stays denied.
            assert not auth.acl_read().allowed and not auth.acl_write().allowed
            return "allowed"
        return "resolves" if auth.service_write("web").allowed else "denied"

    assert outcome(WEB) == known and outcome("44444444-4444-4444-8444-444444444444") == unknown
    assert resolver.resolve(RECOVERY).authorizer.agent_write("node-1").allowed  # whatever the policy
    assert resolver.counters()["down_policy"] == (2 if down in ("allow", "deny") else 1)
    store.stale_since = None  # fed again: decisions as usual
    assert outcome(WEB) == "resolves"


def test_extend_cache_gives_unknown_tokens_default_allow_when_that_is_the_default() -> None:
    clock = Clock()
    resolver, store = seeded(config(server=False, default_policy="allow"), clock)
    store.stale_since, clock.now = clock.now, clock.now + 31.0
    assert resolver.resolve("44444444-4444-4444-8444-444444444444").authorizer.key_write("k").allowed
    auth = resolver.resolve(WEB).authorizer  # a known token keeps its own rules (default allow for the rest)
    assert auth.service_write("web").allowed


def test_servers_never_apply_down_policy() -> None:
    clock = Clock()
    cfg = config(server=True)
    cfg.acl.down_policy = "deny"
    resolver, store = seeded(cfg, clock)
    store.stale_since, clock.now = 0.0, 1e9
    assert resolver.resolve(WEB).authorizer.service_write("web").allowed


def test_initializer_writes_the_builtins_once_while_leading() -> None:
    store = CatalogStore()
    cfg = config(initial_management=MGMT)
    leading = [False]
    initializer = ACLInitializer(store, cfg.acl.tokens, lambda: leading[0])

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(initializer.run)
            await trio.sleep(5)  # mock time: many polls as a follower
            assert initializer.writes == 0 and init_needed(store, MGMT)
            leading[0] = True
            await trio.sleep(1)
            assert not init_needed(store, MGMT) and initializer.writes == 1
            index = store.catalog.last_index
            await trio.sleep(60)  # still leading: nothing more is due
            assert store.catalog.last_index == index and initializer.writes == 1
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    acl = store.catalog.acl
    assert acl.token(ANONYMOUS_ACCESSOR_ID) is not None and acl.policy(GLOBAL_MANAGEMENT_POLICY_ID) is not None
    assert ACLResolver(cfg, store).resolve(MGMT).authorizer.operator_write().allowed


class FlakyRaft:
    """A replicator that has no leader for its first `fails` writes, then applies them to the catalog."""

    def __init__(self, store: CatalogStore, fails: int) -> None:
        self.store, self.fails, self.attempts = store, fails, []

    async def apply(self, command: dict[str, object], token: str | None = None) -> object:
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.fails:
            raise NoLeader("no leader")
        return self.store.apply_committed(self.store.catalog.last_index + 1, command)

    async def read_barrier(self, consistent: bool) -> None:
        return None


def test_initializer_retries_with_a_bounded_backoff() -> None:
    store = CatalogStore()
    raft = FlakyRaft(store, fails=8)
    store.replicator = raft
    initializer = ACLInitializer(store, config(initial_management=MGMT).acl.tokens, lambda: True)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(initializer.run)
            while init_needed(store, MGMT):
                await trio.sleep(1)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    gaps = [round(b - a, 3) for a, b in zip(raft.attempts, raft.attempts[1:], strict=False)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # doubling, capped at BACKOFF_MAX
    assert initializer.failures == 8 and initializer.writes == 1
