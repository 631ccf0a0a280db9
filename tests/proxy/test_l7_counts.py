"""L7 request counts against what the application served (finding F2: an outbound sidecar counted a few more
2xx than reached the app when wrk closed its connections with requests in flight). Through the real
DataPlane on loopback 127.0.22.0/24: client → web's http upstream listener → mTLS → db's public listener →
a gated application that answers /gate only once the test opens the gate."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import (
    Endpoint,
    HeaderMatch,
    IntentionRule,
    Intentions,
    Permission,
    ProxySnapshot,
    TLSMaterial,
    Upstream,
)

from tests.support.dataplane_harness import Loop
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.22.1"
T = TypeVar("T")
REQUEST = b"GET /%s HTTP/1.1\r\nHost: db\r\n\r\n"




class GatedApp:
    """A keep-alive HTTP/1.1 app: every request is answered 200 (4-byte body); /gate waits for `gate`, /delay
    takes 150 ms.
    `served` counts answers handed to the kernel."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.gate = threading.Event()
        self.served = 0
        self.waiting = 0
        self.lock = threading.Lock()
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
                    if head.startswith(b"GET /delay "):
                        time.sleep(0.15)  # the app is slow (not synchronisation)
                    if head.startswith(b"GET /gate "):
                        with self.lock:
                            self.waiting += 1
                        self.gate.wait(20)
                    with self.lock:
                        self.served += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok!\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.gate.set()
        self.sock.close()


def material(ca: MeshCA, service: str) -> TLSMaterial:
    leaf = ca.leaf(service)
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, (ca.root_pem,), ca.trust_domain, leaf.spiffe_id)


class Mesh:
    """db's sidecar (protocol http, default allow) in front of a GatedApp; web's sidecar with an http upstream."""

    def __init__(self, loop: Loop, ca: MeshCA, intentions: Intentions = Intentions(default_allow=True)) -> None:
        self.loop = loop
        self.app = GatedApp()
        self.bind_port, public_port = free_ports(2, HOST)
        self.server_metrics = ProxyMetrics("db", "dc1")
        self.client_metrics = ProxyMetrics("web", "dc1")
        self.server = loop.call(lambda: DataPlane(loop.reactor, self.server_metrics))
        self.client = loop.call(lambda: DataPlane(loop.reactor, self.client_metrics))
        server = ProxySnapshot(proxy_id="db-sidecar-proxy", service="db", datacenter="dc1", tls=material(ca, "db"),
                               public_address=HOST, public_port=public_port, local_service_address=HOST,
                               local_service_port=self.app.port, protocol="http",
                               intentions=intentions)
        up = Upstream(destination_name="db", local_bind_address=HOST, local_bind_port=self.bind_port,
                      protocol="http", endpoints=(Endpoint(HOST, public_port, service_id="db-0"),))
        client = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                               tls=material(ca, "web"), public_address=HOST, public_port=21000,
                               local_service_port=0, upstreams=(up,))
        assert loop.call(lambda: self.server.apply(server)) == []
        assert loop.call(lambda: self.client.apply(client)) == []

    def requests(self, metrics: ProxyMetrics, direction: str, cls: str | None = None) -> int:
        """requests_total of one direction (and response class), read on the loop."""
        wire = self.loop.call(metrics.to_wire)
        return sum(int(v) for labels, v in wire["counter"]["requests_total"]
                   if labels[3] == direction and (cls is None or labels[4] == cls))

    def active(self, metrics: ProxyMetrics, direction: str) -> int:
        wire = self.loop.call(metrics.to_wire)
        return sum(int(v) for labels, v in wire["gauge"]["connections_active"] if labels[3] == direction)

    def close(self) -> None:
        self.loop.call(self.client.close)
        self.loop.call(self.server.close)
        self.app.close()


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a load generator ending with requests in flight may."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_response(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n\r\nok!\n"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    loop = Loop()
    m = Mesh(loop, MeshCA())
    yield m
    m.close()
    loop.close()


def test_a_response_to_a_client_that_reset_is_counted_once(mesh: Mesh) -> None:
    # The client sends a request, half-closes (the sidecar then stops reading it, waiting to answer) and
    # resets; the answer's write then fails with a reset, which closed the session inside the relay of the
    # response: the request was counted by the close and again by the relay's completion.
    c = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    c.sendall(REQUEST % b"ok")
    assert read_response(c).startswith(b"HTTP/1.1 200")
    c.sendall(REQUEST % b"gate")
    c.shutdown(socket.SHUT_WR)
    wait_for(lambda: mesh.app.waiting == 1, what="the gated request at the app")
    reset(c)
    mesh.app.gate.set()
    wait_for(lambda: mesh.active(mesh.client_metrics, "outbound") == 0, what="the outbound connection closed")
    assert mesh.app.served == 2
    assert mesh.requests(mesh.client_metrics, "outbound") == 2
    assert mesh.requests(mesh.client_metrics, "outbound", "2xx") == 2
    assert mesh.requests(mesh.server_metrics, "inbound", "2xx") == 2


def test_clients_closing_with_requests_in_flight_never_count_more_than_served(mesh: Mesh) -> None:
    # wrk's ending: 8 keep-alive connections each with one request in flight, closed (some reset, some
    # half-closed then reset) while the app holds the answers, then released.
    clients = [socket.create_connection((HOST, mesh.bind_port), timeout=10) for _ in range(8)]
    for c in clients:
        for _ in range(5):
            c.sendall(REQUEST % b"ok")
            read_response(c)
        c.sendall(REQUEST % b"gate")
    wait_for(lambda: mesh.app.waiting == 8, what="eight gated requests at the app")
    for i, c in enumerate(clients):
        if i % 2:
            c.shutdown(socket.SHUT_WR)
        reset(c)
    mesh.app.gate.set()
    wait_for(lambda: mesh.active(mesh.client_metrics, "outbound") == 0, what="every outbound connection closed")
    wait_for(lambda: mesh.app.served == 48, what="every request served")
    outbound_2xx = mesh.requests(mesh.client_metrics, "outbound", "2xx")
    assert mesh.requests(mesh.client_metrics, "outbound") == 48  # each request counted once, 2xx or 499
    assert 40 <= outbound_2xx <= mesh.app.served
    wait_for(lambda: mesh.active(mesh.server_metrics, "inbound") == 0, what="every inbound connection closed")
    assert mesh.requests(mesh.server_metrics, "inbound") == 48
    assert mesh.requests(mesh.server_metrics, "inbound", "2xx") <= mesh.app.served


def test_the_request_timer_follows_each_request_on_a_keep_alive_connection(mesh: Mesh) -> None:
    # One timer per connection re-arms for the current request: requests that each finish in time are
    # served even when together they last longer than the timeout; one that overstays gets its 504.
    snap = mesh.loop.call(lambda: mesh.client.snapshot)
    up = snap.upstreams[0]
    short = replace(snap, upstreams=(replace(up, request_timeout_ms=400),))
    assert mesh.loop.call(lambda: mesh.client.apply(short)) == []
    c = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    t0 = time.monotonic()
    for _ in range(6):
        c.sendall(REQUEST % b"delay")
        assert read_response(c).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - t0 > 0.6  # longer than the timeout in all
    c.sendall(REQUEST % b"gate")
    t1 = time.monotonic()
    answer = c.recv(65536)
    assert answer.startswith(b"HTTP/1.1 504"), answer
    assert 0.3 < time.monotonic() - t1 < 5
    c.close()


def test_an_intention_on_a_header_sees_the_request_headers() -> None:
    # The authorizer gets the headers split lazily (http1.LazyHeaders): a header rule must still see them.
    rule = IntentionRule(source="web", action=None, name="web => db", permissions=(
        Permission(action="deny", headers=(HeaderMatch(name="X-Admin", exact="yes"),)),
        Permission(action="allow", path_prefix="/")))
    loop = Loop()
    mesh = Mesh(loop, MeshCA(), Intentions(default_allow=False, rules=(rule,)))
    try:
        c = socket.create_connection((HOST, mesh.bind_port), timeout=10)
        c.sendall(b"GET /x HTTP/1.1\r\nHost: db\r\nx-other: 1\r\nX-Admin: yes\r\n\r\n")
        answer = c.recv(65536)
        assert answer.startswith(b"HTTP/1.1 403") and b"web => db" in answer, answer
        c.sendall(b"GET /x HTTP/1.1\r\nHost: db\r\nX-Admin: no\r\n\r\n")
        assert read_response(c).startswith(b"HTTP/1.1 200")
        c.close()
        assert mesh.app.served == 1
    finally:
        mesh.close()
        loop.close()
