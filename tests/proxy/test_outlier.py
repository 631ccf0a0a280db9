"""Outlier detection ejects after consecutive failures for a growing, capped time, respects the ejection
percentage (at least one, never the last host) and enforcement probability, and decays its memory."""

from __future__ import annotations

import os
import random

from hypothesis import given, seed, settings
from hypothesis import strategies as st
from meshagent.proxy.outlier import OutlierDetector
from meshagent.proxy.snapshot import Endpoint, PassiveHealth

SEED = int(os.environ.get("PROXY_TEST_SEED", random.randrange(2**32)))
print(f"test_outlier seed: PROXY_TEST_SEED={SEED}")

EPS = tuple(Endpoint(f"198.18.0.{i}", 21000) for i in range(1, 11))


def _det(**kw: object) -> OutlierDetector:
    cfg = PassiveHealth(**{"max_failures": 3, "interval_s": 10.0, "base_ejection_time_s": 30.0,
                           "max_ejection_time_s": 100.0, "max_ejection_percent": 20,
                           "enforcing_consecutive_5xx": 100, **kw})  # type: ignore[arg-type]
    return OutlierDetector(cfg, random.Random(SEED))


def _fail(d: OutlierDetector, ep: Endpoint, n: int, now: float) -> list[bool]:
    return [d.record(ep, False, now) for _ in range(n)]


def test_consecutive_failures_eject_and_a_success_resets() -> None:
    d = _det()
    d.available(EPS, 0.0)
    assert _fail(d, EPS[0], 2, 0.0) == [False, False]
    assert not d.record(EPS[0], True, 0.0)  # success resets the run
    assert _fail(d, EPS[0], 3, 1.0) == [False, False, True]
    assert d.ejected(1.0) == [EPS[0]]
    assert EPS[0] not in d.available(EPS, 1.0) and len(d.available(EPS, 1.0)) == 9
    assert d.next_deadline() == 31.0
    assert not d.record(EPS[0], False, 2.0)  # late failures of an ejected host are ignored
    assert d.available(EPS, 31.0) == list(EPS) and d.next_deadline() is None


def test_ejection_time_grows_with_times_ejected_and_caps() -> None:
    d = _det()
    d.available(EPS, 0.0)
    now = 0.0
    ends = []
    for _ in range(5):
        assert _fail(d, EPS[0], 3, now)[-1]
        deadline = d.next_deadline()
        assert deadline is not None
        ends.append(deadline - now)
        now = deadline  # fail again the moment it returns: no time to decay
        d.available(EPS, now)
    assert ends == [30.0, 60.0, 90.0, 100.0, 100.0]


def test_times_ejected_decays_per_healthy_interval() -> None:
    d = _det()
    d.available(EPS, 0.0)
    assert _fail(d, EPS[0], 3, 0.0)[-1]  # times 1, back at 30
    assert _fail(d, EPS[0], 3, 30.0)[-1]  # times 2: 60 s, back at 90
    assert d.next_deadline() == 90.0
    d.available(EPS, 90.0)
    # 25 s healthy = 2 whole intervals: times 2 → 0, so the next ejection is base x 1.
    assert _fail(d, EPS[0], 3, 115.0)[-1]
    assert d.next_deadline() == 145.0


def test_max_ejection_percent_but_at_least_one_and_never_the_last() -> None:
    d = _det(max_ejection_percent=20)
    d.available(EPS, 0.0)
    results = [_fail(d, ep, 3, 0.0)[-1] for ep in EPS]
    assert sum(results) == 2  # 20 % of 10
    d = _det(max_ejection_percent=0)
    d.available(EPS, 0.0)
    assert sum(_fail(d, ep, 3, 0.0)[-1] for ep in EPS) == 1  # at least one
    two = EPS[:2]
    d = _det(max_ejection_percent=100)
    d.available(two, 0.0)
    assert _fail(d, two[0], 3, 0.0)[-1]
    assert not _fail(d, two[1], 3, 0.0)[-1]  # never the last one
    assert d.available(two, 0.0) == [two[1]]
    d = _det(max_ejection_percent=100)
    d.available(EPS[:1], 0.0)
    assert not _fail(d, EPS[0], 3, 0.0)[-1]


def test_enforcing_percentage_is_a_probability() -> None:
    ejections = 0
    for i in range(400):
        d = OutlierDetector(PassiveHealth(max_failures=1, enforcing_consecutive_5xx=30),
                            random.Random(SEED + i))
        d.available(EPS, 0.0)
        ejections += d.record(EPS[0], False, 0.0)
    assert 80 <= ejections <= 160, (SEED, ejections)  # 30 % of 400 = 120
    d = _det(enforcing_consecutive_5xx=0)
    d.available(EPS, 0.0)
    assert not any(_fail(d, EPS[0], 30, 0.0))


def test_max_failures_zero_never_ejects_and_removed_hosts_are_forgotten() -> None:
    d = _det(max_failures=0)
    d.available(EPS, 0.0)
    assert not any(_fail(d, EPS[0], 50, 0.0))
    d = _det()
    d.available(EPS, 0.0)
    assert _fail(d, EPS[0], 3, 0.0)[-1]
    d.available(EPS[1:], 1.0)  # the ejected host left the catalog
    assert d.ejected(1.0) == [] and d.next_deadline() is None
    assert d.available(EPS, 2.0) == list(EPS)  # and came back with a clean slate


def test_all_ejected_means_all_available() -> None:
    """If the set shrinks to ejected hosts only, route to them rather than to nothing (Envoy's panic)."""
    d = _det(max_ejection_percent=100)
    d.available(EPS, 0.0)
    assert _fail(d, EPS[0], 3, 0.0)[-1]
    assert d.available(EPS[:1], 1.0) == [EPS[0]]


@seed(SEED)
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.floats(0, 5)), max_size=300),
       st.integers(0, 100), st.integers(1, 4))
def test_invariants_under_random_traffic(events: list[tuple[int, bool, float]], percent: int,
                                         max_failures: int) -> None:
    d = _det(max_ejection_percent=percent, max_failures=max_failures)
    now = 0.0
    d.available(EPS, now)
    for idx, ok, dt in events:
        now += dt
        d.record(EPS[idx], ok, now)
        ejected = d.ejected(now)
        assert len(ejected) <= max(1, len(EPS) * percent // 100), SEED
        assert len(ejected) < len(EPS)
        avail = d.available(EPS, now)
        assert set(avail) == set(EPS) - set(ejected)
        deadline = d.next_deadline()
        assert (deadline is None) == (not ejected)
        if deadline is not None:
            assert now < deadline <= now + 100.0
