"""L7 behaviour behind the red-team findings 6, 7, 9, 10 and 14 (/work/notes/h14-H-findings.md), through a real
DataPlane in a reactor thread, a raw local app and mTLS clients (127.0.24.0/24): no protocol switch but
websocket, the local app's connection breaker, interim answers bounded, refused bodies not drained without
bound, stalled requests timed out.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from meshagent.proxy import l7_common
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.resilience import CircuitBreakers
from meshagent.proxy.snapshot import IntentionRule, Intentions, Limits, Permission

from tests.support.dataplane_harness import Loop, ThreadedServer, client_ctx, server_snapshot
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.24.2"
ADMIN_DENIED = Intentions(default_allow=False, rules=(IntentionRule(
    source="web", action=None, name="web => db",
    permissions=(Permission(action="deny", path_prefix="/admin"), Permission(action="allow", path_prefix="/"))),))
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class App(ThreadedServer):
    """A raw local app: records the bytes of each connection, answers each head with `answer(head)` (None: no
    answer), Content-Length request bodies only."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.open = 0
        self.answer: Callable[[bytes], bytes | None] = lambda head: OK
        self.lock = threading.Lock()
        super().__init__(HOST)

    def handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
        buf = b""
        try:
            while data := conn.recv(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    with self.lock:
                        self.heads.append(head + b"\r\n\r\n")
                    answer = self.answer(head)
                    if answer is not None:
                        conn.sendall(answer)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()


class Sidecar:
    """db's L7 sidecar (/admin denied to web) in a reactor thread, in front of an App."""

    def __init__(self, ca: MeshCA, tmp: Path) -> None:
        self.loop = Loop()
        self.reactor = self.loop.reactor
        self.call = self.loop.call
        self.app = App()
        self.port = free_ports(1, HOST)[0]
        self.metrics = ProxyMetrics("db", "dc1")
        snap = server_snapshot(ca, HOST, self.port, self.app.port, protocol="http", intentions=ADMIN_DENIED,
                               local_connect_timeout_ms=2000)
        self.dp = self.call(lambda: DataPlane(self.reactor, self.metrics))
        assert self.call(lambda: self.dp.apply(snap)) == []
        web = ca.leaf("web")
        self.ctx = client_ctx(ca, tmp / "web", web.cert_pem, web.key_pem)

    def conn(self, timeout: float = 10.0) -> ssl.SSLSocket:
        return self.ctx.wrap_socket(socket.create_connection((HOST, self.port), timeout=timeout))

    def close(self) -> None:
        self.call(self.dp.close)
        self.app.close()
        self.loop.close()
        assert self.reactor.errors == 0, "a callback raised in the data plane"


def read_until_closed(s: ssl.SSLSocket) -> bytes:
    """Everything the proxy sends until it ends the connection (a timeout fails the test)."""
    out = b""
    try:
        while data := s.recv(65536):
            out += data
    except (ConnectionResetError, ssl.SSLEOFError):
        pass
    return out


def read_head(s: ssl.SSLSocket, buf: bytes = b"") -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        assert data, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def sidecar(ca: MeshCA, tmp_path: Path) -> Iterator[Sidecar]:
    sc = Sidecar(ca, tmp_path)
    yield sc
    sc.close()


# ---------------------------------------------------------------------- finding 6: protocol switches


def test_an_h2c_upgrade_reaches_the_app_as_a_plain_request_and_a_101_to_it_is_a_502(sidecar: Sidecar) -> None:
    sidecar.app.answer = lambda head: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with sidecar.conn() as s:
        s.sendall(b"GET /public HTTP/1.1\r\nHost: db\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                  b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        head, _ = read_head(s)
        assert head.startswith(b"HTTP/1.1 502"), head
    assert sidecar.app.heads == [b"GET /public HTTP/1.1\r\nHost: db\r\n\r\n"]


# ---------------------------------------------------------------------- finding 9: the local app's breaker


def test_l7_connections_to_the_local_app_are_bounded_by_the_local_breaker(sidecar: Sidecar) -> None:
    sidecar.call(lambda: setattr(sidecar.dp, "local_breakers", CircuitBreakers(Limits(max_connections=2))))
    release = threading.Event()
    sidecar.app.answer = lambda head: OK if release.wait(20) else None
    hanging = [sidecar.conn() for _ in range(2)]
    try:
        for s in hanging:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: db\r\n\r\n")
        wait_for(lambda: len(sidecar.app.heads) == 2, what="two requests at the app")
        with sidecar.conn() as s:
            s.sendall(b"GET /third HTTP/1.1\r\nHost: db\r\n\r\n")
            head, _ = read_head(s)
        assert head.startswith(b"HTTP/1.1 503") and b"x-meshagent-circuit-breaker: max_connections" in head, head
        trips = sidecar.metrics.to_wire()["counter"].get("circuit_breaker_trips_total", [])
        assert sum(v for _labels, v in trips) == 1, trips
    finally:
        for s in hanging:
            s.close()
    # the hung requests' connections were closed with their clients: their slots are free again (had they
    # been answered, they would hold them in the pool)
    wait_for(lambda: sidecar.call(lambda: sidecar.dp.local_breakers.connections) == 0, what="slots released")
    release.set()
    with sidecar.conn() as s:
        s.sendall(b"GET /after HTTP/1.1\r\nHost: db\r\n\r\n")
        assert read_head(s)[0].startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------- finding 10: interim answers


def test_one_100_continue_is_relayed_other_interim_answers_dropped_and_a_flood_is_a_502(sidecar: Sidecar) -> None:
    sidecar.app.answer = lambda head: (b"HTTP/1.1 100 Continue\r\n\r\n" * 2 + b"HTTP/1.1 103 Early Hints\r\n\r\n"
                                       + OK) if b"/few" in head else b"HTTP/1.1 100 Continue\r\n\r\n" * 50
    with sidecar.conn() as s:
        s.sendall(b"GET /few HTTP/1.1\r\nHost: db\r\n\r\n")
        head, rest = read_head(s)
        assert head == b"HTTP/1.1 100 Continue"
        head, rest = read_head(s, rest)
        assert head.startswith(b"HTTP/1.1 200") and rest.startswith(b"ok\n"), (head, rest)
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: db\r\n\r\n")
        head, rest = read_head(s, rest[3:])
        assert head == b"HTTP/1.1 100 Continue"
        head, rest = read_head(s, rest)
        assert head.startswith(b"HTTP/1.1 502"), head


# ---------------------------------------------------------------------- finding 14: refused bodies


def test_a_denied_chunked_body_is_not_drained_the_connection_closes(sidecar: Sidecar) -> None:
    with sidecar.conn() as s:
        s.sendall(b"POST /admin HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        got = read_until_closed(s)  # the proxy ends it although the body never ended
    assert got.startswith(b"HTTP/1.1 403") and b"connection: close" in got, got
    assert sidecar.app.heads == []


def test_a_denied_long_body_closes_and_a_short_one_keeps_the_connection(sidecar: Sidecar) -> None:
    with sidecar.conn() as s:
        s.sendall(b"POST /admin HTTP/1.1\r\nHost: db\r\nContent-Length: %d\r\n\r\nabc" % (l7_common.DRAIN_MAX + 4))
        got = read_until_closed(s)
    assert got.startswith(b"HTTP/1.1 403") and b"connection: close" in got, got
    with sidecar.conn() as s:
        s.sendall(b"POST /admin HTTP/1.1\r\nHost: db\r\nContent-Length: 1000\r\n\r\nabc")
        head, _ = read_head(s)
        assert head.startswith(b"HTTP/1.1 403") and b"connection: close" not in head
        s.sendall(b"x" * 997 + b"GET /public HTTP/1.1\r\nHost: db\r\n\r\n")
        assert read_head(s)[0].startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------- finding 7: stalled requests


@pytest.fixture
def quick_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l7_common, "SWEEP_EVERY_S", 0.1)
    monkeypatch.setattr(l7_common, "BODY_IDLE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(l7_common, "STREAM_IDLE_TIMEOUT_S", 1.0)


def test_a_request_body_that_stops_gets_408_and_the_connection_closes(quick_sweep: None, sidecar: Sidecar) -> None:
    sidecar.app.answer = lambda head: None  # it waits for the body
    with sidecar.conn() as s:
        s.sendall(b"POST /public HTTP/1.1\r\nHost: db\r\nContent-Length: 10\r\n\r\nabc")
        got = read_until_closed(s)
    assert got.startswith(b"HTTP/1.1 408"), got
    assert sidecar.call(lambda: sidecar.dp.local_breakers.connections) == 0


def test_a_body_that_keeps_moving_is_not_cut(quick_sweep: None, sidecar: Sidecar) -> None:
    with sidecar.conn() as s:
        s.sendall(b"POST /public HTTP/1.1\r\nHost: db\r\nContent-Length: 20\r\n\r\n")
        pace = threading.Event()
        for _ in range(20):  # 2 s in all, 4 times the idle timeout, a byte each 0.1 s
            s.sendall(b"x")
            pace.wait(0.1)  # the client's pace, not a synchronisation
        assert read_head(s)[0].startswith(b"HTTP/1.1 200")


def test_a_request_with_no_byte_either_way_is_ended(quick_sweep: None, sidecar: Sidecar) -> None:
    sidecar.app.answer = lambda head: None
    with sidecar.conn() as s:
        s.sendall(b"GET /public HTTP/1.1\r\nHost: db\r\n\r\n")
        got = read_until_closed(s)
    assert got.startswith(b"HTTP/1.1 504"), got
