"""tests/support/wait.py: both pollers return the first truthy value, time out naming what they waited for and
the last error, and let a `fatal` exception through at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from tests.support.wait import wait_for, wait_for_async


def counter(ready_at: int) -> Callable[[], int]:
    """A condition that raises on its first call, then answers 0 until call `ready_at` (returned from then on)."""
    calls: list[int] = []

    def condition() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("not up yet")  # an early exception counts as "not yet"
        return len(calls) if len(calls) >= ready_at else 0
    return condition


def missing() -> int:
    raise KeyError("x")


def test_sync_returns_the_value_and_times_out_naming_what_and_the_last_error() -> None:
    assert wait_for(counter(3), timeout=5, interval=0.001) == 3
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the thing \(last error: "
                                             r"ValueError\('boom'\)\)\nreport!"):
        wait_for(lambda: (_ for _ in ()).throw(ValueError("boom")), timeout=0.05, interval=0.01,
                 what="the thing", report=lambda: "report!")
    with pytest.raises(KeyError):
        wait_for(missing, timeout=5, fatal=KeyError)


def test_async_polls_on_trios_clock_and_lets_other_tasks_run() -> None:
    async def main() -> None:
        state = {"done": False}

        async def worker() -> None:
            await trio.sleep(30)  # virtual time: the poller's sleeps let the clock jump here
            state["done"] = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            assert await wait_for_async(lambda: state["done"], timeout=60, what="the worker") is True
        start = trio.current_time()
        with pytest.raises(AssertionError, match=r"timed out after 100s waiting for nothing$"):
            await wait_for_async(lambda: False, timeout=100, interval=1, what="nothing")
        assert trio.current_time() - start >= 100
        assert await wait_for_async(counter(2), interval=0.5) == 2
        with pytest.raises(KeyError):
            await wait_for_async(missing, fatal=KeyError)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
