"""Red team of the upstream (outbound) side (127.0.21.0/24): servers behind an upstream endpoint that present
the right CA but another identity, reset, stall, answer garbage or hostile HTTP; and a worker's control
channel fed truncated, huge or garbage frames. No application byte may reach a server that is not the
destination; every failure is bounded in time, counted, and legitimate traffic keeps flowing. Findings:
/work/notes/h14-H-findings.md.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from meshagent.proxy.control import MAX_FRAME, encode
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import Endpoint, LoadBalancer, ProxySnapshot, Retries, Upstream

from tests.support import dataplane_harness as harness
from tests.support.dataplane_harness import (
    Loop,
    ThreadedServer,
    client_snapshot,
    counts,
    echo_exchange,
    forge,
    material,
)
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.21.3"


# ---------------------------------------------------------------------- harness


class Upstream_(ThreadedServer):
    """A server behind an upstream endpoint. mode: "echo" (mTLS echo, a real sidecar's stand-in), "reset"
    (accept, then RST), "garbage" (bytes that are not TLS), "stall" (accept, say nothing), "http" (mTLS,
    answers each read with `answer`). Records every plaintext byte it got."""

    def __init__(self, ca: MeshCA, tmp: Path, mode: str, cert: tuple[str, str] | None = None,
                 answer: bytes = b"") -> None:
        self.mode = mode
        self.answer = answer
        self.got = bytearray()
        self.ctx: ssl.SSLContext | None = None
        if mode in ("echo", "http", "continue-flood"):
            cert_pem, key_pem = cert or (lambda lf: (lf.cert_pem, lf.key_pem))(ca.leaf("db"))
            tmp.mkdir(parents=True, exist_ok=True)
            n = len(list(tmp.iterdir()))
            (tmp / f"s{n}.crt").write_text(cert_pem)
            (tmp / f"s{n}.key").write_text(key_pem)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tmp / f"s{n}.crt"), str(tmp / f"s{n}.key"))
            ctx.load_verify_locations(cadata=ca.root_pem)
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx = ctx
        super().__init__(HOST)
        self.endpoint = Endpoint(HOST, self.port, service_id=f"{mode}-{self.port}")

    def handle(self, conn: socket.socket) -> None:
        try:
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            if self.mode == "garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + b"\x00\xff" * 5000)
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
                return
            if self.mode == "stall":
                conn.settimeout(30)
                while conn.recv(65536):
                    pass
                return
            assert self.ctx is not None
            conn.settimeout(30)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            if self.mode == "continue-flood":  # endless interim answers to one request
                self.got += tls.recv(65536)
                flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 4096
                while True:
                    tls.sendall(flood)
            while data := tls.recv(65536):
                self.got += data
                tls.sendall(data if self.mode == "echo" else self.answer)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


class Client:
    """web's sidecar in-process with one upstream listener for db."""

    def __init__(self, loop: Loop, ca: MeshCA) -> None:
        self.loop, self.ca = loop, ca
        self.metrics = ProxyMetrics("web", "dc1")
        self.dp = loop.call(lambda: DataPlane(loop.reactor, self.metrics))
        self.port = free_ports(1, HOST)[0]

    def apply(self, endpoints: tuple[Endpoint, ...], **kw: Any) -> None:
        snap = client_snapshot(self.ca, HOST, self.port, endpoints, **kw)
        assert self.loop.call(lambda: self.dp.apply(snap)) == []

    def roundtrip(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Plain TCP to the upstream listener: send, read the echo (b"" when the proxy closed us)."""
        return echo_exchange(HOST, self.port, payload, timeout=timeout)

    def http(self, request: bytes, timeout: float = 10.0) -> bytes:
        """One HTTP exchange on the upstream listener: what came back until the proxy closed or timeout."""
        got = b""
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(request)
            try:
                while chunk := s.recv(65536):
                    got += chunk
                    if b"\r\n\r\n" in got and (b"Content-Length: 0" in got or got.endswith(b"\n")):
                        break
            except (ConnectionError, TimeoutError):
                pass
        return got

    def counts(self, name: str) -> dict[str, int]:
        return counts(self.metrics, name)

    def close(self) -> None:
        self.loop.call(self.dp.close)


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    errors = lp.reactor.errors
    lp.close()
    assert errors == 0, "a callback raised in the data plane"


@pytest.fixture
def client(loop: Loop, ca: MeshCA) -> Iterator[Client]:
    c = Client(loop, ca)
    yield c
    c.close()


@pytest.fixture
def servers() -> Iterator[list[Upstream_]]:
    made: list[Upstream_] = []
    yield made
    for s in made:
        s.close()


# ---------------------------------------------------------------------- identities


def test_a_server_with_our_ca_but_another_identity_never_gets_an_application_byte(
        client: Client, ca: MeshCA, tmp_path: Path, servers: list[Upstream_]) -> None:
    """Right CA, wrong service (cache), two URIs with the right one among them, another trust domain's db:
    each refused after the handshake (spiffe-mismatch) before any plaintext is sent; a good endpoint beside
    them serves every connection (a mismatch is a connect failure, so it is retried elsewhere)."""
    good = Upstream_(ca, tmp_path, "echo")
    evil = [Upstream_(ca, tmp_path, "echo", (lambda lf: (lf.cert_pem, lf.key_pem))(ca.leaf("cache"))),
            Upstream_(ca, tmp_path, "echo", forge(ca, [ca.spiffe_id("db"), ca.spiffe_id("cache")])),
            Upstream_(ca, tmp_path, "echo", forge(ca, [ca.spiffe_id("cache"), ca.spiffe_id("db")])),
            Upstream_(ca, tmp_path, "echo", forge(ca, [ca.spiffe_id("db").replace(ca.trust_domain, "evil.mesh")])),
            Upstream_(ca, tmp_path, "echo", forge(ca, [ca.spiffe_id("db") + "/x"]))]
    servers += [good, *evil]
    for e in evil:  # alone first: the client connection is closed, nothing reaches the impostor
        client.apply((e.endpoint,))
        assert client.roundtrip(b"secret") == b""
        assert e.accepted == 1 and bytes(e.got) == b""
    assert client.counts("tls_handshake_failures_total").get("spiffe-mismatch") == len(evil)
    client.apply((*(e.endpoint for e in evil), good.endpoint), load_balancer=LoadBalancer(policy="round_robin"),
                 retries=Retries(num_retries=len(evil), retry_on_connect_failure=True))
    for i in range(10):
        assert client.roundtrip(b"hello %d" % i) == b"hello %d" % i
    assert all(bytes(e.got) == b"" for e in evil)


def test_a_server_of_another_ca_or_with_an_expired_leaf_is_refused(client: Client, ca: MeshCA, tmp_path: Path,
                                                                   servers: list[Upstream_]) -> None:
    other = MeshCA(ca.trust_domain)
    expired = ca.expired_leaf("db")
    for cert in [(lambda lf: (lf.cert_pem, lf.key_pem))(other.leaf("db")), (expired.cert_pem, expired.key_pem)]:
        s = Upstream_(other if cert[0] != expired.cert_pem else ca, tmp_path, "echo", cert)
        servers.append(s)
        client.apply((s.endpoint,))
        t0 = time.monotonic()
        assert client.roundtrip(b"secret") == b""
        assert time.monotonic() - t0 < 3
        assert bytes(s.got) == b""
    assert client.counts("tls_handshake_failures_total").get("tls-handshake") == 2


# ---------------------------------------------------------------------- misbehaving servers


def test_reset_garbage_and_stalled_servers_fail_fast_and_are_ejected_while_a_good_one_serves(
        client: Client, ca: MeshCA, tmp_path: Path, servers: list[Upstream_]) -> None:
    good = Upstream_(ca, tmp_path, "echo")
    bad = [Upstream_(ca, tmp_path, mode) for mode in ("reset", "garbage", "stall")]
    servers += [good, *bad]
    for b in bad:  # each alone: bounded by the connect timeout (which covers the TLS handshake)
        client.apply((b.endpoint,), connect_timeout_ms=500)
        t0 = time.monotonic()
        assert client.roundtrip(b"x") == b""
        assert time.monotonic() - t0 < 2.5, b.mode
    client.apply((*(b.endpoint for b in bad), good.endpoint), connect_timeout_ms=500,
                 load_balancer=LoadBalancer(policy="round_robin"),
                 retries=Retries(num_retries=3, retry_on_connect_failure=True))
    for i in range(12):
        t0 = time.monotonic()
        got = client.roundtrip(b"r%d" % i)
        assert got == b"r%d" % i, (i, time.monotonic() - t0, client.metrics.to_wire()["counter"])
    assert client.counts("ejections_total") or client.counts("retries_total")


def test_a_server_that_resets_right_after_accept_fails_every_dial_within_the_connect_timeout(
        client: Client, ca: MeshCA, tmp_path: Path, servers: list[Upstream_]) -> None:
    """When the RST lands between the connect and the ClientHello's send, the dial used to end silently (no
    on_fail, timer cancelled) and the application's connection hung with its breaker slot (finding 5, fixed;
    the window is narrow, so this repeats the dial)."""
    s = Upstream_(ca, tmp_path, "reset")
    servers.append(s)
    client.apply((s.endpoint,), connect_timeout_ms=500)
    slow = []
    for i in range(20):
        t0 = time.monotonic()
        assert client.roundtrip(b"x", timeout=4) == b""
        if time.monotonic() - t0 > 2.5:
            slow.append(i)
    assert slow == [], f"dials {slow} outlived the 0.5 s connect timeout (and its retry)"


def test_an_l7_upstream_answering_garbage_or_resetting_gets_502_or_503_not_a_hang(
        client: Client, ca: MeshCA, tmp_path: Path, servers: list[Upstream_]) -> None:
    answers = {
        "garbage": b"\x00\xffnot http at all\r\n\r\n",
        "huge head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "CL+TE": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    }
    for name, answer in answers.items():
        s = Upstream_(ca, tmp_path, "http", answer=answer)
        servers.append(s)
        client.apply((s.endpoint,), protocol="http", request_timeout_ms=3000)
        t0 = time.monotonic()
        got = client.http(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 502"), (name, got[:80])
        assert time.monotonic() - t0 < 5, name
    for mode in ("reset", "garbage"):
        s = Upstream_(ca, tmp_path, mode)
        servers.append(s)
        client.apply((s.endpoint,), protocol="http", connect_timeout_ms=1000)
        got = client.http(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503"), (mode, got[:80])
    stall = Upstream_(ca, tmp_path, "http", answer=b"")  # TLS fine, then never answers (sends b"")
    servers.append(stall)
    client.apply((stall.endpoint,), protocol="http", request_timeout_ms=500)
    t0 = time.monotonic()
    got = client.http(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 504"), got[:80]
    assert time.monotonic() - t0 < 3


@pytest.mark.slow
def test_an_upstream_flooding_100_continue_to_a_client_that_does_not_read_keeps_the_worker_rss_bounded(
        ca: MeshCA, tmp_path: Path, servers: list[Upstream_]) -> None:
    """A hostile or broken upstream answers one request with 100 Continue forever; the application does not
    read. The body path pauses the upstream at 256 KiB; interim heads must too, or each such request grows
    the worker by up to MAX_WRITE_BUFFER (64 MiB) before the write-buffer guard or the request timeout."""
    evil = Upstream_(ca, tmp_path / "evil", "continue-flood")
    servers.append(evil)
    port = free_ports(1, HOST)[0]
    up = Upstream(destination_name="db", local_bind_address=HOST, local_bind_port=port, endpoints=(evil.endpoint,),
                  protocol="http", request_timeout_ms=30000)
    snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1", tls=material(ca, "web"),
                         public_address=HOST, public_port=21000, local_service_port=0, upstreams=(up,))
    path = tmp_path / "web.json"
    path.write_text(json.dumps(snap.to_wire()))
    proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--snapshot", str(path),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rss() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")
    try:
        app = wait_for(lambda: socket.create_connection((HOST, port), timeout=5), what="the upstream listener")
        base = rss()
        app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        app.sendall(b"POST /x HTTP/1.1\r\nHost: db\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        peak = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            peak = max(peak, rss() - base)
            if peak > 16 * 1024:
                break
            time.sleep(0.1)  # sampling RSS, not synchronising
        app.close()
        assert peak < 16 * 1024, f"worker RSS grew {peak} KiB for one request"
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------- the control channel


class ControlledWorker(harness.ControlledWorker):
    """A worker process on a control socketpair; the test plays the supervisor."""

    def __init__(self) -> None:
        super().__init__()
        assert self.recv()["t"] == "ready"


@pytest.fixture
def controlled() -> Iterator[ControlledWorker]:
    w = ControlledWorker()
    yield w
    w.close()


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_a_truncated_frame_then_eof_ends_the_worker_cleanly(controlled: ControlledWorker) -> None:
    controlled.sock.sendall(_frame(msgpack.packb({"t": "metrics"}))[:-2])
    controlled.sock.shutdown(socket.SHUT_WR)
    assert controlled.proc.wait(10) in (0, 1)


def test_a_huge_announced_frame_is_refused_without_allocating_it(controlled: ControlledWorker) -> None:
    base = controlled.rss_kib()
    controlled.sock.sendall(struct.pack(">I", 0xFFFFFFFF) + b"\x81" * 1000)
    assert controlled.proc.wait(10) == 1
    assert base < 200 * 1024


@pytest.mark.parametrize("body", [
    b"\x91" * 200_000 + b"\xc0",  # 200,000 nested arrays: a recursion bomb for a naive decoder
    b"\x81\xa1t\xa8snapshot\xa1s" + b"\x81\xa1a" * 100_000 + b"\xc0",  # nested maps inside a snapshot
    b"\xdd\xff\xff\xff\xff",  # an array announcing 4 billion items
    b"\xdf\xff\xff\xff\xff",  # a map announcing 4 billion pairs
    b"\xc6\xff\xff\xff\xf0",  # bin32 announcing 4 GiB
    b"\x81\xa1t\xc4\x08snapshot",  # "t" as bytes, not a string
])
def test_garbage_frames_end_the_worker_with_an_error_not_a_crash_or_a_hang(controlled: ControlledWorker,
                                                                           body: bytes) -> None:
    controlled.sock.sendall(_frame(body))
    try:
        msg = controlled.recv()  # refused as a snapshot is fine too
        assert msg["t"] == "applied" and msg["errors"], msg
        return
    except AssertionError:
        pass
    code = controlled.proc.wait(10)
    assert controlled.proc.stderr is not None
    err = controlled.proc.stderr.read().decode()
    assert code == 1, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


def test_a_16mib_snapshot_of_hostile_values_is_refused_naming_the_field_and_the_worker_keeps_serving(
        controlled: ControlledWorker, ca: MeshCA) -> None:
    app = socket.create_server((HOST, 0))
    port = free_ports(1, HOST)[0]
    good = ProxySnapshot(proxy_id="db-sidecar-proxy", service="db", datacenter="dc1", tls=material(ca, "db"),
                         public_address=HOST, public_port=port, local_service_address=HOST,
                         local_service_port=app.getsockname()[1], version=1)
    controlled.sock.sendall(encode({"t": "snapshot", "s": good.to_wire()}))
    assert controlled.recv() == {"t": "applied", "version": 1, "errors": []}
    try:
        hostile = []
        wire = good.to_wire()
        hostile.append(dict(wire, version=2, proxy_id="x" * (MAX_FRAME - 200_000)))
        hostile.append(dict(wire, version=3, upstreams=[{"destination_name": "db"}] * 300_000))
        hostile.append(dict(wire, version=4, public_port=True))
        hostile.append(dict(wire, version=5, tls=dict(wire["tls"], roots_pem=["x"] * 100_000)))
        for snap in hostile:
            controlled.sock.sendall(encode({"t": "snapshot", "s": snap}))
            msg = controlled.recv()
            assert msg["t"] == "applied" and msg["version"] == snap["version"], msg
            assert msg["errors"] and "snapshot refused" in msg["errors"][0], msg
        with socket.create_connection((HOST, port), timeout=5):
            pass  # still listening with version 1
        assert controlled.rss_kib() < 300 * 1024
    finally:
        app.close()
