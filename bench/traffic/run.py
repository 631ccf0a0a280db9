"""Traffic-management benchmark (issue 17): L7 through a compiled discovery chain against the plain L7 path.

    .venv/bin/python bench/traffic/run.py [--rounds 5] [--duration 5] [--connections 16] [--quick] [--strict]
    .venv/bin/python bench/traffic/propagation.py [--writes 5]     # config write -> last proxy, 3 + 3 cluster

One real `-dev` agent on 127.0.34.N runs the sidecars' data plane (bench/traffic/dev_mesh.py): wrk (-t1, -cN,
keep-alive) → web's sidecar → mTLS → db-v1's or db-v2's sidecar → haproxy answering 200. Each round measures
both paths on the same sidecars, in an order alternating from round to round:

- plain: db is `http` with one L7 intention (the L7 path of bench/proxy), no router/splitter/resolver: the
  upstream is flat, both db instances in one balancer;
- chain: the same plus a service-router (one match, PathPrefix /bench), a 50/50 service-splitter and a
  service-resolver with subsets v1/v2 by Service.Meta.version, written with PUT /v1/config; the worker
  matches a route, draws a split and sends to that target's endpoints, per request.

Between the two the entries are written or deleted and the run waits until web's worker logged that it applied
the snapshot they made, then runs wrk for 1 s unmeasured (a chain target's pool starts empty: its first mTLS
connections are the switch's cost, not the steady state's). Printed: medians of req/s, p50/p99 and CPU per
request of the sidecars' workers, the median of the per-round ratios chain/plain (target ≥ 0.9x), errors
(zero, or exit 1), and the chain's own step timed in process. `--quick` (one round of 1 s runs, no warm-up or
settling run) is the smoke run of tests/proxy/test_bench_traffic_smoke.py; `--strict` exits 2 when the target
is missed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "proxy"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
import dev_mesh  # noqa: E402  (bench/traffic/dev_mesh.py)
import haproxy  # noqa: E402  (bench/proxy/haproxy.py)
import topology  # noqa: E402  (bench/proxy/topology.py)
from machine import machine_info  # noqa: E402  (bench/machine.py)
from wrk_tool import ensure_wrk  # noqa: E402  (bench/wrk_tool.py)

MODES = ("plain", "chain")
TARGET = 0.9


def _proxy_bench() -> ModuleType:
    """bench/proxy/run.py (its wrk runner and parser), loaded under its own name: ours is also run.py."""
    spec = importlib.util.spec_from_file_location("proxy_bench_run", HERE.parent / "proxy" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pb = _proxy_bench()


def ratio(results: dict[str, list], attr: str) -> float:
    """The median of the per-round ratios chain/plain (each round's two runs were back to back)."""
    values = [getattr(c, attr) / getattr(p, attr) for p, c in zip(results["plain"], results["chain"], strict=True)
              if getattr(p, attr)]
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def split_seen(before: dict[str, float], after: dict[str, float]) -> str:
    """Each chain target's share of the requests web's sidecar sent through the chain during the rounds."""
    sent = {t: after[t] - before.get(t, 0.0) for t in sorted(after)}
    total = sum(sent.values())
    if not total:
        return "no request went through a chain target"
    return ", ".join(f"{t} {n / total:.1%}" for t, n in sent.items()) + f" of {total:,.0f}"


def report(results: dict[str, list], rounds: int, routed: list[bool]) -> tuple[int, bool]:
    """Print the figures; (runs with errors, whether the target was met)."""
    print(f"\nmedians of {rounds} round(s); ratio = median of the per-round ratios chain/plain\n")
    print(f"{'figure':<44}{'chain':>20}{'plain L7':>20}{'ratio':>9}  target")

    def row(label: str, c: str, p: str, r: str = "", target: str = "") -> None:
        print(f"{label:<44}{c:>20}{p:>20}{r:>9}  {target}")

    def fig(mode: str, attr: str, fmt: str) -> str:
        return fmt.format(pb.med(results[mode], attr))

    r = ratio(results, "rate")
    met = r >= TARGET
    row("L7 req/s (router + split + subset resolver)", fig("chain", "rate", "{:,.0f}"),
        fig("plain", "rate", "{:,.0f}"), f"{r:.2f}x", f">= {TARGET}x  {pb.verdict(met)}")
    row("  p50 / p99 ms", *(f"{fig(m, 'p50_ms', '{:.2f}')} / {fig(m, 'p99_ms', '{:.2f}')}" for m in ("chain", "plain")))
    row("  CPU per request (sidecars), us", fig("chain", "cpu_per_request_us", "{:.1f}"),
        fig("plain", "cpu_per_request_us", "{:.1f}"), f"{ratio(results, 'cpu_per_request_us'):.2f}x")
    if not all(routed):
        print("  WARNING: web's snapshot had no routes in a chain round: the agent compiled no chain into it, "
              "so 'chain' measured the flat path")
    failed = [(mode, i + 1, run.errors) for mode in MODES for i, run in enumerate(results[mode]) if run.errors]
    counts = {mode: sum(1 for f in failed if f[0] == mode) for mode in MODES}
    row("runs with errors (must be 0)", str(counts["chain"]), str(counts["plain"]), "",
        f"0  {pb.verdict(not failed)}")
    for mode, rnd, text in failed:
        print(f"  ERRORS in {mode} round {rnd}: {text}")
    return len(failed), met


def router_cost(n: int = 100_000) -> float:
    """Microseconds per request of the chain's own step in a worker, in process: ChainRouter.match + pick for
    wrk's request on this benchmark's chain (route 1 of 2 matches, a 50/50 draw)."""
    import random
    import timeit

    from meshagent.proxy import http1
    from meshagent.proxy.chain_router import ChainRouter
    from meshagent.proxy.snapshot import ChainRoute, ChainTarget, Endpoint, RouteMatch, Upstream, WeightedTarget

    ids = ("v1.db.default.default.dc1", "v2.db.default.default.dc1")
    splits = (WeightedTarget(ids[0], 5000), WeightedTarget(ids[1], 5000))
    upstream = Upstream(destination_name="db", local_bind_address="127.0.0.1", local_bind_port=9191, protocol="http",
                        routes=(ChainRoute(RouteMatch(path_prefix=dev_mesh.PATH), splits),
                                ChainRoute(RouteMatch(path_prefix="/"), splits)),
                        targets=tuple(ChainTarget(i, endpoints=(Endpoint("127.0.0.1", 21000),)) for i in ids))
    router = ChainRouter(upstream, random.Random(17))
    head = http1.parse_request(f"GET {dev_mesh.PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    path = http1.request_path(head.target)
    route = router.match(head, path)
    if route is None or route.route.match.path_prefix != dev_mesh.PATH:
        raise SystemExit("the in-process router did not take the /bench route")
    spent = timeit.timeit(lambda: router.pick(router.match(head, path)), number=n)  # type: ignore[arg-type]
    empty = timeit.timeit(lambda: None, number=n)
    return (spent - empty) / n * 1e6


def check_paths(mesh: dev_mesh.DevMesh) -> None:
    """The L7 rule is enforced (GET /admin 403) and wrk's path answers 200, whichever mode is on."""
    statuses = [topology.http_get(mesh.listen, path) for path in ("/admin", dev_mesh.PATH)]
    if statuses != [403, 200]:
        raise SystemExit(f"GET /admin, {dev_mesh.PATH} through web's sidecar answered {statuses}, expected [403, 200]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="default 5 (--quick: 1)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run, default 5 (--quick: 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16, as bench/proxy)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s runs, no warm-up")
    parser.add_argument("--strict", action="store_true", help="exit 2 when the target is missed")
    args = parser.parse_args()
    for name, full, quick in (("rounds", 5, 1), ("duration", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not (1 <= args.rounds <= 50 and 1 <= args.duration <= 120 and 1 <= args.connections <= 1024):
        sys.exit("--rounds 1-50, --duration 1-120 s, --connections 1-1024")

    print(f"machine: {machine_info()}")
    wrk = ensure_wrk()
    binary = haproxy.ensure_haproxy()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"load generator: {wrk_version}  (-t1 -c{args.connections} -d{args.duration}s, keep-alive, "
          f"GET {dev_mesh.PATH})")
    bench = pb.Bench(wrk, args.duration, args.connections)
    results: dict[str, list] = {mode: [] for mode in MODES}
    routed: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        work = Path(tmp)
        host = dev_mesh.free_host()
        app_cfg = work / "app.cfg"
        app_cfg.write_text(haproxy.app_config(host, dev_mesh.APP_PORT))
        haproxy.check_config(binary, app_cfg)
        app_proc = topology.Proc("app", haproxy.command(binary, app_cfg), work)
        mesh = None
        try:
            app = (host, dev_mesh.APP_PORT)
            mesh = dev_mesh.start(work, dev_mesh.APP_PORT, host,
                                  lambda: topology.wait_serving(app, [app_proc], "the app"))
            assert mesh.agent.proc is not None
            topology.wait_serving(mesh.listen, [], "web's sidecar to db", timeout=30)
            check_paths(mesh)
            print(f"processes: app {app_proc.pid}, agent {mesh.agent.proc.pid} (sidecar workers "
                  + " ".join(str(p) for p in mesh.workers()) + f"), on {host}", flush=True)
            if not args.quick:  # no measured second is a worker's first
                for mode in MODES:
                    mesh.set_chain(mode == "chain")
                    bench.wrk_run(mesh.url(), None, duration=1)
            before = mesh.target_requests()
            for rnd in range(args.rounds):
                order = MODES if rnd % 2 == 0 else MODES[::-1]
                for mode in order:
                    got = mesh.set_chain(mode == "chain")
                    if mode == "chain":
                        routed.append(got)
                    check_paths(mesh)
                    if not args.quick:  # steady state: the switch's new pooled mTLS connections are not measured
                        bench.wrk_run(mesh.url(), None, duration=1)
                    results[mode].append(bench.wrk_run(mesh.url(), mesh))
                print(f"round {rnd + 1}/{args.rounds}: "
                      + ", ".join(f"{m} {results[m][-1].rate:,.0f} req/s" for m in MODES), flush=True)
            print(f"split seen by web's sidecar (50/50 written): {split_seen(before, mesh.target_requests())}")
        finally:
            if mesh is not None:
                mesh.close()
            app_proc.stop()
    errors, met = report(results, args.rounds, routed)
    print(f"the chain's own step, in process: ChainRouter.match + pick {router_cost():.2f} us per request")
    if errors:
        sys.exit(1)
    if args.strict and not met:
        sys.exit(2)


if __name__ == "__main__":
    main()
