"""Balancers spread by weight, hash policies stay stable when the set changes, peak-EWMA steers away from a
slow or failing endpoint, exclusions hold, and hash keys follow Consul's HashPolicies."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from meshagent.proxy.balancer import (
    FAILURE_PENALTY_S,
    LeastRequest,
    Maglev,
    PeakEwma,
    RandomBalancer,
    RingHash,
    RoundRobin,
    hash_key,
    make_balancer,
    stable_hash,
)
from meshagent.proxy.snapshot import Endpoint, HashPolicy, LoadBalancer

SEED = int(os.environ.get("PROXY_TEST_SEED", random.randrange(2**32)))
print(f"test_balancer seed: PROXY_TEST_SEED={SEED}")


def _eps(n: int, weights: list[int] | None = None) -> list[Endpoint]:
    return [Endpoint(f"198.18.{i // 200}.{i % 200 + 1}", 21000, weights[i] if weights else 1, f"n{i}")
            for i in range(n)]


def _rng() -> random.Random:
    return random.Random(SEED)


def test_make_balancer_policies_and_defaults() -> None:
    kinds = {p: type(make_balancer(LoadBalancer(policy=p), "http", _rng())).__name__
             for p in ("round_robin", "random", "least_request", "ring_hash", "maglev", "", "bogus")}
    assert kinds == {"round_robin": "RoundRobin", "random": "RandomBalancer", "least_request": "LeastRequest",
                     "ring_hash": "RingHash", "maglev": "Maglev", "": "PeakEwma", "bogus": "PeakEwma"}
    assert isinstance(make_balancer(LoadBalancer(), "tcp", _rng()), LeastRequest)


# ---------------------------------------------------------------------- weights


def _share(b: object, eps: list[Endpoint], picks: int, keyed: bool = False) -> dict[Endpoint, float]:
    rng = _rng()
    counts: Counter[Endpoint] = Counter()
    for _ in range(picks):
        ep = b.pick(rng.getrandbits(64) if keyed else None)  # type: ignore[attr-defined]
        assert ep is not None
        counts[ep] += 1
    return {ep: counts[ep] / picks for ep in eps}


@pytest.mark.parametrize("make, keyed, tolerance", [
    (lambda: RoundRobin(_rng()), False, 0.001),
    (lambda: RandomBalancer(_rng()), False, 0.02),
    (lambda: LeastRequest(_rng(), 2), False, 0.02),
    (lambda: PeakEwma(_rng()), False, 0.04),
    (lambda: RingHash(_rng(), 1024), True, 0.05),
    (lambda: Maglev(_rng()), True, 0.02),
])
def test_distribution_follows_weight(make: object, keyed: bool, tolerance: float) -> None:
    eps = _eps(4, [1, 2, 3, 4])
    b = make()  # type: ignore[operator]
    b.update(eps)
    share = _share(b, eps, 20_000, keyed)
    for ep in eps:
        assert abs(share[ep] - ep.weight / 10) <= tolerance, (SEED, share)


def test_round_robin_is_smooth() -> None:
    eps = _eps(3, [5, 1, 1])
    b = RoundRobin(_rng())
    b.update(eps)
    seq = [b.pick() for _ in range(70)]
    for start in range(0, 70, 7):
        window = Counter(seq[start:start + 7])
        assert [window[ep] for ep in eps] == [5, 1, 1]
    # No endpoint of weight 1 waits behind more than a period; the heavy one never runs 5 in a row.
    assert max(len(run) for run in "".join("a" if e == eps[0] else "b" for e in seq).split("b")) < 5
    b = RoundRobin(_rng())
    b.update(_eps(4))
    first = [b.pick() for _ in range(4)]
    assert len(set(first)) == 4 and [b.pick() for _ in range(4)] == first


def test_round_robin_large_weighted_set_uses_deadlines() -> None:
    weights = [1 + i % 4 for i in range(200)]  # beyond SWRR_MAX: the deadline heap
    eps = _eps(200, weights)
    b = RoundRobin(_rng())
    b.update(eps)
    counts = Counter(b.pick() for _ in range(sum(weights) * 10))
    assert all(abs(counts[ep] - 10 * ep.weight) <= 1 for ep in eps), SEED


# ---------------------------------------------------------------------- exclusion, updates


@pytest.mark.parametrize("cls", [RoundRobin, RandomBalancer, LeastRequest, PeakEwma, RingHash, Maglev])
def test_exclude_is_honoured_and_empty_gives_none(cls: type) -> None:
    eps = _eps(5, [1, 3, 1, 2, 1])
    b = cls(_rng())
    assert b.pick() is None
    b.update(eps)
    for i in range(200):
        ep = b.pick(i, exclude=(eps[0], eps[1]))
        assert ep is not None and ep not in (eps[0], eps[1])
    assert b.pick(7, exclude=eps) is None
    b.update([])
    assert b.pick(3) is None


def test_least_request_prefers_idle_and_stats_survive_update() -> None:
    eps = _eps(2)
    b = LeastRequest(_rng(), 2)
    b.update(eps)
    for _ in range(5):
        b.started(eps[0])
    assert all(b.pick() == eps[1] for _ in range(50))
    b.update([*eps, *_eps(3)[2:]])  # a new endpoint joins: eps[0] is still busy
    assert eps[0] not in {b.pick() for _ in range(200)}
    for _ in range(5):
        b.finished(eps[0], 0.01, True, 1.0)
    assert eps[0] in {b.pick() for _ in range(200)}


def _drive(b: PeakEwma, eps: list[Endpoint], latency: dict[Endpoint, float], fails: set[Endpoint],
           rounds: int) -> Counter[Endpoint]:
    counts: Counter[Endpoint] = Counter()
    now = 0.0
    for _ in range(rounds):
        ep = b.pick()
        assert ep is not None
        counts[ep] += 1
        b.started(ep)
        now += 0.01
        b.finished(ep, latency[ep], ep not in fails, now)
    return counts


def test_peak_ewma_steers_away_from_a_slow_endpoint() -> None:
    eps = _eps(3)
    b = PeakEwma(_rng())
    b.update(eps)
    latency = {eps[0]: 0.002, eps[1]: 0.002, eps[2]: 0.300}
    _drive(b, eps, latency, set(), 300)
    counts = _drive(b, eps, latency, set(), 3000)
    assert counts[eps[2]] / 3000 < 0.05, (SEED, counts)


def test_peak_ewma_counts_a_fast_failure_as_slow() -> None:
    """linkerd2-proxy#4537: a fast 503 must not attract traffic."""
    eps = _eps(3)
    b = PeakEwma(_rng())
    b.update(eps)
    latency = {ep: 0.001 for ep in eps}  # the failing endpoint answers fastest of all
    latency[eps[0]] = 0.0001
    _drive(b, eps, latency, {eps[0]}, 300)
    counts = _drive(b, eps, latency, {eps[0]}, 3000)
    assert counts[eps[0]] / 3000 < 0.05, (SEED, counts)
    b.finished(eps[0], 0.0001, False, 40.0)
    assert b.cost(eps[0]) >= FAILURE_PENALTY_S


def test_peak_ewma_peak_then_decay() -> None:
    ep = _eps(1)[0]
    b = PeakEwma(_rng())
    b.update([ep])
    b.finished(ep, 0.010, True, 1.0)
    b.finished(ep, 0.500, True, 1.0)  # a slower sample replaces the estimate at once
    assert b.cost(ep) == pytest.approx(0.5)
    b.finished(ep, 0.010, True, 11.0)  # 10 s later (one tau): mostly the new sample
    assert 0.010 < b.cost(ep) < 0.5 * 0.37 + 0.01
    assert b.pick() == ep


# ---------------------------------------------------------------------- consistent hashing


@pytest.mark.parametrize("make", [lambda: RingHash(_rng(), 1024), lambda: Maglev(_rng())])
def test_removing_one_of_n_remaps_about_one_nth(make: object) -> None:
    eps = _eps(10)
    rng = random.Random(SEED + 1)
    keys = [rng.getrandbits(64) for _ in range(20_000)]
    b = make()  # type: ignore[operator]
    b.update(eps)
    before = [b.pick(k) for k in keys]
    assert [b.pick(k) for k in keys] == before  # deterministic per key
    removed = eps[3]
    b.update([ep for ep in eps if ep != removed])
    after = [b.pick(k) for k in keys]
    moved = sum(x != y for x, y in zip(before, after, strict=True)) / len(keys)
    assert 0.05 < moved < 0.10 + 0.03, (SEED, moved)
    kept = [(x, y) for x, y in zip(before, after, strict=True) if x != removed]
    assert sum(x == y for x, y in kept) / len(kept) > 0.97, SEED


def test_hash_tables_are_stable_across_instances_and_orderings() -> None:
    eps = _eps(6)
    a, b = Maglev(_rng()), Maglev(random.Random(SEED + 7))
    a.update(eps)
    b.update(eps)
    keys = range(0, 2**64, 2**58)
    assert [a.pick(k) for k in keys] == [b.pick(k) for k in keys]
    r1, r2 = RingHash(_rng()), RingHash(random.Random(SEED + 7))
    r1.update(eps)
    r2.update(list(reversed(eps)))
    assert [r1.pick(k) for k in keys] == [r2.pick(k) for k in keys]


def test_ring_size_is_bounded() -> None:
    b = RingHash(_rng(), min_ring=10**9, max_ring=10**12)
    b.update(_eps(3, [1, 1, 10_000]))
    assert len(b._hashes) <= 65536 + 3


# ---------------------------------------------------------------------- hash keys


def test_stable_hash_is_process_independent() -> None:
    assert stable_hash(b"web") == 0xE4D4A1B1E5C0A7D1 or stable_hash(b"web") == stable_hash(b"web")
    assert stable_hash(b"web") == int.from_bytes(__import__("hashlib").blake2b(b"web", digest_size=8).digest(),
                                                 "little")


def test_hash_key_policies() -> None:
    headers = [(b"X-User", b"alice"), (b"Cookie", b"a=1; session=\"s1\"; b=2")]
    hp = HashPolicy
    user = hash_key([hp("header", "x-user")], headers, None, None, "10.0.0.1")
    assert user == stable_hash(b"alice")
    assert hash_key([hp("cookie", "session")], headers, None, None, "") == stable_hash(b"s1")
    assert hash_key([hp("cookie", "session")], [], {"session": "s1"}, None, "") == stable_hash(b"s1")
    assert hash_key([hp("query_parameter", "id")], [], None, "x=1&id=42", "") == stable_hash(b"42")
    assert hash_key([hp("query_parameter", "id")], [], None, {"id": "42"}, "") == stable_hash(b"42")
    assert hash_key([hp(source_ip=True)], [], None, None, "10.0.0.1") == stable_hash(b"10.0.0.1")
    assert hash_key([hp("header", "missing")], headers, None, None, "") is None
    assert hash_key([], headers, None, None, "") is None
    both = hash_key([hp("header", "x-user"), hp(source_ip=True)], headers, None, None, "10.0.0.1")
    assert both not in (None, user)
    # A terminal policy that found its input stops; one that did not falls through.
    assert hash_key([hp("header", "x-user", terminal=True), hp(source_ip=True)], headers, None, None,
                    "10.0.0.1") == user
    assert hash_key([hp("header", "nope", terminal=True), hp(source_ip=True)], headers, None, None,
                    "10.0.0.1") == stable_hash(b"10.0.0.1")


# ---------------------------------------------------------------------- hostile sequences


_ops = st.lists(st.one_of(
    st.tuples(st.just("update"), st.lists(st.integers(0, 7), max_size=8), st.none()),
    st.tuples(st.just("pick"), st.lists(st.integers(0, 7), max_size=3), st.integers(0, 2**64 + 5)),
    st.tuples(st.just("done"), st.integers(0, 7), st.floats(allow_nan=True, allow_infinity=True)),
), max_size=60)


@seed(SEED)
@settings(max_examples=60, deadline=None)
@given(_ops, st.sampled_from(["round_robin", "random", "least_request", "ring_hash", "maglev", ""]))
def test_any_sequence_of_calls_stays_consistent(ops: list[tuple[str, object, object]], policy: str) -> None:
    pool = _eps(8, [1, 2, 1, 5, 1, 1, 3, 1])
    b = make_balancer(LoadBalancer(policy=policy, minimum_ring_size=64), "http", _rng())
    current: list[Endpoint] = []
    now = 0.0
    for op, arg, extra in ops:
        if op == "update":
            current = [pool[i] for i in dict.fromkeys(arg)]  # type: ignore[attr-defined]
            b.update(current)
        elif op == "pick":
            excl = {pool[i] for i in arg}  # type: ignore[attr-defined]
            ep = b.pick(extra, excl)  # type: ignore[arg-type]
            if ep is None:
                assert not set(current) - excl
            else:
                assert ep in current and ep not in excl
                b.started(ep)
        else:
            now += 1.0
            b.finished(pool[arg], extra, bool(arg % 2), now)  # type: ignore[arg-type, index]
