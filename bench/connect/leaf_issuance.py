"""Leaf issuance benchmark: CSRs through a 3-server cluster, against raw `cryptography` signing in the same run.

    .venv/bin/python bench/connect/leaf_issuance.py [--leaves 400] [--concurrency 16] [--limit 0]

Our side: three `meshagent agent` servers and one client (tests/support/cluster_hosts.py, loopback addresses
127.18.K.N; data dirs in a fresh temporary directory, Raft fsync on). Each request is
`GET /v1/agent/connect/ca/leaf/<service>` for a service no agent asked for before, on the client: the agent
makes an EC P-256 key and a CSR, sends it over :8300 to a server, which forwards it to the leader; the leader
checks and signs it; the agent answers Consul's leaf JSON. Latency is that whole round (CSR → certificate,
key generation included). `csr_max_per_second` is 0 (no limit) unless `--limit` sets it: the figure is the
signing path, not the rate limiter (with `--limit 50` it measures the limiter: signs/s must stay ≤ 50 + burst).

Reference, measured in the same run and process: agent/connect/ca.py `sign_leaf` of the same kind of leaf
(CSR check + EC P-256 ECDSA signature + DER/PEM encoding) in a loop, and the crypto floor of one whole
issuance (key generation + CSR + sign), single-threaded. Every phase is bounded by a count and a time cap;
the agents are killed by PID on exit.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from machine import machine_info  # noqa: E402  (bench/machine.py)
from meshagent.agent.connect.ca import leaf_key_and_csr, new_root, sign_leaf  # noqa: E402
from meshagent.agent.connect.spiffe import service_id  # noqa: E402

from tests.support.cluster_hosts import Cluster, ClusterWarning  # noqa: E402
from tests.support.mesh import connect_hcl, leaf, uri_sans, wait_ca, write_extra_config  # noqa: E402

TIME_CAP = 120.0  # seconds, per measured phase


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def reference(n: int) -> tuple[float, list[float], float]:
    """(sign_leaf per second, per-sign seconds, whole issuance per second) in this process, one thread."""
    now = datetime.datetime.now(datetime.UTC)
    root = new_root("11111111-2222-3333-4444-555555555555.mesh", now)
    csrs = [leaf_key_and_csr(service_id(root.trust_domain, "dc1", f"ref-{i}"))[1] for i in range(n)]
    times: list[float] = []
    start = time.perf_counter()
    for csr in csrs:
        t0 = time.perf_counter()
        sign_leaf(root, csr, "dc1", now)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > TIME_CAP:
            break
    sign_rate = len(times) / (time.perf_counter() - start)
    start = time.perf_counter()
    done = 0
    for i in range(n):
        _, csr = leaf_key_and_csr(service_id(root.trust_domain, "dc1", f"whole-{i}"))
        sign_leaf(root, csr, "dc1", now)
        done += 1
        if time.perf_counter() - start > TIME_CAP:
            break
    return sign_rate, times, done / (time.perf_counter() - start)


def issue(base_url: str, services: list[str], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Every service's leaf through the agent, `concurrency` keep-alive clients: (wall s, latencies, errors)."""
    local = threading.local()
    errors: list[str] = []
    deadline = time.monotonic() + TIME_CAP

    def one(service: str) -> float | None:
        if time.monotonic() > deadline:
            return None
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(trust_env=False, timeout=60.0)
        t0 = time.perf_counter()
        try:
            resp = client.get(f"{base_url}/v1/agent/connect/ca/leaf/{service}")
            resp.raise_for_status()
            body = resp.json()
        except Exception as exc:
            errors.append(f"{service}: {exc!r}")
            return None
        took = time.perf_counter() - t0
        if body.get("Service") != service or "BEGIN CERTIFICATE" not in body.get("CertPEM", ""):
            errors.append(f"{service}: unexpected answer {str(body)[:120]}")
            return None
        return took

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, services))
    wall = time.perf_counter() - start
    return wall, [r for r in results if r is not None], errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=400, help="distinct services, one CSR each")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent keep-alive HTTP clients")
    parser.add_argument("--limit", type=float, default=0, help="csr_max_per_second on the servers (0: none)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ClusterWarning)  # loopback hosts on purpose: no namespaces needed here
    logging.getLogger("tests.support.cluster_hosts").setLevel(logging.ERROR)
    print(f"machine: {machine_info()}")

    ref_rate, ref_times, whole_rate = reference(args.leaves)

    with tempfile.TemporaryDirectory(prefix="bench-leaf-") as tmp:
        cluster = Cluster(Path(tmp), servers=3, clients=1, isolate=False, log_level="info")
        try:
            limit = int(args.limit) if float(args.limit).is_integer() else args.limit
            write_extra_config(cluster, "connect.hcl", connect_hcl("1s", csr_max_per_second=limit))
            cluster.start(timeout=120)
            body = wait_ca(cluster, timeout=120)
            client = cluster.clients[0]
            warm = leaf(client, "bench-warmup", timeout=60)
            assert uri_sans(warm["CertPEM"])[0].endswith("/svc/bench-warmup")
            services = [f"bench-{i}" for i in range(args.leaves)]
            wall, latencies, errors = issue(client.http_addr, services, args.concurrency)
        finally:
            cluster.stop()

    if not latencies:
        sys.exit(f"no leaf was issued: {errors[:5]}")
    rate = len(latencies) / wall
    print(f"\ncluster: 3 servers + 1 client on loopback, trust domain {body['TrustDomain']}, "
          f"csr_max_per_second={args.limit:g} ({'no limit' if not args.limit else 'limited'})")
    print(f"leaf issuance via GET /v1/agent/connect/ca/leaf/<svc> on the client, {len(latencies)} distinct "
          f"services, {args.concurrency} concurrent clients ({len(errors)} errors{': ' + errors[0] if errors else ''})")
    print(f"  meshagent cluster : {rate:8.1f} signs/s   CSR->certificate p50 {pct(latencies, 50) * 1000:7.2f} ms"
          f"   p99 {pct(latencies, 99) * 1000:7.2f} ms   max {max(latencies) * 1000:7.2f} ms")
    print(f"  reference sign_leaf (cryptography, 1 thread, in-process): {ref_rate:8.1f} signs/s   "
          f"p50 {statistics.median(ref_times) * 1000:.3f} ms   p99 {pct(ref_times, 99) * 1000:.3f} ms")
    print(f"  reference key + CSR + sign (1 thread)                    : {whole_rate:8.1f} issuances/s")
    print(f"  ratio cluster/sign_leaf: {rate / ref_rate:.3f}   cluster/(key+CSR+sign): {rate / whole_rate:.3f}")


if __name__ == "__main__":
    main()
