"""Leader election with `meshagent lock` on a namespace cluster (tests/cluster/test_lock_election.py and
bench/lock/handover.py): one contender per client agent, children that prove mutual exclusion with an atomic
`mkdir`, and the phases of a handover after the holder's agent is killed, timed from outside.

A child that starts while another holds the `held` directory writes an `overlap` line: the check does not sample,
so two children running at once cannot slip between polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cluster_hosts import Cluster, Host
from .wait import wait_for

PREFIX = "service/election"
LOCK_KEY = f"{PREFIX}/.lock"

# $1: the contender's name, $2: the shared directory. mkdir is atomic: it fails if another child holds `held`.
CHILD = r"""
name=$1; d=$2; own=0
now=$(date +%s.%N)
if mkdir "$d/held" 2>/dev/null; then
  own=1; echo "$name $now" > "$d/held/owner"
else
  echo "$name $now" >> "$d/overlap"
fi
echo "start $name $now" >> "$d/log"
trap '[ $own = 1 ] && rm -rf "$d/held"; echo "stop $name $(date +%s.%N)" >> "$d/log"; exit 0' TERM INT
while [ ! -e "$d/stop.$name" ]; do sleep 0.1; done
[ $own = 1 ] && rm -rf "$d/held"
echo "stop $name $(date +%s.%N)" >> "$d/log"
"""


@dataclass
class Contender:
    """One `meshagent lock` process run inside a client host's namespace (stopped by its PID)."""

    host: Host
    proc: subprocess.Popen[bytes]
    err_path: Path

    @property
    def name(self) -> str:
        return self.host.name

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C (SIGINT to its process group): the child is stopped and the lock released."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Election:
    """The shared directory the children write to, and the contenders."""

    cluster: Cluster
    dir: Path
    contenders: dict[str, Contender] = field(default_factory=dict)

    def start(self, host: Host, *flags: str) -> Contender:
        script = self.dir / "child.sh"
        script.write_text(CHILD)
        err = self.dir / f"lock-{host.name}-{time.monotonic_ns()}.err"
        with open(err, "wb") as fh:
            # start_new_session: Ctrl-C and kill reach this process and its child, not the test's group
            proc = subprocess.Popen([*host.prefix, self.cluster.meshagent, "lock", "-http-addr", host.http_addr,
                                     *flags, PREFIX, f"sh {script} {host.name} {self.dir}"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
                                    start_new_session=True)
        self.contenders[host.name] = Contender(host, proc, err)
        return self.contenders[host.name]

    def holder(self) -> tuple[str, float] | None:
        """(name, start time) of the child holding `held` now, or None."""
        try:
            name, started = (self.dir / "held" / "owner").read_text().split()
        except (OSError, ValueError):
            return None
        return name, float(started)

    def overlaps(self) -> list[str]:
        path = self.dir / "overlap"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> list[str]:
        path = self.dir / "log"
        return path.read_text().splitlines() if path.exists() else []

    def report(self) -> str:
        parts = [f"--- {c.name} (exit {c.proc.poll()}): {c.stderr()[-800:]}" for c in self.contenders.values()]
        return "\n".join([*parts, "--- log:", *self.log(), self.cluster.report()])

    def stop_all(self) -> None:
        """Stop every contender this election started, and any child left behind (by the stop files)."""
        for name in self.contenders:
            (self.dir / f"stop.{name}").touch()
        for c in self.contenders.values():
            try:
                c.interrupt(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                c.kill()


@dataclass
class Handover:
    """When each phase of one handover was seen (seconds after the kill)."""

    old: str
    new: str
    failed: float  # a server's catalog has the old holder's serfHealth critical (failure detection)
    released: float  # the lock key has no Session (the session invalidated by the leader)
    started: float  # the new holder's child started (lock-delay, the retry step and the blocking wake-up)

    @property
    def invalidation(self) -> float:
        # Both marks are polled every 50 ms from the same server: the release can be seen first by a step.
        return max(0.0, self.released - self.failed)

    def describe(self) -> str:
        return (f"{self.old} -> {self.new}: {self.started:.1f} s = failure detection {self.failed:.1f} s + "
                f"invalidation {self.invalidation:.1f} s + lock-delay, retry and wake-up "
                f"{self.started - self.released:.1f} s")


def _watch(fn: Callable[[], bool], out: dict[str, float], key: str, t0: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if fn():
                out[key] = time.time() - t0
                return
        except Exception:  # a server in the middle of a change; ask again
            pass
        stop.wait(0.05)


def kill_holder(election: Election, server: Host, timeout: float = 60.0) -> Handover:
    """kill -9 the holder's agent and time detection, invalidation and the next child's start."""
    held = wait_for(election.holder, 30, what="a holder", report=election.report)
    old = held[0]
    host = election.cluster.host(old)
    marks: dict[str, float] = {}
    stop = threading.Event()

    def failed() -> bool:
        rows = server.http(f"/v1/health/node/{old}")
        return any(r["CheckID"] == "serfHealth" and r["Status"] == "critical" for r in rows)

    def released() -> bool:
        rows = server.http(f"/v1/kv/{LOCK_KEY}?stale")
        return not rows[0].get("Session")

    t0 = time.time()
    watchers = [threading.Thread(target=_watch, args=(fn, marks, key, t0, stop), daemon=True)
                for fn, key in ((failed, "failed"), (released, "released"))]
    host.kill()
    for w in watchers:
        w.start()
    try:
        new = wait_for(lambda: (h := election.holder()) and h[0] != old and h, timeout,
                       what="another child takes over", report=election.report)
    finally:
        stop.set()
    for w in watchers:
        w.join()
    started = new[1] - t0
    return Handover(old, new[0], marks.get("failed", float("nan")), marks.get("released", float("nan")), started)
