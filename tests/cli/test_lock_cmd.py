"""`meshagent lock` as real processes against a real HTTP stand-in of the session/KV API (tests/cli/lock_standin.py,
127.0.51.N): the child runs only while held, exit code, handover on Ctrl-C, SIGTERM when the lock is lost,
the semaphore's N slots and limit conflict, -timeout, a foreign key, hostile answers and bad flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.lock_standin import StandIn
from tests.support.agents import MESHAGENT, AgentProcess, scratch_dir
from tests.support.ports import free_host_in
from tests.support.wait import wait_for

LOCK_FLAG = 0x2DDCCBC058A50C18
# a child that marks itself running, says when SIGTERM reaches it, and stays until a stop file appears
HOLD = ("echo $$ > {d}/{n}.pid; echo $CONSUL_LOCK_HELD > {d}/{n}.run; trap 'echo term > {d}/{n}.term; exit 7' TERM; "
        "while [ ! -e {d}/{n}.stop ]; do sleep 0.05; done")


@pytest.fixture()
def standin() -> Iterator[StandIn]:
    server = StandIn(free_host_in("127.0.51", 1, 40, ports=()))
    try:
        yield server
    finally:
        server.close()


class Runner:
    """Starts `meshagent lock` processes against the stand-in and stops them (by PID) at the end."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp, self.procs = url, tmp, []  # type: list[subprocess.Popen[str]]

    def start(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP", "MESH_HTTP"))}
        # stderr to a file, not a pipe: a child inherits it and may outlive its parent
        err = self.tmp / f"lock-{len(self.procs)}.err"
        with open(err, "w") as fh:
            proc = subprocess.Popen([MESHAGENT, "lock", "-http-addr", self.url, *args], env=env, text=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
                                    start_new_session=True)
        proc.err_path = err  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def report(self) -> str:
        return "\n".join(f"--- {p.args}: {p.err_path.read_text()}" for p in self.procs)  # type: ignore[attr-defined]

    def hold(self, name: str, *flags: str, prefix: str = "svc/leader") -> subprocess.Popen[str]:
        return self.start(*flags, prefix, HOLD.format(d=self.tmp, n=name))

    def running(self, name: str) -> bool:
        return (self.tmp / f"{name}.run").exists()

    def release(self, name: str) -> None:
        (self.tmp / f"{name}.stop").touch()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        # a child outlives a SIGKILLed `meshagent lock` (its own process group): stop it by the PID it wrote
        for pid_file in self.tmp.glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for proc in self.procs:
            proc.wait()


@pytest.fixture()
def runner(standin: StandIn, tmp_path: Path) -> Iterator[Runner]:
    r = Runner(standin.url, tmp_path)
    try:
        yield r
    finally:
        r.stop_all()


def finish(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, proc.err_path.read_text()  # type: ignore[attr-defined]


def test_child_runs_while_held_and_its_exit_code_is_ours(standin: StandIn, runner: Runner) -> None:
    proc = runner.start("-verbose", "svc/job", f"echo $CONSUL_LOCK_HELD > {runner.tmp}/x.run; exit 3")
    code, err = finish(proc)
    assert code == 3, err
    assert (runner.tmp / "x.run").read_text().strip() == "true"
    assert "Setting up lock at path: svc/job/.lock" in err and "Cleanup succeeded" in err
    assert "svc/job/.lock" not in standin.store.kv  # released, then deleted by the cleanup
    assert standin.store.sessions == {}  # the session is destroyed


def test_exactly_one_holder_and_handover_on_ctrl_c(standin: StandIn, runner: Runner) -> None:
    a = runner.hold("a")
    wait_for(lambda: runner.running("a"), 10, what="a's child runs", report=runner.report)
    b = runner.hold("b")
    wait_for(lambda: len(standin.store.sessions) == 2, 10, what="b's session exists")
    holder = standin.store.holder("svc/leader/.lock")
    assert holder and not runner.running("b")
    assert standin.store.kv["svc/leader/.lock"].flags == LOCK_FLAG
    a.send_signal(signal.SIGINT)
    code, err = finish(a)
    assert "Shutdown triggered, killing child" in err
    assert code == 7 and (runner.tmp / "a.term").exists()  # the child's own exit code from its TERM trap
    wait_for(lambda: runner.running("b"), 10, what="b takes over once a released")
    assert standin.store.holder("svc/leader/.lock") not in ("", holder)
    runner.release("b")
    code, err = finish(b)
    assert code == 0, err
    assert standin.store.sessions == {}


def test_lost_lock_terminates_the_child(standin: StandIn, runner: Runner) -> None:
    a = runner.hold("a")
    wait_for(lambda: runner.running("a"), 10, what="a's child runs", report=runner.report)
    standin.store.invalidate(standin.store.holder("svc/leader/.lock"))  # as serfHealth failing would
    code, err = finish(a)
    assert "Lock lost, killing child" in err
    assert code == 7 and (runner.tmp / "a.term").exists()


@pytest.mark.slow  # ~8 s: the first renewal comes at TTL/2 (7.5 s), and the CLI's TTL is Consul's fixed 15 s
def test_session_is_renewed(standin: StandIn, runner: Runner) -> None:
    runner.hold("a")
    wait_for(lambda: runner.running("a"), 10, what="a's child runs", report=runner.report)
    wait_for(lambda: standin.store.renewals >= 1, 10, what="a renewal")


def test_semaphore_two_slots_three_contenders(standin: StandIn, runner: Runner) -> None:
    procs = {n: runner.hold(n, "-n", "2", prefix="svc/pool") for n in ("a", "b", "c")}
    wait_for(lambda: sum(runner.running(n) for n in procs) == 2, 10, what="two children run")
    wait_for(lambda: len(standin.store.sessions) == 3, 10, what="three sessions")
    waiting = next(n for n in procs if not runner.running(n))
    doc = json.loads(standin.store.kv["svc/pool/.lock"].value)
    assert doc["Limit"] == 2 and len(doc["Holders"]) == 2
    conflict = runner.start("-n=3", "svc/pool", "true")
    code, err = finish(conflict)
    assert code == 1 and "semaphore limit conflict (lock: 2, local: 3)" in err
    first = next(n for n in procs if runner.running(n))
    runner.release(first)
    assert finish(procs[first])[0] == 0
    wait_for(lambda: runner.running(waiting), 10, what="the waiting contender gets the freed slot")
    for n in procs:
        runner.release(n)
    for n in procs:
        finish(procs[n])
    assert "svc/pool/.lock" not in standin.store.kv and standin.store.sessions == {}


def test_timeout_gives_up_and_destroys_its_session(standin: StandIn, runner: Runner) -> None:
    runner.hold("a")
    wait_for(lambda: runner.running("a"), 10, what="a's child runs", report=runner.report)
    code, err = finish(runner.start("-timeout", "1s", "svc/leader", "touch never"))
    assert code == 1 and "Shutdown triggered or timeout during lock acquisition" in err
    assert len(standin.store.sessions) == 1


def test_a_key_that_is_not_a_lock_is_refused(standin: StandIn, runner: Runner) -> None:
    standin.store.put_plain("svc/x/.lock", b"data", 0)
    code, err = finish(runner.start("svc/x", "true"))
    assert code == 1 and "Existing key does not match lock use" in err
    assert standin.store.kv["svc/x/.lock"].value == b"data"


def test_hostile_answers_end_with_one_line(standin: StandIn, runner: Runner) -> None:
    standin.store.garbage = "/v1/kv/"
    code, err = finish(runner.start("svc/y", "true"))
    assert code == 1 and "Lock acquisition failed" in err and "not JSON" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, text", [
    (["-n", "0", "p", "true"], "from 1 to"),
    (["-timeout", "soon", "p", "true"], "invalid duration"),
    (["p"], "Missing argument"),
    (["/", "true"], "PREFIX must be"),
])
def test_bad_flags(runner: Runner, args: list[str], text: str) -> None:
    code, err = finish(runner.start(*args))
    assert code in (1, 2) and text in err, err


@pytest.fixture(scope="module")
def dev_agent() -> Iterator[AgentProcess]:
    """A real `meshagent agent -dev` on this suite's own 127.0.51.N, stopped by its PID afterwards."""
    host = free_host_in("127.0.51", 41, 60)
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "lock-dev"],
                        workdir=scratch_dir()).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.slow  # ~11 s with the agent's start; the cluster acceptance covers the real API as well
def test_against_a_real_agent(dev_agent: AgentProcess, tmp_path: Path) -> None:
    # What the stand-in stands for, against the agent itself: the child's exit code and a clean key, a holder
    # and a waiting contender, the lock lost when the holder's session is destroyed through the API (lock-delay,
    # 15 s, then keeps the contender waiting), and a waiting contender's Ctrl-C destroying its session.
    r = Runner(dev_agent.http_addr, tmp_path)
    http = httpx.Client(base_url=dev_agent.http_addr, timeout=10)
    try:
        code, err = finish(r.start("svc/real", "exit 3"))
        assert code == 3, err
        assert http.get("/v1/kv/svc/real/.lock").status_code == 404 and http.get("/v1/session/list").json() == []
        a = r.hold("a", prefix="svc/real")
        wait_for(lambda: r.running("a"), 10, what="a's child runs", report=r.report)
        b = r.hold("b", prefix="svc/real")
        wait_for(lambda: len(http.get("/v1/session/list").json()) == 2, 10, what="b's session")
        sid = http.get("/v1/kv/svc/real/.lock").json()[0]["Session"]
        assert sid and not r.running("b")
        assert http.put(f"/v1/session/destroy/{sid}").json() is True
        code, err = finish(a)
        assert "Lock lost, killing child" in err and code == 7, err
        assert not r.running("b")  # lock-delay (15 s) holds b back after an invalidation
        b.send_signal(signal.SIGINT)
        code, err = finish(b)
        assert code == 1 and "Shutdown triggered or timeout during lock acquisition" in err, err
        wait_for(lambda: http.get("/v1/session/list").json() == [], 10, what="every session destroyed")
    finally:
        r.stop_all()
        http.close()
