"""Leaf renewal falls in Consul's 60-90 % window (at once past it); CSR signing never outruns its rate."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.connect.csr_limit import CSRRateLimit
from meshagent.agent.connect.renewal import ROOT_CHANGE_JITTER, reissue_after_root_change, renew_at


@given(st.floats(0, 1e9), st.floats(1, 1e7), st.floats(0, 0.6), st.integers(0, 2**32))
def test_renewal_is_inside_the_60_to_90_percent_window(start: float, life: float, at: float, seed: int) -> None:
    now = start + at * life
    t = renew_at(start, start + life, now, random.Random(seed))
    assert start + 0.6 * life - 1e-6 <= t <= start + 0.9 * life + 1e-6
    assert t >= now


def test_renewal_spreads_across_the_window_and_is_immediate_past_it() -> None:
    rng = random.Random(1)
    moments = [renew_at(0.0, 100.0, 0.0, rng) for _ in range(2000)]
    assert min(moments) < 63 and max(moments) > 87  # spread, not one fixed point
    assert renew_at(0.0, 100.0, 95.0, rng) == 95.0
    assert renew_at(0.0, 100.0, 200.0, rng) == 200.0  # expired: at once
    assert 80.0 <= renew_at(0.0, 100.0, 80.0, rng) <= 90.0  # inside the window: not before now


def test_reissue_after_a_root_change_is_spread_over_the_jitter() -> None:
    rng = random.Random(2)
    moments = [reissue_after_root_change(10.0, rng) for _ in range(2000)]
    assert all(10.0 <= t <= 10.0 + ROOT_CHANGE_JITTER for t in moments)
    assert max(moments) - min(moments) > 0.8 * ROOT_CHANGE_JITTER


def test_200_requests_against_50_per_second_are_all_signed_and_never_faster() -> None:
    limit = CSRRateLimit(per_second=50)
    now, signed, waiting = 0.0, [], list(range(200))
    rng = random.Random(3)
    retry_at = dict.fromkeys(waiting, 0.0)
    while waiting and now < 60:
        for r in list(waiting):
            if retry_at[r] > now:
                continue
            wait = limit.try_acquire(now)
            if wait is None:
                signed.append(now)
                limit.release()
                waiting.remove(r)
            else:
                retry_at[r] = now + wait * (1 + rng.random())  # the agent's jittered retry
        now = min(retry_at[r] for r in waiting) if waiting else now
    assert not waiting, "some requests were never signed"
    # No window of one second holds more than the bucket's second of capacity plus the rate.
    for i, t in enumerate(signed):
        assert sum(1 for u in signed[i:] if u < t + 1.0) <= 50 + 50
    assert signed[-1] >= (200 - 50) / 50 - 1e-9  # 200 at 50/s with a burst of 50 takes at least 3 s


def test_concurrency_cap_and_bad_settings() -> None:
    limit = CSRRateLimit(per_second=1000, max_concurrent=2)
    assert limit.try_acquire(0.0) is None and limit.try_acquire(0.0) is None
    assert limit.try_acquire(0.0) is not None
    limit.release()
    assert limit.try_acquire(0.0) is None
    with pytest.raises(ValueError):
        CSRRateLimit(per_second=0)
    with pytest.raises(ValueError):
        CSRRateLimit(per_second=1, max_concurrent=-1)
