"""The data plane following a compiled discovery chain, through real DataPlanes on loopback (127.0.31.0/24):
a plain HTTP client → web's http upstream listener (routes, splits) → mTLS → the chosen target's db or admin
sidecar (protocol http) → its threaded HTTP/1.1 application, which answers with its name and the path it saw.
Routing by path/method/header/query, PrefixRewrite seen by the app and by the destination's intentions,
weighted and hash splits, route timeout/retry overrides, per-target breakers and outlier detection, and a
snapshot swap under keep-alive load with zero failed requests."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import (
    ChainRoute,
    ChainTarget,
    Endpoint,
    HashPolicy,
    HeaderMatch,
    IntentionRule,
    Intentions,
    Limits,
    LoadBalancer,
    PassiveHealth,
    Permission,
    ProxySnapshot,
    QueryMatch,
    Retries,
    RouteMatch,
    Upstream,
    WeightedTarget,
)

from tests.support.dataplane_harness import Loop, counts, material
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.31.1"
V1, V2, ADMIN = "v1.db.default.default.dc1", "v2.db.default.default.dc1", "admin.default.default.dc1"
GROUP = {"v1": V1, "v2a": V2, "v2b": V2, "admin": ADMIN}  # app name -> its target


class App:
    """A threaded keep-alive HTTP/1.1 app: answers its name (x-app) and the target it saw (x-path);
    /slow?ms=N sleeps, /status/N answers N, `fail` makes every answer 500. Counts served and in flight."""

    def __init__(self, name: str) -> None:
        app = self
        self.name = name
        self.fail = False
        self.served = 0
        self.inflight = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall between

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                with app.lock:
                    app.inflight += 1
                try:
                    code = 200
                    if url.path == "/slow":
                        time.sleep(int(parse_qs(url.query).get("ms", ["100"])[0]) / 1000)  # the app is slow
                    elif url.path.startswith("/status/"):
                        code = int(url.path[8:11])
                    if app.fail:
                        code = 500
                    with app.lock:  # counted before the answer leaves: a client that has it sees the count
                        app.served += 1
                    body = app.name.encode()
                    self.send_response(code)
                    self.send_header("x-app", app.name)
                    self.send_header("x-path", self.path)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with app.lock:
                        app.inflight -= 1

            do_POST = do_GET

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Servers:
    """The destination sidecars (protocol http): v1, v2a and v2b are db, admin is admin (which denies
    /secret to web: the rewritten path is what it checks)."""

    def __init__(self, loop: Loop, ca: MeshCA) -> None:
        self.loop = loop
        self.apps = {name: App(name) for name in GROUP}
        ports = free_ports(len(self.apps), HOST)
        self.endpoints: dict[str, Endpoint] = {}
        self.planes: list[DataPlane] = []
        secret = Intentions(default_allow=True, rules=(IntentionRule(
            source="web", action=None, name="web => admin",
            permissions=(Permission("deny", path_prefix="/secret"), Permission("allow", path_prefix="/"))),))
        for (name, app), port in zip(self.apps.items(), ports, strict=True):
            service = "admin" if name == "admin" else "db"
            dp = loop.call(lambda service=service: DataPlane(loop.reactor, ProxyMetrics(service, "dc1")))
            snap = ProxySnapshot(proxy_id=f"{name}-sidecar-proxy", service=service, datacenter="dc1",
                                 tls=material(ca, service), public_address=HOST, public_port=port,
                                 local_service_address=HOST, local_service_port=app.port, protocol="http",
                                 intentions=secret if name == "admin" else Intentions())
            assert loop.call(lambda dp=dp, snap=snap: dp.apply(snap)) == []
            self.planes.append(dp)
            self.endpoints[name] = Endpoint(HOST, port, service_id=f"{name}-sidecar-proxy")

    def reset(self) -> None:
        for app in self.apps.values():
            app.fail = False
            app.served = 0

    def close(self) -> None:
        for dp in self.planes:
            self.loop.call(dp.close)
        for app in self.apps.values():
            app.close()


def split(*pairs: tuple[str, int]) -> tuple[WeightedTarget, ...]:
    return tuple(WeightedTarget(t, w) for t, w in pairs)


DEFAULT = ChainRoute(RouteMatch(path_prefix="/"), split((V1, 10000)), name="db default")


class Client:
    """web's sidecar with one http upstream `db` carrying a chain; `apply` swaps its snapshot."""

    def __init__(self, loop: Loop, ca: MeshCA, servers: Servers, seed: int = 17) -> None:
        self.loop, self.ca, self.servers = loop, ca, servers
        self.metrics = ProxyMetrics("web", "dc1")
        self.dp = loop.call(lambda: DataPlane(loop.reactor, self.metrics))
        self.dp.rng.seed(seed)  # the split's draws, reproducible when requests come one at a time
        self.port = free_ports(1, HOST)[0]
        self.tls = material(ca, "web")
        eps = servers.endpoints
        db = (ca.spiffe_id("db"),)
        self.targets = {V1: ChainTarget(V1, (eps["v1"],), db), V2: ChainTarget(V2, (eps["v2a"], eps["v2b"]), db),
                        ADMIN: ChainTarget(ADMIN, (eps["admin"],))}  # no SPIFFE IDs: admin's, from the id

    def upstream(self, *routes: ChainRoute, **kw: Any) -> Upstream:
        kw.setdefault("targets", tuple(self.targets.values()))
        return Upstream("db", HOST, self.port, protocol="http", routes=routes, **kw)

    def apply(self, *ups: Upstream) -> None:
        snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1", tls=self.tls,
                             public_address=HOST, public_port=21000, upstreams=ups)
        snap.check()
        assert self.loop.call(lambda: self.dp.apply(snap)) == []

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=20)

    def get(self, path: str, c: http.client.HTTPConnection | None = None, method: str = "GET",
            **headers: str) -> tuple[int, str, str]:
        """(status, x-app or the body, x-path) of one request."""
        own = c is None
        c = c or self.conn()
        try:
            c.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
            r = c.getresponse()
            body = r.read().decode()
            return r.status, r.getheader("x-app") or body, r.getheader("x-path") or ""
        finally:
            if own:
                c.close()

    def close(self) -> None:
        self.loop.call(self.dp.close)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture(scope="module")
def servers(loop: Loop, ca: MeshCA) -> Iterator[Servers]:
    s = Servers(loop, ca)
    yield s
    s.close()


@pytest.fixture
def client(loop: Loop, ca: MeshCA, servers: Servers) -> Iterator[Client]:
    servers.reset()
    c = Client(loop, ca, servers)
    yield c
    c.close()


# ---------------------------------------------------------------------- routing


def test_routes_by_path_method_header_and_query_with_prefix_rewrite_seen_by_app_and_intentions(
        client: Client) -> None:
    client.apply(client.upstream(
        ChainRoute(RouteMatch(path_prefix="/admin/"), split((ADMIN, 10000)), prefix_rewrite="/", name="admin"),
        ChainRoute(RouteMatch(path_exact="/write", methods=("POST",)), split((V2, 10000))),
        ChainRoute(RouteMatch(headers=(HeaderMatch("x-canary", exact="1"),)), split((V2, 10000))),
        ChainRoute(RouteMatch(headers=(HeaderMatch("x-stable", present=True, invert=True),),
                              path_prefix="/inv"), split((V2, 10000))),
        ChainRoute(RouteMatch(query=(QueryMatch("v", exact="2"),)), split((V2, 10000))),
        ChainRoute(RouteMatch(path_regex="/items/[0-9]+"), split((V2, 10000))),
        DEFAULT))
    c = client.conn()  # one keep-alive connection through every route
    group = lambda r: (r[0], GROUP.get(r[1]), r[2])  # noqa: E731
    assert group(client.get("/admin/users?x=1", c)) == (200, ADMIN, "/users?x=1")  # rewritten, query kept
    assert group(client.get("/x/../admin/a", c)) == (200, ADMIN, "/a")  # routed on the normalised path
    assert client.get("/admin/secret", c)[0] == 403  # admin's intentions see /secret, not /admin/secret
    assert group(client.get("/write", c, "POST")) == (200, V2, "/write")
    assert group(client.get("/write", c)) == (200, V1, "/write")  # GET is not in the route's methods
    assert group(client.get("/", c, x_canary="1")) == (200, V2, "/")
    assert group(client.get("/", c, x_canary="2")) == (200, V1, "/")
    assert group(client.get("/inv", c)) == (200, V2, "/inv")
    assert group(client.get("/inv", c, x_stable="yes")) == (200, V1, "/inv")
    assert group(client.get("/p?a=1&v=2", c)) == (200, V2, "/p?a=1&v=2")
    assert group(client.get("/items/42", c)) == (200, V2, "/items/42")
    assert group(client.get("/items/42x", c)) == (200, V1, "/items/42x")
    # Without a catch-all (only a hand-fed snapshot lacks one) an unmatched request is a 404 "no route", and
    # the connection carries on.
    client.apply(client.upstream(ChainRoute(RouteMatch(path_prefix="/api"), split((V2, 10000)))))
    c.request("GET", "/other")
    r = c.getresponse()
    assert (r.status, r.reason, r.read()) == (404, "Not Found", b"no route\n")
    assert GROUP[client.get("/api/x", c)[1]] == V2
    c.close()
    # counted as each request ends, in the loop thread: the last may be counted just after its answer left
    wait_for(lambda: counts(client.metrics, "target_requests_total", 3) == {ADMIN: 3, V1: 4, V2: 6},
             what="requests counted per target (the 404 has none)")
    assert counts(client.metrics, "requests_total", 1) == {"db": 14}  # the upstream's series as before


def test_weighted_split_lands_within_bounds_and_counts_per_target(client: Client) -> None:
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V1, 9000), (V2, 1000)), name="canary")))
    n = 2000
    seen: dict[str, int] = {}
    c = client.conn()
    for _ in range(n):
        status, app, _ = client.get("/", c)
        assert status == 200
        seen[GROUP[app]] = seen.get(GROUP[app], 0) + 1
    c.close()
    assert abs(seen[V2] / n - 0.10) <= 0.03, seen  # sigma 0.67 %: 4.5 of them (and the draws are seeded)
    wait_for(lambda: counts(client.metrics, "target_requests_total", 3) == seen, what="per-target counts")
    apps = client.servers.apps
    assert apps["v1"].served == seen[V1] and apps["v2a"].served + apps["v2b"].served == seen[V2]


def test_hash_policy_split_is_deterministic_per_request_hash(client: Client) -> None:
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V1, 5000), (V2, 5000))),
                                 load_balancer=LoadBalancer(hash_policies=(HashPolicy("header", "x-user"),))))
    where: dict[str, set[str]] = {}
    c = client.conn()
    for _ in range(3):
        for u in range(40):
            status, app, _ = client.get("/", c, x_user=f"user-{u}")
            assert status == 200
            where.setdefault(f"user-{u}", set()).add(GROUP[app])
    c.close()
    assert all(len(t) == 1 for t in where.values()), where  # each user always on one target
    landed = [t for s in where.values() for t in s]
    assert 8 <= landed.count(V2) <= 32  # and users spread over both (binomial 40, 1/2: 20 ± 6 sigma... 4.7)


def test_a_source_ip_hash_policy_does_not_make_a_split_sticky(client: Client) -> None:
    # On the outbound listener the source is always the local app: hashing it sent a whole 90/10 split to v1.
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V1, 9000), (V2, 1000))),
                                 load_balancer=LoadBalancer(hash_policies=(HashPolicy(source_ip=True),))))
    n = 1000
    c = client.conn()
    v2 = sum(GROUP[client.get("/", c)[1]] == V2 for _ in range(n))
    c.close()
    assert abs(v2 / n - 0.10) <= 0.04, v2  # sigma 0.95 %: 4.2 of them (and the draws are seeded)


# ---------------------------------------------------------------------- overrides, in-flight, per target


def test_route_timeout_and_retries_override_the_target(client: Client) -> None:
    client.apply(client.upstream(
        ChainRoute(RouteMatch(path_prefix="/slow"), split((V1, 10000)), request_timeout_ms=200),
        ChainRoute(RouteMatch(path_prefix="/status/", headers=(HeaderMatch("x-retry", present=True),)),
                   split((V1, 10000)), retries=Retries(num_retries=2, retry_on_status_codes=(503,),
                                                       base_interval_ms=1, max_interval_ms=2)),
        DEFAULT, request_timeout_ms=10_000))
    app = client.servers.apps["v1"]
    # 504: the route's 200 ms fired before the app's 1.5 s answer (the upstream's 10 s would give a 200)
    assert client.get("/slow?ms=1500")[0] == 504
    wait_for(lambda: app.inflight == 0, what="the slow request to end at the app")
    served = app.served
    assert client.get("/status/503", x_retry="1")[0] == 503
    assert app.served - served == 3  # the route's two retries
    assert client.get("/status/503")[0] == 503
    assert app.served - served == 4  # the default route: the upstream's (no) retries


def test_an_in_flight_request_finishes_on_its_target_across_a_swap(client: Client) -> None:
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V2, 10000)))))
    c = client.conn()
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", client.get("/slow?ms=600", c)))
    t.start()
    apps = client.servers.apps
    wait_for(lambda: apps["v2a"].inflight + apps["v2b"].inflight == 1, what="the slow request at v2")
    # v2 leaves the chain entirely while its request is at the app
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V1, 10000))), targets=(client.targets[V1],)))
    t.join(20)
    status, app, _ = box["r"]
    assert status == 200 and GROUP[app] == V2
    assert GROUP[client.get("/", c)[1]] == V1  # the next request on the same connection takes the new chain
    c.close()

    def to_v2() -> int:  # open mTLS connections at v2's sidecars (v2a, v2b)
        return sum(n for dp in client.servers.planes[1:3] for (d, _), n in dp.metrics._active.items()
                   if d == "inbound")
    wait_for(lambda: to_v2() == 0, what="v2's pooled connection closed once its request ended")


def test_breakers_and_outlier_detection_are_per_target(client: Client) -> None:
    up = client.upstream(
        ChainRoute(RouteMatch(headers=(HeaderMatch("x-t", exact="v2"),)), split((V2, 10000))), DEFAULT,
        limits=Limits(max_concurrent_requests=1), passive_health=PassiveHealth(max_failures=3),
        # round robin: the default balancer would avoid the failing endpoint before it is ejected
        targets=(client.targets[V1], replace(client.targets[V2], load_balancer=LoadBalancer("round_robin"))))
    client.apply(up)
    apps = client.servers.apps
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", client.get("/slow?ms=800")))
    t.start()
    wait_for(lambda: apps["v1"].inflight == 1, what="v1's one allowed request in flight")
    status, app, _ = client.get("/")
    assert status == 503 and "max_concurrent_requests" in app  # v1's breaker is full ...
    assert client.get("/", x_t="v2")[0] == 200  # ... v2's is its own
    t.join(20)
    assert box["r"][0] == 200
    apps["v2a"].fail = True  # v2a answers 500: three in a row eject it from v2 only
    c = client.conn()
    for _ in range(20):
        client.get("/", c, x_t="v2")
        if counts(client.metrics, "ejections_total", 3).get(V2):
            break
    assert counts(client.metrics, "ejections_total", 3) == {V2: 1}
    assert counts(client.metrics, "ejections_total", 1) == {"db": 1}  # destination: the upstream
    gauges = {tuple(labels[3:]): v for labels, v in client.metrics.to_wire()["gauge"]["endpoints"]}
    assert gauges[(V2, "ejected")] == 1 and gauges[(V2, "healthy")] == 1
    assert gauges[(V1, "ejected")] == 0 and gauges[(V1, "healthy")] == 1
    assert ("", "healthy") not in gauges  # the chained upstream itself has no endpoint gauge
    for _ in range(10):
        assert client.get("/", c, x_t="v2")[1] == "v2b"
        assert client.get("/", c)[1] == "v1"
    c.close()
    # A target gone from the snapshot takes its gauges with it
    client.apply(replace(up, routes=(DEFAULT,), targets=(client.targets[V1],)))
    gauges = {tuple(labels[3:]) for labels, _ in client.metrics.to_wire()["gauge"]["endpoints"]}
    assert (V2, "healthy") not in gauges and (V1, "healthy") in gauges


def test_two_upstreams_reaching_one_target_keep_their_own_target_series(client: Client) -> None:
    canary_port = free_ports(1, HOST)[0]
    canary = Upstream("db-canary", HOST, canary_port, protocol="http", routes=(
        ChainRoute(RouteMatch(), split((V2, 10000))),), targets=(client.targets[V2],))
    both = client.upstream(ChainRoute(RouteMatch(headers=(HeaderMatch("x-t", exact="v2"),)), split((V2, 10000))),
                           DEFAULT, targets=(client.targets[V1], client.targets[V2]))
    client.apply(both, canary)

    def gauges() -> dict[tuple[str, ...], int]:
        return {tuple(labels[1:2] + labels[3:]): v for labels, v in client.metrics.to_wire()["gauge"]["endpoints"]}
    assert gauges() == {("db", V1, "healthy"): 1, ("db", V1, "ejected"): 0, ("db", V2, "healthy"): 2,
                        ("db", V2, "ejected"): 0, ("db-canary", V2, "healthy"): 2, ("db-canary", V2, "ejected"): 0}
    c = http.client.HTTPConnection(HOST, canary_port, timeout=20)
    c.request("GET", "/")
    assert GROUP[c.getresponse().getheader("x-app") or ""] == V2
    c.close()
    wait_for(lambda: ("db-canary", V2, "2xx") in {tuple(x[0][1:2] + x[0][3:]) for x in
                                                   client.metrics.to_wire()["counter"]["target_requests_total"]},
             what="the canary's request counted under its own upstream")
    # db stops reaching v2: its series go, the canary's stay
    client.apply(client.upstream(DEFAULT, targets=(client.targets[V1],)), canary)
    assert gauges() == {("db", V1, "healthy"): 1, ("db", V1, "ejected"): 0, ("db-canary", V2, "healthy"): 2,
                        ("db-canary", V2, "ejected"): 0}


def test_a_flat_upstream_turning_into_a_chain_closes_its_idle_connections(client: Client) -> None:
    eps = client.servers.endpoints
    flat = Upstream("db", HOST, client.port, protocol="http", endpoints=(eps["v1"],))
    client.apply(flat)
    assert GROUP[client.get("/")[1]] == V1  # leaves one idle mTLS connection to v1's sidecar in the pool

    def to_v1() -> int:  # open mTLS connections at v1's sidecar
        return sum(n for (d, _), n in client.servers.planes[0].metrics._active.items() if d == "inbound")
    wait_for(lambda: to_v1() >= 1, what="the pooled connection at v1's sidecar")
    client.apply(client.upstream(ChainRoute(RouteMatch(), split((V2, 10000))), targets=(client.targets[V2],)))
    wait_for(lambda: to_v1() == 0, what="the flat upstream's idle connection closed when it became a chain")
    assert GROUP[client.get("/")[1]] == V2


# ---------------------------------------------------------------------- live changes under load


def test_a_snapshot_swap_under_keep_alive_load_changes_the_split_without_failures(client: Client) -> None:
    def canary(weight: int) -> Upstream:
        return client.upstream(ChainRoute(RouteMatch(), split((V1, 10000 - weight), (V2, weight))))

    client.apply(canary(1000))
    phase = [0]
    stop = threading.Event()
    tallies: list[dict[tuple[int, str], int]] = [{} for _ in range(4)]
    problems: list[str] = []

    def run(i: int) -> None:
        c = client.conn()
        c.connect()
        sock = c.sock
        tally = tallies[i]
        try:
            while not stop.is_set():
                p = phase[0]  # read before the request: one that began before the swap counts as before
                status, app, _ = client.get("/", c)
                if status != 200:
                    problems.append(f"{status} {app}")
                elif c.sock is not sock:
                    problems.append("the downstream connection was replaced")
                key = (p, GROUP[app])
                tally[key] = tally.get(key, 0) + 1
        except Exception as exc:  # any failure is the test's finding
            problems.append(repr(exc))
        finally:
            c.close()

    def total(p: int, target: str | None = None) -> int:
        return sum(n for t in tallies for (q, g), n in list(t.items()) if q == p and target in (None, g))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: total(0) >= 700 or problems, timeout=60, what="load before the swap")
        client.apply(canary(5000))
        phase[0] = 1
        wait_for(lambda: total(1) >= 1200 or problems, timeout=60, what="load after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert problems == []
    before, after = total(0, V2) / total(0), total(1, V2) / total(1)
    assert abs(before - 0.10) <= 0.05 and abs(after - 0.50) <= 0.06, (before, after)  # > 4 sigma each
    assert counts(client.metrics, "connections_total", 1) == {"db": 4}  # no downstream connection dropped
