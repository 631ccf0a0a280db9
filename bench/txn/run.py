"""Transactions benchmark (issue 16): `PUT /v1/txn` with 10 KV sets against 10 separate `PUT /v1/kv/` in the
same run, on one real agent.

    .venv/bin/python bench/txn/run.py [--mode server|dev] [--rounds 5] [--duration 3] [--ops 10]

`--mode server` (default): a bootstrapped single `meshagent agent -server` with a data dir on 127.0.52.N, so
every write is a Raft entry with its fsync; `dev`: `-dev` (in memory, no Raft). One client, keep-alive,
sequential requests (the latency-bound case a script or a lock manager has). Each round runs both ways for
`--duration` s, the order alternating per round. Printed: the machine, per way the median of KV writes/s
(a txn counts its 10 sets) and requests/s, and the median of the per-round ratios txn/separate.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)

from tests.support.agents import AgentProcess  # noqa: E402
from tests.support.ports import ports_free  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

HOSTS = [f"127.0.52.{n}" for n in range(200, 230)]


def start(mode: str, workdir: Path) -> AgentProcess:
    host = next((h for h in HOSTS if ports_free(h)), None)
    if host is None:
        sys.exit("no free 127.0.52.200-229 for the agent")
    args = ["-client", host, "-bind", host, "-node", "bench-txn", "-log-level", "warn"]
    args += ["-dev"] if mode == "dev" else ["-server", "-bootstrap-expect", "1", "-data-dir", str(workdir / "data")]
    agent = AgentProcess(host=host, workdir=workdir, args=args).start()
    try:
        wait_for(lambda: httpx.get(f"{agent.http_addr}/v1/status/leader", timeout=2).json(), 30, what="a leader")
    except BaseException:
        agent.stop()
        raise
    return agent


def run_txn(http: httpx.Client, ops: int, duration: float, round_no: int) -> tuple[int, int, float]:
    """Transactions of `ops` sets for `duration` s: (KV writes, requests, seconds)."""
    value = base64.b64encode(b"x" * 64).decode()
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        body = [{"KV": {"Verb": "set", "Key": f"bench/txn/{round_no}/{i}", "Value": value}} for i in range(ops)]
        r = http.put("/v1/txn", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"txn: {r.status_code} {r.text[:200]}")
        done += 1
    return done * ops, done, elapsed


def run_separate(http: httpx.Client, ops: int, duration: float, round_no: int) -> tuple[int, int, float]:
    """The same sets as `ops` separate `PUT /v1/kv/` each: (KV writes, requests, seconds); whole groups only."""
    value = b"x" * 64
    groups = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        for i in range(ops):
            r = http.put(f"/v1/kv/bench/sep/{round_no}/{i}", content=value)
            if r.status_code != 200 or r.text != "true":
                raise RuntimeError(f"kv put: {r.status_code} {r.text[:200]}")
        groups += 1
    return groups * ops, groups * ops, elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("server", "dev"), default="server")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--ops", type=int, default=10)
    args = p.parse_args()
    print(f"machine: {machine_info()}")
    print(f"mode: {args.mode}; {args.rounds} rounds x {args.duration:.0f} s per way; {args.ops} KV sets per group")
    txn_rates: list[float] = []
    sep_rates: list[float] = []
    txn_reqs: list[float] = []
    sep_reqs: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp:
        agent = start(args.mode, Path(tmp))
        try:
            with httpx.Client(base_url=agent.http_addr, timeout=30, trust_env=False) as http:
                run_txn(http, args.ops, 0.5, -1)  # warm-up, unmeasured
                run_separate(http, args.ops, 0.5, -1)
                for n in range(args.rounds):
                    ways = [("txn", run_txn), ("sep", run_separate)]
                    if n % 2:
                        ways.reverse()
                    got: dict[str, float] = {}
                    for name, fn in ways:
                        writes, requests, secs = fn(http, args.ops, args.duration, n)
                        got[name] = writes / secs
                        (txn_reqs if name == "txn" else sep_reqs).append(requests / secs)
                    txn_rates.append(got["txn"])
                    sep_rates.append(got["sep"])
                    ratios.append(got["txn"] / got["sep"])
                    print(f"round {n + 1}: txn {got['txn']:8.0f} KV writes/s   separate {got['sep']:8.0f} KV "
                          f"writes/s   ratio {ratios[-1]:.2f}x")
        finally:
            agent.stop()
    print(f"PUT /v1/txn ({args.ops} sets):  {statistics.median(txn_rates):8.0f} KV writes/s  "
          f"({statistics.median(txn_reqs):.0f} requests/s)")
    print(f"{args.ops} x PUT /v1/kv/:        {statistics.median(sep_rates):8.0f} KV writes/s  "
          f"({statistics.median(sep_reqs):.0f} requests/s)")
    print(f"ratio txn/separate (median of rounds): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
