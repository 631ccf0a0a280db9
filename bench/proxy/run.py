"""Proxy benchmark: our mTLS sidecar pair against a haproxy pair, same topology, same run.

    .venv/bin/python bench/proxy/run.py [--rounds 5] [--duration 5] [--connections 16] [--bulk-mb 100]
                                        [--quick] [--reference-only] [--strict]

wrk (Debian) → client side (plain upstream listener) → mTLS, TLS 1.3 → server side (public listener) → app,
all on loopback 127.0.20.0/24 (bench/proxy/topology.py). Ours: two `python -m meshagent.proxy.worker
--snapshot FILE.json` processes (one worker each); reference: two haproxy 2.6 processes with `nbthread 1`
and the same certificates, cipher and client-certificate checks (bench/proxy/haproxy.py). The app is
haproxy answering a fixed 200 (its direct rate is printed: it must be far above the pairs'), and for bulk
bench/proxy/bulk_app.py (sendfile). Every figure is measured for both pairs back to back, in an order that
alternates from round to round, over `--rounds` rounds; printed: medians, and the median of the per-round
ratios ours/haproxy beside its target:

- L4 small requests: `wrk -t1 -cN` keep-alive, req/s (≥ 0.75x), p50/p99, CPU seconds per request of the pair
  (utime + stime from /proc/<pid>/stat, ≤ 1.5x: the stabler figure on a shared machine);
- L7: both sides `http`, one L7 intention checked per request, vs haproxy in http mode with one ACL (≥ 0.5x);
- bulk: one GET of `--bulk-mb` MB (10^6 bytes) through the pair, MB/s (≥ 0.9x);
- new mTLS connection per request: wrk with `Connection: close` through the L4 pair, req/s (≥ 0.5x);
- added p50 at one connection (`wrk -c1`) over the app alone: ours ≤ haproxy's + 0.3 ms;
- errors: wrk's non-2xx and socket errors, short bulk transfers; zero in every run (exit 1 otherwise).

`--quick` (one round of 1 s runs, 10 MB bulk) is the smoke run tests/proxy/test_bench_smoke.py uses;
`--figures l4,c1` runs a subset; `--reference-only` runs the haproxy side and the harness alone; `--strict`
exits 2 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
import haproxy  # noqa: E402  (bench/proxy/haproxy.py)
import topology  # noqa: E402  (bench/proxy/topology.py)
from machine import machine_info  # noqa: E402  (bench/machine.py)
from topology import Identities, Pair, Proc  # noqa: E402
from wrk_tool import ensure_wrk  # noqa: E402  (bench/wrk_tool.py)

from tests.support.mesh_certs import MeshCA  # noqa: E402

IMPLS = ("ours", "haproxy")
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class Run:
    """One measurement: wrk's figures (or one bulk transfer's) and the pair's CPU seconds meanwhile."""

    requests: int
    seconds: float
    rate: float  # req/s, or MB/s for bulk
    p50_ms: float
    p99_ms: float
    errors: str  # "" when none
    cpu_s: float = 0.0

    @property
    def cpu_per_request_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def cpu_per_mb_us(self) -> float:
        """For a bulk run: the pair's CPU per MB moved."""
        moved = self.rate * self.seconds
        return self.cpu_s / moved * 1e6 if moved else float("nan")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out: str) -> Run:
    """wrk's request count, duration, rate, p50, p99 and errors (non-2xx/3xx and socket errors)."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done is None or rate is None:
        raise ValueError(f"wrk printed no totals:\n{out}")
    pct = {p: _ms(m.group(1)) if (m := re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)) else float("nan")
           for p in ("50", "99")}
    errors = []
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors and any(int(n) for n in socket_errors.groups()):
        errors.append(socket_errors.group(0))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx and int(non2xx.group(1)):
        errors.append(non2xx.group(0))
    seconds = _ms(done.group(2) + done.group(3)) / 1000
    return Run(int(done.group(1)), seconds, float(rate.group(1)), pct["50"], pct["99"], "; ".join(errors))


class Bench:
    """The load runs of one benchmark: wrk with fixed threads and duration, CPU read around each run."""

    def __init__(self, wrk: str, duration: int, connections: int) -> None:
        self.wrk, self.duration, self.connections = wrk, duration, connections

    def wrk_run(self, url: str, pair: Pair | Proc | None, connections: int | None = None, close: bool = False,
                duration: int | None = None) -> Run:
        """One wrk run against `url`; the CPU of `pair`'s processes meanwhile (or of the app alone)."""
        seconds = duration or self.duration
        argv = [self.wrk, "-t1", f"-c{connections or self.connections}", f"-d{seconds}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        cpu0 = pair.cpu_seconds() if pair else 0.0
        done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
        cpu1 = pair.cpu_seconds() if pair else 0.0
        if done.returncode != 0:
            return Run(0, seconds, 0.0, float("nan"), float("nan"), f"wrk exit {done.returncode}: {done.stderr[:200]}")
        run = parse_wrk(done.stdout)
        run.cpu_s = cpu1 - cpu0
        if pair:
            pair.check_alive()
        return run

    @staticmethod
    def bulk(address: tuple[str, int], size: int, pair: Pair | None, timeout: float = 120.0) -> Run:
        """One GET /bulk of `size` bytes on a new connection, timed from the request to the last byte."""
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        cpu0 = pair.cpu_seconds() if pair else 0.0
        got, error = 0, ""
        start = time.perf_counter()
        try:
            with socket.create_connection(address, timeout=timeout) as sock:
                sock.sendall(b"GET /bulk HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    n = sock.recv_into(view)
                    if not n:
                        break
                    head += bytes(view[:n])
                head, _, rest = head.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(f"answer {head[:40]!r}")
                got = len(rest)
                deadline = start + timeout
                while got < size and time.perf_counter() < deadline:
                    n = sock.recv_into(view)  # 1 MiB at a time: Python touches each chunk once, never a byte
                    if not n:
                        break
                    got += n
        except OSError as exc:
            error = f"bulk: {exc}"
        seconds = time.perf_counter() - start
        cpu_s = (pair.cpu_seconds() - cpu0) if pair else 0.0
        if not error and got != size:
            error = f"bulk: {got} of {size} bytes"
        return Run(1, seconds, got / 1e6 / seconds, float("nan"), float("nan"), error, cpu_s)


# ---------------------------------------------------------------------- rounds


SCENARIOS = ("l4", "l7", "bulk", "newconn", "c1")
MODE_OF = {"l4": "l4", "l7": "l7", "bulk": "bulk", "newconn": "l4", "c1": "l4"}  # the pair each figure runs on


def one_round(bench: Bench, pairs: dict[tuple[str, str], Pair], impls: tuple[str, ...], figures: tuple[str, ...],
              app: tuple[str, int], app_proc: Proc, bulk_size: int, results: dict[str, dict[str, list[Run]]]) -> None:
    """Every figure for every pair, the pairs back to back in the order given; the app alone first."""
    app_url = f"http://{app[0]}:{app[1]}/"
    results["direct"].setdefault("direct", []).append(bench.wrk_run(app_url, app_proc))
    if "c1" in figures:
        results["direct-c1"].setdefault("direct", []).append(bench.wrk_run(app_url, app_proc, connections=1))
    steps: dict[str, Callable[[Pair], Run]] = {
        "l4": lambda p: bench.wrk_run(p.url(), p),
        "l7": lambda p: bench.wrk_run(p.url(), p),
        "bulk": lambda p: bench.bulk(p.listen, bulk_size, p),
        "newconn": lambda p: bench.wrk_run(p.url(), p, close=True),
        "c1": lambda p: bench.wrk_run(p.url(), p, connections=1),
    }
    for scenario in figures:
        for impl in impls:
            results[scenario].setdefault(impl, []).append(steps[scenario](pairs[impl, MODE_OF[scenario]]))


def warm_up(bench: Bench, pairs: dict[tuple[str, str], Pair]) -> None:
    """One short run through every pair, so no measured second is a process's first (imports, caches)."""
    for (_, mode), pair in pairs.items():
        if mode == "bulk":
            bench.bulk(pair.listen, 10**6, None)
        else:
            bench.wrk_run(pair.url(), None, duration=1)


# ---------------------------------------------------------------------- report


def med(runs: list[Run], attr: str) -> float:
    values = [getattr(r, attr) for r in runs]
    values = [v for v in values if v == v]  # NaN: a run that produced no figure
    return statistics.median(values) if values else float("nan")


def ratio(results: dict[str, list[Run]], attr: str) -> float:
    """The median of the per-round ratios ours/haproxy (each round's two runs were back to back)."""
    pairs = [getattr(o, attr) / getattr(h, attr) for o, h in zip(results["ours"], results["haproxy"], strict=True)
             if getattr(h, attr)]
    pairs = [p for p in pairs if p == p]
    return statistics.median(pairs) if pairs else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, dict[str, list[Run]]], impls: tuple[str, ...], rounds: int) -> tuple[int, int]:
    """Print the figures; (runs with errors, targets missed)."""
    ours = "ours" in impls
    print(f"\nmedians of {rounds} round(s); ratio = median of the per-round ratios ours/haproxy\n")
    print(f"{'figure':<40}{'meshagent':>22}{'haproxy':>22}{'ratio':>9}  target")

    def row(label: str, o: str, h: str, r: str = "", target: str = "") -> None:
        print(f"{label:<40}{o:>22}{h:>22}{r:>9}  {target}")

    def fig(scenario: str, impl: str, attr: str, fmt: str) -> str:
        runs = results[scenario].get(impl)
        return fmt.format(med(runs, attr)) if runs else "-"

    missed = 0

    def target(scenario: str, attr: str, bound: float, at_least: bool) -> tuple[str, str]:
        nonlocal missed
        if not ours or not results[scenario]:
            return "", ""
        r = ratio(results[scenario], attr)
        ok = r >= bound if at_least else r <= bound
        missed += not ok
        return f"{r:.2f}x", f"{'>=' if at_least else '<='} {bound}x  {verdict(ok)}"

    for scenario, label, bound in (("l4", "L4 small requests, req/s", 0.75), ("l7", "L7 http + intention, req/s", 0.5)):
        row(label, fig(scenario, "ours", "rate", "{:,.0f}"), fig(scenario, "haproxy", "rate", "{:,.0f}"),
            *target(scenario, "rate", bound, True))
        row("  p50 / p99 ms", *(f"{fig(scenario, impl, 'p50_ms', '{:.2f}')} / {fig(scenario, impl, 'p99_ms', '{:.2f}')}"
                                for impl in ("ours", "haproxy")))
        cpu_target = target(scenario, "cpu_per_request_us", 1.5, False) if scenario == "l4" else ("", "")
        row("  CPU per request (pair), us", fig(scenario, "ours", "cpu_per_request_us", "{:.1f}"),
            fig(scenario, "haproxy", "cpu_per_request_us", "{:.1f}"), *cpu_target)
    row("bulk transfer, MB/s", fig("bulk", "ours", "rate", "{:,.0f}"), fig("bulk", "haproxy", "rate", "{:,.0f}"),
        *target("bulk", "rate", 0.9, True))
    row("  CPU per MB (pair), us", fig("bulk", "ours", "cpu_per_mb_us", "{:.0f}"),
        fig("bulk", "haproxy", "cpu_per_mb_us", "{:.0f}"))
    row("new mTLS connection per request, req/s", fig("newconn", "ours", "rate", "{:,.0f}"),
        fig("newconn", "haproxy", "rate", "{:,.0f}"), *target("newconn", "rate", 0.5, True))
    row("  CPU per connection (pair), us", fig("newconn", "ours", "cpu_per_request_us", "{:.1f}"),
        fig("newconn", "haproxy", "cpu_per_request_us", "{:.1f}"))
    if results["c1"]:
        direct_p50 = med(results["direct-c1"]["direct"], "p50_ms")
        added = {impl: med(results["c1"][impl], "p50_ms") - direct_p50 for impl in impls}
        if ours:
            ok = added["ours"] <= added["haproxy"] + 0.3
            missed += not ok
            row("added p50 at -c1 over the app alone, ms", f"+{added['ours']:.3f}", f"+{added['haproxy']:.3f}",
                f"{added['ours'] - added['haproxy']:+.3f}", f"<= +0.3 ms  {verdict(ok)}")
        else:
            row("added p50 at -c1 over the app alone, ms", "-", f"+{added['haproxy']:.3f}")
        print(f"  (the app alone at -c1: p50 {direct_p50:.3f} ms)")

    failed = [(scenario, impl, i + 1, run.errors) for scenario, by_impl in results.items()
              for impl, runs in by_impl.items() for i, run in enumerate(runs) if run.errors]
    counts = {impl: sum(1 for f in failed if f[1] == impl) for impl in (*impls, "direct")}
    row("runs with errors (must be 0)", str(counts.get("ours", "-")) if ours else "-", str(counts["haproxy"]),
        "", f"0  {verdict(not failed)}")
    for scenario, impl, rnd, text in failed:
        print(f"  ERRORS in {scenario} {impl} round {rnd}: {text}")
    return len(failed), missed


def app_alone(results: dict[str, dict[str, list[Run]]], impls: tuple[str, ...], connections: int) -> None:
    """The app's own rate and CPU per request against the pairs': it must not be what limits them."""
    fastest = max(med(results["l4"][impl], "rate") for impl in impls)
    direct = med(results["direct"]["direct"], "rate")
    app_cpu = med(results["direct"]["direct"], "cpu_per_request_us")
    pair_cpu = min(med(results["l4"][impl], "cpu_per_request_us") for impl in impls)
    # On two shared cores wrk, both sides and the app compete for the CPU, and the app's rate alone swings with
    # the machine's load: what shows the app is not what limits a pair is its CPU per request against the pair's.
    print(f"app alone (haproxy, -c{connections}): {direct:,.0f} req/s = {direct / fastest:.1f}x the fastest "
          f"pair's L4 rate; app CPU per request {app_cpu:.1f} us = {app_cpu / pair_cpu:.2f}x the cheapest pair's"
          + ("  (WARNING: the app costs half a pair or more: it may be what limits them)"
             if app_cpu >= 0.5 * pair_cpu else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="default 5 (--quick: 1)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run, default 5 (--quick: 1)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bulk-mb", type=int, help="default 100 (--quick: 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s runs, 10 MB bulk")
    parser.add_argument("--reference-only", action="store_true", help="the haproxy pair and the harness alone")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument("--figures", default=",".join(SCENARIOS), help=f"a subset of {','.join(SCENARIOS)}")
    args = parser.parse_args()
    figures = tuple(f for f in SCENARIOS if f in args.figures.split(","))
    if not figures or set(args.figures.split(",")) - set(SCENARIOS):
        sys.exit(f"--figures: a comma list of {', '.join(SCENARIOS)}")
    modes = [m for m in ("l4", "l7", "bulk") if m in {MODE_OF[f] for f in figures}]
    for name, full, quick in (("rounds", 5, 1), ("duration", 5, 1), ("bulk_mb", 100, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not (1 <= args.rounds <= 50 and 1 <= args.duration <= 120 and 1 <= args.bulk_mb <= 4096
            and 1 <= args.connections <= 1024):
        sys.exit("--rounds 1-50, --duration 1-120 s, --bulk-mb 1-4096, --connections 1-1024")
    impls = ("haproxy",) if args.reference_only else IMPLS
    if "ours" in impls and importlib.util.find_spec(topology.WORKER) is None:
        sys.exit(f"{topology.WORKER} is not there yet: run with --reference-only")

    print(f"machine: {machine_info()}")
    wrk = ensure_wrk()
    binary = haproxy.ensure_haproxy()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"load generator: {wrk_version}  (-t1 -c{args.connections} -d{args.duration}s, keep-alive); "
          f"reference: {haproxy.version(binary)}, nbthread 1")
    bench = Bench(wrk, args.duration, args.connections)
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        try:
            ids = Identities(MeshCA(), work / "certs")
            app_proc, app = topology.start_app(binary, work)
            bulk_proc, bulk_app = topology.start_bulk_app(args.bulk_mb * 10**6, work)
            procs += [app_proc, bulk_proc]
            pairs: dict[tuple[str, str], Pair] = {}
            for impl in impls:
                for mode in modes:
                    target = bulk_app if mode == "bulk" else app
                    pair = (topology.start_ours(ids, mode, target, work) if impl == "ours"
                            else topology.start_haproxy(binary, ids, mode, target, work))
                    pairs[impl, mode] = pair
                    procs += pair.procs
            topology.wait_serving(app, [app_proc], "the app")
            topology.wait_serving(bulk_app, [bulk_proc], "the bulk app")
            for (impl, mode), pair in pairs.items():
                topology.wait_serving(pair.listen, pair.procs, f"{impl} {mode} pair at {pair.url()}")
            for impl in impls if "l7" in modes else ():  # the L7 figure must measure an enforced rule
                statuses = [topology.http_get(pairs[impl, "l7"].listen, path) for path in ("/admin", "/")]
                if statuses != [403, 200]:
                    sys.exit(f"{impl} L7 pair: GET /admin, / answered {statuses}, expected [403, 200]")
            print("TLS (server side, as a client sees it): "
                  + "; ".join(f"{impl} {topology.tls_of(pairs[impl, modes[0]].public, ids)}" for impl in impls))
            print("processes: " + ", ".join(f"{p.name} {p.pid}" for p in procs))
            if not args.quick:
                warm_up(bench, pairs)
            results: dict[str, dict[str, list[Run]]] = {s: {} for s in (*SCENARIOS, "direct", "direct-c1")}
            for rnd in range(args.rounds):
                order = impls if rnd % 2 == 0 else impls[::-1]
                one_round(bench, pairs, order, figures, app, app_proc, args.bulk_mb * 10**6, results)
                last = {impl: results[figures[0]][impl][-1].rate for impl in impls}
                print(f"round {rnd + 1}/{args.rounds}: {figures[0]} "
                      + ", ".join(f"{k} {v:,.0f}" for k, v in last.items()), flush=True)
        finally:
            for proc in reversed(procs):
                proc.stop()
    if results["l4"]:
        app_alone(results, impls, args.connections)
    errors, missed = report(results, impls, args.rounds)
    if errors:
        sys.exit(1)
    if args.strict and missed:
        sys.exit(2)


if __name__ == "__main__":
    main()
