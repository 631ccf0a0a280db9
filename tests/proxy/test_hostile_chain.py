"""Hostile requests and routes against a compiled chain, through real DataPlanes on 127.0.35.1: a router
matching on one path while the destination's intentions authorize another (dot segments, repeated slashes,
escapes, case, `;` parameters, through a PrefixRewrite), Consul's CaseInsensitive, 10,000 query parameters
and a 60 KB header against query and header-regex routes, and rewrites a target cannot carry."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import (
    ChainRoute,
    ChainTarget,
    Endpoint,
    HeaderMatch,
    IntentionRule,
    Intentions,
    Permission,
    ProxySnapshot,
    QueryMatch,
    RouteMatch,
    Upstream,
    WeightedTarget,
)

from tests.support.dataplane_harness import Loop, material
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports

HOST = "127.0.35.1"
DB, ADMIN = "db.default.default.dc1", "admin.default.default.dc1"


class App:
    """A threaded keep-alive HTTP/1.1 app answering its name (x-app) and the request target it saw (x-path)."""

    def __init__(self, name: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("x-app", name)
                self.send_header("x-path", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mesh:
    """db and admin sidecars (admin's intentions deny /secret to web) and web's sidecar with upstream `db`."""

    def __init__(self, loop: Loop, ca: MeshCA) -> None:
        self.loop, self.ca = loop, ca
        self.apps = {name: App(name) for name in ("db", "admin")}
        ports = free_ports(3, HOST)
        deny = Intentions(default_allow=True, rules=(IntentionRule(
            source="web", action=None, name="web => admin",
            permissions=(Permission("deny", path_prefix="/secret"), Permission("allow", path_prefix="/"))),))
        self.planes, self.endpoints = [], {}
        for (name, app), port in zip(self.apps.items(), ports, strict=False):
            dp = loop.call(lambda name=name: DataPlane(loop.reactor, ProxyMetrics(name, "dc1")))
            snap = ProxySnapshot(proxy_id=f"{name}-sidecar-proxy", service=name, datacenter="dc1",
                                 tls=material(ca, name), public_address=HOST, public_port=port,
                                 local_service_address=HOST, local_service_port=app.port, protocol="http",
                                 intentions=deny if name == "admin" else Intentions())
            assert loop.call(lambda dp=dp, snap=snap: dp.apply(snap)) == []
            self.planes.append(dp)
            self.endpoints[name] = Endpoint(HOST, port)
        self.port = ports[2]
        self.dp = loop.call(lambda: DataPlane(loop.reactor, ProxyMetrics("web", "dc1")))
        self.tls = material(ca, "web")
        self.targets = (ChainTarget(DB, (self.endpoints["db"],), (ca.spiffe_id("db"),)),
                        ChainTarget(ADMIN, (self.endpoints["admin"],), (ca.spiffe_id("admin"),)))

    def apply(self, *routes: ChainRoute) -> list[str]:
        up = Upstream("db", HOST, self.port, protocol="http", routes=(*routes, DEFAULT), targets=self.targets)
        snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1", tls=self.tls,
                             public_address=HOST, public_port=21000, upstreams=(up,))
        snap.check()
        errors: list[str] = self.loop.call(lambda: self.dp.apply(snap))
        return errors

    def get(self, target: str, c: http.client.HTTPConnection | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, x-app or the body, x-path) of one GET sent with `target` exactly as given."""
        own = c is None
        c = c or http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            c.putrequest("GET", target, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                c.putheader(k, v)
            c.endheaders()
            r = c.getresponse()
            body = r.read().decode()
            return r.status, r.getheader("x-app") or body.strip(), r.getheader("x-path") or ""
        finally:
            if own:
                c.close()

    def close(self) -> None:
        for dp in (*self.planes, self.dp):
            self.loop.call(dp.close)
        for app in self.apps.values():
            app.close()


DEFAULT = ChainRoute(RouteMatch(path_prefix="/"), (WeightedTarget(DB, 10000),), name="db default")


def to_admin(match: RouteMatch, rewrite: str | None = "/") -> ChainRoute:
    return ChainRoute(match, (WeightedTarget(ADMIN, 10000),), prefix_rewrite=rewrite, name="admin")


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    loop = Loop()
    m = Mesh(loop, MeshCA())
    yield m
    m.close()
    loop.close()


@pytest.mark.parametrize(("target", "want"), [
    ("/admin/users", (200, "admin", "/users")),
    ("/admin/secret", (403, "", "")),  # admin's intentions see the rewritten /secret
    ("/admin/./secret", (403, "", "")),
    ("/admin//secret", (403, "", "")),
    ("/admin/%73ecret", (403, "", "")),  # an unreserved escape is decoded before both decisions
    ("/./admin/secret", (403, "", "")),
    ("//admin/secret", (403, "", "")),
    ("/x/../admin/secret", (403, "", "")),
    ("/admin/x/../../secret", (200, "db", "/admin/x/../../secret")),  # normalised /secret: not the admin route
    ("/admin%2Fsecret", (400, "", "")),  # an escaped slash is refused, not routed one way and relayed another
    ("/admin/secret;x=1", (403, "", "")),
    ("/admin;x=1/secret", (200, "db", "/admin;x=1/secret")),  # the segment is 'admin;x=1': not the prefix
    ("/ADMIN/secret", (200, "db", "/ADMIN/secret")),  # case-sensitive unless the route says otherwise
    ("/admin/users?a=/../secret", (200, "admin", "/users?a=/../secret")),  # the query is not the path
])
def test_the_route_and_the_destination_intentions_see_one_path(mesh: Mesh, target: str,
                                                               want: tuple[int, str, str]) -> None:
    assert mesh.apply(to_admin(RouteMatch(path_prefix="/admin/"))) == []
    status, app, path = mesh.get(target)
    assert (status, app if status == 200 else "", path) == want


def test_case_insensitive_routes_fold_the_path_and_the_rewrite_keeps_the_rest(mesh: Mesh) -> None:
    # Consul's Match.HTTP.CaseInsensitive was dropped: /ADMIN missed a case-insensitive /admin route
    assert mesh.apply(to_admin(RouteMatch(path_prefix="/Admin/", case_insensitive=True)),
                      to_admin(RouteMatch(path_exact="/LOGIN", case_insensitive=True), "/auth")) == []
    c = http.client.HTTPConnection(HOST, mesh.port, timeout=10)
    assert mesh.get("/ADMIN/Users", c) == (200, "admin", "/Users")
    assert mesh.get("/admin/users", c) == (200, "admin", "/users")
    assert mesh.get("/aDmIn/SECRET", c)[0] == 200  # admin's deny of /secret is case-sensitive, as Envoy's
    assert mesh.get("/aDmIn/secret", c)[0] == 403
    assert mesh.get("/login?next=/", c) == (200, "admin", "/auth?next=/")
    assert mesh.get("/LoGiN", c) == (200, "admin", "/auth")
    assert mesh.get("/login/x", c) == (200, "db", "/login/x")
    c.close()


def test_ten_thousand_query_params_and_a_huge_header_are_cheap(mesh: Mesh) -> None:
    assert mesh.apply(
        ChainRoute(RouteMatch(query=(QueryMatch("zz", exact="1"),)), (WeightedTarget(ADMIN, 10000),)),
        ChainRoute(RouteMatch(headers=(HeaderMatch("x-big", regex="(a|aa)+b"),)), (WeightedTarget(ADMIN, 10000),)),
    ) == []
    c = http.client.HTTPConnection(HOST, mesh.port, timeout=10)
    query = "&".join(f"p{i}=v" for i in range(10000))
    t0 = time.perf_counter()
    assert mesh.get(f"/q?{query[:30000]}&zz=1", c)[1] == "db"  # past the 256 parameters looked at
    assert mesh.get("/q?zz=1&" + query[:30000], c)[1] == "admin"
    assert mesh.get("/h", c, {"x-big": "a" * 60000})[1] == "db"  # RE2: linear, no backtracking blow-up
    assert mesh.get("/h", c, {"x-big": "a" * 60000 + "b"})[1] == "admin"
    assert time.perf_counter() - t0 < 2.0
    c.close()


@pytest.mark.parametrize("rewrite", ["/a b", "/a?b", "/a#b", "/\u00e9", "http://evil/", "*", "", "/%", "/%zz"])
def test_a_rewrite_always_leaves_an_origin_form_target(mesh: Mesh, rewrite: str) -> None:
    assert mesh.apply(to_admin(RouteMatch(path_prefix="/admin/"), rewrite)) == []
    status, app, path = mesh.get("/admin/users?x=1")
    assert status == 200 and app == "admin", (status, app)
    assert path.startswith("/") and " " not in path and "#" not in path and path.endswith("users?x=1")
    assert path.count("?") == 1


def test_a_request_line_with_raw_control_bytes_never_reaches_a_route(mesh: Mesh) -> None:
    assert mesh.apply(to_admin(RouteMatch(path_prefix="/admin/"))) == []
    with socket.create_connection((HOST, mesh.port), timeout=10) as s:
        s.sendall(b"GET /admin/\x00x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


# ---------------------------------------------------------------------- troubleshoot fed a hostile snapshot


class StandInAgent:
    """The two side APIs `troubleshoot upstreams` asks (a chain, health entries), counting requests: every
    target of the chain has 16 failover targets and no instance of its own."""

    def __init__(self, targets: list[str]) -> None:
        nodes = {f"resolver:{t}": {"Type": "resolver", "Resolver": {"Target": t, "Failover": {
            "Targets": [o for o in targets if o != t][:16]}}} for t in targets}
        specs = {t: {"ID": t, "Service": "web", "Subset": {"Filter": f"Service.Meta.v == {t[:4]}"}}
                 for t in targets}
        chain = {"Chain": {"ServiceName": "web", "StartNode": "router:web", "Protocol": "http",
                           "Nodes": nodes, "Targets": specs}}
        self.asked = 0
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall between

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                agent.asked += 1
                body = (json.dumps(chain) if self.path.startswith("/v1/discovery-chain/") else "[]").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.35.2", 0), Handler)
        self.addr = f"http://127.0.35.2:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_troubleshoot_asks_a_bounded_number_of_questions_and_prints_no_escapes(ca: MeshCA) -> None:
    from meshagent.cli.http_client import AgentClient
    from meshagent.cli.troubleshoot_cmd import MAX_SIDE_LOOKUPS, build_report, render_text

    ids = [f"s{i % 8}x{i}.web.default.default.dc1" for i in range(200)]  # 8 distinct subset filters
    agent = StandInAgent(ids)
    try:
        eps = (Endpoint("127.0.35.3", 21000, node="n\x1b]0;pwned\x07", service_id="web-1\x1b[2J"),)
        sid = (ca.spiffe_id("web"),)
        targets = tuple(ChainTarget(t, eps, sid) for t in ids)
        routes = tuple(ChainRoute(RouteMatch(path_prefix=f"/{i}", headers=(HeaderMatch("x", exact="\x1b[31m"),)),
                                  (WeightedTarget(ids[i], 10000),), name=f"r{i}\x1b[2J") for i in range(200))
        ups = tuple(Upstream("web", HOST, 9000 + k, protocol="http", routes=(*routes, ChainRoute(
            RouteMatch(path_prefix="/"), (WeightedTarget(ids[0], 10000),), name="default")), targets=targets)
            for k in range(4))
        snap = ProxySnapshot("front-sidecar-proxy", "front", "dc1", material(ca, "front"), HOST, 21000,
                             upstreams=ups)
        snap.check()
        client = AgentClient(agent.addr)
        report = build_report(client, snap)
        # before: a chain per upstream and 1 + 16 health reads per target (13,604 requests for this snapshot)
        assert agent.asked <= MAX_SIDE_LOOKUPS + 1, agent.asked
        text = click.unstyle("\n".join(render_text(report)))  # the header's own bold style removed
        assert "\x1b" not in text and "\x07" not in text
        assert len(report["Upstreams"]) == 4 and all(len(u["Targets"]) == 200 for u in report["Upstreams"])
    finally:
        agent.close()


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()
