"""logs.LogFanout, what /v1/agent/monitor reads: each subscriber gets the lines at its own level (more verbose
than the agent's if asked, while stderr keeps the agent's), a slow one loses lines (counted, then told), lines
logged from another thread arrive, and the logger's level comes back when the last subscriber leaves."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
import trio
from meshagent.agent.logs import FANOUT, set_agent_level, setup_logging

log = logging.getLogger("meshagent.test-fanout")


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """These tests set up logging as the agent does; other tests (caplog) need the logger as it was."""
    root = logging.getLogger("meshagent")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    set_agent_level(logging.NOTSET)  # as before any setup_logging
    root.handlers[:], root.propagate = saved[0], saved[2]
    root.setLevel(saved[1])


def _stderr_capture() -> io.StringIO:
    """Point the agent's stderr handler at a buffer (setup_logging as the agent does, then swap its stream)."""
    setup_logging("info", False)
    handler = logging.getLogger("meshagent").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    return buffer


async def _take(lines: object, n: int) -> list[str]:
    out = []
    with trio.fail_after(5):
        async for line in lines:  # type: ignore[attr-defined]
            out.append(line)
            if len(out) == n:
                break
    return out


def test_levels_per_subscriber_and_stderr_keeps_the_agents() -> None:
    stderr = _stderr_capture()
    root = logging.getLogger("meshagent")

    async def main() -> None:
        with FANOUT.subscribe(logging.DEBUG, False) as debug, FANOUT.subscribe(logging.WARNING, True) as warn:
            assert root.level == logging.DEBUG  # the most verbose asked
            log.debug("detail %d", 1)
            log.warning("careful")
            got = await _take(debug.lines(), 2)
            assert "[DEBUG] test-fanout: detail 1" in got[0] and "[WARN]  test-fanout: careful" in got[1]
            (line,) = await _take(warn.lines(), 1)
            assert json.loads(line)["@message"] == "careful" and json.loads(line)["@level"] == "warn"
        assert root.level == logging.INFO  # back to the agent's own once nobody asks for more
        assert "detail" not in stderr.getvalue() and "careful" in stderr.getvalue()

    trio.run(main)


def test_a_slow_client_loses_lines_counted_then_told() -> None:
    _stderr_capture()

    async def main() -> None:
        before = FANOUT.dropped
        with FANOUT.subscribe(logging.INFO, False, limit=3) as sub:
            for i in range(10):
                log.info("line %d", i)
            assert sub.dropped_total == 7 and FANOUT.dropped - before == 7
            got = await _take(sub.lines(), 4)
            assert [g.rsplit(" ", 1)[-1] for g in got[:3]] == ["0", "1", "2"]
            assert "7 log lines dropped" in got[3]
            log.info("after")
            (line,) = await _take(sub.lines(), 1)
            assert line.endswith("after")

    trio.run(main)


def test_lines_from_another_thread_arrive() -> None:
    _stderr_capture()

    async def main() -> None:
        with FANOUT.subscribe(logging.INFO, False) as sub:
            thread = threading.Thread(target=lambda: log.info("from a worker thread"))
            thread.start()
            (line,) = await _take(sub.lines(), 1)
            thread.join()
            assert line.endswith("from a worker thread")

    trio.run(main)


def test_reload_changes_stderrs_level_not_a_monitors() -> None:
    stderr = _stderr_capture()

    async def main() -> None:
        with FANOUT.subscribe(logging.DEBUG, False) as sub:
            set_agent_level(logging.ERROR)
            log.info("quiet on stderr")
            (line,) = await _take(sub.lines(), 1)
            assert line.endswith("quiet on stderr")
        assert "quiet on stderr" not in stderr.getvalue()
        assert logging.getLogger("meshagent").level == logging.ERROR

    trio.run(main)
