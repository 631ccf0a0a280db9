"""The one wait-until helper: poll a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition", *, fatal: type[BaseException] | tuple[type[BaseException], ...] = (),
             report: Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy, and return that. An exception from it counts as
    "not yet" unless it is `fatal`; after `timeout` seconds an AssertionError names `what`, the last
    exception and `report()` (e.g. every agent's log tail)."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this loop
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last_exc = None
        except fatal:
            raise
        except Exception as exc:  # the thing we wait for may not be up yet
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else "")
                                 + (f"\n{report()}" if report else ""))
        time.sleep(interval)
