"""CSRRateLimit: the leader's `csr_max_per_second` and `csr_max_concurrent`, pure (time passed in).

A token bucket refilled at `per_second`, holding at most one second's worth, so that a burst of CSRs after a
root rotation is signed at the configured rate and no faster; each refused request is told how long to wait,
and the agent retries after that with jitter. `max_concurrent` caps signings in progress (0: no cap).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class CSRRateLimit:
    """A token bucket over signings; `try_acquire` says yes, or how many seconds until a token is free."""

    per_second: float
    max_concurrent: int = 0
    _tokens: float = field(init=False)
    _updated: float | None = field(init=False, default=None)
    _in_flight: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError("csr_max_per_second must be above 0")
        if self.max_concurrent < 0:
            raise ValueError("csr_max_concurrent must be 0 or more")
        self._tokens = self._capacity

    @property
    def _capacity(self) -> float:
        return max(1.0, self.per_second)

    def try_acquire(self, now: float) -> float | None:
        """None when a signing may start now (call `release` when it ends); otherwise seconds to wait."""
        self._refill(now)
        if self.max_concurrent and self._in_flight >= self.max_concurrent:
            return 1.0 / self.per_second
        if self._tokens < 1.0:
            return (1.0 - self._tokens) / self.per_second
        self._tokens -= 1.0
        self._in_flight += 1
        return None

    def release(self) -> None:
        """A signing that `try_acquire` allowed has ended."""
        self._in_flight = max(0, self._in_flight - 1)

    def _refill(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self.per_second)
        if self._updated is None or now > self._updated:
            self._updated = now
