"""Red team of the public (inbound mTLS) listener (127.0.21.0/24): garbage and stalled handshakes, half-open
connections, forged and odd client certificates, and a fast authorized peer against a slow local app. Each
attack is refused in bounded time and memory, counted, and a legitimate client is served at the same time.
Findings: /work/notes/h14-H-findings.md.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import Intentions, ProxySnapshot

from tests.support import dataplane_harness as harness
from tests.support.dataplane_harness import EchoServer, Loop, StaticWorker, client_ctx, counts, echo_exchange, forge
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.21.1"


# ---------------------------------------------------------------------- harness


def server_snapshot(ca: MeshCA, public_port: int, app_port: int, **kw: Any) -> ProxySnapshot:
    return harness.server_snapshot(ca, HOST, public_port, app_port, intentions=Intentions(default_allow=True), **kw)


def mtls_echo(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping", timeout: float = 10.0) -> bytes:
    """Send `payload` over TLS and read the echo (b"" when the server refused us after the handshake)."""
    return echo_exchange(HOST, port, payload, ctx, timeout)


class Legit:
    """A legitimate mesh client that keeps round-tripping on fresh connections while an attack runs."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.ok = 0
        self.failed: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            payload = b"legit %d " % i * 50
            got = mtls_echo(self.port, self.ctx, payload)
            if got == payload:
                self.ok += 1
            else:
                self.failed.append(got)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Sidecar:
    """db's sidecar (L4, default allow) in front of an echo app, in-process."""

    def __init__(self, loop: Loop, ca: MeshCA, tmp: Path) -> None:
        self.loop, self.ca = loop, ca
        self.app = EchoServer(HOST)
        self.port = free_ports(1, HOST)[0]
        self.metrics = ProxyMetrics("db", "dc1")
        self.dp = loop.call(lambda: DataPlane(loop.reactor, self.metrics))
        assert loop.call(lambda: self.dp.apply(server_snapshot(ca, self.port, self.app.port))) == []
        web = ca.leaf("web")
        self.web_ctx = client_ctx(ca, tmp / "legit", web.cert_pem, web.key_pem)
        self.tmp = tmp

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
    loop.close()


# ---------------------------------------------------------------------- certificates we forge


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello, as a mesh client would send first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# ---------------------------------------------------------------------- garbage and stalls


def test_garbage_instead_of_a_client_hello_is_refused_at_once_while_a_mesh_client_is_served(
        sidecar: Sidecar) -> None:
    legit = Legit(sidecar.port, sidecar.web_ctx)
    shapes = [os.urandom(70000), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello" * 100,
              b"\x16\x03\x03\x40\x00" + os.urandom(0x4000), b"\x00" * 300_000]
    try:
        for garbage in shapes:
            t0 = time.monotonic()
            with socket.create_connection((HOST, sidecar.port), timeout=10) as sock:
                try:
                    sock.sendall(garbage)
                    while sock.recv(65536):  # an alert at most, then the close
                        pass
                except ConnectionError:
                    pass
            assert time.monotonic() - t0 < 3.0, "garbage must be refused at once, not by the timeout"
        wait_for(lambda: sum(counts(sidecar.metrics, "tls_handshake_failures_total").values()) == len(shapes),
                 what="every garbage connection counted",
                 report=lambda: repr(counts(sidecar.metrics, "tls_handshake_failures_total")))
        wait_for(lambda: legit.ok >= 3, what="the legitimate client served during the attack")
    finally:
        legit.stop()
    assert legit.failed == []
    assert sidecar.loop.reactor.errors == 0


@pytest.mark.slow
def test_slowloris_handshake_one_byte_a_second_is_closed_by_the_handshake_timeout(sidecar: Sidecar) -> None:
    hello = client_hello()
    legit = Legit(sidecar.port, sidecar.web_ctx)
    sock = socket.create_connection((HOST, sidecar.port), timeout=30)
    t0 = time.monotonic()
    closed_at: list[float] = []

    def drip() -> None:
        for b in hello:
            try:
                sock.send(bytes([b]))
            except OSError:
                return
            # the attack's own pace (one byte a second), not a synchronisation
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) if _readable(sock) else False:
                return
            time.sleep(1.0)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        try:
            while sock.recv(4096):
                pass
        except ConnectionError:
            pass
        closed_at.append(time.monotonic() - t0)
        assert 8.0 <= closed_at[0] <= 14.0, closed_at  # HANDSHAKE_TIMEOUT_S is 10 s, whatever trickles in
        wait_for(lambda: counts(sidecar.metrics, "tls_handshake_failures_total").get("tls-handshake-timeout") == 1,
                 what="the stalled handshake counted as a timeout")
        assert legit.ok >= 3
    finally:
        legit.stop()
        sock.close()
    assert legit.failed == []


def _readable(sock: socket.socket) -> bool:
    import select
    r, _, _ = select.select([sock], [], [], 0)
    return bool(r)


def test_a_client_hello_then_reset_ends_the_pending_handshake_and_is_counted(sidecar: Sidecar) -> None:
    """ClientHello, then RST: our ServerHello flight's send fails inside the handshake step; the pending
    handshake must end and be counted, not wait in DataPlane._pending for the cap (finding 5, fixed)."""
    hello = client_hello()
    for _ in range(100):
        s = socket.create_connection((HOST, sidecar.port), timeout=5)
        s.sendall(hello)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert mtls_echo(sidecar.port, sidecar.web_ctx, b"served") == b"served"
    wait_for(lambda: sidecar.loop.call(lambda: sidecar.dp.handshakes) == 0, 5, what="no handshake left pending",
             report=lambda: f"{sidecar.loop.call(lambda: sidecar.dp.handshakes)} pending")
    assert sum(counts(sidecar.metrics, "tls_handshake_failures_total").values()) == 100


# ---------------------------------------------------------------------- client certificates


def _refused(sidecar: Sidecar, cert_pem: str | None, key_pem: str | None) -> bytes:
    ctx = client_ctx(sidecar.ca, sidecar.tmp / "attack", cert_pem, key_pem)
    return mtls_echo(sidecar.port, ctx, b"let me in")


def test_no_certificate_self_signed_another_ca_expired_and_not_yet_valid_are_refused_in_the_handshake(
        sidecar: Sidecar) -> None:
    ca = sidecar.ca
    web = ca.spiffe_id("web")
    other = MeshCA(ca.trust_domain)  # another CA claiming our trust domain
    other_leaf = other.leaf("web")
    expired = ca.expired_leaf("web")
    future = ca.leaf("web", now=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
    cases: dict[str, tuple[str | None, str | None]] = {
        "none": (None, None),
        "self-signed": forge(None, [web]),
        "another CA": (other_leaf.cert_pem, other_leaf.key_pem),
        "expired": (expired.cert_pem, expired.key_pem),
        "not yet valid": (future.cert_pem, future.key_pem),
    }
    legit = Legit(sidecar.port, sidecar.web_ctx)
    try:
        for what, (cert, key) in cases.items():
            t0 = time.monotonic()
            assert _refused(sidecar, cert, key) == b"", what
            assert time.monotonic() - t0 < 3.0, what
        wait_for(lambda: counts(sidecar.metrics, "tls_handshake_failures_total").get("tls-handshake") == len(cases),
                 what="each refused handshake counted",
                 report=lambda: repr(counts(sidecar.metrics, "tls_handshake_failures_total")))
        wait_for(lambda: legit.ok >= 3, what="the legitimate client served during the attack")
    finally:
        legit.stop()
    assert legit.failed == []
    assert sidecar.app.accepted == legit.ok  # no attacker ever reached the application


def test_our_ca_signing_odd_identities_is_denied_after_the_handshake(sidecar: Sidecar) -> None:
    """Certificates that verify against our root but carry no single service identity of our trust domain."""
    ca = sidecar.ca
    web, db = ca.spiffe_id("web"), ca.spiffe_id("db")
    cases = {
        "two URI SANs": forge(ca, [web, db]),
        "other trust domain": forge(ca, ["spiffe://99999999-2222-3333-4444-555555555555.mesh/ns/default/dc/dc1/svc/web"]),
        "trust-domain prefix trick": forge(ca, [f"spiffe://{ca.trust_domain}.evil/ns/default/dc/dc1/svc/web"]),
        "other namespace": forge(ca, [f"spiffe://{ca.trust_domain}/ns/admin/dc/dc1/svc/web"]),
        "dot segment": forge(ca, [f"spiffe://{ca.trust_domain}/ns/default/dc/dc1/svc/.."]),
        "extra path": forge(ca, [web + "/extra"]),
        "root form (no service)": forge(ca, [f"spiffe://{ca.trust_domain}"]),
        "no SAN": forge(ca, []),
        "DNS-looking URI": forge(ca, ["https://web.service.mesh/"]),
    }
    legit = Legit(sidecar.port, sidecar.web_ctx)
    try:
        for what, (cert, key) in cases.items():
            assert _refused(sidecar, cert, key) == b"", what
        wait_for(lambda: counts(sidecar.metrics, "authorization_denials_total").get("l4", 0) == len(cases),
                 what="each identity-less peer counted as a denial",
                 report=lambda: repr(sidecar.metrics.to_wire()["counter"]))
        wait_for(lambda: legit.ok >= 3, what="the legitimate client served during the attack")
    finally:
        legit.stop()
    assert legit.failed == []
    assert sidecar.app.accepted == legit.ok


def test_a_ca_certificate_presented_as_a_leaf_is_refused(sidecar: Sidecar) -> None:
    """A CA:TRUE certificate of our root with web's SPIFFE ID: a leaf must be an end entity (Consul's leaves are
    CA:FALSE); whoever holds an intermediate's key can mint any identity, but must not *be* one."""
    cert, key = forge(sidecar.ca, [sidecar.ca.spiffe_id("web")], is_ca=True)
    assert _refused(sidecar, cert, key) == b""
    assert sidecar.app.accepted == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs Debian's openssl")
def test_tls12_client_initiated_renegotiation_is_refused(sidecar: Sidecar) -> None:
    """A mesh peer renegotiating over and over costs a full handshake each (CPU) and could swap its
    certificate after authorization: OpenSSL's s_client 'R' must get a no_renegotiation alert."""
    cert, key = sidecar.ca.leaf("web").write(sidecar.tmp / "reneg")
    root = sidecar.tmp / "reneg" / "root.pem"
    root.write_text(sidecar.ca.root_pem)
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"{HOST}:{sidecar.port}", "-tls1_2", "-cert",
                             str(cert), "-key", str(key), "-CAfile", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()

    def read_all() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            out.extend(line)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"ping-before\n")
        proc.stdin.flush()
        wait_for(lambda: out.count(b"ping-before") >= 1 and b"---" in out, what="the echo before renegotiating",
                 report=lambda: out.decode(errors="replace")[-500:])
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        wait_for(lambda: b"no renegotiation" in out or proc.poll() is not None, what="the renegotiation refused",
                 report=lambda: out.decode(errors="replace")[-500:])
        assert b"no renegotiation" in out
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)


def test_a_client_leaf_that_expired_cannot_come_back_by_resuming_its_session(sidecar: Sidecar) -> None:
    """Resumption skips certificate verification: a session made while web's leaf was valid is resumed after
    it expired (for the ticket's lifetime), while a full handshake with the same leaf is refused."""
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    leaf = sidecar.ca.leaf("web", ttl=datetime.timedelta(seconds=3), now=start)
    ctx = client_ctx(sidecar.ca, sidecar.tmp / "short", leaf.cert_pem, leaf.key_pem)
    with socket.create_connection((HOST, sidecar.port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"one")
        assert tls.recv(10) == b"one"  # the ticket arrived with the first answer
        session = tls.session
    assert session is not None and session.has_ticket
    end = start + datetime.timedelta(seconds=3)
    wait_for(lambda: datetime.datetime.now(datetime.UTC) > end + datetime.timedelta(seconds=1), 10,
             what="the leaf to expire")
    assert mtls_echo(sidecar.port, ctx, b"full") == b""  # a full handshake: certificate expired
    got = b""
    try:
        with socket.create_connection((HOST, sidecar.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, session=session) as tls:
            tls.sendall(b"resumed")
            got = tls.recv(10)
    except (ssl.SSLError, ConnectionError):
        pass
    assert got == b"", "an expired leaf's session was resumed and served"


# ---------------------------------------------------------------------- a worker process under load


class WorkerProc(StaticWorker):
    """db's sidecar as `python -m meshagent.proxy.worker --snapshot FILE` with its metrics listener."""

    def __init__(self, tmp: Path, snap: ProxySnapshot) -> None:
        super().__init__(tmp, snap, HOST)


@pytest.fixture
def worker(ca: MeshCA, tmp_path: Path) -> Iterator[tuple[WorkerProc, EchoServer, ssl.SSLContext]]:
    app = EchoServer(HOST)
    port = free_ports(1, HOST)[0]
    w = WorkerProc(tmp_path, server_snapshot(ca, port, app.port))
    w.public_port = port  # type: ignore[attr-defined]
    web = ca.leaf("web")
    yield w, app, client_ctx(ca, tmp_path / "legit", web.cert_pem, web.key_pem)
    w.close()
    app.close()


def _half_open(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(10)
        s.connect((HOST, port))
        socks.append(s)
    return socks


@pytest.mark.slow
def test_1000_half_open_connections_are_bounded_and_timed_out_while_a_mesh_client_is_served(
        worker: tuple[WorkerProc, EchoServer, ssl.SSLContext]) -> None:
    w, _app, web = worker
    port: int = w.public_port  # type: ignore[attr-defined]
    base_rss, base_fds = w.rss_kib(), w.fds()
    socks = _half_open(port, 1000)
    try:
        wait_for(lambda: w.fds() >= base_fds + 1000, what="the worker accepted them all",
                 report=lambda: f"fds {w.fds()} (base {base_fds})")
        assert mtls_echo(port, web, b"still served" * 100) == b"still served" * 100
        assert w.fds() <= base_fds + 1000 + 16
        grown = w.rss_kib() - base_rss
        assert grown < 64 * 1024, f"RSS grew {grown} KiB for 1000 idle handshakes"
        t0 = time.monotonic()
        # the handshake timeout (10 s) closes every one of them: each client sees EOF
        for s in socks:
            s.settimeout(max(0.5, 16 - (time.monotonic() - t0)))
            try:
                assert s.recv(10) == b""
            except ConnectionError:
                pass
        wait_for(lambda: w.sample("tls_handshake_failures_total", reason="tls-handshake-timeout") == 1000,
                 what="1000 timeouts counted")
        wait_for(lambda: w.fds() <= base_fds + 2, what="their descriptors released")
        assert mtls_echo(port, web, b"after") == b"after"
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_idle_connections_beyond_the_handshake_cap_do_not_lock_out_a_mesh_client(
        worker: tuple[WorkerProc, EchoServer, ssl.SSLContext]) -> None:
    """MAX_HANDSHAKES (2048) bounds the descriptors idle peers pin; at the cap the oldest pending handshake
    goes (counted), so 2,200 idle TCP connections cannot keep a legitimate peer out (finding 2, fixed)."""
    w, _app, web = worker
    port: int = w.public_port  # type: ignore[attr-defined]
    base_fds = w.fds()
    socks = _half_open(port, 2200)
    try:
        wait_for(lambda: w.sample("tls_handshake_failures_total", reason="too-many-handshakes") >= 2200 - 2048,
                 what="the cap reached")
        assert w.fds() <= base_fds + 2048 + 16
        for i in range(3):
            assert mtls_echo(port, web, b"let a real peer in %d" % i) == b"let a real peer in %d" % i
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_an_authorized_peer_cannot_open_more_than_1024_connections_to_the_local_app(sidecar: Sidecar) -> None:
    """Envoy's local_app cluster keeps its default circuit breakers (max_connections 1024; Consul's
    max_inbound_connections inherits it): one authorized peer must not pin unbounded descriptors in the
    worker and the application (finding 8, fixed)."""
    socks = []
    try:
        for _ in range(1100):
            raw = socket.create_connection((HOST, sidecar.port), timeout=10)
            socks.append(sidecar.web_ctx.wrap_socket(raw))
        for s in socks[-20:]:
            s.sendall(b"x")
        wait_for(lambda: sidecar.app.accepted >= 1000, 30, what="the connections reach the app")
        assert sidecar.app.accepted <= 1024
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_100mb_from_an_authorized_peer_to_a_slow_app_keeps_the_worker_rss_bounded(ca: MeshCA, tmp_path: Path,
                                                                                  ) -> None:
    # a sink app that reads nothing until told, then everything: the proxy must stop reading the peer
    sink = socket.create_server((HOST, 0))
    port = free_ports(1, HOST)[0]
    w = WorkerProc(tmp_path, server_snapshot(ca, port, sink.getsockname()[1]))
    leaf = ca.leaf("web")
    web = client_ctx(ca, tmp_path / "legit", leaf.cert_pem, leaf.key_pem)
    total = 100 * 1024 * 1024
    sent, received = [0], [0]
    errors: list[str] = []
    go = threading.Event()
    try:
        base = w.rss_kib()

        def flood() -> None:
            chunk = b"\xa5" * (1 << 20)
            try:
                with socket.create_connection((HOST, port), timeout=120) as raw, web.wrap_socket(raw) as tls:
                    for _ in range(total // len(chunk)):
                        tls.sendall(chunk)
                        sent[0] += len(chunk)
                    # keep the connection until everything arrived: a close before that is the test's own
                    wait_for(lambda: received[0] >= total, 120, what="the sink to read it all")
            except OSError as exc:
                errors.append(repr(exc))

        def drain() -> None:
            conn, _ = sink.accept()
            go.wait(120)
            with conn:
                while received[0] < total and (data := conn.recv(1 << 20)):
                    received[0] += len(data)

        threading.Thread(target=drain, daemon=True).start()
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        last = [-1, time.monotonic()]

        def stalled() -> bool:  # the sender made no progress for 1 s: TCP pushes back end to end
            if sent[0] != last[0]:
                last[0], last[1] = sent[0], time.monotonic()
                return False
            return time.monotonic() - last[1] > 1.0 and sent[0] > 0
        wait_for(stalled, 30, what="the flood to be held back")
        assert sent[0] < 32 * 1024 * 1024, f"{sent[0]} bytes accepted before the app read one"
        peak = w.rss_kib() - base
        go.set()
        deadline = time.monotonic() + 120
        while received[0] < total and time.monotonic() < deadline:
            peak = max(peak, w.rss_kib() - base)
            flooder.join(0.05)
        assert received[0] == total, (received[0], sent[0], errors)
        assert peak < 48 * 1024, f"worker RSS grew {peak} KiB"
        wait_for(lambda: w.sample("bytes_received_total") >= total, what="bytes counted",
                 report=lambda: w.metrics())
    finally:
        w.close()
        sink.close()


# ---------------------------------------------------------------------- the per-proxy metrics listeners


def test_idle_connections_do_not_lock_scrapers_out_of_a_workers_metrics_listener(
        worker: tuple[WorkerProc, EchoServer, ssl.SSLContext]) -> None:
    """ReactorMetricsServer refuses newcomers at MAX_CLIENTS (64) while idle clients hold their 5 s head
    timeout: 64 connections renewed every 5 s keep Prometheus out (the public listener's finding 2 again)."""
    w, _app, _web = worker
    idle = [socket.create_connection((HOST, w.metrics_port), timeout=5) for _ in range(70)]
    try:
        assert "meshagent_proxy_" in w.metrics()
    finally:
        for s in idle:
            s.close()


@pytest.mark.slow
def test_the_supervisor_metrics_listener_does_not_pin_a_descriptor_per_idle_client() -> None:
    """serve_trio (in the agent's process) accepts every connection and parks it on a CapacityLimiter(64)
    with no timeout while it waits: 1,000 idle connections are 1,000 descriptors of the agent, and a scrape
    behind them waits its turn (~80 s)."""
    import trio
    from meshagent.proxy.metrics_http import serve_trio

    async def main() -> int:
        async def render() -> str:
            return "x 1\n"
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_trio, f"{HOST}:0", render)
            before = len(os.listdir("/proc/self/fd"))
            socks = []
            for _ in range(1000):
                s = trio.socket.socket()
                await s.connect((host, port))
                socks.append(s)
            # a scrape queued behind them: once it is answered, the server has seen every idle one
            scrape = trio.socket.socket()
            await scrape.connect((host, port))
            await scrape.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(8):  # today: starved ~80 s (64 slots, 5 s each, 1,000 idle ahead of it)
                assert (await scrape.recv(100)).startswith(b"HTTP/1.1 200")
            grown = len(os.listdir("/proc/self/fd")) - before - len(socks) - 1
            scrape.close()
            for s in socks:
                s.close()
            nursery.cancel_scope.cancel()
        return grown

    grown = trio.run(main)
    assert grown <= 64 + 16, f"{grown} server-side descriptors for 1,000 idle clients"


METRICS_CHILD = r"""
import os, resource, sys, time
from meshagent.proxy.metrics_http import ReactorMetricsServer
from meshagent.proxy.reactor import Reactor
reactor = Reactor()
server = ReactorMetricsServer(reactor, sys.argv[1], lambda: "x 1\n")
print(server.address[1], flush=True)
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used - 1, used - 1))
sys.stdin.readline()
start = time.process_time()
reactor.call_later(1.5, reactor.stop)
reactor.run()
print("cpu", time.process_time() - start, flush=True)
"""


def test_out_of_descriptors_the_metrics_listener_backs_off_instead_of_spinning() -> None:
    """The data plane's listener backs off on EMFILE (596a77b); ReactorMetricsServer._accept returns and is
    called again at once by the level-triggered reactor: a busy loop stealing the data path's CPU."""
    proc = subprocess.Popen([sys.executable, "-c", METRICS_CHILD, f"{HOST}:0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection((HOST, port), timeout=5) for _ in range(3)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline().split()
        assert out[0] == "cpu", out
        assert float(out[1]) < 0.15, out  # a spinning accept loop burns most of the 1.5 s
        for c in clients:
            c.close()
    finally:
        proc.kill()
        proc.wait(10)
