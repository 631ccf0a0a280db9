"""Retry backoff is Envoy's fully jittered exponential one within its cap; the retry budget and circuit
breakers admit exactly up to their limits and never go negative."""

from __future__ import annotations

import os
import random

from hypothesis import given, seed, settings
from hypothesis import strategies as st
from meshagent.proxy.resilience import CircuitBreakers, RetryBudget, retry_backoff
from meshagent.proxy.snapshot import Limits, Retries

SEED = int(os.environ.get("PROXY_TEST_SEED", random.randrange(2**32)))
print(f"test_resilience seed: PROXY_TEST_SEED={SEED}")


def test_backoff_grows_then_caps_with_full_jitter() -> None:
    rng = random.Random(SEED)
    for attempt, ceiling in ((1, 0.025), (2, 0.075), (3, 0.175), (4, 0.250), (50, 0.250)):
        samples = [retry_backoff(attempt, 25, 250, rng) for _ in range(2000)]
        assert min(samples) >= 0.0 and max(samples) <= ceiling, (SEED, attempt)
        # Full jitter: spread over the whole range, not bunched at the top.
        assert min(samples) < ceiling * 0.05 and max(samples) > ceiling * 0.95, (SEED, attempt)
        mean = sum(samples) / len(samples)
        assert abs(mean - ceiling / 2) < ceiling * 0.06, (SEED, attempt, mean)


@seed(SEED)
@settings(max_examples=200, deadline=None)
@given(st.integers(-10, 10**9), st.integers(-5, 10**6), st.integers(-5, 10**6), st.integers(0, 2**32))
def test_backoff_is_bounded_for_any_input(attempt: int, base: int, cap: int, s: int) -> None:
    d = retry_backoff(attempt, base, cap, random.Random(s))
    assert 0.0 <= d <= max(cap, 0) / 1000.0


def test_retry_budget_percent_of_active_with_a_floor() -> None:
    budget = RetryBudget.from_retries(Retries(budget_percent=25.0, budget_min_concurrent=3))
    # Idle: the floor still lets 3 retries run.
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        budget.retry_finished()
    for _ in range(100):
        budget.request_started()
    granted = 0
    while budget.try_retry():
        granted += 1
    assert granted == 25
    budget.retry_finished()
    assert budget.try_retry() and not budget.try_retry()
    for _ in range(100):
        budget.request_finished()
    for _ in range(50):
        budget.retry_finished()
    budget.request_finished()  # more releases than acquisitions never go negative
    assert (budget.active, budget.retries) == (0, 0)


def test_retry_budget_hostile_values() -> None:
    assert RetryBudget(float("nan"), -4).try_retry() is False
    b = RetryBudget(1e9, 0)
    b.request_started()
    assert b.try_retry() and not b.try_retry()  # at most 100% of active


def test_circuit_breakers_trip_at_each_limit() -> None:
    cb = CircuitBreakers(Limits(max_connections=2, max_pending_requests=1, max_concurrent_requests=3))
    assert [cb.acquire_connection() for _ in range(3)] == [True, True, False]
    assert [cb.acquire_pending() for _ in range(2)] == [True, False]
    assert [cb.acquire_request() for _ in range(4)] == [True, True, True, False]
    cb.release_connection()
    assert cb.acquire_connection()
    cb.release_pending()
    cb.release_pending()
    assert cb.pending == 0 and cb.acquire_pending()
    for _ in range(5):
        cb.release_request()
    assert cb.requests == 0


def test_circuit_breakers_zero_means_envoy_default() -> None:
    cb = CircuitBreakers(Limits(0, 0, -1))
    assert (cb.max_connections, cb.max_pending, cb.max_requests) == (1024, 1024, 1024)
    assert sum(cb.acquire_request() for _ in range(2000)) == 1024
    assert CircuitBreakers().max_connections == 1024
