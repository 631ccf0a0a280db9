"""TLS streams (127.0.14.2): the server side requires a mesh client certificate, the client side checks the
server's SPIFFE ID; hostile peers (garbage, stalls, no/foreign/expired certificates) cost bounded time and
are refused; keys never touch the disk; both roots are trusted during a rotation; no ALPN h2."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.proxy.dial import accept_tls, connect
from meshagent.proxy.snapshot import TLSMaterial
from meshagent.proxy.stream import Stream
from meshagent.proxy.tls import TLSConfigError, TLSContexts, peer_spiffe_id

from tests.support.dataplane_harness import Loop, client_ctx
from tests.support.mesh_certs import LeafFiles, MeshCA
from tests.support.wait import wait_for

HOST = "127.0.14.2"


def material(ca: MeshCA, leaf: LeafFiles, roots: tuple[str, ...] | None = None) -> TLSMaterial:
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, roots or (ca.root_pem,), ca.trust_domain, leaf.spiffe_id)


class TLSServer:
    """An echo server on the reactor terminating mesh mTLS; records each connection's outcome."""

    def __init__(self, loop: Loop, ctxs: TLSContexts, handshake_timeout: float = 10.0) -> None:
        self.loop = loop
        self.ctxs = ctxs
        self.timeout = handshake_timeout
        self.outcomes: list[str] = []  # "ok <spiffe id>" or the failure reason
        self.sock = socket.create_server((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        loop.call(lambda: loop.reactor.add_reader(self.sock.fileno(), self._accept))

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        accept_tls(self.loop.reactor, conn, self.ctxs.server, self._ready, self.outcomes.append, self.timeout)

    def _ready(self, stream: Stream) -> None:
        self.outcomes.append(f"ok {stream.peer_spiffe_id}")
        stream.on_data = stream.write
        stream.on_eof = stream.shutdown_write

    def close(self) -> None:
        self.loop.call(lambda: self.loop.reactor.remove_reader(self.sock.fileno()))
        self.sock.close()


def client_context(ca: MeshCA, leaf: LeafFiles | None, tmp: Path, **kw: Any) -> ssl.SSLContext:
    if leaf is None:
        return client_ctx(ca, tmp, **kw)
    return client_ctx(ca, tmp, leaf.cert_pem, leaf.key_pem, **kw)


def echo_once(ctx: ssl.SSLContext, port: int, data: bytes = b"hi") -> bytes:
    """Handshake, send, read one answer; b"" when the server refused us (alert or close)."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(data)
                return tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            return b""


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def server(loop: Loop, ca: MeshCA) -> Iterator[TLSServer]:
    srv = TLSServer(loop, TLSContexts.build(material(ca, ca.leaf("db"))))
    yield srv
    srv.close()


def test_a_mesh_client_is_served_and_its_spiffe_id_read(server: TLSServer, ca: MeshCA, tmp_path: Path) -> None:
    assert echo_once(client_context(ca, ca.leaf("web"), tmp_path), server.port) == b"hi"
    assert server.outcomes == [f"ok {ca.spiffe_id('web')}"]


def test_tls12_is_accepted_and_13_preferred(server: TLSServer, ca: MeshCA, tmp_path: Path) -> None:
    ctx12 = client_context(ca, ca.leaf("web"), tmp_path, maximum_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((HOST, server.port), timeout=10) as raw, ctx12.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.2"
    ctx = client_context(ca, ca.leaf("web"), tmp_path)
    with socket.create_connection((HOST, server.port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.3"


def test_no_alpn_h2_is_ever_selected(server: TLSServer, ca: MeshCA, tmp_path: Path) -> None:
    ctx = client_context(ca, ca.leaf("web"), tmp_path)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((HOST, server.port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.selected_alpn_protocol() is None


@pytest.mark.parametrize("who", ["none", "other-ca", "expired"])
def test_clients_without_a_valid_mesh_certificate_are_refused(server: TLSServer, ca: MeshCA, tmp_path: Path,
                                                             who: str) -> None:
    leaf = {"none": None, "other-ca": MeshCA().leaf("web"), "expired": ca.expired_leaf("web")}[who]
    assert echo_once(client_context(ca, leaf, tmp_path), server.port) == b""
    wait_for(lambda: server.outcomes == ["tls-handshake"], 10, what="refusal recorded",
             report=lambda: repr(server.outcomes))


def test_garbage_instead_of_a_client_hello_is_refused_at_once(server: TLSServer) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(100_000))
        try:
            while sock.recv(65536):
                pass
        except ConnectionError:
            pass
    wait_for(lambda: server.outcomes == ["tls-handshake"], 10, what="garbage refused")


def test_a_stalled_handshake_times_out(loop: Loop, ca: MeshCA) -> None:
    srv = TLSServer(loop, TLSContexts.build(material(ca, ca.leaf("db"))), handshake_timeout=0.3)
    try:
        with socket.create_connection((HOST, srv.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01")  # the first bytes of a record, then nothing
            wait_for(lambda: srv.outcomes == ["tls-handshake-timeout"], 10, what="timeout")
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the server
    finally:
        srv.close()


def test_both_roots_are_trusted_during_a_rotation(loop: Loop, ca: MeshCA, tmp_path: Path) -> None:
    new_ca = MeshCA(ca.trust_domain)
    both = (ca.root_pem, new_ca.root_pem)
    srv = TLSServer(loop, TLSContexts.build(material(new_ca, new_ca.leaf("db"), both)))
    try:
        old_client = client_context(ca, ca.leaf("web"), tmp_path / "old")
        old_client.load_verify_locations(cadata=new_ca.root_pem)  # the old side got the new root too
        new_client = client_context(new_ca, new_ca.leaf("web"), tmp_path / "new")
        assert echo_once(old_client, srv.port) == b"hi"
        assert echo_once(new_client, srv.port) == b"hi"
    finally:
        srv.close()


def test_the_client_side_checks_the_servers_spiffe_id(server: TLSServer, loop: Loop, ca: MeshCA) -> None:
    ctxs = TLSContexts.build(material(ca, ca.leaf("web")))
    results: list[str] = []

    def dial(expected: tuple[str, ...]) -> None:
        def ready(stream: Stream) -> None:
            results.append(f"ok {stream.peer_spiffe_id}")
            stream.close()
        loop.call(lambda: connect(loop.reactor, HOST, server.port, 5.0, ctxs.client, ready, results.append,
                                  expected_spiffe_ids=expected))

    dial((ca.spiffe_id("cache"),))
    wait_for(lambda: results == ["spiffe-mismatch"], 10, what="mismatch")
    dial((ca.spiffe_id("cache"), ca.spiffe_id("db")))
    wait_for(lambda: results[1:] == [f"ok {ca.spiffe_id('db')}"], 10, what="match")


def test_the_client_side_refuses_a_server_of_another_ca(loop: Loop, ca: MeshCA) -> None:
    other = MeshCA(ca.trust_domain)
    srv = TLSServer(loop, TLSContexts.build(material(other, other.leaf("db"), (other.root_pem, ca.root_pem))))
    ctxs = TLSContexts.build(material(ca, ca.leaf("web")))
    results: list[str] = []
    try:
        loop.call(lambda: connect(loop.reactor, HOST, srv.port, 5.0, ctxs.client, results.append,
                                  results.append, expected_spiffe_ids=(ca.spiffe_id("db"),)))
        wait_for(lambda: results == ["tls-handshake"], 10, what="refused")
    finally:
        srv.close()


def test_connect_failures_are_named(loop: Loop) -> None:
    results: list[str] = []
    dead = socket.create_server((HOST, 0))
    port = dead.getsockname()[1]
    dead.close()
    loop.call(lambda: connect(loop.reactor, HOST, port, 5.0, None, lambda s: results.append("ok"),
                              results.append))
    wait_for(lambda: results == ["connect-refused"], 10, what="refused")
    # a listener whose backlog is full never completes the TCP handshake: a timeout
    full = socket.socket()
    full.bind((HOST, 0))
    full.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(full.getsockname())
            fillers.append(s)
        loop.call(lambda: connect(loop.reactor, HOST, full.getsockname()[1], 0.3, None,
                                  lambda s: results.append("ok"), results.append))
        wait_for(lambda: len(results) == 2, 10, what="second dial")
        assert results[1] == "connect-timeout"  # the kernel drops SYNs to a full backlog
    finally:
        for s in fillers:
            s.close()
        full.close()


def test_key_material_never_reaches_the_disk(ca: MeshCA) -> None:
    before = set(os.listdir("/proc/self/fd"))
    ctxs = TLSContexts.build(material(ca, ca.leaf("web")))
    assert set(os.listdir("/proc/self/fd")) <= before  # the memfds are closed
    assert ctxs.server.verify_mode == ssl.CERT_REQUIRED
    assert ctxs.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not ctxs.client.check_hostname


@pytest.mark.parametrize("field", ["cert_pem", "key_pem", "roots_pem"])
def test_bad_material_is_refused_naming_the_field(ca: MeshCA, field: str) -> None:
    good = material(ca, ca.leaf("web"))
    bad: dict[str, Any] = {"cert_pem": good.cert_pem, "key_pem": good.key_pem, "roots_pem": good.roots_pem}
    bad[field] = ("not a pem",) if field == "roots_pem" else "not a pem"
    with pytest.raises(TLSConfigError, match=field.split("_")[0]):
        TLSContexts.build(TLSMaterial(bad["cert_pem"], bad["key_pem"], bad["roots_pem"], ca.trust_domain,
                                      good.spiffe_id))
    with pytest.raises(TLSConfigError, match="key"):  # a key that is not the certificate's
        TLSContexts.build(TLSMaterial(good.cert_pem, ca.leaf("db").key_pem, good.roots_pem, ca.trust_domain,
                                      good.spiffe_id))


def _der(uris: list[str], *, dns: bool = False, is_ca: bool = False) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if dns:
        sans.append(x509.DNSName("x.example"))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class _FakePeer:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> Any:
        assert binary_form
        return self.der


@pytest.mark.parametrize(("uris", "dns", "is_ca", "expected"), [
    (["spiffe://td/ns/default/dc/dc1/svc/web"], False, False, "spiffe://td/ns/default/dc/dc1/svc/web"),
    (["spiffe://td/ns/default/dc/dc1/svc/web"], True, False, "spiffe://td/ns/default/dc/dc1/svc/web"),
    (["spiffe://a", "spiffe://b"], False, False, None),  # two identities: none
    ([], True, False, None),  # no URI at all
    (["spiffe://td/ns/default/dc/dc1/svc/web"], False, True, None),  # a CA is never a peer identity
])
def test_peer_spiffe_id_is_the_one_uri_of_an_end_entity(uris: list[str], dns: bool, is_ca: bool,
                                                        expected: str | None) -> None:
    assert peer_spiffe_id(_FakePeer(_der(uris, dns=dns, is_ca=is_ca))) == expected  # type: ignore[arg-type]
    assert peer_spiffe_id(_FakePeer(b"")) is None  # type: ignore[arg-type]


def test_a_server_without_session_tickets_is_looked_at_a_bounded_number_of_times(loop: Loop, ca: MeshCA) -> None:
    from meshagent.proxy.stream import MAX_SESSION_LOOKS
    server_ctxs = TLSContexts.build(material(ca, ca.leaf("db")))
    server_ctxs.server.num_tickets = 0
    srv = TLSServer(loop, server_ctxs)
    ctxs = TLSContexts.build(material(ca, ca.leaf("web")))
    got: list[bytes] = []
    sessions: list[Any] = []
    streams: list[Stream] = []
    looks: list[int] = []

    def ready(stream: Stream) -> None:
        streams.append(stream)
        stream.on_data = got.append

    try:
        loop.call(lambda: connect(loop.reactor, HOST, srv.port, 5.0, ctxs.client, ready, got.append,
                                  on_session=sessions.append))
        wait_for(lambda: streams, 10, what="connected")
        for i in range(MAX_SESSION_LOOKS + 3):
            loop.call(lambda i=i: streams[0].write(b"%d" % i))
            wait_for(lambda i=i: b"".join(got).endswith(b"%d" % i), 10, what=f"echo {i}")
            looks.append(loop.call(lambda: streams[0]._session_looks))
        assert sessions == []
        assert looks[-1] == MAX_SESSION_LOOKS and loop.call(lambda: streams[0].on_session) is None
        loop.call(streams[0].close)
    finally:
        srv.close()


def test_peer_spiffe_id_is_none_outside_the_certificates_validity() -> None:
    """A resumed session skips verification: the identity must still expire with the certificate."""
    import time
    fake = _FakePeer(_der(["spiffe://td/ns/default/dc/dc1/svc/web"]))  # valid from now for an hour
    now = time.time()
    assert peer_spiffe_id(fake, now=now + 60) == "spiffe://td/ns/default/dc/dc1/svc/web"  # type: ignore[arg-type]
    assert peer_spiffe_id(fake, now=now + 7200) is None  # type: ignore[arg-type]
    assert peer_spiffe_id(fake, now=now - 3600) is None  # type: ignore[arg-type]
