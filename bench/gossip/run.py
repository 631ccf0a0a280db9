"""Gossip benchmark: join convergence, failure detection, leave propagation, user events, idle cost.

    .venv/bin/python bench/gossip/run.py [--n 10 --n 30] [--impl serf --impl meshagent] [--json]

Each implementation runs N agents on loopback (127.0.0.N each, the same gossip port), with its default
LAN timings, in the same run, and is measured the same way from the outside:

1. join: all N started unjoined; every agent but the first joins the first (8 join calls at a time); the
   time until every agent lists all N alive;
2. failure detection: SIGKILL of one agent; the time until the first, and until every, other agent marks
   it failed; five crashes one after another (each victim restarted and rejoined, untimed, before the
   next, so each crash is in a whole cluster), medians;
3. leave: a graceful leave of another agent; the time until every other agent shows it left;
4. user event: one agent fires an event; the time until the first and the last of the others receives it;
5. idle: RSS per agent (VmRSS), CPU per agent over 10 s of idleness, and loopback bytes/s divided by N
   (the whole of `lo`: the machine is otherwise quiet while this runs).

User events are timed on every receiver at once: serf's through one event stream per agent, ours through
one blocking `/v1/event/list` query per agent (which answers as soon as the event has arrived).

The reference is Debian's `serf agent` (hashicorp/serf 0.9, memberlist's LAN defaults). Ratios are
ours / serf's (below 1 is better for times and costs). Every wait is bounded; agents are killed by PID.

Like for like: a meshagent agent gossips Consul's tags (role, dc, id, versions, port: about 170 bytes of
node meta, so an alive message of about 240 bytes, five to a UDP packet), and so does the reference `serf`
here (MESHAGENT_TAGS, a fresh id each). `serf-bare` is serf with no tags at all (65-byte alive messages,
twenty to a packet), as this benchmark ran it before; its join converges about 3x faster at N = 30, for
that reason alone (serf 0.42 s bare vs 1.58 s with these tags, median of 5 runs each). Ratios are given
against both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)

from tests.support.serf_rpc import SerfAgent  # noqa: E402

FIRST_HOST = 60  # serf agents on 127.0.0.60 …, meshagents on 127.0.0.160 …
MESHAGENT = str(Path(sys.executable).with_name("meshagent"))
GOSSIP_PORT = 17946
RPC_PORT = 17373
QUIET_S = 2.0  # between a restarted victim's rejoin and the next crash


class Cluster(Protocol):
    """What the benchmark needs from an implementation's N agents."""

    names: list[str]

    def start_all(self) -> None: ...
    def join_all(self) -> None: ...
    def view(self, i: int) -> dict[str, str]: ...  # node name -> alive / failed / left / …
    def kill(self, i: int) -> None: ...
    def restart(self, i: int) -> None: ...  # start a killed agent again and join it to agent 0
    def leave(self, i: int) -> None: ...
    def event_latency(self, sender: int, receivers: list[int], timeout: float) -> list[float]: ...
    def pids(self) -> list[int]: ...
    def close(self) -> None: ...


# The tags `meshagent agent -dev` gossips (agent.Agent._gossip_tags), for serf to carry the same node meta.
MESHAGENT_TAGS = {"role": "consul", "dc": "dc1", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "build": "0.1.0",
                  "segment": "", "port": "8300", "bootstrap": "1"}


class SerfCluster:
    """N Debian serf agents, with meshagent's tags (or none: `bare`)."""

    def __init__(self, n: int, workdir: Path, bare: bool = False) -> None:
        self.names = [f"serf-{i}" for i in range(n)]
        hosts = [f"127.0.0.{FIRST_HOST + i}" for i in range(n)]
        self.agents = [SerfAgent(name, f"{host}:{GOSSIP_PORT}", f"{host}:{RPC_PORT}", workdir,
                                 tags={} if bare else {**MESHAGENT_TAGS, "id": str(uuid.uuid4())})
                       for name, host in zip(self.names, hosts, strict=True)]

    def start_all(self) -> None:
        for agent in self.agents:
            agent.start()

    def join_all(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._join_first, range(1, len(self.agents))))

    def _join_first(self, i: int) -> None:
        client = self.agents[i].rpc_client()
        try:
            client.join([self.agents[0].bind])
        finally:
            client.close()

    def view(self, i: int) -> dict[str, str]:
        try:
            return self.agents[i].members()
        except OSError:
            return {}

    def kill(self, i: int) -> None:
        self.agents[i].kill()

    def restart(self, i: int) -> None:
        self.agents[i].start()
        self._join_first(i)

    def leave(self, i: int) -> None:
        client = self.agents[i].rpc_client()
        try:
            client.leave()
        finally:
            client.close()

    def event_latency(self, sender: int, receivers: list[int], timeout: float) -> list[float]:
        streams = []
        for i in receivers:
            client = self.agents[i].rpc_client()
            client.stream_user_events()
            streams.append(client)
        name = f"bench-{time.monotonic_ns()}"
        t0 = 0.0
        fired = threading.Event()

        def wait_for_event(stream: Any) -> float | None:
            fired.wait()
            end = t0 + timeout
            try:
                while time.perf_counter() < end:
                    record = stream.next_event(max(0.01, end - time.perf_counter()))
                    if record and record.get("Name") == name:
                        return time.perf_counter() - t0
                return None
            finally:
                stream.close()

        # One reader thread per stream, all waiting at once, so each event is timed when it arrives.
        with ThreadPoolExecutor(len(streams)) as pool:
            futures = [pool.submit(wait_for_event, stream) for stream in streams]
            client = self.agents[sender].rpc_client()
            t0 = time.perf_counter()
            client.event(name, b"payload")
            fired.set()
            client.close()
            got = [f.result() for f in futures]
        return [x for x in got if x is not None]

    def pids(self) -> list[int]:
        return [a.proc.pid for a in self.agents if a.proc and a.proc.poll() is None]

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()


class MeshagentCluster:
    """N `meshagent agent -dev` processes (the whole agent: HTTP, DNS, catalog and gossip)."""

    STATUS = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}

    def __init__(self, n: int, workdir: Path) -> None:
        self.names = [f"mesh-{i}" for i in range(n)]
        self.hosts = [f"127.0.0.{FIRST_HOST + 100 + i}" for i in range(n)]
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(timeout=5)

    def start_all(self) -> None:
        self.procs = [self._spawn(i) for i in range(len(self.names))]
        for i in range(len(self.names)):
            self._wait_up(i)

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        name, host = self.names[i], self.hosts[i]
        with open(self.workdir / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [MESHAGENT, "agent", "-dev", "-node", name, "-bind", host, "-client", host, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_up(self, i: int) -> None:
        if wait_until(lambda: self._ok(f"http://{self.hosts[i]}:8500/v1/agent/self"), 30) is None:
            raise SystemExit(f"meshagent on {self.hosts[i]} did not start")

    def restart(self, i: int) -> None:
        self.procs[i] = self._spawn(i)
        self._wait_up(i)
        self._join_first(i)

    def _ok(self, url: str) -> bool:
        try:
            return self.http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def join_all(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._join_first, range(1, len(self.hosts))))

    def _join_first(self, i: int) -> None:
        self.http.put(f"http://{self.hosts[i]}:8500/v1/agent/join/{self.hosts[0]}", timeout=10)

    def view(self, i: int) -> dict[str, str]:
        try:
            members = self.http.get(f"http://{self.hosts[i]}:8500/v1/agent/members").json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {m["Name"]: self.STATUS.get(m["Status"], "none") for m in members}

    def kill(self, i: int) -> None:
        if self.procs[i].poll() is None:
            self.procs[i].kill()
            self.procs[i].wait(10)

    def leave(self, i: int) -> None:
        self.http.put(f"http://{self.hosts[i]}:8500/v1/agent/leave")

    def event_latency(self, sender: int, receivers: list[int], timeout: float) -> list[float]:
        """One blocking `/v1/event/list?name=` per receiver, all waiting at once (as serf's event streams
        are all open at once): each answers when its agent has the event."""
        name = f"bench-{time.monotonic_ns()}"
        start = threading.Barrier(len(receivers) + 1)
        t0 = 0.0

        def wait_for_event(i: int) -> float | None:
            url = f"http://{self.hosts[i]}:8500/v1/event/list"
            with httpx.Client(timeout=timeout + 5) as client:
                index = client.get(url, params={"name": name}).headers.get("X-Consul-Index", "1")
                start.wait()
                deadline = time.perf_counter() + timeout
                while time.perf_counter() < deadline:
                    try:
                        r = client.get(url, params={"name": name, "index": index, "wait": f"{timeout}s"})
                    except httpx.HTTPError:
                        continue
                    if r.json():
                        return time.perf_counter() - t0
                    index = r.headers.get("X-Consul-Index", index)
            return None

        with ThreadPoolExecutor(len(receivers)) as pool:
            futures = [pool.submit(wait_for_event, i) for i in receivers]
            start.wait()
            time.sleep(0.2)  # let every blocking query reach its agent (they wait on a condition there)
            t0 = time.perf_counter()
            self.http.put(f"http://{self.hosts[sender]}:8500/v1/event/fire/{name}", content=b"payload")
            got = [f.result() for f in futures]
        return [x for x in got if x is not None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.http.close()


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.01) -> float | None:
    """Seconds until `cond()` held, or None after `timeout`."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if cond():
            return time.perf_counter() - t0
        time.sleep(step)
    return None


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lo_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[0])
    return 0


def measure(cluster: Cluster, n: int, idle_s: float, crashes: int) -> dict[str, Any]:
    """Run the five measurements on a fresh cluster of n agents."""
    out: dict[str, Any] = {"n": n}
    cluster.start_all()
    t0 = time.perf_counter()
    cluster.join_all()
    everyone = set(cluster.names)

    def converged() -> bool:
        return all({k for k, v in cluster.view(i).items() if v == "alive"} >= everyone for i in range(n))

    done = wait_until(converged, 60)
    out["join_s"] = None if done is None else time.perf_counter() - t0

    # Idle costs, measured on the converged cluster before any fault.
    pids = cluster.pids()
    cpu0 = {p: cpu_seconds(p) for p in pids}
    lo0 = lo_bytes()
    time.sleep(idle_s)
    out["idle_cpu_pct"] = statistics.mean((cpu_seconds(p) - cpu0[p]) / idle_s * 100 for p in pids)
    out["bytes_s_per_agent"] = (lo_bytes() - lo0) / idle_s / n
    out["rss_mb"] = statistics.mean(rss_kb(p) for p in pids) / 1024

    others = list(range(1, n))
    lat = cluster.event_latency(0, others, 10)
    out["event_first_s"] = min(lat) if lat else None
    out["event_all_s"] = max(lat) if len(lat) == len(others) else None

    # Crashes one after another. Each victim, once every other agent marks it failed, is started again and
    # rejoined (not timed), and the next crash comes after the cluster has converged and been quiet for
    # QUIET_S: every crash happens in a whole cluster of n. Medians.
    firsts, alls = [], []
    for k in range(crashes):
        victim = n - 1 - k % (n - 1)  # never agent 0, the one everybody joins
        watchers = [i for i in range(n) if i != victim]
        cluster.kill(victim)
        t0 = time.perf_counter()
        seen: dict[int, float] = {}

        def detected(v: int = victim, w: list[int] = watchers, box: dict[int, float] = seen,
                     start: float = t0) -> bool:
            for i in w:
                if i not in box and cluster.view(i).get(cluster.names[v]) == "failed":
                    box[i] = time.perf_counter() - start
            return len(box) == len(w)

        wait_until(detected, 60)
        if seen:
            firsts.append(min(seen.values()))
        if len(seen) == len(watchers):
            alls.append(max(seen.values()))
        cluster.restart(victim)
        if wait_until(converged, 60) is None:
            break
        time.sleep(QUIET_S)
    out["detect_first_s"] = statistics.median(firsts) if firsts else None
    out["detect_all_s"] = statistics.median(alls) if len(alls) == crashes else None
    out["detect_runs"] = list(zip(firsts, alls, strict=False))

    leaver = n - 2
    t0 = time.perf_counter()
    cluster.leave(leaver)
    watchers = [i for i in range(n) if i != leaver]
    left = wait_until(lambda: all(cluster.view(i).get(cluster.names[leaver]) == "left" for i in watchers), 60)
    out["leave_s"] = None if left is None else time.perf_counter() - t0
    return out


def bare_serf(n: int, workdir: Path) -> SerfCluster:
    """Serf agents without tags (the reference as this benchmark first ran it)."""
    return SerfCluster(n, workdir, bare=True)


IMPLS: dict[str, Callable[[int, Path], Cluster]] = {
    "serf": SerfCluster,
    "serf-bare": bare_serf,
    "meshagent": MeshagentCluster,
}
REFERENCES = ("serf", "serf-bare")


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="cluster sizes (default 10 and 30)")
    parser.add_argument("--impl", action="append", choices=sorted(IMPLS), help="implementations (default all)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idleness for CPU and bytes")
    parser.add_argument("--crashes", type=int, default=5, help="crashes timed one after another (median)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args()
    if not shutil.which("serf") and not Path("/usr/bin/serf").exists():
        raise SystemExit("Debian's serf is needed as the reference: apt-get install serf (make system-deps)")
    sizes = args.n or [10, 30]
    impls = args.impl or sorted(IMPLS)
    print(f"gossip benchmark on loopback, N = {sizes}; machine: {machine_info()}")
    results: list[dict[str, Any]] = []
    for n in sizes:
        for impl in impls:
            workdir = Path(tempfile.mkdtemp(prefix=f"meshagent-bench-gossip-{impl}-"))
            cluster = IMPLS[impl](n, workdir)
            try:
                r = measure(cluster, n, args.idle, args.crashes)
            finally:
                cluster.close()
            r["impl"] = impl
            results.append(r)
            print(f"  {impl:>9} N={n:<3} join {fmt(r['join_s'], '.2f')} s  detect {fmt(r['detect_first_s'], '.2f')}"
                  f" / {fmt(r['detect_all_s'], '.2f')} s  leave {fmt(r['leave_s'], '.2f')} s  event "
                  f"{fmt(r['event_first_s'], '.3f')} / {fmt(r['event_all_s'], '.3f')} s  RSS {r['rss_mb']:.1f} MB"
                  f"  CPU {r['idle_cpu_pct']:.2f} %  {r['bytes_s_per_agent']:.0f} B/s", flush=True)
    by = {(r["impl"], r["n"]): r for r in results}
    keys = ["join_s", "detect_first_s", "detect_all_s", "leave_s", "event_all_s", "rss_mb", "idle_cpu_pct",
            "bytes_s_per_agent"]
    for reference in REFERENCES:
        if reference not in impls or all(impl in REFERENCES for impl in impls):
            continue
        print(f"\n=== ratios ours / {reference} (below 1: ours is faster or cheaper) ===")
        for n in sizes:
            ref = by.get((reference, n))
            for impl in impls:
                if impl in REFERENCES or ref is None or (impl, n) not in by:
                    continue
                ours = by[(impl, n)]
                cells = [f"{k} {ours[k] / ref[k]:.2f}x" if ours.get(k) and ref.get(k) else f"{k} n/a" for k in keys]
                print(f"  N={n} {impl}: " + ", ".join(cells))
    if args.json:
        print(json.dumps({"machine": machine_info(), "results": results}))


if __name__ == "__main__":
    main()
