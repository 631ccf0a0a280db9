"""Health checks: thresholds (pure), runners against real sockets and processes, TTL expiry, reaping."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.checks.manager import CheckManager
from meshagent.agent.checks.runners import run_script, run_tcp
from meshagent.agent.checks.thresholds import CRITICAL, PASSING, WARNING, StatusThresholds
from meshagent.agent.config.types import CheckDefinition

from tests.support.wait import wait_for


def test_thresholds_zero_means_immediate() -> None:
    t = StatusThresholds()
    assert t.result(CRITICAL) == CRITICAL and t.result(PASSING) == PASSING and t.result(WARNING) == WARNING


def test_failures_before_critical_and_warning() -> None:
    t = StatusThresholds(failures_before_warning=1, failures_before_critical=3)
    assert [t.result(CRITICAL) for _ in range(4)] == [WARNING, WARNING, CRITICAL, CRITICAL]
    assert t.result(PASSING) == PASSING
    assert t.result(CRITICAL) == WARNING  # the success reset the failure count


def test_success_before_passing() -> None:
    t = StatusThresholds(success_before_passing=2)
    assert [t.result(PASSING) for _ in range(3)] == [None, PASSING, PASSING]


@given(st.lists(st.sampled_from([PASSING, WARNING, CRITICAL]), max_size=50), st.integers(0, 5))
def test_critical_only_after_n_consecutive_failures(results: list[str], n: int) -> None:
    t = StatusThresholds(failures_before_warning=n, failures_before_critical=n)
    run = 0
    for r in results:
        out = t.result(r)
        run = run + 1 if r == CRITICAL else 0
        if out == CRITICAL:
            assert run >= n and run >= 1
        if r == CRITICAL and run < n:
            assert out is None


def test_tcp_runner_against_real_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        status, output = trio.run(run_tcp, CheckDefinition(tcp=f"127.0.0.1:{port}", timeout=2))
        assert status == PASSING and "Success" in output
    status, _ = trio.run(run_tcp, CheckDefinition(tcp=f"127.0.0.1:{port}", timeout=2))
    assert status == CRITICAL


def test_script_exit_codes_and_output_cap() -> None:
    def run(cmd: str) -> tuple[str, str]:
        return trio.run(run_script, CheckDefinition(args=["sh", "-c", cmd], timeout=10))
    assert run("echo fine") == (PASSING, "fine\n")
    assert run("exit 1")[0] == WARNING
    assert run("exit 2")[0] == CRITICAL
    status, output = run("head -c 100000 /dev/zero | tr '\\0' x")
    assert status == PASSING and len(output) < 4200


def test_script_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    cmd = f"sleep 1000 & echo $! > {pidfile}; wait"
    status, output = trio.run(run_script, CheckDefinition(args=["sh", "-c", cmd], timeout=1))
    assert status == CRITICAL and "Timed out" in output
    child = int(pidfile.read_text())

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return False
        return state != "Z"
    # SIGKILL is delivered asynchronously: the process may show as running for a moment after kill() returns.
    wait_for(lambda: not alive(child), 10, what=f"the script's child {child} gone after the timeout")


def test_ttl_expires_and_updates_under_mock_clock() -> None:
    events: list[tuple[str, str, str]] = []

    async def main() -> None:
        manager = CheckManager(on_status=lambda *a: events.append(a), on_deregister_service=lambda s: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            manager.add("t", CheckDefinition(id="t", ttl=30.0), PASSING)
            manager.ttl_update("t", PASSING, "ok")
            await trio.sleep(29)
            assert events == [("t", PASSING, "ok")]
            await trio.sleep(2)
            assert events[-1] == ("t", CRITICAL, "TTL expired")
            manager.ttl_update("t", WARNING, "slow")
            assert events[-1] == ("t", WARNING, "slow")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_deregister_critical_service_after() -> None:
    reaped: list[str] = []

    async def main() -> None:
        manager = CheckManager(on_status=lambda *a: None, on_deregister_service=reaped.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            manager.add("t", CheckDefinition(id="t", ttl=10.0, deregister_critical_service_after=60.0),
                        CRITICAL, service_id="web")
            await trio.sleep(50)
            assert reaped == []
            await trio.sleep(15)
            assert reaped == ["web"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_removed_script_check_leaves_no_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def main() -> None:
        manager = CheckManager(on_status=lambda *a: None, on_deregister_service=lambda s: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            manager.add("s", CheckDefinition(id="s", args=["sh", "-c", f"echo $$ > {pidfile}; sleep 1000"],
                                             interval=1.0, timeout=100.0), CRITICAL)
            with trio.fail_after(10):
                while not pidfile.exists() or not pidfile.read_text().strip():
                    await trio.sleep(0.02)
            manager.remove("s")
            pid = int(pidfile.read_text())
            with trio.fail_after(10):
                while True:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(main)
