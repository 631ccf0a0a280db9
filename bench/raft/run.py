"""Raft benchmark: three `meshagent agent -server` processes on loopback, fsync on, against pysyncobj.

    .venv/bin/python bench/raft/run.py [--quick] [--no-reference] [--json]

Our side: three real server processes (127.0.0.N each, a data dir each in a fresh temporary directory, so
every acknowledged write is fsynced by a quorum). The client is this process, speaking the agent-to-server
RPC on :8300 to the leader (one TCP connection, pipelined), applying one KV set per operation, the analogue
of pysyncobj's replicated counter increment. It measures

1. sequential commit latency: one write after another (p50, p99);
2. closed-loop throughput with K writes in flight, K = 1 … 20,000, with the fsync rate read from the
   leader's `fsyncs` counter (`/v1/agent/self` Stats.raft): with group commit, writes per fsync grow with K
   and the fsync rate, not the request rate, is the ceiling;
3. failover (three times, median and max): SIGKILL of the leader; the time until a survivor names a
   new leader and until a write sent to a survivor commits (the election timeout is 1 s, the target at most twice that).

`--tls both` (the default) measures twice in the same run: plaintext :8300, then a cluster started with
`-encrypt KEY`, where :8300 is mutual TLS 1.3 under the keyring's CA (docs/security.md); the load
generator then holds a certificate minted from the same key. `--tls off|on` measures one of them.

The reference, in the same run: bench/raft/pysyncobj_ref.py (a 3-process pysyncobj cluster with its journal
file on; see that file for why its journal is never fsynced). Figures print as ratios ours/pysyncobj plus
the absolute numbers. Every phase is bounded by a count and a time cap; servers are killed by PID on exit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))  # tests.support, shared with the tests
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)
from meshagent.agent.catalog.commands import kv_set  # noqa: E402
from meshagent.agent.config.types import TLSConfig  # noqa: E402
from meshagent.agent.rpc.client import RPCClient  # noqa: E402
from meshagent.agent.rpc.errors import ServerError  # noqa: E402
from meshagent.agent.tls.policy import RPCTLS  # noqa: E402
from meshagent.gossip.keyring import Keyring  # noqa: E402

from tests.support.ports import free_hosts  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))
ELECTION_TIMEOUT_S = 1.0  # RaftConfig's default, which the agent uses


def free_hosts_or_exit(n: int) -> list[str]:
    """n addresses 127.0.0.N (N in 230-253) whose Consul ports are free."""
    try:
        return free_hosts(n, 230, 253)
    except RuntimeError:
        raise SystemExit("no free 127.0.0.N addresses for the benchmark servers") from None


class Servers:
    """Three server processes; killed by PID when the benchmark ends."""

    def __init__(self, workdir: Path, key: bytes | None = None) -> None:
        self.hosts = free_hosts_or_exit(3)
        self.workdir = workdir
        self.encrypt = ["-encrypt", base64.b64encode(key).decode()] if key else []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for host in self.hosts:
            self.start(host)

    def start(self, host: str) -> None:
        i = self.hosts.index(host)
        joins = [a for h in self.hosts if h != host for a in ("-retry-join", h)]
        with open(self.workdir / f"server-{i}.log", "ab") as log:
            self.procs[host] = subprocess.Popen(
                [MESHAGENT, "agent", "-server", "-bootstrap-expect", "3", "-node", f"bench-s{i}", "-bind", host,
                 "-client", host, "-data-dir", str(self.workdir / f"s{i}"), "-log-level", "warn", *joins,
                 *self.encrypt],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def raft_stats(self, host: str) -> dict[str, Any] | None:
        try:
            stats: dict[str, Any] = httpx.get(f"http://{host}:8500/v1/agent/self", timeout=1).json()["Stats"]["raft"]
            return stats
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def leader(self, among: list[str] | None = None) -> str | None:
        for host in among or self.hosts:
            stats = self.raft_stats(host)
            if stats and stats.get("state") == "leader":
                return host
        return None

    def wait_leader(self, timeout: float) -> str:
        def agreed() -> str | None:
            for host, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"server {host} exited with {proc.returncode}")
            leader = self.leader()
            if leader and all((self.raft_stats(h) or {}).get("leader_addr") for h in self.hosts):
                return leader
            return None
        try:
            return wait_for(agreed, timeout, 0.05, "a leader known on every server")
        except AssertionError:
            raise SystemExit("no leader elected within the deadline") from None

    def fsyncs(self, host: str) -> int:
        stats = self.raft_stats(host)
        return int(stats["fsyncs"]) if stats else 0

    def kill(self, host: str) -> None:
        proc = self.procs[host]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for host in self.procs:
            self.kill(host)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def command(i: int) -> bytes:
    return msgpack.packb(kv_set(f"bench/k{i % 1000}", b"x" * 16), use_bin_type=True)


class Pipeline:
    """A lean load generator: one blocking socket to a server's :8300, up to K "apply" calls outstanding.

    It is not the thing measured, so it does the least Python work per call: requests are packed ahead,
    every answer read is replaced by a new request, and those go out in one send.
    """

    def __init__(self, host: str, tls: RPCTLS | None = None, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, 8300), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.client_context().wrap_socket(self.sock, server_hostname=tls.server_hostname)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.pending = b""
        self.rid = 0
        self.errors = 0

    def _request(self, i: int) -> bytes:
        self.rid += 1
        body = msgpack.packb(["req", self.rid, "apply", command(i)], use_bin_type=True)
        return len(body).to_bytes(4, "big") + body

    def _answers(self) -> int:
        """Block until at least one answer arrives; how many arrived."""
        data = self.sock.recv(1 << 20)
        if not data:
            raise SystemExit("server closed the benchmark connection")
        buf = self.pending + data
        pos = 0
        n = 0
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "big")
            if len(buf) - pos - 4 < size:
                break
            frame = msgpack.unpackb(buf[pos + 4:pos + 4 + size], raw=False)
            if frame[2] is not None:
                self.errors += 1
            pos += 4 + size
            n += 1
        self.pending = buf[pos:]
        return n

    def run(self, k: int, n: int, max_s: float) -> tuple[int, float, list[float]]:
        """Closed loop with k in flight until n answers or max_s; (answers, seconds, per-call latencies when k=1)."""
        lat: list[float] = []
        t0 = time.perf_counter()
        end = t0 + max_s
        self.sock.sendall(b"".join(self._request(i) for i in range(k)))
        sent, done = k, 0
        t_call = t0
        while done < sent:
            got = self._answers()
            now = time.perf_counter()
            if k == 1:
                lat.append(now - t_call)
                t_call = now
            done += got
            more = min(got, n - sent) if now < end else 0
            if more > 0:
                self.sock.sendall(b"".join(self._request(sent + j) for j in range(more)))
                sent += more
        return done, time.perf_counter() - t0, lat

    def close(self) -> None:
        self.sock.close()


def sequential(leader: str, n: int, max_s: float, tls: RPCTLS | None) -> dict[str, Any]:
    load = Pipeline(leader, tls)
    try:
        load.run(1, 20, 5.0)  # warm-up: connection, first batches
        done, _, lat = load.run(1, n, max_s)
    finally:
        load.close()
    return {"n": done, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


def throughput(servers: Servers, leader: str, k: int, n: int, max_s: float, tls: RPCTLS | None) -> dict[str, Any]:
    """K writes in flight, each answer replaced by a new write, until n are done or time is up."""
    load = Pipeline(leader, tls)
    try:
        load.run(1, 1, 5.0)
        f0 = servers.fsyncs(leader)
        done, elapsed, _ = load.run(k, max(n, k), max_s)
        fsyncs = servers.fsyncs(leader) - f0
    finally:
        load.close()
    return {"k": k, "ops": done, "errors": load.errors, "seconds": elapsed, "ops_s": done / elapsed,
            "fsyncs_s": fsyncs / elapsed, "ops_per_fsync": done / max(1, fsyncs)}


async def failover(servers: Servers, leader: str, max_s: float, tls: RPCTLS | None) -> dict[str, Any]:
    survivors = [h for h in servers.hosts if h != leader]
    t0 = time.perf_counter()
    servers.kill(leader)
    elected: float | None = None
    committed: float | None = None
    async with trio.open_nursery() as nursery:
        clients = [RPCClient(f"{h}:8300", tls) for h in survivors]

        async def writer(client: RPCClient, first: int) -> None:
            # One writer per survivor, short timeouts: what is measured is when the cluster takes writes
            # again, not how long a client sat on a call to the dead leader.
            nonlocal committed
            i = first
            while committed is None:
                try:
                    await client.call(nursery, "apply", command(i), timeout=0.25)
                    committed = time.perf_counter() - t0
                except ServerError:
                    i += 2
                    await trio.sleep(0.005)

        async def watcher() -> None:
            nonlocal elected
            while elected is None:
                new = await trio.to_thread.run_sync(servers.leader, survivors)
                if new:
                    elected = time.perf_counter() - t0
                else:
                    await trio.sleep(0.01)

        with trio.move_on_after(max_s):
            async with trio.open_nursery() as inner:
                for j, client in enumerate(clients):
                    inner.start_soon(writer, client, j)
                inner.start_soon(watcher)
        nursery.cancel_scope.cancel()
    return {"elected_s": elected, "committed_s": committed}


def run_reference(quick: bool) -> dict[str, Any] | None:
    cmd = [sys.executable, str(HERE / "pysyncobj_ref.py"), "--json", "--no-tuned"] + (["--quick"] if quick else [])
    print(f"\n>>> reference: {' '.join(cmd[1:])}", flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        print("reference timed out")
        return None
    lines = out.stdout.strip().splitlines()
    for line in lines[:-1]:
        print("    " + line)
    try:
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    except (IndexError, ValueError):
        print(f"reference failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        return None


def ratio(ours: float | None, ref: float | None) -> str:
    if not ours or not ref:
        return "n/a"
    return f"{ours / ref:.2f}x"


def measure(args: argparse.Namespace, key: bytes | None) -> dict[str, Any]:
    """One cluster (plaintext :8300, or with `key` TLS under the keyring CA): every phase."""
    seq_n, seq_s = (300, 5.0) if args.quick else (2000, 30.0)
    window = [1, 8, 64, 512, 4096, 20000]
    tput_n = {1: 500, 8: 2000, 64: 10000, 512: 20000, 4096: 40000, 20000: 60000}
    tput_s = 4.0 if args.quick else 12.0
    tls = RPCTLS(TLSConfig(), "dc1", server=False, keyring=Keyring([key])) if key else None
    mode = "TLS (-encrypt: mutual TLS 1.3 on :8300)" if key else "plaintext :8300"
    print(f"\n##### {mode}")
    workdir = Path(tempfile.mkdtemp(prefix="meshagent-bench-raft-"))
    servers = Servers(workdir, key)
    result: dict[str, Any] = {"impl": "meshagent", "tls": bool(key), "machine": machine_info(), "quick": args.quick,
                              "workdir": str(workdir)}
    try:
        leader = servers.wait_leader(30)
        seq = sequential(leader, seq_n, seq_s, tls)
        result["seq"] = seq
        print(f"\nsequential commit: n={seq['n']}  p50 {seq['p50_ms']:.2f} ms  p99 {seq['p99_ms']:.2f} ms")
        print(f"\n{'in flight':>10} {'ops/s':>10} {'fsyncs/s':>10} {'ops/fsync':>10} {'errors':>7}")
        result["tput"] = []
        for k in window:
            r = throughput(servers, leader, k, tput_n[k] if not args.quick else tput_n[k] // 4, tput_s, tls)
            result["tput"].append(r)
            print(f"{k:>10} {r['ops_s']:>10,.0f} {r['fsyncs_s']:>10,.0f} {r['ops_per_fsync']:>10.1f} "
                  f"{r['errors']:>7}", flush=True)
        runs = []
        killed = leader
        for attempt in range(args.failovers):
            if attempt:  # bring the killed server back and let the cluster settle with all three
                servers.start(killed)
                leader = servers.wait_leader(30)
            killed = leader
            runs.append(trio.run(failover, servers, leader, 20.0, tls))
            print(f"  failover {attempt + 1}: leader seen {runs[-1]['elected_s']}, write committed "
                  f"{runs[-1]['committed_s']}", flush=True)
        committed = sorted(r["committed_s"] for r in runs if r["committed_s"] is not None)
        elected = sorted(r["elected_s"] for r in runs if r["elected_s"] is not None)
        fo = {"runs": runs, "committed_s": committed[len(committed) // 2] if committed else None,
              "committed_max_s": committed[-1] if committed else None,
              "elected_s": elected[len(elected) // 2] if elected else None}
        result["failover"] = fo
        print(f"\nfailover (kill -9 leader, {len(runs)} times): new leader seen after median "
              f"{fo['elected_s'] or float('nan'):.2f} s, first write committed after median "
              f"{fo['committed_s'] or float('nan'):.2f} s, max {fo['committed_max_s'] or float('nan'):.2f} s "
              f"(election timeout {ELECTION_TIMEOUT_S:.1f} s)")
    finally:
        servers.close()
    return result


def _rows(result: dict[str, Any]) -> list[tuple[str, float | None]]:
    by_k = {r["k"]: r for r in result["tput"]}
    return [("sequential p50 ms", result["seq"]["p50_ms"]), ("sequential p99 ms", result["seq"]["p99_ms"]),
            ("ops/s, 64 in flight", by_k[64]["ops_s"]), ("ops/s, 20,000 in flight", by_k[20000]["ops_s"]),
            ("failover: write committed s", result["failover"]["committed_s"])]


def _fmt(value: float | None) -> str:
    return f"{value:,.2f}" if value else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer ops per phase")
    parser.add_argument("--no-reference", action="store_true", help="skip the pysyncobj reference")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--failovers", type=int, default=3, help="leader kills to measure (median reported)")
    parser.add_argument("--tls", choices=("both", "off", "on"), default="both",
                        help=":8300 plaintext, TLS (-encrypt), or both in the same run (default)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"meshagent Raft: 3 server processes on loopback, data dirs in {tempfile.gettempdir()} (fsync on), "
          "client = RPC on :8300 to the leader, one KV set per op")
    print(f"machine: {machine_info()}")
    modes = {"both": [None, os.urandom(32)], "off": [None], "on": [os.urandom(32)]}[args.tls]
    results = [measure(args, key) for key in modes]
    result = results[0]
    tls_result = next((r for r in results if r["tls"]), None)
    plain = next((r for r in results if not r["tls"]), None)

    ref = None if args.no_reference else run_reference(args.quick)
    print("\n=== meshagent vs pysyncobj (same machine, same run; ratio > 1 means ours is bigger) ===")
    for label, ours in _rows(result):
        theirs = ref and ref.get({"sequential p50 ms": "seq_p50_ms", "sequential p99 ms": "seq_p99_ms",
                                  "ops/s, 64 in flight": "tput_64", "ops/s, 20,000 in flight": "tput_20000",
                                  "failover: write committed s": "failover_s"}[label])
        print(f"{label:<30} ours {_fmt(ours):>12}   pysyncobj {_fmt(theirs):>12}   ratio {ratio(ours, theirs)}")
    if ref is not None:
        print(f"(pysyncobj {ref.get('version')}, journal fsync: {ref.get('fsync')}; ours fsyncs every batch)")
    print(f"(ours: {'TLS' if result['tls'] else 'plaintext'} :8300)")
    if tls_result is not None and plain is not None:
        print("\n=== :8300 with TLS (-encrypt) vs plaintext (same run; ratio > 1 means TLS is bigger) ===")
        for (label, with_tls), (_, without) in zip(_rows(tls_result), _rows(plain), strict=True):
            print(f"{label:<30} TLS {_fmt(with_tls):>12}   plaintext {_fmt(without):>12}   "
                  f"ratio {ratio(with_tls, without)}")
    result["reference"] = ref
    if tls_result is not None and tls_result is not result:
        result["with_tls"] = tls_result
    print(f"\nlogs and data dirs: {', '.join(r['workdir'] for r in results)}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
