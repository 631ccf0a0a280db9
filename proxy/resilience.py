"""Retry pacing and admission limits for one upstream: jittered backoff, Envoy's retry budget and circuit
breakers. Pure counters: the L7/L4 handlers call acquire/release around what they start and finish."""

from __future__ import annotations

import random

from meshagent.proxy.snapshot import Limits, Retries

ENVOY_DEFAULT_LIMIT = 1024  # Consul/Envoy: a limit of 0 (unset) means this
_MAX_SHIFT = 30  # 2**30 x base already exceeds any sane cap; bounds the integer for hostile attempts


def retry_backoff(attempt: int, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry): Envoy's fully jittered
    exponential backoff, uniform in [0, min(max_ms, (2**attempt - 1) x base_ms)]."""
    base = max(base_ms, 0)
    cap = max(max_ms, 0)
    n = min(max(attempt, 1), _MAX_SHIFT)
    ceiling = min(cap, ((1 << n) - 1) * base)
    return rng.random() * ceiling / 1000.0


class RetryBudget:
    """Retries in flight stay within `percent` of active requests, but `min_concurrent` are always allowed
    (Envoy's retry budget): a struggling upstream is not hit by a retry storm."""

    __slots__ = ("active", "min_concurrent", "percent", "retries")

    def __init__(self, percent: float = 20.0, min_concurrent: int = 3) -> None:
        self.percent = min(max(float(percent), 0.0), 100.0) if percent == percent else 0.0
        self.min_concurrent = max(int(min_concurrent), 0)
        self.active = 0  # requests started and not finished (first attempts; retries are counted apart)
        self.retries = 0  # retries in flight

    @classmethod
    def from_retries(cls, retries: Retries) -> RetryBudget:
        """The budget of an upstream's `Retries` configuration."""
        return cls(retries.budget_percent, retries.budget_min_concurrent)

    def request_started(self) -> None:
        """A request (not a retry) began."""
        self.active += 1

    def request_finished(self) -> None:
        """A request ended, whatever its outcome."""
        if self.active > 0:
            self.active -= 1

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows one now; the caller then owes `retry_finished`."""
        if self.retries < self.min_concurrent or self.retries < self.active * self.percent / 100.0:
            self.retries += 1
            return True
        return False

    def retry_finished(self) -> None:
        """A retry taken with `try_retry` ended."""
        if self.retries > 0:
            self.retries -= 1


class CircuitBreakers:
    """Envoy's per-upstream circuit breakers: connections, requests waiting for a connection, and requests
    in flight, each refused at its limit (the caller answers 503 and counts a trip)."""

    __slots__ = ("connections", "max_connections", "max_pending", "max_requests", "pending", "requests")

    def __init__(self, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.max_connections = _limit(limits.max_connections)
        self.max_pending = _limit(limits.max_pending_requests)
        self.max_requests = _limit(limits.max_concurrent_requests)
        self.connections = 0
        self.pending = 0
        self.requests = 0

    def acquire_connection(self) -> bool:
        """Open an upstream connection if under max_connections."""
        if self.connections >= self.max_connections:
            return False
        self.connections += 1
        return True

    def release_connection(self) -> None:
        """An upstream connection taken with acquire_connection closed."""
        if self.connections > 0:
            self.connections -= 1

    def acquire_pending(self) -> bool:
        """Queue a request for a connection if under max_pending_requests."""
        if self.pending >= self.max_pending:
            return False
        self.pending += 1
        return True

    def release_pending(self) -> None:
        """A queued request got its connection or gave up."""
        if self.pending > 0:
            self.pending -= 1

    def acquire_request(self) -> bool:
        """Start a request if under max_concurrent_requests."""
        if self.requests >= self.max_requests:
            return False
        self.requests += 1
        return True

    def release_request(self) -> None:
        """A request taken with acquire_request ended."""
        if self.requests > 0:
            self.requests -= 1


def _limit(value: int) -> int:
    """0 (unset) or anything below means Envoy's default; a limit is at least 1."""
    return value if value > 0 else ENVOY_DEFAULT_LIMIT
