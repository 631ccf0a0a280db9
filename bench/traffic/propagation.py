"""Traffic-management benchmark, part 2: a splitter weight change → the last client sidecar applying it.

    .venv/bin/python bench/traffic/propagation.py [--writes 5] [--clients 3] [--load 8] [--load-seconds 5]

A namespace cluster (tests/support/cluster_hosts.py, as bench/cluster/run.py): 3 servers + N clients, each
client running `web` with a sidecar whose upstream is db, and one `db` instance (Service.Meta.version v1 on
all but the last client, v2 there) with its sidecar in front of a tests/support/mesh_apps.py app. Entries:
db `http`, a resolver with subsets v1/v2, a router and a splitter. Each write (PUT /v1/config through
client-1, as an operator's CLI talks to its local agent) flips the splitter between 90/10 and 50/50, the
issue's canary change. Per client, from the moment before the PUT:

- entry: its agent's catalog serves the new splitter (a blocking GET /v1/config/service-splitter/db?stale):
  the replication floor, the reference;
- snapshot: its agent built web's sidecar snapshot with the new weights (blocking
  GET /v1/agent/connect/proxy/web-sidecar-proxy);
- applied: web's worker logged `applied snapshot version V` (proxy/worker.py, millisecond timestamps, into
  the agent's log) for that snapshot's version or a later one: the moment the data plane uses it.

The writes run twice: idle, then under load (each write inside a `wrk -c<load>` run on every client through
its web sidecar, started and seen reaching the apps before the write; every request must succeed). Printed
per write, then per series the median and max over writes of the last client's time, and the ratio of applied
to entry (what the proxy path adds over replication). The issue's bound: within 1 s, zero failed requests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from dev_mesh import AgentLog, chain_entries  # noqa: E402  (bench/traffic/dev_mesh.py)
from machine import machine_info  # noqa: E402  (bench/machine.py)

from tests.support.cluster_hosts import Cluster, Host  # noqa: E402
from tests.support.mesh import connect_hcl, wait_ca, write_extra_config  # noqa: E402
from tests.support.proxy_mesh import App, Background, Wrk, curl, stop_apps, wrk  # noqa: E402

PROXY = "web-sidecar-proxy"
UPSTREAM_PORT, DB_PORT, DB_CONTROL, DB_PUBLIC = 9191, 8090, 9090, 21000
WEIGHTS = (90.0, 50.0)  # v1's share, alternating: the canary at 10 %, then 50/50
BOUND_S = 1.0
WAIT_S = 30


def db_hcl(host: Host, version: str) -> str:
    """One db instance (the app on 127.0.0.1:DB_PORT) and its sidecar, both TCP-checked every second (the
    default sidecar check runs every 10 s): the chain's targets have endpoints soon after start."""
    return f"""service {{
  id   = "db-{host.name}"
  name = "db"
  port = {DB_PORT}
  meta = {{ version = "{version}" }}
  check {{
    tcp      = "127.0.0.1:{DB_PORT}"
    interval = "1s"
  }}
  connect {{
    sidecar_service {{
      port = {DB_PUBLIC}
      check {{
        tcp      = "{host.address}:{DB_PUBLIC}"
        interval = "1s"
      }}
    }}
  }}
}}
"""


WEB_HCL = f"""service {{
  name = "web"
  port = 8080
  connect {{
    sidecar_service {{
      proxy {{
        upstreams {{
          destination_name = "db"
          local_bind_port  = {UPSTREAM_PORT}
        }}
      }}
    }}
  }}
}}
"""


def put_entry(host: Host, entry: dict[str, Any]) -> None:
    """PUT /v1/config through `host`; exit with the agent's answer when it is not 200."""
    resp = host.cluster.http_client.put(f"{host.http_addr}/v1/config", json=entry, timeout=10)
    if resp.status_code != 200:
        raise SystemExit(f"PUT /v1/config {entry['Kind']} {entry['Name']} via {host.name}: {resp.status_code} "
                         f"{resp.text[:300]}")


def split_weights(wire: dict[str, Any]) -> list[int] | None:
    """The sorted split weights of db's default route in web's snapshot wire (None when flat)."""
    for up in wire.get("upstreams") or ():
        if up.get("destination_name") == "db" and up.get("routes"):
            return sorted(int(s.get("weight", 0)) for s in up["routes"][-1].get("splits") or ())
    return None


def expected(weight_v1: float) -> list[int]:
    return sorted((round(weight_v1 * 100), 10000 - round(weight_v1 * 100)))


def entry_weights(entry: dict[str, Any]) -> list[int]:
    return sorted(round(float(s.get("Weight", 0)) * 100) for s in entry.get("Splits") or ())


class Watch:
    """Blocking reads on one agent until `done(body)` holds; records when (time.time()) and the last index.
    Its HTTP client is made and connected in prime(), so the thread only sends: `sending` is set just before
    its first blocking read goes out (an HTTP client made in the thread costs tens of ms of CPU first)."""

    def __init__(self, host: Host, path: str, done: Callable[[Any], bool]) -> None:
        self.host, self.path, self.done = host, path, done
        self.at: float | None = None
        self.index = 0
        self.error = ""
        self.sending = threading.Event()
        self.http = httpx.Client(trust_env=False, timeout=WAIT_S + 10)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def prime(self) -> Watch:
        """Read once now (connecting), so the blocking reads start from the current index."""
        resp = self.http.get(f"{self.host.http_addr}{self.path}")
        self.index = int(resp.headers.get("X-Consul-Index", "0"))
        return self

    def _run(self) -> None:
        sep = "&" if "?" in self.path else "?"
        deadline = time.monotonic() + WAIT_S
        try:
            while time.monotonic() < deadline:
                self.sending.set()
                try:
                    resp = self.http.get(f"{self.host.http_addr}{self.path}{sep}index={self.index}&wait=10s")
                except httpx.HTTPError as exc:
                    self.error = f"{self.host.name} {self.path}: {exc}"
                    continue
                now = time.time()
                self.index = int(resp.headers.get("X-Consul-Index", self.index))
                if resp.status_code == 200 and self.done(resp.json()):
                    self.at = now
                    return
            self.error = self.error or f"{self.host.name} {self.path}: not within {WAIT_S} s"
        finally:
            self.http.close()


def one_write(writer: Host, clients: list[Host], logs: dict[str, AgentLog], weight_v1: float,
              entry: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Write the splitter with `weight_v1`; per client, seconds from the write to entry, snapshot, applied."""
    want = expected(weight_v1)
    entries = {c.name: Watch(c, "/v1/config/service-splitter/db?stale", lambda b: entry_weights(b) == want).prime()
               for c in clients}
    snaps = {c.name: Watch(c, f"/v1/agent/connect/proxy/{PROXY}", lambda b: split_weights(b) == want).prime()
             for c in clients}
    for w in (*entries.values(), *snaps.values()):
        w.thread.start()
    for w in (*entries.values(), *snaps.values()):
        w.sending.wait(10)
    t0 = time.time()
    put_entry(writer, entry)
    for w in (*entries.values(), *snaps.values()):
        w.thread.join(WAIT_S + 15)
        if w.at is None:
            raise SystemExit(f"write {weight_v1}/{100 - weight_v1}: {w.error or 'no answer'}")
    out: dict[str, dict[str, float]] = {}
    for c in clients:
        version = snaps[c.name].index
        deadline = time.monotonic() + WAIT_S
        applied = logs[c.name].applied(PROXY, version)
        while applied is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the log is a file: polled, and the figure is the line's own timestamp
            applied = logs[c.name].applied(PROXY, version)
        if applied is None:
            raise SystemExit(f"{c.name}: web's worker never logged applying version {version}")
        out[c.name] = {"entry": entries[c.name].at - t0, "snapshot": snaps[c.name].at - t0,  # type: ignore[operator]
                       "applied": applied.at - t0}
    return out


def setup(cluster: Cluster) -> list[App]:
    """Services and apps on the clients, the agents, the CA, and the entries; until every web snapshot routes."""
    write_extra_config(cluster, "connect.hcl", connect_hcl())
    apps = []
    for i, c in enumerate(cluster.clients):
        c.write_service("web", WEB_HCL)
        c.write_service("db", db_hcl(c, "v2" if i == len(cluster.clients) - 1 else "v1"))
        apps.append(App(c, f"db-{c.name}", DB_PORT, DB_CONTROL))
    for app in apps:
        app.start()
    cluster.start(timeout=120)
    wait_ca(cluster, timeout=60)
    writer = cluster.clients[0]
    for entry in ({"Kind": "service-defaults", "Name": "db", "Protocol": "http"}, *chain_entries(WEIGHTS[0])):
        put_entry(writer, entry)  # back to back: the writer checks references after catching up (8ba4783)
    want = expected(WEIGHTS[0])

    def routed() -> bool:
        for c in cluster.clients:
            resp = cluster.http_client.get(f"{c.http_addr}/v1/agent/connect/proxy/{PROXY}", timeout=5)
            if resp.status_code != 200 or split_weights(resp.json()) != want:
                return False
            if not all(t.get("endpoints") for t in resp.json()["upstreams"][0].get("targets") or ()):
                return False
        return True

    cluster.wait_until(routed, 90, "every client's web snapshot to route db 90/10 to endpoints", interval=0.2)
    for c in cluster.clients:
        cluster.wait_until(lambda c=c: curl(c, f"http://127.0.0.1:{UPSTREAM_PORT}/").code == 200, 30,
                           f"web's sidecar on {c.name} to answer 200", interval=0.2)
    return apps


def run_writes(cluster: Cluster, apps: list[App], logs: dict[str, AgentLog], writes: int, load: int,
               seconds: int, first: int) -> tuple[dict[str, list[float]], int, int]:
    """`writes` splitter flips, each under `wrk -c<load>` on every client when load > 0; per figure the last
    client's seconds for each write, and the requests made and failed under the load. Write `first` + i
    flips to WEIGHTS[(first + i + 1) % 2] (setup wrote WEIGHTS[0]), so every write changes the weights."""
    last: dict[str, list[float]] = {"entry": [], "snapshot": [], "applied": []}
    made = failed = 0
    for i in range(writes):
        weight = WEIGHTS[(first + i + 1) % 2]
        entry = next(e for e in chain_entries(weight) if e["Kind"] == "service-splitter")
        loads: list[Background] = []
        if load:
            served = sum(app.served() for app in apps)
            loads = [Background(lambda c=c: wrk(c, f"http://127.0.0.1:{UPSTREAM_PORT}/", seconds, connections=load))
                     for c in cluster.clients]
            cluster.wait_until(lambda n=served: sum(app.served() for app in apps) > n + 50 * len(apps), seconds / 2,
                               "the load to reach the apps", interval=0.05)
        per = one_write(cluster.clients[0], cluster.clients, logs, weight, entry)
        for result in (b.result(seconds + 60) for b in loads):
            assert isinstance(result, Wrk)
            made, failed = made + result.requests, failed + result.failed
        for key in last:
            last[key].append(max(p[key] for p in per.values()))
        print(f"  write {i + 1} (v1 {weight:g} %), ms entry/snapshot/applied: "
              + ", ".join(f"{name} {p['entry'] * 1000:.0f}/{p['snapshot'] * 1000:.0f}/{p['applied'] * 1000:.0f}"
                          for name, p in per.items()), flush=True)
    return last, made, failed


def summary(label: str, values: list[float]) -> str:
    return f"{label}: median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--load", type=int, default=8, help="wrk connections per client in the loaded series "
                                                           "(0: idle only)")
    parser.add_argument("--load-seconds", type=int, default=5, help="each loaded write's wrk run")
    args = parser.parse_args()
    if not (1 <= args.writes <= 100 and 1 <= args.clients <= 20 and 0 <= args.load <= 256
            and 2 <= args.load_seconds <= 60):
        sys.exit("--writes 1-100, --clients 1-20, --load 0-256, --load-seconds 2-60")
    print(f"machine: {machine_info()}")
    series: list[tuple[str, dict[str, list[float]], int, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-traffic-prop-") as tmp:
        cluster = Cluster(Path(tmp), servers=3, clients=args.clients, log_level="info")
        apps: list[App] = []
        try:
            t_setup = time.monotonic()
            apps = setup(cluster)
            where = "namespaces" if cluster.isolated else "loopback (no namespaces)"
            print(f"cluster: 3 servers + {args.clients} clients in {where}, ready in "
                  f"{time.monotonic() - t_setup:.0f} s; writes through {cluster.clients[0].name}", flush=True)
            logs = {c.name: AgentLog(c.log_path) for c in cluster.clients}
            for log in logs.values():
                log.scan()
            for n, load in enumerate((0, args.load) if args.load else (0,)):
                label = f"under load (wrk -t1 -c{load} on each client through web's sidecar)" if load else "idle"
                print(f"{label}:", flush=True)
                series.append((label, *run_writes(cluster, apps, logs, args.writes, load, args.load_seconds,
                                                  n * args.writes)))
        finally:
            stop_apps(apps)
            cluster.stop()
    failed_any = False
    for label, last, made, failed in series:
        print(f"\n{label}, over {args.writes} writes, the last of {args.clients} client sidecars:")
        print("  " + summary("config write -> last worker applied", last["applied"])
              + f"  (bound {BOUND_S:g} s: {'met' if max(last['applied']) <= BOUND_S else 'MISSED'})")
        print("  " + summary("config write -> last agent built the snapshot", last["snapshot"]))
        print("  " + summary("reference, config write -> entry readable on the last client", last["entry"]))
        print(f"  ratio applied / entry (medians): "
              f"{statistics.median(last['applied']) / statistics.median(last['entry']):.2f}x")
        if made:
            print(f"  requests under the load: {made:,}, failed {failed} "
                  f"(must be 0: {'met' if not failed else 'MISSED'})")
            failed_any = failed_any or bool(failed)
    if failed_any:
        sys.exit(1)


if __name__ == "__main__":
    main()
