"""L7 (HTTP/1.1) through HA's real DataPlane on loopback (127.0.15.0/24): a plain HTTP client → web's http
upstream listener → mTLS → db's public listener (protocol http) → a threaded HTTP/1.1 application. Intentions
per request, keep-alive and pooling, chunked both ways, breakers, retries, outlier ejection, timeouts."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from meshagent.proxy import l7_common
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics, render_prometheus
from meshagent.proxy.snapshot import (
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
    Retries,
    TLSMaterial,
    Upstream,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dataplane_harness import Loop
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.15.1"
T = TypeVar("T")


# ---------------------------------------------------------------------- harness




class App:
    """A threaded HTTP/1.1 keep-alive application: / , /admin, /slow?ms=N, /status/N, POST /echo (answers
    the body chunked), and `fail` (every answer 500). Counts connections and requests."""

    def __init__(self, name: str, host: str = HOST) -> None:
        app = self
        self.name = name
        self.fail = False
        self.connections = 0
        self.served = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with app.lock:
                    app.connections += 1

            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                with app.lock:  # counted before the answer leaves: a client that has it sees the count
                    app.served += 1
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if app.fail:
                    self._send(500, b"failing\n")
                elif url.path == "/slow":
                    time.sleep(int(parse_qs(url.query).get("ms", ["100"])[0]) / 1000)  # the app is slow
                    self._send(200, f"{app.name} slow\n".encode())
                elif url.path.startswith("/status/"):
                    self._send(int(url.path[8:]), f"{app.name} status\n".encode())
                elif url.path.startswith("/admin"):
                    self._send(200, f"admin {app.name}\n".encode())
                else:
                    self._send(200, f"{app.name}\n".encode(), {"x-path": self.path})

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(app.name) + 1))
                self.end_headers()

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(parts)
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with app.lock:
                    app.served += 1
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 7000):
                    piece = body[i:i + 7000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\nx-trailer: yes\r\n\r\n")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def material(ca: MeshCA, service: str) -> TLSMaterial:
    leaf = ca.leaf(service)
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, (ca.root_pem,), ca.trust_domain, leaf.spiffe_id)


ADMIN_DENIED = Intentions(default_allow=False, rules=(IntentionRule(
    source="web", action=None, name="web => db",
    permissions=(Permission(action="deny", path_prefix="/admin"), Permission(action="allow", path_prefix="/"))),))


class Mesh:
    """N db sidecars (protocol http) each in front of its own App, and web's sidecar with an http upstream."""

    def __init__(self, loop: Loop, ca: MeshCA, n: int = 1, intentions: Intentions = ADMIN_DENIED,
                 **upstream: Any) -> None:
        self.loop = loop
        self.ca = ca
        self.apps = [App(f"db-{i}") for i in range(n)]
        ports = free_ports(n + 1, HOST)
        self.bind_port = ports[0]
        self.servers: list[DataPlane] = []
        self.server_metrics = [ProxyMetrics("db", "dc1") for _ in range(n)]
        self.endpoints = tuple(Endpoint(HOST, p, service_id=f"db-{i}") for i, p in enumerate(ports[1:]))
        for i, app in enumerate(self.apps):
            dp = loop.call(lambda i=i: DataPlane(loop.reactor, self.server_metrics[i]))
            snap = ProxySnapshot(proxy_id=f"db-{i}-sidecar-proxy", service="db", datacenter="dc1",
                                 tls=material(ca, "db"), public_address=HOST, public_port=ports[i + 1],
                                 local_service_address=HOST, local_service_port=app.port, protocol="http",
                                 intentions=intentions)
            assert loop.call(lambda dp=dp, snap=snap: dp.apply(snap)) == []
            self.servers.append(dp)
        self.client_metrics = ProxyMetrics("web", "dc1")
        self.client = loop.call(lambda: DataPlane(loop.reactor, self.client_metrics))
        self.upstream = Upstream(destination_name="db", local_bind_address=HOST, local_bind_port=self.bind_port,
                                 protocol="http", endpoints=self.endpoints, **upstream)
        self.apply_client(self.upstream)

    def apply_client(self, up: Upstream) -> None:
        self.upstream = up
        snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                             tls=material(self.ca, "web"), public_address=HOST, public_port=21000,
                             local_service_port=0, upstreams=(up,))
        assert self.loop.call(lambda: self.client.apply(snap)) == []

    def conn(self, timeout: float = 20.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.bind_port, timeout=timeout)

    def get(self, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes, dict[str, str]]:
        c = conn or self.conn()
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
        finally:
            if conn is None:
                c.close()

    def kill_server(self, i: int) -> None:
        self.loop.call(self.servers[i].close)
        self.apps[i].close()

    def close(self) -> None:
        self.loop.call(self.client.close)
        for dp in self.servers:
            self.loop.call(dp.close)
        for app in self.apps:
            app.close()


def counter(metrics: ProxyMetrics, name: str) -> int:
    return sum(int(v) for _labels, v in metrics.to_wire()["counter"].get(name, []))


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def make_mesh(loop: Loop, ca: MeshCA) -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(n: int = 1, **kw: Any) -> Mesh:
        m = Mesh(loop, ca, n, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


# ---------------------------------------------------------------------- tests


def test_l7_intention_denies_admin_with_403_and_allows_root_on_one_keep_alive_connection(
        make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    c = mesh.conn()
    status, body, headers = mesh.get("/", c)
    assert (status, body) == (200, b"db-0\n")
    status, body, headers = mesh.get("/admin/users", c)
    assert status == 403
    assert headers["x-meshagent-denied-by"] == "web => db"
    for path in ("//admin", "/x/../admin", "/%61dmin"):  # spellings of /admin are /admin
        assert mesh.get(path, c)[0] == 403, path
    assert mesh.get("/a%2fadmin", c)[0] == 400
    status, body, headers = mesh.get("/ok?x=1", c)  # the connection survived every refusal
    assert (status, headers["x-path"]) == (200, "/ok?x=1")
    c.close()
    assert counter(mesh.server_metrics[0], "authorization_denials_total") == 4
    assert mesh.apps[0].served == 2


def test_default_deny_without_intention_names_default(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(intentions=Intentions(default_allow=False))
    status, _, headers = mesh.get("/")
    assert status == 403 and headers["x-meshagent-denied-by"] == "default"


def test_keep_alive_requests_share_one_connection_per_hop(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    c = mesh.conn()
    for i in range(20):
        status, body, _ = mesh.get(f"/n{i}", c)
        assert (status, body) == (200, b"db-0\n")
    c.close()
    for _ in range(5):  # new client connections reuse the pooled upstream and local connections
        assert mesh.get("/")[0] == 200
    assert mesh.apps[0].connections == 1
    assert mesh.apps[0].served == 25


def test_chunked_request_and_chunked_response_with_trailers(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    payload = bytes(range(256)) * 1200  # 300 KiB: beyond the retry buffer, streamed
    c = mesh.conn()

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(payload), 10000):
            yield payload[i:i + 10000]

    c.request("POST", "/echo", body=pieces(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
    assert r.read() == payload
    c.request("POST", "/echo", body=b"small body")  # Content-Length in, chunked out, same connection
    r = c.getresponse()
    assert r.read() == b"small body"
    c.close()
    # bytes as L4 counts them: outbound sent = to the upstream, received = from it
    wait_for(lambda: counter(mesh.client_metrics, "bytes_sent_total") > len(payload), what="bytes counted")
    assert counter(mesh.client_metrics, "bytes_received_total") > len(payload)


def test_pipelined_requests_are_answered_in_order(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
        s.sendall(reqs + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 6
    order = [line for line in data.split(b"\r\n") if line.lower().startswith(b"x-path")]
    assert order == [b"x-path: /p%d" % i for i in range(5)] + [b"x-path: /last"]


def test_hostile_heads_are_refused_and_closed(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    for raw, code in ((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"400"), (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 101 + b"\r\n", b"431"),
                      (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000, b"431")):
        with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 " + code), data[:100]
    assert mesh.apps[0].served == 0


@pytest.mark.slow  # 1.5 s requests by design
def test_circuit_breaker_max_concurrent_requests(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(limits=Limits(max_concurrent_requests=10))

    def one(_: int) -> tuple[int, str | None, float]:
        t0 = time.monotonic()
        status, _, headers = mesh.get("/slow?ms=1500")
        return status, headers.get("x-meshagent-circuit-breaker"), time.monotonic() - t0

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) == 10 and len(refused) == 40, [r for r in results if r[0] != 200 and r[1] is None] or results
    assert all(r[1] == "max_concurrent_requests" for r in refused)
    assert max(r[2] for r in refused) < 1.4  # refused at once, not after the slow ones
    assert counter(mesh.client_metrics, "circuit_breaker_trips_total") == 40


def start_worker(tmp_path: Path, snap: ProxySnapshot) -> subprocess.Popen[bytes]:
    """db's sidecar as its own worker process (so that a kill -9 takes every socket of it down)."""
    path = tmp_path / f"{snap.proxy_id}.json"
    path.write_text(json.dumps(snap.to_wire()))
    proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--snapshot", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        with socket.create_connection((HOST, snap.public_port), timeout=2):
            return True
    wait_for(listening, what="the worker's public listener", fatal=AssertionError)
    return proc


@pytest.mark.slow  # a worker process
def test_retries_hide_a_killed_endpoint(make_mesh: Callable[..., Mesh], ca: MeshCA, tmp_path: Path) -> None:
    mesh = make_mesh(1, retries=Retries(num_retries=2, retry_on_connect_failure=True),
                     load_balancer=LoadBalancer(policy="round_robin"))
    app = App("db-1")
    port = free_ports(1, HOST)[0]
    snap = ProxySnapshot(proxy_id="db-1-sidecar-proxy", service="db", datacenter="dc1", tls=material(ca, "db"),
                         public_address=HOST, public_port=port, local_service_address=HOST,
                         local_service_port=app.port, protocol="http", intentions=ADMIN_DENIED)
    proc = start_worker(tmp_path, snap)
    try:
        mesh.apply_client(replace(mesh.upstream, endpoints=(*mesh.endpoints, Endpoint(HOST, port))))
        conns = [mesh.conn() for _ in range(4)]  # keep-alive clients: pooled connections to both endpoints
        assert {mesh.get("/", c)[1] for c in conns for _ in range(3)} == {b"db-0\n", b"db-1\n"}
        proc.kill()  # kill -9: every connection of db-1's sidecar is reset by the kernel
        proc.wait(10)
        results = [mesh.get("/", conns[i % 4]) for i in range(40)]
        assert [(s, b) for s, b, _ in results] == [(200, b"db-0\n")] * 40
        for c in conns:
            c.close()
        assert counter(mesh.client_metrics, "retries_total") >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        app.close()


def test_without_retries_a_dead_endpoint_is_a_503(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(1)
    mesh.kill_server(0)
    assert mesh.get("/")[0] == 503


def test_local_app_down_is_503_marked_and_retried_elsewhere(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(2, retries=Retries(num_retries=1))
    mesh.apps[1].close()  # db-1's sidecar is up, its application is not
    results = [mesh.get("/") for _ in range(20)]
    assert all(status == 200 and body == b"db-0\n" for status, body, _ in results)
    direct = make_mesh(1)
    direct.apps[0].close()
    status, _, headers = direct.get("/")
    assert status == 503 and headers["x-meshagent-local-connect-failure"] == "1"


def test_retry_on_status_codes(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(2, retries=Retries(num_retries=1, retry_on_status_codes=(500,)))
    mesh.apps[1].fail = True
    results = [mesh.get("/") for _ in range(20)]
    assert all(status == 200 for status, _, _ in results)


def test_outlier_ejection_after_five_consecutive_500s(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(2, passive_health=PassiveHealth(max_failures=5, base_ejection_time_s=30.0,
                                                     max_ejection_percent=50),
                     load_balancer=LoadBalancer(policy="round_robin"))
    mesh.apps[1].fail = True
    codes = [mesh.get("/")[0] for _ in range(40)]
    assert codes.count(500) == 5  # the fifth consecutive 500 ejects db-1
    assert counter(mesh.client_metrics, "ejections_total") == 1
    assert codes[-20:] == [200] * 20


def test_request_timeout_is_504(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(request_timeout_ms=300)
    t0 = time.monotonic()
    status, _, _ = mesh.get("/slow?ms=3000")
    assert status == 504 and time.monotonic() - t0 < 2.5
    assert mesh.get("/")[0] == 200


def test_snapshot_swap_applies_l7_rules_to_the_next_request_on_an_open_connection(
        make_mesh: Callable[..., Mesh], loop: Loop, ca: MeshCA) -> None:
    mesh = make_mesh(intentions=Intentions(default_allow=True))
    c = mesh.conn()
    assert mesh.get("/admin", c)[0] == 200
    dp = mesh.servers[0]
    snap = loop.call(lambda: dp.snapshot)
    assert loop.call(lambda: dp.apply(replace(snap, intentions=ADMIN_DENIED, version=2))) == []
    assert mesh.get("/admin", c)[0] == 403
    assert mesh.get("/", c)[0] == 200
    c.close()
    wait_for(lambda: True)


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, rest) of one Content-Length response read from `sock`."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, first = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(first)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk
        body += chunk
    return head, bytes(body[:length]), bytes(body[length:])


def test_expect_100_continue_and_head_requests_on_one_connection(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        assert buf.startswith(b"HTTP/1.1 100"), buf  # relayed from the application before any body
        s.sendall(b"hello")
        buf = buf.partition(b"\r\n\r\n")[2]
        while not buf.endswith(b"0\r\nx-trailer: yes\r\n\r\n"):
            buf += s.recv(65536)
        assert b"5\r\nhello\r\n" in buf
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 5" in head
        head, body, rest = read_response(s, body + rest)  # HEAD's answer had no body: the next is GET's
        assert head.startswith(b"HTTP/1.1 200") and body == b"db-0\n" and rest == b""


def test_ring_hash_on_a_header_is_sticky(make_mesh: Callable[..., Mesh]) -> None:
    lb = LoadBalancer(policy="ring_hash", hash_policies=(HashPolicy(field="header", field_value="x-user"),))
    mesh = make_mesh(3, load_balancer=lb)
    seen: dict[str, set[bytes]] = {}
    for user in ("ann", "bob", "cid", "dan", "eve", "fay"):
        for _ in range(4):
            c = mesh.conn()
            c.request("GET", "/", headers={"x-user": user})
            seen.setdefault(user, set()).add(c.getresponse().read())
            c.close()
    assert all(len(backends) == 1 for backends in seen.values()), seen
    assert len(set().union(*seen.values())) > 1


@pytest.mark.slow  # rounds of 1 s requests
def test_max_pending_requests_trips_when_no_connection_is_free(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(limits=Limits(max_connections=2, max_pending_requests=3))

    def one(_: int) -> tuple[int, str | None]:
        status, _, headers = mesh.get("/slow?ms=1000")
        return status, headers.get("x-meshagent-circuit-breaker")

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) + len(refused) == 12
    assert 2 <= len(ok) <= 5 and all(r[1] == "max_pending_requests" for r in refused), results
    assert mesh.apps[0].connections <= 2


def test_retry_budget_overflow_is_counted(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh(2, retries=Retries(num_retries=3, retry_on_status_codes=(500,), budget_percent=0.0,
                                        budget_min_concurrent=0))
    mesh.apps[0].fail = mesh.apps[1].fail = True
    assert mesh.get("/")[0] == 500  # no retry allowed by the budget: the 500 is the answer
    assert counter(mesh.client_metrics, "retry_budget_overflows_total") == 1
    assert counter(mesh.client_metrics, "retries_total") == 0


def test_slow_heads_and_idle_connections_are_closed(make_mesh: Callable[..., Mesh],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l7_common, "HEAD_TIMEOUT_S", 0.3)
    monkeypatch.setattr(l7_common, "IDLE_TIMEOUT_S", 0.6)
    monkeypatch.setattr(l7_common, "SWEEP_EVERY_S", 0.1)
    mesh = make_mesh()
    with socket.create_connection((HOST, mesh.bind_port), timeout=10) as slow:
        t0 = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        data = b""
        while chunk := slow.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5
    with socket.create_connection((HOST, mesh.bind_port), timeout=10) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _body, rest = read_response(idle)
        assert head.startswith(b"HTTP/1.1 200") and rest == b""
        t0 = time.monotonic()
        assert idle.recv(65536) == b""  # closed by the proxy once idle past the timeout
        assert 0.4 < time.monotonic() - t0 < 5


class RawApp:
    """An application that answers every request head with fixed bytes (hostile or unusual servers)."""

    def __init__(self, answer: Callable[[bytes], bytes], host: str = HOST) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while chunk := conn.recv(65536):
                buf += chunk
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    conn.sendall(self.answer(head))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def serve_raw(mesh: Mesh, loop: Loop, answer: Callable[[bytes], bytes]) -> RawApp:
    app = RawApp(answer)
    dp = mesh.servers[0]
    snap = loop.call(lambda: dp.snapshot)
    assert loop.call(lambda: dp.apply(replace(snap, local_service_port=app.port))) == []
    return app


def test_ambiguous_or_broken_responses_are_502(make_mesh: Callable[..., Mesh], loop: Loop) -> None:
    mesh = make_mesh()
    answers = {b"/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
               b"/bad-line": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
               b"/fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
               b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
    app = serve_raw(mesh, loop, lambda head: answers[head.split(b" ")[1]])
    try:
        c = mesh.conn()
        for path in ("/cl-te", "/bad-line", "/fold"):
            status, _, _ = mesh.get(path, c)
            assert status == 502, path
        assert mesh.get("/ok", c)[:2] == (200, b"ok")
        c.close()
    finally:
        app.close()


def test_upgrade_101_becomes_a_byte_tunnel(make_mesh: Callable[..., Mesh], loop: Loop) -> None:
    mesh = make_mesh()
    sock = socket.create_server((HOST, 0))

    def serve() -> None:
        conn, _ = sock.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        while data := conn.recv(65536):
            conn.sendall(data.upper())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    dp = mesh.servers[0]
    snap = loop.call(lambda: dp.snapshot)
    assert loop.call(lambda: dp.apply(replace(snap, local_service_port=sock.getsockname()[1]))) == []
    try:
        with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            assert buf.startswith(b"HTTP/1.1 101")
            s.sendall(b"not http at all\r\n\r\n")
            got = buf.partition(b"\r\n\r\n")[2]
            while len(got) < 19:
                got += s.recv(65536)
            assert got == b"NOT HTTP AT ALL\r\n\r\n"
    finally:
        sock.close()


def test_a_denied_request_with_a_body_keeps_the_connection(make_mesh: Callable[..., Mesh]) -> None:
    mesh = make_mesh()
    with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
        body = b"x" * 100_000
        s.sendall(b"POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                  + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, rest = read_response(s)
        assert head.startswith(b"HTTP/1.1 403") and b"x-meshagent-denied-by: web => db" in head
        head, got, rest = read_response(s, rest)
        assert head.startswith(b"HTTP/1.1 200") and got == b"db-0\n"
    assert mesh.apps[0].served == 1


def test_access_log_lines_carry_code_path_and_flags(make_mesh: Callable[..., Mesh], loop: Loop,
                                                    tmp_path: Path) -> None:
    from meshagent.proxy import access_log
    from meshagent.proxy.snapshot import AccessLog
    mesh = make_mesh()
    path = tmp_path / "access.log"
    dp = mesh.servers[0]
    snap = loop.call(lambda: dp.snapshot)
    cfg = AccessLog(enabled=True, path=str(path))
    assert loop.call(lambda: dp.apply(replace(snap, access_log=cfg))) == []
    assert loop.call(lambda: access_log.configure(cfg)) == []  # the worker opens it when it applies a snapshot
    try:
        c = mesh.conn()
        assert mesh.get("/", c)[0] == 200
        assert mesh.get("/admin", c)[0] == 403
        c.close()
        loop.call(access_log.flush_all)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(e["code"], e["path"], e["flags"], e["source"], e["direction"]) for e in lines] == [
            (200, "/", "", "web", "inbound"), (403, "/admin", "DENY", "web", "inbound")]
        assert lines[0]["upstream_host"] == f"{HOST}:{mesh.apps[0].port}"
    finally:
        loop.call(access_log.close_all)


def test_32mb_responses_stream_through_one_keep_alive_connection(make_mesh: Callable[..., Mesh], loop: Loop) -> None:
    mesh = make_mesh()
    size = 32 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB

    def answer(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + block * (size // len(block))

    app = serve_raw(mesh, loop, answer)
    try:
        with socket.create_connection((HOST, mesh.bind_port), timeout=30) as s:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body, rest = read_response(s)
            assert head.startswith(b"HTTP/1.1 200") and len(body) == size and body[:1024] == block[:1024]
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, body, rest = read_response(s, rest)
            assert len(body) == size and rest == b"" and s.recv(10) == b""
    finally:
        app.close()


def test_mutated_requests_never_break_the_loop(make_mesh: Callable[..., Mesh], loop: Loop) -> None:
    import random
    rng = random.Random(1405)
    mesh = make_mesh()
    seeds = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
             b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
             b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
             b"GET /admin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]
    for _ in range(150):
        data = bytearray(rng.choice(seeds) * rng.randint(1, 3))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            at = rng.randrange(len(data))
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.7:
                data[at:at] = rng.choice([b"\r\n", b"\n", b" ", b":", b"0", b"chunked", b"\x00", b"9" * 20])
            else:
                del data[at:at + rng.randint(1, 8)]
        with socket.create_connection((HOST, mesh.bind_port), timeout=20) as s:
            s.sendall(bytes(data))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    assert loop.call(lambda: loop.reactor.errors) == 0
    assert mesh.get("/")[:2] == (200, b"db-0\n")


def test_hostile_client_sidecar_over_mtls_gets_answers_not_crashes(make_mesh: Callable[..., Mesh], loop: Loop,
                                                                   ca: MeshCA, tmp_path: Path) -> None:
    import ssl
    mesh = make_mesh()
    leaf = ca.leaf("web")
    (tmp_path / "web.pem").write_text(leaf.cert_pem)
    (tmp_path / "web.key").write_text(leaf.key_pem)
    ctx = ssl.create_default_context(cadata=ca.root_pem)
    ctx.check_hostname = False
    ctx.load_cert_chain(tmp_path / "web.pem", tmp_path / "web.key")
    cases = {b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n": b"HTTP/1.1 403",
             b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n": b"HTTP/1.1 400",
             b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n": b"HTTP/1.1 431",
             b"GET /%2fadmin HTTP/1.1\r\nHost: x\r\n\r\n": b"HTTP/1.1 400",
             b"\x16\x03\x01garbage\r\n\r\n": b"HTTP/1.1 400"}
    for raw, expected in cases.items():
        with socket.create_connection((HOST, mesh.endpoints[0].port), timeout=20) as plain, \
                ctx.wrap_socket(plain) as s:
            s.sendall(raw)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
                    if b"\r\n\r\n" in data:  # the answer's head is enough (some keep the connection)
                        break
            except (ssl.SSLError, ConnectionResetError):
                pass
            assert data.startswith(expected), (raw[:40], data[:80])
    assert loop.call(lambda: loop.reactor.errors) == 0
    assert mesh.apps[0].served == 0


def test_a_pooled_connection_the_server_dropped_is_redialled_for_free(make_mesh: Callable[..., Mesh],
                                                                       loop: Loop) -> None:
    """The app answers one request per connection and closes on the next one without answering (a keep-alive
    timeout racing a new request): every request still gets its 200 with no retries configured."""
    mesh = make_mesh()
    sock = socket.create_server((HOST, 0))
    accepted = []

    def one(conn: socket.socket) -> None:
        buf = b""
        answered = False
        with conn:
            while chunk := conn.recv(65536):
                buf += chunk
                if b"\r\n\r\n" in buf:
                    if answered:
                        return  # close without a byte of answer
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    answered = True
                    buf = buf.partition(b"\r\n\r\n")[2]

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    dp = mesh.servers[0]
    snap = loop.call(lambda: dp.snapshot)
    assert loop.call(lambda: dp.apply(replace(snap, local_service_port=sock.getsockname()[1]))) == []
    try:
        c = mesh.conn()
        assert [mesh.get("/", c)[:2] for _ in range(6)] == [(200, b"ok")] * 6
        c.close()
        assert len(accepted) >= 6  # a new local connection per request: the stale ones were re-dialled
        assert counter(mesh.client_metrics, "retries_total") == 0
    finally:
        sock.close()


def test_header_rules_are_checked_on_every_request_of_a_connection(make_mesh: Callable[..., Mesh]) -> None:
    # The inbound side remembers verdicts by (method, target) per connection only when no rule read a header:
    # the same target with and without the header must keep getting different answers.
    by_header = Intentions(default_allow=False, rules=(IntentionRule(
        source="web", action=None, name="web => db", permissions=(
            Permission(action="allow", path_prefix="/admin", headers=(HeaderMatch(name="x-role", exact="ops"),)),
            Permission(action="allow", path_prefix="/ok"))),))
    mesh = make_mesh(intentions=by_header)
    c = mesh.conn()
    for _ in range(2):
        for role, want in (("ops", 200), (None, 403), ("dev", 403), ("ops", 200)):
            c.request("GET", "/admin", headers={"x-role": role} if role else {})
            r = c.getresponse()
            r.read()
            assert r.status == want, role
        assert mesh.get("/ok", c)[0] == 200
        assert mesh.get("/other", c)[0] == 403
    c.close()
    assert counter(mesh.server_metrics[0], "authorization_denials_total") == 6


def test_a_tls_swap_retires_pooled_upstream_connections(make_mesh: Callable[..., Mesh], loop: Loop,
                                                        ca: MeshCA) -> None:
    # A pooled connection was verified under the rules of its day (roots, the destination's identity): after a
    # new leaf or root bundle, the next request must go over a connection verified under the new ones.
    mesh = make_mesh()
    c = mesh.conn()
    assert mesh.get("/", c)[0] == 200
    assert mesh.get("/", c)[0] == 200
    accepted = lambda: loop.call(lambda: counter(mesh.server_metrics[0], "connections_total"))  # noqa: E731
    before = accepted()
    snap = loop.call(lambda: mesh.client.snapshot)
    assert loop.call(lambda: mesh.client.apply(replace(snap, tls=material(ca, "web"), version=2))) == []
    assert mesh.get("/", c)[0] == 200
    assert accepted() == before + 1


def test_inbound_request_series_name_the_calling_service(make_mesh: Callable[..., Mesh], loop: Loop) -> None:
    mesh = make_mesh()
    assert mesh.get("/")[0] == 200
    text = loop.call(lambda: render_prometheus(mesh.server_metrics[0].to_wire()))
    inbound = [s for f in text_string_to_metric_families(text) if f.name == "meshagent_proxy_requests"
               for s in f.samples if s.labels.get("direction") == "inbound"]
    assert [(s.labels["source"], s.labels["destination"], s.value) for s in inbound] == [("web", "db", 1.0)]
