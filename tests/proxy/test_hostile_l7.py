"""Red team of the L7 (http) public listener (127.0.21.0/24): request smuggling shapes, oversized heads, path
tricks against an L7 deny on /admin, pipelining and endless bodies against a slow app, and a local app that
answers with broken framing. A legitimate client is served at the same time. Findings:
/work/notes/h14-H-findings.md.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from meshagent.proxy import l7_common
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import IntentionRule, Intentions, Permission, ProxySnapshot, TLSMaterial

from tests.support.dataplane_harness import Loop
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.21.2"
T = TypeVar("T")
ADMIN_DENIED = Intentions(default_allow=False, rules=(IntentionRule(
    source="web", action=None, name="web => db",
    permissions=(Permission(action="deny", path_prefix="/admin"), Permission(action="allow", path_prefix="/"))),))


# ---------------------------------------------------------------------- harness




_HEAD_END = re.compile(rb"\r\n\r\n")


class RawApp:
    """A raw HTTP/1.1 application that records every request head it parses (Content-Length framing only,
    Transfer-Encoding ignored: the backend a desync would fool) and answers each with `answer(head)`."""

    def __init__(self, host: str = HOST) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.accepted = 0
        self.raw = bytearray()
        self.read = threading.Event()  # cleared: the app does not read (a slow app)
        self.read.set()
        self.answer: Callable[[bytes], bytes] = lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def targets(self) -> list[bytes]:
        with self.lock:
            return [parts[1] if len(parts) > 1 else h for h in self.heads if (parts := h.split(b" ", 2))]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                self.read.wait()
                data = conn.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.raw += data[:1 << 20] if len(self.raw) < 1 << 24 else b""
                buf += data
                while (m := _HEAD_END.search(buf)) is not None:
                    head, buf = buf[:m.end()], buf[m.end():]
                    cl = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
                    need = int(cl.group(1)) if cl else 0
                    while len(buf) < need:
                        more = conn.recv(65536)
                        if not more:
                            return
                        buf += more
                    buf = buf[need:]
                    with self.lock:
                        self.heads.append(head)
                    conn.sendall(self.answer(head))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def material(ca: MeshCA, service: str) -> TLSMaterial:
    leaf = ca.leaf(service)
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, (ca.root_pem,), ca.trust_domain, leaf.spiffe_id)


def snapshot(ca: MeshCA, public_port: int, app_port: int) -> ProxySnapshot:
    return ProxySnapshot(proxy_id="db-sidecar-proxy", service="db", datacenter="dc1", tls=material(ca, "db"),
                         public_address=HOST, public_port=public_port, local_service_address=HOST,
                         local_service_port=app_port, protocol="http", intentions=ADMIN_DENIED,
                         local_connect_timeout_ms=2000)


def web_ctx(ca: MeshCA, tmp: Path) -> ssl.SSLContext:
    leaf = ca.leaf("web")
    cert, key = leaf.write(tmp / "web")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.root_pem)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class _Unclosable:
    """A reader HTTPResponse may "close" without closing it (the next response comes from it)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        return None


class Conn:
    """One mTLS connection from web to db's public listener, speaking raw bytes."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        raw = socket.create_connection((HOST, port), timeout=timeout)
        self.tls = ctx.wrap_socket(raw)
        self.file = self.tls.makefile("rb")

    def send(self, data: bytes) -> bool:
        """Send; False when the proxy closed on us first."""
        try:
            self.tls.sendall(data)
            return True
        except OSError:
            return False

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """The next response: status, lowercase headers, body."""
        resp = http.client.HTTPResponse(self.tls, method=method)
        resp.fp = _Unclosable(self.file)  # keep one buffered reader across pipelined responses
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def closed_by_peer(self) -> bool:
        """Whether the proxy ended the connection (EOF or reset) within the socket timeout."""
        try:
            return self.file.read(1) == b""
        except (OSError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.file.close()
        self.tls.close()


def get(port: int, ctx: ssl.SSLContext, target: str) -> tuple[int, dict[str, str], bytes]:
    c = Conn(port, ctx)
    try:
        c.send(f"GET {target} HTTP/1.1\r\nHost: db\r\n\r\n".encode())
        return c.response()
    finally:
        c.close()


class Legit:
    """A well-behaved client doing keep-alive GETs on one connection while an attack runs."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            c = Conn(self.port, self.ctx, timeout=20)
            while not self._stop.is_set():
                c.send(b"GET /legit HTTP/1.1\r\nHost: db\r\n\r\n")
                status, _h, body = c.response()
                if status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{status} {body!r}")
            c.close()
        except Exception as exc:  # the test reads this list
            self.failed.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def counts(metrics: ProxyMetrics, name: str, index: int = -1) -> dict[str, int]:
    out: dict[str, int] = {}
    for labels, v in metrics.to_wire()["counter"].get(name, []):
        out[labels[index]] = out.get(labels[index], 0) + int(v)
    return out


class Sidecar:
    """db's sidecar (protocol http, /admin denied to web) in front of a RawApp, in-process."""

    def __init__(self, loop: Loop, ca: MeshCA, tmp: Path) -> None:
        self.loop = loop
        self.app = RawApp()
        self.port = free_ports(1, HOST)[0]
        self.metrics = ProxyMetrics("db", "dc1")
        self.dp = loop.call(lambda: DataPlane(loop.reactor, self.metrics))
        assert loop.call(lambda: self.dp.apply(snapshot(ca, self.port, self.app.port))) == []
        self.ctx = web_ctx(ca, tmp)

    def close(self) -> None:
        self.loop.call(self.dp.close)
        self.app.close()


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def sidecar(ca: MeshCA, tmp_path: Path) -> Iterator[Sidecar]:
    loop = Loop()
    sc = Sidecar(loop, ca, tmp_path)
    yield sc
    sc.close()
    errors = loop.reactor.errors
    loop.close()
    assert errors == 0, "a callback raised in the data plane"


@pytest.fixture
def legit(sidecar: Sidecar) -> Iterator[Legit]:
    lg = Legit(sidecar.port, sidecar.ctx)
    wait_for(lambda: lg.ok >= 1 or lg.failed, what="the legitimate client started")
    yield lg
    start = lg.ok
    wait_for(lambda: lg.ok > start + 2 or lg.failed, what="the legitimate client still served after the attack")
    lg.stop()
    assert lg.failed == []


# ---------------------------------------------------------------------- smuggling shapes

SMUGGLE = b"GET /admin HTTP/1.1\r\nHost: db\r\n\r\n"
SHAPES: dict[str, bytes] = {
    "CL+TE": b"POST /x HTTP/1.1\r\nHost: db\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
             + SMUGGLE,
    "TE+CL": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"
             + SMUGGLE,
    "two CLs": b"POST /x HTTP/1.1\r\nHost: db\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\n" + SMUGGLE,
    "CL list": b"POST /x HTTP/1.1\r\nHost: db\r\nContent-Length: 0, 34\r\n\r\n" + SMUGGLE,
    "CL sign": b"POST /x HTTP/1.1\r\nHost: db\r\nContent-Length: +34\r\n\r\n" + SMUGGLE,
    "CL hex": b"POST /x HTTP/1.1\r\nHost: db\r\nContent-Length: 0x22\r\n\r\n" + SMUGGLE,
    "TE chunked,identity": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
                           + SMUGGLE,
    "TE xchunked": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "TE twice": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
                b"0\r\n\r\n" + SMUGGLE,
    "space before colon": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "obs-fold": b"POST /x HTTP/1.1\r\nHost: db\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "obs-fold TE": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
    "bare LF head": b"GET /x HTTP/1.1\nHost: db\n\n" + SMUGGLE,
    "bare LF in field": b"GET /x HTTP/1.1\r\nHost: db\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n" + SMUGGLE,
    "bare CR": b"GET /x HTTP/1.1\r\nHost: db\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n" + SMUGGLE,
    "NUL in value": b"GET /x HTTP/1.1\r\nHost: db\r\nX-A: a\x00b\r\n\r\n" + SMUGGLE,
    "two Hosts": b"GET /x HTTP/1.1\r\nHost: db\r\nHost: admin\r\n\r\n" + SMUGGLE,
    "no Host": b"GET /x HTTP/1.1\r\n\r\n" + SMUGGLE,
    "double space": b"GET  /x HTTP/1.1\r\nHost: db\r\n\r\n" + SMUGGLE,
    "HTTP/1.2": b"GET /x HTTP/1.2\r\nHost: db\r\n\r\n" + SMUGGLE,
}
# body-level shapes: the head may already be with the app; the rest must never reach it
BODY_SHAPES: dict[str, bytes] = {
    "chunk size overflow": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"1" + b"0" * 16 + b"\r\n" + SMUGGLE,
    "chunk size 2^64+4": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"10000000000000004\r\nabcd\r\n0\r\n\r\n" + SMUGGLE,
    "negative chunk": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n-4\r\n" + SMUGGLE,
    "bare LF chunk line": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n"
                          + SMUGGLE,
    "chunk without CRLF": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcdXX0\r\n\r\n"
                          + SMUGGLE,
    "huge chunk extension": b"POST /x HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n4;" + b"e" * 70000
                            + b"\r\nabcd\r\n0\r\n\r\n" + SMUGGLE,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_smuggling_heads_are_refused_before_the_app_sees_anything(sidecar: Sidecar, legit: Legit,
                                                                  shape: str) -> None:
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(SHAPES[shape])
        status, _headers, _body = c.response("POST")
        assert status in (400, 501, 505), (shape, status)
        assert c.closed_by_peer(), f"{shape}: the connection must end after a refused head"
    finally:
        c.close()
    assert all(t == b"/legit" for t in sidecar.app.targets()), sidecar.app.targets()


def test_transfer_encoding_in_an_http10_request_is_refused(sidecar: Sidecar) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated as faulty framing. Relayed,
    an HTTP/1.0 backend that does not do chunked (and skips the junk size line) reads the chunk as the next
    request: /admin, never authorized."""
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        inner = b"GET /admin HTTP/1.1\r\nHost: db\r\n\r\n"
        c.send(b"POST /x HTTP/1.0\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(inner) + inner
               + b"\r\n0\r\n\r\n")
        status, _h, _b = c.response("POST")
    finally:
        c.close()
    assert status == 400, (status, sidecar.app.targets())


@pytest.mark.parametrize("shape", list(BODY_SHAPES))
def test_broken_chunked_bodies_end_the_request_and_nothing_after_them_reaches_the_app(
        sidecar: Sidecar, legit: Legit, shape: str) -> None:
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(BODY_SHAPES[shape])
        try:
            status, _h, _b = c.response("POST")
            assert status in (400, 413, 502), (shape, status)
        except (http.client.HTTPException, OSError):
            pass  # closed without an answer: acceptable once the head was relayed
        assert c.closed_by_peer(), shape
    finally:
        c.close()
    with sidecar.app.lock:
        assert b"/admin" not in sidecar.app.raw, shape
    assert b"/admin" not in b" ".join(sidecar.app.targets())


def _send_while_reading(tls: ssl.SSLSocket, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send `data` while reading the answer, on one thread, as curl does (an OpenSSL connection must not be
    used by a sending and a reading thread at once: that raced and lost the answer on a loaded machine);
    sending stops once answer bytes arrive. Returns (what was read, whether the peer ended the connection)."""
    tls.setblocking(False)
    rest, got = memoryview(data), bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sending = bool(rest) and not got
        readable, writable, _ = select.select([tls], [tls] if sending else [], [], 0.05)
        if readable or tls.pending():
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                chunk = None
            except (OSError, ssl.SSLError):
                return bytes(got), True  # reset after (or instead of) the answer: the check on `got` decides
            if chunk == b"":
                return bytes(got), True
            if chunk:
                got += chunk
        if writable and rest:
            try:
                rest = rest[tls.send(rest[:65536]):]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError):
                rest = rest[:0]  # the proxy stopped reading: keep reading its answer
    return bytes(got), False


def test_a_10mb_header_and_10000_headers_get_431_in_bounded_time(sidecar: Sidecar, legit: Legit) -> None:
    for name, head in {
        "10 MB header": b"GET /x HTTP/1.1\r\nHost: db\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n",
        "10,000 headers": b"GET /x HTTP/1.1\r\nHost: db\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10000))
                          + b"\r\n",
        "10 MB request line": b"GET /" + b"a" * (10 << 20) + b" HTTP/1.1\r\nHost: db\r\n\r\n",
    }.items():
        t0 = time.monotonic()
        c = Conn(sidecar.port, sidecar.ctx, timeout=10)
        try:
            answer, closed = _send_while_reading(c.tls, head, 15.0)
            assert answer[:12] in (b"HTTP/1.1 414", b"HTTP/1.1 431"), (name, answer[:200])
            assert closed, name
        finally:
            c.close()
        assert time.monotonic() - t0 < 20, name  # generous: bounded, not fast (timing is the benchmark's)
    assert all(t == b"/legit" for t in sidecar.app.targets())
    classes = counts(sidecar.metrics, "requests_total")
    assert classes.get("4xx", 0) >= 3, sidecar.metrics.to_wire()["counter"].get("requests_total")


# ---------------------------------------------------------------------- paths against the /admin deny

DENIED_TARGETS = ["/admin", "/admin/", "/admin?x=1", "/adminx", "/%61dmin", "/%61%64%6D%69%6E",
                  "//admin", "///admin", "/./admin", "/admin/../admin", "/x/../admin", "/x/%2e%2e/admin",
                  "/x/%2E%2E/admin", "/x/.%2e/admin", "/%2e/admin", "/x/y/../../admin", "/../admin",
                  "http://db/admin", "HTTP://db/admin", "http://db//admin", "http://db/x/../admin"]
REFUSED_TARGETS = ["/admin%2fx", "/%2fadmin", "/x%2F..%2Fadmin", "/x\\..\\admin", "\\admin", "admin", "*",
                   "db/admin", "//db/admin%5c", "/admin#frag"]


@pytest.mark.parametrize("target", DENIED_TARGETS)
def test_an_l7_deny_on_admin_is_not_bypassed_by_path_tricks(sidecar: Sidecar, target: str) -> None:
    status, headers, _body = get(sidecar.port, sidecar.ctx, target)
    assert status == 403, (target, status)
    assert headers.get("x-meshagent-denied-by") == "web => db"
    assert sidecar.app.targets() == []


@pytest.mark.parametrize("target", REFUSED_TARGETS)
def test_ambiguous_targets_are_refused_not_forwarded(sidecar: Sidecar, target: str) -> None:
    status, _headers, _body = get(sidecar.port, sidecar.ctx, target)
    assert status in (400, 403), (target, status)
    assert sidecar.app.targets() == []


def test_case_is_significant_and_other_paths_pass(sidecar: Sidecar) -> None:
    """Envoy's prefix match is case-sensitive: /ADMIN is another path (the app's business)."""
    for target in ["/ADMIN", "/Admin", "/", "/public", "/x/../public", "/ad%6Din-not"]:
        status, _h, _b = get(sidecar.port, sidecar.ctx, target)
        expected = 403 if target == "/ad%6Din-not" else 200  # decodes to /admin-not: under the prefix
        assert status == expected, (target, status)
    denials = counts(sidecar.metrics, "authorization_denials_total")
    assert denials.get("l7") == 1


def test_a_fragment_in_the_request_target_is_refused_not_relayed(sidecar: Sidecar) -> None:
    """A request target has no fragment (RFC 9112 3.2); Envoy refuses one (http_reject_path_with_fragment).
    Authorized as /public but relayed raw, an app that resolves dot segments before cutting at '#' serves
    /admin."""
    status, _h, _b = get(sidecar.port, sidecar.ctx, "/public#/../admin")
    assert status == 400, status
    assert sidecar.app.targets() == []


# ---------------------------------------------------------------------- the local app answers badly


BAD_ANSWERS: dict[str, bytes] = {
    "CL letters": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok\n",
    "two CLs": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nok\n",
    "negative CL": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nok\n",
    "CL+TE": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nok\n",
    "garbage": b"\x00\xff garbage \r\n\r\n",
}


@pytest.mark.parametrize("answer", list(BAD_ANSWERS))
def test_a_local_app_with_broken_framing_gets_a_502_and_its_connection_dropped(sidecar: Sidecar,
                                                                                answer: str) -> None:
    sidecar.app.answer = lambda head: BAD_ANSWERS[answer] if b"/bad" in head else \
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(b"GET /bad HTTP/1.1\r\nHost: db\r\n\r\n")
        status, _h, _b = c.response()
        assert status == 502, (answer, status)
    finally:
        c.close()
    # the next request is served on a fresh local connection, never from the broken one's leftovers
    for _ in range(3):
        status, _h, body = get(sidecar.port, sidecar.ctx, "/good")
        assert (status, body) == (200, b"ok\n")


def test_a_short_body_ends_the_client_connection_and_extra_bytes_never_answer_the_next_request(
        sidecar: Sidecar) -> None:
    answers = {
        b"/short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",  # then the app closes? no: waits
        b"/long": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    }

    def answer(head: bytes) -> bytes:
        for key, value in answers.items():
            if key in head:
                return value
        return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    sidecar.app.answer = answer
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(b"GET /long HTTP/1.1\r\nHost: db\r\n\r\n")
        assert c.response()[2] == b"hello"
        for _ in range(3):  # the leftover "evil" response must never be handed to a later request
            c.send(b"GET /next HTTP/1.1\r\nHost: db\r\n\r\n")
            assert c.response()[2] == b"ok\n"
        assert get(sidecar.port, sidecar.ctx, "/other")[2] == b"ok\n"
    finally:
        c.close()


# ---------------------------------------------------------------------- floods against a worker process


class WorkerProc:
    """db's sidecar as a worker process (static snapshot) with its metrics listener."""

    def __init__(self, tmp: Path, snap: ProxySnapshot) -> None:
        self.metrics_port = free_ports(1, HOST)[0]
        path = tmp / "snapshot.json"
        path.write_text(json.dumps(snap.to_wire()))
        self.proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--snapshot", str(path),
                                      "--metrics-bind", f"{HOST}:{self.metrics_port}", "--log-level", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.metrics, what="the worker's metrics listener", fatal=AssertionError)

    def metrics(self) -> str:
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else b""
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _flood_until_blocked(c: Conn, chunks: Iterator[bytes], limit: int) -> int:
    """Send until TCP stops taking bytes (2 s without progress) or `limit` bytes; how many were sent."""
    sent = 0
    c.tls.settimeout(2.0)
    try:
        for chunk in chunks:
            c.tls.sendall(chunk)
            sent += len(chunk)
            if sent >= limit:
                break
    except (TimeoutError, OSError):
        pass
    return sent


@pytest.mark.slow
def test_endless_chunked_body_and_unbounded_pipelining_to_a_slow_app_keep_the_worker_rss_bounded(
        ca: MeshCA, tmp_path: Path) -> None:
    app = RawApp()
    app.read.clear()  # the app reads nothing: the proxy must push back, not buffer
    port = free_ports(1, HOST)[0]
    w = WorkerProc(tmp_path, snapshot(ca, port, app.port))
    ctx = web_ctx(ca, tmp_path)
    conns: list[Conn] = []
    try:
        base = w.rss_kib()
        body = Conn(port, ctx)
        conns.append(body)
        body.send(b"POST /upload HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + os.urandom(0x10000) + b"\r\n"
        sent_body = _flood_until_blocked(body, iter(lambda: chunk, b""), 512 << 20)
        pipe = Conn(port, ctx)
        conns.append(pipe)
        request = b"GET /p HTTP/1.1\r\nHost: db\r\n\r\n" * 2000
        sent_pipe = _flood_until_blocked(pipe, iter(lambda: request, b""), 512 << 20)
        grown = w.rss_kib() - base
        assert sent_body < 64 << 20, f"{sent_body} bytes of body taken while the app reads nothing"
        assert sent_pipe < 64 << 20, f"{sent_pipe} bytes of pipelined requests taken"
        assert grown < 48 * 1024, f"worker RSS grew {grown} KiB"
        # the slow app catches up: a fresh client is served (the app answers every head it reads)
        app.read.set()
        status, _h, _b = get(port, ctx, "/after")
        assert status == 200
    finally:
        for c in conns:
            c.close()
        w.close()
        app.close()


# ---------------------------------------------------------------------- protocol switches


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"


def test_an_h2c_upgrade_is_not_relayed_so_no_tunnel_carries_unauthorized_requests(sidecar: Sidecar) -> None:
    """h2c smuggling: an allowed request asks the app to switch to h2c; once tunnelled, nothing is authorized
    per request any more. Envoy never relays an h2c upgrade (only configured types; Consul configures
    websocket). Here the app answers 101 and then reads /admin through the tunnel."""
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    sidecar.app.answer = lambda head: switch if b"upgrade: h2c" in head.lower() else \
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(b"GET /public HTTP/1.1\r\nHost: db\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        status, _h, _b = c.response()
        if status == 101:
            c.send(SMUGGLE)
            wait_for(lambda: len(sidecar.app.targets()) >= 2, 5, what="the tunnelled request")
    finally:
        c.close()
    assert status != 101 and b"/admin" not in b" ".join(sidecar.app.targets()), sidecar.app.targets()


def test_a_denied_request_pipelined_between_allowed_ones_is_denied_alone(sidecar: Sidecar) -> None:
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(b"GET /public HTTP/1.1\r\nHost: db\r\n\r\nGET /admin HTTP/1.1\r\nHost: db\r\n\r\n"
               b"POST /public HTTP/1.1\r\nHost: db\r\nContent-Length: 34\r\n\r\n" + SMUGGLE
               + b"GET /%61dmin HTTP/1.1\r\nHost: db\r\n\r\nGET /public HTTP/1.1\r\nHost: db\r\n\r\n")
        assert [c.response()[0] for _ in range(5)] == [200, 403, 200, 403, 200]
    finally:
        c.close()
    assert sidecar.app.targets() == [b"/public"] * 3


def test_a_request_head_trickled_one_byte_at_a_time_gets_408_after_the_head_timeout(
        sidecar: Sidecar, legit: Legit, monkeypatch: pytest.MonkeyPatch) -> None:
    # The timeout (30 s in production) scaled down for the suite: the rule under test is that trickling bytes
    # do not extend it (it runs from the head's first byte), not its length.
    monkeypatch.setattr(l7_common, "HEAD_TIMEOUT_S", 4.0)
    monkeypatch.setattr(l7_common, "SWEEP_EVERY_S", 1.0)
    head = b"GET /public HTTP/1.1\r\nHost: db\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    c = Conn(sidecar.port, sidecar.ctx, timeout=60)
    t0 = time.monotonic()
    stop = threading.Event()

    def drip() -> None:
        for b in head:
            if stop.is_set() or not c.send(bytes([b])):
                return
            stop.wait(0.25)  # the attack's pace (four bytes a second), not a synchronisation

    threading.Thread(target=drip, daemon=True).start()
    try:
        status, _h, _b = c.response()
        took = time.monotonic() - t0
        assert status == 408, status
        assert 4 <= took <= 4 + 5 + 5, took  # from the first byte; the sweep already armed may run 5 s late
        assert c.closed_by_peer()
    finally:
        stop.set()
        c.close()
    assert all(t == b"/legit" for t in sidecar.app.targets())


@pytest.mark.slow
def test_an_authorized_peer_cannot_open_more_than_1024_l7_connections_to_the_local_app(sidecar: Sidecar) -> None:
    """The L4 inbound path is bounded at 1024 local connections (Envoy's local_app breaker, finding 8); the L7
    one must be too: 1,100 concurrent requests to an app that does not answer."""
    sidecar.app.read.clear()
    conns = []
    try:
        for _ in range(1100):
            c = Conn(sidecar.port, sidecar.ctx)
            c.send(b"GET /hang HTTP/1.1\r\nHost: db\r\n\r\n")
            conns.append(c)
        wait_for(lambda: sidecar.app.accepted >= 1000, 30, what="the requests reach the app")
        assert sidecar.app.accepted <= 1024
    finally:
        sidecar.app.read.set()
        for c in conns:
            c.close()


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304), ("GET", 100)])
def test_a_body_on_a_bodiless_answer_never_answers_the_next_request(sidecar: Sidecar, method: str,
                                                                    status: int) -> None:
    """HEAD, 204 and 304 answers have no body whatever they say; bytes after them are a desync, not the next
    answer (100 then a body with no final head: the same)."""
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    sidecar.app.answer = lambda head: (b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nhello" % status + evil) \
        if b"/bodiless" in head else b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    c = Conn(sidecar.port, sidecar.ctx)
    try:
        c.send(f"{method} /bodiless HTTP/1.1\r\nHost: db\r\n\r\n".encode())
        if status != 100:
            got = c.response(method)
            assert got[0] == status and got[2] == b"", got
        for _ in range(3):
            c.send(b"GET /next HTTP/1.1\r\nHost: db\r\n\r\n")
            nxt = c.response()
            assert nxt[2] != b"evil", nxt
            if status != 100:
                assert nxt[2] == b"ok\n", nxt
            else:
                break
    except (http.client.HTTPException, OSError):
        assert status == 100  # a 1xx followed by garbage: 502 or closed is fine
    finally:
        c.close()
    assert get(sidecar.port, sidecar.ctx, "/other")[2] == b"ok\n"


@pytest.mark.slow
def test_a_body_of_one_byte_chunks_does_not_cost_the_worker_seconds_of_cpu(ca: MeshCA, tmp_path: Path) -> None:
    """10 MB as 1,747,626 one-byte chunks: each chunk is a Python-level parse step (a 'per-byte loop' in
    effect). Measured: 4 s of worker CPU against 0.05 s for one 10 MB chunk, so ~2.5 MB/s from any mesh peer
    (denied requests' bodies are parsed too) saturates a worker. Bound: < 1 s, or the request refused."""
    sink = socket.create_server((HOST, 0))

    def serve() -> None:
        conn, _ = sink.accept()
        tail = b""
        with conn:
            while data := conn.recv(1 << 20):
                tail = (tail + data)[-16:]
                if tail.endswith(b"0\r\n\r\n"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    port = free_ports(1, HOST)[0]
    w = WorkerProc(tmp_path, snapshot(ca, port, sink.getsockname()[1]))
    ctx = web_ctx(ca, tmp_path)

    def cpu_s() -> float:
        fields = Path(f"/proc/{w.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        c = Conn(port, ctx, timeout=120)
        before = cpu_s()
        sender = threading.Thread(target=c.send, args=(
            b"POST /up HTTP/1.1\r\nHost: db\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * ((10 << 20) // 6) + b"0\r\n\r\n",), daemon=True)
        sender.start()
        status, _h, _b = c.response("POST")
        used = cpu_s() - before
        c.close()
        assert status == 400 or used < 1.0, f"{used:.2f} s of worker CPU for 10 MB of one-byte chunks"
    finally:
        w.close()
        sink.close()


@pytest.mark.slow
def test_a_path_crafted_against_an_intention_regex_does_not_freeze_the_worker(ca: MeshCA, tmp_path: Path) -> None:
    """Consul's and Envoy's regexes are RE2 (linear time). Python's re backtracks: a plausible rule such as
    PathRegex "/([a-z]+/?)*" against "/aaaa...a!" takes 1.2 s at 24 letters, doubling per letter; with 40 the
    worker's loop is frozen for hours and every connection on it with it."""
    app = RawApp()
    port = free_ports(1, HOST)[0]
    rules = Intentions(default_allow=False, rules=(IntentionRule(
        source="web", action=None, name="web => db",
        permissions=(Permission(action="allow", path_regex=r"/([a-z]+/?)*"),)),))
    w = WorkerProc(tmp_path, replace(snapshot(ca, port, app.port), intentions=rules))
    ctx = web_ctx(ca, tmp_path)
    try:
        assert get(port, ctx, "/users/list")[0] == 200
        attacker = Conn(port, ctx)
        attacker.send(b"GET /" + b"a" * 40 + b"! HTTP/1.1\r\nHost: db\r\n\r\n")
        t0 = time.monotonic()
        try:
            c = Conn(port, ctx, timeout=5)
            c.send(b"GET /users/list HTTP/1.1\r\nHost: db\r\n\r\n")
            status = c.response()[0]
            c.close()
        except (OSError, http.client.HTTPException):  # the handshake itself times out: the loop is frozen
            status = 0
        assert status == 200 and time.monotonic() - t0 < 3, "the worker stopped serving"
        attacker.close()
    finally:
        w.close()
        app.close()
