"""Raft reference: a 3-node pysyncobj cluster with its file journal on, doing counter increments.

    .venv/bin/python bench/raft/pysyncobj_ref.py [--quick] [--json] [--no-tuned] [--client follower]

Three OS processes (this file run with `--node I`), each a SyncObj holding a `@replicated` counter, on
127.0.0.1 with free ports, each with `SyncObjConf(journalFile=...)` in a fresh temporary directory. This
process is only the harness: it starts the nodes, talks to them over their stdin/stdout (one JSON object a
line), waits for a leader (all three agree, deadline), then has the nodes measure:

1. sequential commit latency: increments one after another, each `sync=True` (p50, p99);
2. closed-loop throughput with K = 64 and K = 20,000 increments in flight (callbacks: every completion
   issues the next call, so exactly K are outstanding until the last N are drained);
3. failover: SIGKILL of the leader process, then the time until a survivor sees a new leader and until an
   increment issued by that survivor commits.

Who is the client. pysyncobj has no separate client: a caller is a SyncObj node and its calls go into that
node's command queue (a follower forwards them to the leader). Measurements 1 and 2 run inside the leader
process, the shortest path, like a client talking to the leader's API; measurement 3 must run on a node
that survives the kill, so it runs in a follower (its increments are forwarded to whichever node wins).

Durability. pysyncobj 0.3.x does NOT fsync its journal: FileJournal.add() writes the record into an mmap of
the journal file (page cache only); ResizableFile.flush() (mmap.flush = msync) is only reached from
_destroy() on a clean shutdown, and SyncObj never calls journal.flush(); the .meta file (term, vote,
commit index) is written with write() + f.flush() + rename, no fsync. The script checks this from the
installed source and counts os.fsync/os.fdatasync/journal-flush calls inside the nodes while measuring.

Defaults. pysyncobj batches: the leader appends a command on its next loop turn (`autoTickPeriod` 0.05 s)
and ships entries every `appendEntriesPeriod` (0.1 s), so a single sync increment takes about one
appendEntriesPeriod. The first block uses SyncObjConf defaults and gives the JSON's top-level figures.
Unless --no-tuned, each entry of TUNED below then runs on a fresh cluster, clearly labelled, and lands in
the JSON's "tuned" list: no batching (`appendEntriesUseBatch=False`, pysyncobj's documented switch for
single-request latency: every command is shipped at once and wakes the loop through a pipe) and a smaller
tick (10 ms instead of 100/50 ms, batching kept). Election timeouts (0.4-1.4 s) are never touched, so
the failover figure means the same in every block.

Every phase is bounded by a count and a time cap; the whole default run stays under 3 minutes (about 2 on
a 2-core box) and --quick (a few hundred ops per phase, every cluster) under 30 s. Nodes are killed by PID
on any exit of the harness, and exit by themselves if the harness disappears.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))  # tests.support, shared with the tests
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)

from tests.support.ports import free_ports  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

HOST = "127.0.0.1"
NODES = 3
# The labelled extra blocks (fast one first, so the time budget never cuts it).
TUNED: list[tuple[str, dict[str, Any]]] = [
    ("tuned: no batching", {"appendEntriesUseBatch": False}),
    ("tuned: smaller tick", {"appendEntriesPeriod": 0.01, "autoTickPeriod": 0.01}),
]
NODE_MAX_LIFETIME_S = 300.0  # a node exits by itself after this, whatever happens to the harness


# --------------------------------------------------------------------------------------------- node side


def _count_durability_calls() -> dict[str, int]:
    """Wrap os.fsync/os.fdatasync and pysyncobj's journal flush so the node can report how often they ran."""
    import pysyncobj.journal as journal

    counts = {"os.fsync": 0, "os.fdatasync": 0, "journal.flush": 0}

    def wrap(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    wrap(os, "fsync", "os.fsync")
    wrap(os, "fdatasync", "os.fdatasync")
    wrap(journal.ResizableFile, "flush", "journal.flush")  # mmap.flush() = msync(MS_SYNC)
    return counts


def node_main(index: int, ports: list[int], journal_dir: str, conf_overrides: dict[str, Any]) -> None:
    durability = _count_durability_calls()
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
            super().__init__(self_addr, partners, conf)
            self.value = 0

        @replicated  # type: ignore[misc]
        def incr(self) -> int:
            self.value += 1
            return self.value

    out_lock = threading.Lock()

    def reply(obj: dict[str, Any]) -> None:
        try:
            with out_lock:
                sys.stdout.write(json.dumps(obj) + "\n")
                sys.stdout.flush()
        except OSError:  # the harness is gone
            os._exit(2)

    def watchdog(parent: int, end: float) -> None:
        # A node never outlives a harness that died without cleaning up (even while the main thread is busy
        # measuring), nor NODE_MAX_LIFETIME_S. Stdin EOF also ends the main loop below.
        while time.monotonic() < end:
            if os.getppid() != parent:
                os._exit(2)
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watchdog, args=(os.getppid(), time.monotonic() + NODE_MAX_LIFETIME_S),
                     daemon=True).start()

    addrs = [f"{HOST}:{p}" for p in ports]
    journal_file = os.path.join(journal_dir, f"node{index}.journal")
    conf = SyncObjConf(journalFile=journal_file, maxBindRetries=5, **conf_overrides)
    obj = Counter(addrs[index], [a for i, a in enumerate(addrs) if i != index], conf)
    success = FAIL_REASON.SUCCESS

    def status() -> dict[str, Any]:
        leader = obj._getLeader()
        return {"self": addrs[index], "leader": leader.address if leader is not None else None,
                "is_leader": obj._isLeader(), "ready": obj.isReady(), "value": obj.value,
                "term": obj.raftCurrentTerm, "durability": dict(durability),
                "journal_bytes": os.path.getsize(journal_file) if os.path.exists(journal_file) else 0}

    def seq(n: int, max_s: float, warmup: int) -> dict[str, Any]:
        lat: list[float] = []
        errors = warm_ok = 0
        for _ in range(warmup):
            with contextlib.suppress(Exception):
                obj.incr(sync=True, timeout=10)
                warm_ok += 1
        deadline = time.monotonic() + max_s
        for _ in range(n):
            if time.monotonic() >= deadline:
                break
            t = time.perf_counter()
            try:
                obj.incr(sync=True, timeout=10)
            except Exception:
                errors += 1
                continue
            lat.append(time.perf_counter() - t)
        return {"lat": lat, "errors": errors, "warmup_ok": warm_ok}

    def tput(k: int, n: int, max_s: float) -> dict[str, Any]:
        lock = threading.Lock()
        st = {"issued": 0, "ok": 0, "err": 0, "stop": False, "last": 0.0}
        finished = threading.Event()

        def cb(res: Any, err: int) -> None:  # runs in pysyncobj's tick thread
            with lock:
                if err == success:
                    st["ok"] += 1
                else:
                    st["err"] += 1
                st["last"] = time.perf_counter()
                if not st["stop"] and st["issued"] < n:
                    st["issued"] += 1
                    obj.incr(callback=cb)
                elif st["ok"] + st["err"] == st["issued"]:
                    finished.set()

        start = time.perf_counter()
        for _ in range(min(k, n)):
            with lock:
                st["issued"] += 1
                obj.incr(callback=cb)
        capped = not finished.wait(max_s)
        with lock:
            st["stop"] = True
            if capped:  # rate over the capped window; then let the outstanding calls drain (bounded)
                elapsed, done = time.perf_counter() - start, st["ok"]
            else:
                elapsed, done = st["last"] - start, st["ok"]
            if st["ok"] + st["err"] == st["issued"]:
                finished.set()
        drained = finished.wait(min(30.0, max(3.0, max_s)))
        return {"ops": done, "elapsed": elapsed, "errors": st["err"], "capped": capped, "drained": drained,
                "issued": st["issued"], "ok_total": st["ok"]}

    def failover(old_leader: str, t0: float, max_s: float) -> dict[str, Any]:
        got: dict[str, Any] = {}
        ok = threading.Event()

        def cb(res: Any, err: int) -> None:  # tick thread
            if err == success and "at" not in got:
                got["at"] = time.monotonic()
                ok.set()

        def on_tick() -> None:  # tick thread, end of every loop turn: first sight of a new leader
            leader = obj._getLeader()
            if "elected" not in got and leader is not None and leader.address != old_leader:
                got["elected"], got["new_leader"] = time.monotonic(), leader.address

        obj.addOnTickCallback(on_tick)
        last_issue = 0.0
        attempts = 0
        deadline = t0 + max_s
        # An increment every 50 ms (and at once when a new leader shows up): the ones sent to the dead
        # leader are lost, the ones queued while there is no leader go to the new one.
        try:
            while time.monotonic() < deadline and attempts < 2000:
                now = time.monotonic()
                if now - last_issue >= 0.05 or ("elected" in got and last_issue < got["elected"]):
                    obj.incr(callback=cb)
                    attempts += 1
                    last_issue = now
                if ok.wait(0.002):
                    break
        finally:
            obj.removeOnTickCallback(on_tick)
        return {"elected_s": got["elected"] - t0 if "elected" in got else None,
                "commit_s": got["at"] - t0 if "at" in got else None,
                "new_leader": got.get("new_leader"), "attempts": attempts}

    reply({"hello": index, "pid": os.getpid()})
    for line in sys.stdin:  # EOF (harness gone) ends the loop
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "status":
            reply(status())
        elif cmd == "seq":
            reply(seq(req["n"], req["max_s"], req["warmup"]))
        elif cmd == "tput":
            reply(tput(req["k"], req["n"], req["max_s"]))
        elif cmd == "failover":
            reply(failover(req["old_leader"], req["t0"], req["max_s"]))
        elif cmd == "quit":
            break
        else:
            reply({"error": f"unknown command {cmd}"})
    os._exit(0)  # no clean destroy: the bench never restarts a node from its journal


# ------------------------------------------------------------------------------------------ harness side


class NodeProc:
    def __init__(self, index: int, ports: list[int], workdir: Path, conf: dict[str, Any]) -> None:
        self.index = index
        self.addr = f"{HOST}:{ports[index]}"
        self.log_path = workdir / f"node{index}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--node", str(index),
             "--ports", ",".join(map(str, ports)), "--journal-dir", str(workdir), "--conf", json.dumps(conf)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"node {self.index}: no answer within {timeout:.0f} s; log {self.log_path}") from None
        if line is None:
            raise RuntimeError(f"node {self.index} exited (rc={self.proc.poll()}); log {self.log_path}:\n"
                               + self.log_tail())
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, timeout: float, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self.recv(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL this node's process (started by us; by its PID) and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_leader(nodes: list[NodeProc], timeout: float) -> NodeProc:
    """Poll the live nodes until they all name the same leader and that node says it is leader and ready."""
    last: list[dict[str, Any]] = []

    def agreed() -> NodeProc | None:
        live = [n for n in nodes if n.alive()]
        last[:] = [n.call(10, cmd="status") for n in live]
        leaders = {s["leader"] for s in last}
        if len(leaders) == 1 and None not in leaders:
            (leader_addr,) = leaders
            for n, s in zip(live, last, strict=True):
                if n.addr == leader_addr and s["is_leader"] and s["ready"]:
                    return n
        return None
    try:
        return wait_for(agreed, timeout, 0.02, "an agreed leader")
    except AssertionError:
        raise RuntimeError(f"no agreed leader within {timeout:.0f} s: {last}") from None


def journal_fsyncs() -> tuple[bool, str]:
    """Read the installed pysyncobj: does anything on the journal path call fsync/fdatasync/flush?"""
    import pysyncobj.journal as journal
    import pysyncobj.syncobj as syncobj

    jsrc, ssrc = inspect.getsource(journal), inspect.getsource(syncobj)
    direct = any(w in jsrc + ssrc for w in ("fsync", "fdatasync", "O_SYNC", "O_DSYNC"))
    flush_called = "raftLog.flush" in ssrc or "__raftLog.flush" in ssrc
    if direct or flush_called:
        return True, "its source calls fsync/fdatasync or flushes the journal on the write path"
    return False, ("no fsync: journal records go into an mmap of the file (page cache); msync only on clean "
                   "shutdown; .meta written with write+flush+rename")


def run_cluster(label: str, conf: dict[str, Any], plan: dict[str, Any], budget_end: float,
                client_role: str = "leader") -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="meshagent-pysyncobj-"))
    nodes: list[NodeProc] = []
    res: dict[str, Any] = {"label": label, "conf": conf}

    def cap(want: float, reserve: float) -> float:
        return max(1.0, min(want, budget_end - time.monotonic() - reserve))

    try:
        ports = free_ports(NODES, HOST)
        nodes = [NodeProc(i, ports, workdir, conf) for i in range(NODES)]
        for n in nodes:
            n.recv(30)  # hello: the node imported pysyncobj and created its SyncObj
        t = time.monotonic()
        leader = wait_leader(nodes, 30)
        res["election_at_start_s"] = time.monotonic() - t
        res["leader"] = leader.addr
        followers = [n for n in nodes if n is not leader]
        client = leader if client_role == "leader" else followers[0]
        res["client"] = f"{client_role} {client.addr}"

        # 1. sequential commit latency
        seq = client.call(plan["seq_s"] + 60, cmd="seq", n=plan["seq_n"], warmup=plan["warmup"],
                          max_s=cap(plan["seq_s"], plan["reserve"]))
        lat = seq["lat"]
        if not lat:
            raise RuntimeError("no sequential increment committed")
        res.update(seq_n=len(lat), seq_n_requested=plan["seq_n"], seq_errors=seq["errors"],
                   seq_p50_ms=pct(lat, 50) * 1000, seq_p99_ms=pct(lat, 99) * 1000, seq_max_ms=max(lat) * 1000)

        # 2. closed-loop throughput
        for k in (64, 20000):
            r = client.call(plan["tput_s"] + 60, cmd="tput", k=k, n=max(k, plan["tput_n"]),
                            max_s=cap(plan["tput_s"], plan["reserve"]))
            res[f"tput_{k}"] = r["ops"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
            res[f"tput_{k}_detail"] = r

        acked = seq["warmup_ok"] + len(lat) + sum(res[f"tput_{k}_detail"]["ok_total"] for k in (64, 20000))
        res["acked"] = acked
        st = leader.call(10, cmd="status")
        res["leader_status"] = st
        res["durability"] = [n.call(10, cmd="status")["durability"] for n in nodes]

        # 3. failover: SIGKILL the leader, a follower measures from t0
        follower = followers[0]
        t0 = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process on this machine
        leader.kill()
        fo = follower.call(plan["failover_s"] + 30, cmd="failover", old_leader=leader.addr, t0=t0,
                           max_s=plan["failover_s"])
        res.update(failover_s=fo["commit_s"], failover_elected_s=fo["elected_s"], failover_detail=fo,
                   failover_client=follower.addr)
        return res
    finally:
        for n in nodes:
            n.close()
        shutil.rmtree(workdir, ignore_errors=True)


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_block(r: dict[str, Any]) -> None:
    d64, d20k = r["tput_64_detail"], r["tput_20000_detail"]
    print(f"\n[{r['label']}]  SyncObjConf({', '.join(f'{k}={v}' for k, v in r['conf'].items()) or 'defaults'}"
          f", journalFile=...)")
    print(f"  leader elected after start  : {r['election_at_start_s']:.2f} s  (leader {r['leader']}; "
          f"client for 1+2: {r['client']})")
    print(f"  1. sequential sync increments: p50 {r['seq_p50_ms']:.2f} ms  p99 {r['seq_p99_ms']:.2f} ms  "
          f"max {r['seq_max_ms']:.2f} ms")
    cut = "" if r["seq_n"] >= r["seq_n_requested"] else f" of {r['seq_n_requested']} asked, time cap hit"
    print(f"                                 (n={r['seq_n']}{cut}; errors {r['seq_errors']})")
    for k, d in ((64, d64), (20000, d20k)):
        note = " (time cap hit)" if d["capped"] else ""
        print(f"  2. throughput, {k:>5} in flight: {r[f'tput_{k}']:9,.0f} ops/s  ({d['ops']:,} ops in "
              f"{d['elapsed']:.2f} s{note}, errors {d['errors']})")
    print(f"  3. failover after SIGKILL    : increment committed {fmt(r['failover_s'], '.2f')} s, new leader "
          f"seen {fmt(r['failover_elected_s'], '.2f')} s  (client {r['failover_client']}, new leader "
          f"{r['failover_detail']['new_leader']})")
    dur = r["durability"]
    print(f"  durability calls in nodes    : os.fsync {sum(x['os.fsync'] for x in dur)}, os.fdatasync "
          f"{sum(x['os.fdatasync'] for x in dur)}, journal msync {sum(x['journal.flush'] for x in dur)}; "
          f"leader journal file {r['leader_status']['journal_bytes']:,} bytes")
    print(f"  leader's counter             : {r['leader_status']['value']:,} (increments acknowledged to the "
          f"client: {r['acked']:,})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few hundred ops per phase, < 30 s")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--no-tuned", action="store_true", help="only the defaults cluster")
    parser.add_argument("--tuned-conf", action="append", metavar="JSON",
                        help="SyncObjConf overrides for an extra cluster, replacing the built-in tuned ones "
                        f"({'; '.join(json.dumps(c) for _, c in TUNED)}); repeatable")
    parser.add_argument("--client", choices=("leader", "follower"), default="leader",
                        help="node whose process issues the increments of 1 and 2 (default: the leader)")
    parser.add_argument("--node", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--journal-dir", help=argparse.SUPPRESS)
    parser.add_argument("--conf", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.node is not None:
        node_main(args.node, [int(p) for p in args.ports.split(",")], args.journal_dir, json.loads(args.conf))
        return

    # SIGTERM/SIGINT -> SystemExit, so the `finally` in run_cluster kills the nodes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import pysyncobj.version

    version = pysyncobj.version.VERSION
    fsync, why = journal_fsyncs()
    started = time.monotonic()
    tuned = [(f"tuned: {c}", json.loads(c)) for c in args.tuned_conf] if args.tuned_conf else TUNED
    if args.quick:  # a few hundred ops a phase (20,000 for K=20,000: one window), every cluster, < 30 s
        budget_end, min_left = started + 28, 10
        quick_plan = dict(seq_n=300, seq_s=6, warmup=2, tput_n=600, tput_s=3, failover_s=8, reserve=8)
        plans = [("defaults", {}, quick_plan)]
        plans += [(label, conf, dict(quick_plan, seq_s=2, reserve=3)) for label, conf in tuned]
    else:  # 2,000 sequential increments at ~100 ms each would take 200 s alone: capped at 50 s
        budget_end, min_left = started + 170, 45
        default_plan = dict(seq_n=2000, seq_s=50, warmup=5, tput_n=100_000, tput_s=15, failover_s=20, reserve=50)
        plans = [("defaults", {}, default_plan)]
        plans += [(label, conf, dict(default_plan, seq_s=25, tput_s=10, reserve=20)) for label, conf in tuned]
    if args.no_tuned:
        plans = plans[:1]

    print(f"pysyncobj {version} reference: {NODES} nodes (separate processes) on {HOST}, journalFile on "
          f"({tempfile.gettempdir()}), @replicated counter increment")
    print(f"machine: {machine_info()}")
    print(f"journal fsync: {'yes' if fsync else 'NO'} — {why}")
    results = []
    for label, conf, plan in plans:
        if results and budget_end - time.monotonic() < min_left:
            print(f"\n[{label}] skipped: not enough of the time budget left")
            continue
        r = run_cluster(label, conf, plan, budget_end, args.client)
        results.append(r)
        print_block(r)
    print(f"\ntotal wall time {time.monotonic() - started:.1f} s")

    if args.json:
        main_r = results[0]

        def rnd(v: float | None, digits: int) -> float | None:
            return None if v is None else round(v, digits)

        def summary(r: dict[str, Any]) -> dict[str, Any]:
            return {"seq_p50_ms": rnd(r["seq_p50_ms"], 3), "seq_p99_ms": rnd(r["seq_p99_ms"], 3), "seq_n": r["seq_n"],
                    "tput_64": rnd(r["tput_64"], 1), "tput_20000": rnd(r["tput_20000"], 1),
                    "failover_s": rnd(r["failover_s"], 3), "failover_elected_s": rnd(r["failover_elected_s"], 3)}

        out: dict[str, Any] = {"impl": "pysyncobj", "version": version, "fsync": fsync, **summary(main_r),
                               "journal": True, "quick": args.quick, "client": args.client,
                               "machine": machine_info()}
        out["tuned"] = [{"label": r["label"], "conf": r["conf"], **summary(r)} for r in results[1:]]
        print(json.dumps(out))


if __name__ == "__main__":
    main()
