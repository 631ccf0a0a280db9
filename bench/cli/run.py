"""CLI start-up benchmark (issue 16): `meshagent --help`, `meshagent version` and `meshagent members` (against a
real `-dev` agent) beside `python -c pass`, all in one run.

    .venv/bin/python bench/cli/run.py [--runs 30] [--strict]

Each command runs `--runs` times as a fresh process (the console script, as a user types it), interleaved round
by round so that machine noise lands on all of them alike; one unmeasured warm-up round first (page cache).
Printed per command: median, p90 and min wall time, and the median's ratio to `python -c pass`; then the machine.
Targets: --help and version under 0.15 s (median). `--strict` exits 2 when a target is missed. The agent runs on
127.0.56.N with -log-level warn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)

from tests.support.agents import MESHAGENT, AgentProcess, scratch_dir  # noqa: E402
from tests.support.ports import free_host_in  # noqa: E402

TARGET = 0.15  # seconds, median, for --help and version


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run of `argv` to its exit (output discarded); a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:300]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()

    host = free_host_in("127.0.56", 200, 249)
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "bench-cli",
                                          "-log-level", "warn"], workdir=scratch_dir()).start()
    env = {**os.environ, "MESH_HTTP_ADDR": agent.http_addr}
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "meshagent --help": [MESHAGENT, "--help"],
        "meshagent version": [MESHAGENT, "version"],
        "meshagent members": [MESHAGENT, "members"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for argv in commands.values():
            timed(argv, env)  # warm-up
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
    finally:
        agent.stop()

    base = statistics.median(times["python -c pass"])
    print(f"CLI start-up, {args.runs} runs each, interleaved (wall time to exit)")
    print(f"{'command':<20} {'median':>8} {'p90':>8} {'min':>8} {'x python':>9}")
    missed = []
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else median
        print(f"{name:<20} {median * 1000:>6.1f}ms {p90 * 1000:>6.1f}ms {min(samples) * 1000:>6.1f}ms "
              f"{median / base:>8.1f}x")
        if name in ("meshagent --help", "meshagent version") and median >= TARGET:
            missed.append(f"{name} median {median * 1000:.0f} ms >= {TARGET * 1000:.0f} ms")
    print(f"target: --help and version under {TARGET * 1000:.0f} ms: {'; '.join(missed) if missed else 'met'}")
    print(f"machine: {machine_info()}  load={os.getloadavg()[0]:.2f}")
    if args.strict and missed:
        sys.exit(2)


if __name__ == "__main__":
    main()
