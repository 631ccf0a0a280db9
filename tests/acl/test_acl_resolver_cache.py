"""The client's ACL cache: each down_policy over (cached?, fresh?, server answers?), TTL edges, LRU, no secrets."""

from __future__ import annotations

import pytest
from meshagent.agent.acl.resolver_cache import (
    Action,
    CacheConfig,
    DownPolicy,
    Failure,
    ResolverCache,
    Status,
    TTLCache,
)

SECRET = "6a1f3b5e-8f0e-4c3a-9d7b-2f1e0c9a8b7d"
OLD, NEW = "old-identity", "new-identity"

EXT, ASY, ALW, DNY = DownPolicy.EXTEND_CACHE, DownPolicy.ASYNC_CACHE, DownPolicy.ALLOW, DownPolicy.DENY

# (policy, cached?, fresh?, server answers?) -> (lookup status, value it serves, fetch?, final action, final value)
# "final" is what the request gets: the lookup's value when no fetch is needed (or it is a background one),
# else the outcome of refreshed()/refresh_failed(UNREACHABLE).
CASES = [
    # fresh entries never ask the servers, whatever the policy
    *[
        (p, True, True, ans, Status.HIT, OLD, False, Action.USE, OLD)
        for p in (EXT, ASY, ALW, DNY)
        for ans in (True, False)
    ],
    # stale, server answers: the new value (async-cache serves the old one meanwhile)
    (EXT, True, False, True, Status.STALE, None, True, Action.USE, NEW),
    (ASY, True, False, True, Status.STALE, OLD, True, Action.USE, OLD),
    (ALW, True, False, True, Status.STALE, None, True, Action.USE, NEW),
    (DNY, True, False, True, Status.STALE, None, True, Action.USE, NEW),
    # stale, no server: extend/async keep the old value; allow/deny ignore the cache
    (EXT, True, False, False, Status.STALE, None, True, Action.USE, OLD),
    (ASY, True, False, False, Status.STALE, OLD, True, Action.USE, OLD),
    (ALW, True, False, False, Status.STALE, None, True, Action.ALLOW_ALL, None),
    (DNY, True, False, False, Status.STALE, None, True, Action.DENY_ALL, None),
    # miss, server answers
    *[(p, False, None, True, Status.MISS, None, True, Action.USE, NEW) for p in (EXT, ASY, ALW, DNY)],
    # miss, no server: nothing to extend, so extend/async fall back to default_policy (deny in this table)
    (EXT, False, None, False, Status.MISS, None, True, Action.DENY_ALL, None),
    (ASY, False, None, False, Status.MISS, None, True, Action.DENY_ALL, None),
    (ALW, False, None, False, Status.MISS, None, True, Action.ALLOW_ALL, None),
    (DNY, False, None, False, Status.MISS, None, True, Action.DENY_ALL, None),
]


@pytest.mark.parametrize(
    ("policy", "cached", "fresh", "answers", "status", "served", "fetch", "action", "final"), CASES
)
def test_down_policy_table(
    policy: DownPolicy,
    cached: bool,
    fresh: bool | None,
    answers: bool,
    status: Status,
    served: str | None,
    fetch: bool,
    action: Action,
    final: str | None,
) -> None:
    c: TTLCache[str] = TTLCache("token", 30.0, policy, default_policy="deny")
    if cached:
        c.refreshed(SECRET, OLD, now=100.0)
    now = 110.0 if fresh else 140.0
    got = c.lookup(SECRET, now)
    assert (got.status, got.value, got.fetch) == (status, served, fetch)
    if not got.fetch:
        assert (Action.USE, got.value) == (action, final)
        return
    out = c.refreshed(SECRET, NEW, now) if answers else c.refresh_failed(SECRET, now, Failure.UNREACHABLE)
    if got.value is not None:  # async-cache: the request was answered from the stale value
        assert (Action.USE, got.value) == (action, final)
        # and the background refresh leaves the right thing behind
        assert c.lookup(SECRET, now).value == (NEW if answers else OLD)
    else:
        assert (out.action, out.value) == (action, final)


def test_expiry_at_exactly_the_ttl() -> None:
    c: TTLCache[str] = TTLCache("token", 30.0)
    c.refreshed(SECRET, OLD, now=1000.0)
    assert c.lookup(SECRET, 1029.999).status is Status.HIT
    assert c.lookup(SECRET, 1030.0).status is Status.STALE
    c.refreshed(SECRET, NEW, now=1030.0)
    assert c.lookup(SECRET, 1030.0).status is Status.HIT
    zero: TTLCache[str] = TTLCache("token", 0.0)
    zero.refreshed(SECRET, OLD, now=5.0)
    assert zero.lookup(SECRET, 5.0).status is Status.STALE  # ttl 0: always ask


def test_extend_cache_keeps_the_old_age_so_it_retries_and_extends_indefinitely() -> None:
    c: TTLCache[str] = TTLCache("token", 30.0, EXT)
    c.refreshed(SECRET, OLD, now=0.0)
    for t in (30.0, 3600.0, 86400.0 * 30):
        got = c.lookup(SECRET, t)
        assert got.status is Status.STALE and got.fetch
        assert c.refresh_failed(SECRET, t, Failure.UNREACHABLE).value == OLD


def test_async_cache_asks_for_one_background_refresh_at_a_time() -> None:
    c: TTLCache[str] = TTLCache("token", 30.0, ASY)
    c.refreshed(SECRET, OLD, now=0.0)
    assert c.lookup(SECRET, 31.0).fetch
    assert [c.lookup(SECRET, 32.0 + i).fetch for i in range(5)] == [False] * 5
    assert c.lookup(SECRET, 40.0).value == OLD
    c.refresh_failed(SECRET, 41.0, Failure.UNREACHABLE)
    assert c.lookup(SECRET, 42.0).fetch  # failed: the next request may try again
    c.refreshed(SECRET, NEW, now=43.0)
    got = c.lookup(SECRET, 44.0)
    assert (got.status, got.value, got.fetch) == (Status.HIT, NEW, False)


@pytest.mark.parametrize("policy", list(DownPolicy))
def test_deleted_token_is_removed_and_refused_at_once(policy: DownPolicy) -> None:
    c: TTLCache[str] = TTLCache("token", 30.0, policy)
    c.refreshed(SECRET, OLD, now=0.0)
    out = c.refresh_failed(SECRET, 31.0, Failure.NOT_FOUND)
    assert out.action is Action.NOT_FOUND and out.value is None and "ACL not found" in out.reason
    assert SECRET not in c and len(c) == 0
    assert c.lookup(SECRET, 31.0).status is Status.MISS
    # an unknown secret the servers deny knowledge of is refused too, never cached
    assert c.refresh_failed("nope", 32.0, Failure.NOT_FOUND).action is Action.NOT_FOUND and len(c) == 0


def test_lru_bound_keeps_the_recently_used() -> None:
    c: TTLCache[int] = TTLCache("token", 30.0, max_entries=100)
    for i in range(100):
        c.refreshed(f"s{i}", i, now=0.0)
    assert c.lookup("s0", 1.0).value == 0  # touch s0: it becomes the most recent
    for i in range(100, 10_100):  # a flood of random secrets
        c.refreshed(f"s{i}", i, now=1.0)
    assert len(c) == 100
    assert "s0" not in c and "s1" not in c and "s10099" in c
    c2: TTLCache[int] = TTLCache("token", 30.0, max_entries=3)
    for s in ("a", "b", "c"):
        c2.refreshed(s, 0, now=0.0)
    c2.lookup("a", 1.0)
    c2.refreshed("d", 0, now=1.0)
    assert ("a" in c2, "b" in c2, "c" in c2, "d" in c2) == (True, False, True, True)


def test_default_bound_and_config() -> None:
    r: ResolverCache[str, str, str] = ResolverCache()
    assert r.config == CacheConfig(30.0, 30.0, 30.0, EXT, 10_000)
    assert (r.tokens.ttl, r.policies.ttl, r.roles.ttl, r.tokens.max_entries) == (30.0, 30.0, 30.0, 10_000)
    r2: ResolverCache[str, str, str] = ResolverCache(
        CacheConfig(token_ttl=5, policy_ttl=7, role_ttl=9, down_policy=DNY)
    )
    assert (r2.tokens.ttl, r2.policies.ttl, r2.roles.ttl) == (5, 7, 9)
    assert r2.roles.down_policy is DNY
    with pytest.raises(ValueError):
        CacheConfig(token_ttl=-1)
    with pytest.raises(ValueError):
        CacheConfig(max_entries=0)


def test_policies_and_roles_are_separate_caches() -> None:
    r: ResolverCache[str, str, str] = ResolverCache(CacheConfig(policy_ttl=10.0, role_ttl=20.0))
    r.policies.refreshed("pid", "p", now=0.0)
    r.roles.refreshed("pid", "r", now=0.0)
    assert "pid" not in r.tokens
    assert r.policies.lookup("pid", 10.0).status is Status.STALE
    assert r.roles.lookup("pid", 10.0).value == "r"
    r.policies.invalidate("pid")
    assert "pid" not in r.policies and "pid" in r.roles
    r.roles.clear()
    assert len(r.roles) == 0


def test_no_secret_in_keys_reprs_or_outcomes() -> None:
    r: ResolverCache[str, str, str] = ResolverCache()
    value = f"token-with-{SECRET}"  # a cached value that itself carries the secret
    out = r.tokens.refreshed(SECRET, value, now=0.0)
    got = r.tokens.lookup(SECRET, 1.0)
    stale = r.tokens.lookup(SECRET, 31.0)
    failed = r.tokens.refresh_failed(SECRET, 31.0, Failure.UNREACHABLE)
    shown = " ".join(map(repr, (r, r.tokens, out, got, stale, failed))) + repr(r.tokens.__dict__)
    assert SECRET not in shown and SECRET[:8] not in shown
    key = r.tokens.key(SECRET)
    assert SECRET.encode() not in key and len(key) == 16
    # keyed: another cache (another salt) files the same secret under another key; same salt, same key
    assert ResolverCache().tokens.key(SECRET) != key
    a: TTLCache[str] = TTLCache("token", 1.0, salt=b"k" * 32)
    b: TTLCache[str] = TTLCache("token", 1.0, salt=b"k" * 32)
    assert a.key(SECRET) == b.key(SECRET) != a.key(SECRET[:-1] + "e")


@pytest.mark.parametrize(
    ("policy", "default", "action"),
    [
        (EXT, "allow", Action.ALLOW_ALL),
        (ASY, "allow", Action.ALLOW_ALL),
        (EXT, "deny", Action.DENY_ALL),
        (ASY, "deny", Action.DENY_ALL),
        (ALW, "deny", Action.ALLOW_ALL),
        (DNY, "allow", Action.DENY_ALL),
    ],
)
def test_nothing_cached_and_no_server(policy: DownPolicy, default: str, action: Action) -> None:
    # extend/async have nothing to extend and fall back to default_policy (Consul's resolver); allow/deny are absolute
    c: TTLCache[str] = TTLCache("token", 30.0, policy, default_policy=default)
    assert c.lookup(SECRET, 0.0).status is Status.MISS
    assert c.refresh_failed(SECRET, 0.0, Failure.UNREACHABLE).action is action
    with pytest.raises(ValueError):
        TTLCache("token", 30.0, policy, default_policy="maybe")
    assert ResolverCache(CacheConfig(default_policy="deny")).roles.default_policy == "deny"
