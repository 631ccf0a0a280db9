"""The one wait-until helper: poll a condition with a deadline (never a bare sleep as synchronisation).
`wait_for` in threads and plain tests; `wait_for_async` inside trio (same arguments, same failures)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Fatal = type[BaseException] | tuple[type[BaseException], ...]


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition", *, fatal: Fatal = (), report: Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy, and return that. An exception from it counts as
    "not yet" unless it is `fatal`; after `timeout` seconds an AssertionError names `what`, the last
    exception and `report()` (e.g. every agent's log tail)."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this loop
    deadline = time.monotonic() + timeout
    while True:
        value, last_exc = _poll(condition, fatal)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last_exc, report)
        time.sleep(interval)


async def wait_for_async(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
                         what: str = "condition", *, fatal: Fatal = (),
                         report: Callable[[], str] | None = None) -> T:
    """`wait_for` inside trio: polls with `trio.sleep`, so the tasks it waits on run, and keeps its deadline on
    trio's clock (virtual time under a MockClock)."""
    __tracebackhide__ = True
    import trio  # here, so the sync helper's users need no trio

    deadline = trio.current_time() + timeout
    while True:
        value, last_exc = _poll(condition, fatal)
        if value:
            return value
        if trio.current_time() >= deadline:
            raise _timed_out(timeout, what, last_exc, report)
        await trio.sleep(interval)


def _poll(condition: Callable[[], T], fatal: Fatal) -> tuple[T | None, Exception | None]:
    try:
        return condition(), None
    except fatal:
        raise
    except Exception as exc:  # the thing we wait for may not be up yet
        return None, exc


def _timed_out(timeout: float, what: str, last_exc: Exception | None,
               report: Callable[[], str] | None) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what}"
                          + (f" (last error: {last_exc!r})" if last_exc else "")
                          + (f"\n{report()}" if report else ""))
