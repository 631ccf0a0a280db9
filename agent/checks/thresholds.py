"""Consecutive-result thresholds (success_before_passing, failures_before_warning/critical), pure."""

from __future__ import annotations

from dataclasses import dataclass

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"


@dataclass(slots=True)
class StatusThresholds:
    """Turns raw check results into reported statuses the way Consul's StatusHandler does.

    Passing and warning results count as successes, critical ones as failures; a success resets the
    failure count and vice versa. None means "keep the reported status" (the threshold is not reached).
    """

    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    successes: int = 0
    failures: int = 0

    def result(self, status: str) -> str | None:
        """Feed one raw result; returns the status to report, or None to keep the current one."""
        if status in (PASSING, WARNING):
            self.successes += 1
            self.failures = 0
            return status if self.successes >= self.success_before_passing else None
        self.failures += 1
        self.successes = 0
        if self.failures >= self.failures_before_critical:
            return CRITICAL
        if self.failures >= self.failures_before_warning:
            return WARNING
        return None
