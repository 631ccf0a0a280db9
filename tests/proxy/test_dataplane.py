"""DataPlane end to end on loopback (127.0.14.0/24): a plain client → web's upstream listener → mTLS → db's
public listener → an echo application, both sidecars on one reactor in a thread; then apply() swaps."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import Endpoint, IntentionRule, Intentions, ProxySnapshot

from tests.support import dataplane_harness as harness
from tests.support.dataplane_harness import EchoServer, Loop, counter, material
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.14.1"


# ---------------------------------------------------------------------- harness


def server_snapshot(ca: MeshCA, public_port: int, app_port: int, **kw: Any) -> ProxySnapshot:
    return harness.server_snapshot(ca, HOST, public_port, app_port, **kw)


def client_snapshot(ca: MeshCA, bind_port: int, endpoints: tuple[Endpoint, ...], **kw: Any) -> ProxySnapshot:
    return harness.client_snapshot(ca, HOST, bind_port, endpoints, **kw)


def roundtrip(port: int, payload: bytes, host: str = HOST, timeout: float = 20.0) -> bytes:
    return harness.roundtrip(host, port, payload, timeout)


class Mesh:
    """db's sidecar in front of an echo app, web's sidecar with an upstream listener for db."""

    def __init__(self, loop: Loop, ca: MeshCA) -> None:
        self.loop = loop
        self.ca = ca
        self.app = EchoServer(HOST)
        self.public_port, self.bind_port = free_ports(2, HOST)
        self.server_metrics = ProxyMetrics("db", "dc1")
        self.client_metrics = ProxyMetrics("web", "dc1")
        self.server = loop.call(lambda: DataPlane(loop.reactor, self.server_metrics))
        self.client = loop.call(lambda: DataPlane(loop.reactor, self.client_metrics))
        self.endpoint = Endpoint(HOST, self.public_port)
        assert self.apply_server(server_snapshot(ca, self.public_port, self.app.port)) == []
        assert self.apply_client(client_snapshot(ca, self.bind_port, (self.endpoint,))) == []

    def apply_server(self, snap: ProxySnapshot) -> list[str]:
        return self.loop.call(lambda: self.server.apply(snap))

    def apply_client(self, snap: ProxySnapshot) -> list[str]:
        return self.loop.call(lambda: self.client.apply(snap))

    def close(self) -> None:
        self.loop.call(self.server.close)
        self.loop.call(self.client.close)
        self.app.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture
def mesh(loop: Loop, ca: MeshCA) -> Iterator[Mesh]:
    m = Mesh(loop, ca)
    yield m
    m.close()


# ---------------------------------------------------------------------- tests


def test_plain_client_reaches_the_app_through_both_sidecars_with_1mb_both_ways(mesh: Mesh) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    assert roundtrip(mesh.bind_port, payload) == payload
    assert mesh.app.accepted == 1
    wait_for(lambda: counter(mesh.client_metrics, "bytes_sent_total") >= len(payload), what="outbound bytes")
    wait_for(lambda: counter(mesh.server_metrics, "connections_total") == 1, what="inbound connection")


def test_many_connections_at_once(mesh: Mesh) -> None:
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda i=i: results.append(roundtrip(mesh.bind_port, b"x%d" % i * 1000)))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(b"x%d" % i * 1000 for i in range(20))


def test_denied_source_is_closed_after_the_handshake_while_an_allowed_one_passes(mesh: Mesh, ca: MeshCA) -> None:
    deny_web = Intentions(default_allow=True, rules=(IntentionRule(source="web", action="deny",
                                                                   name="web => db"),))
    assert mesh.apply_server(server_snapshot(ca, mesh.public_port, mesh.app.port, intentions=deny_web)) == []
    assert roundtrip(mesh.bind_port, b"hello") == b""
    wait_for(lambda: counter(mesh.server_metrics, "authorization_denials_total") == 1, what="denial counted")
    assert mesh.app.accepted == 0
    # another source, "api", is allowed by the default
    port = free_ports(1, HOST)[0]
    assert mesh.apply_client(client_snapshot(ca, port, (mesh.endpoint,), tls=material(ca, "api"))) == []
    assert roundtrip(port, b"hello") == b"hello"
    assert mesh.app.accepted == 1


def test_an_open_connection_survives_a_deny_and_new_tls_material(mesh: Mesh, ca: MeshCA) -> None:
    sock = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    sock.sendall(b"one")
    assert sock.recv(10) == b"one"
    deny = Intentions(default_allow=False)
    assert mesh.apply_server(server_snapshot(ca, mesh.public_port, mesh.app.port, intentions=deny)) == []
    assert mesh.apply_client(client_snapshot(ca, mesh.bind_port, (mesh.endpoint,))) == []  # a fresh leaf
    sock.sendall(b"two")
    assert sock.recv(10) == b"two"
    assert roundtrip(mesh.bind_port, b"new") == b""  # new connections see the deny
    sock.sendall(b"three")
    assert sock.recv(10) == b"three"
    sock.close()


def test_listener_removed_and_added_by_apply(mesh: Mesh, ca: MeshCA) -> None:
    new_port = free_ports(1, HOST)[0]
    assert mesh.apply_client(client_snapshot(ca, new_port, (mesh.endpoint,))) == []
    assert mesh.loop.call(mesh.client.listening) == [(HOST, new_port)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, mesh.bind_port), timeout=5)
    assert roundtrip(new_port, b"moved") == b"moved"


def test_bind_failure_is_reported_not_raised(mesh: Mesh, ca: MeshCA) -> None:
    blocker = socket.create_server((HOST, 0))  # no SO_REUSEPORT: our bind must fail
    port = blocker.getsockname()[1]
    try:
        errors = mesh.apply_client(client_snapshot(ca, port, (mesh.endpoint,)))
        assert len(errors) == 1 and f"{HOST}:{port}" in errors[0] and "upstream db" in errors[0]
    finally:
        blocker.close()


def test_endpoints_swap_without_cutting_an_open_connection(mesh: Mesh, ca: MeshCA, loop: Loop) -> None:
    sock = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    sock.sendall(b"a")
    assert sock.recv(10) == b"a"
    other_app = EchoServer(HOST)
    other_public = free_ports(1, HOST)[0]
    other = loop.call(lambda: DataPlane(loop.reactor, ProxyMetrics("db", "dc1")))
    try:
        assert loop.call(lambda: other.apply(server_snapshot(ca, other_public, other_app.port))) == []
        assert mesh.apply_client(client_snapshot(ca, mesh.bind_port, (Endpoint(HOST, other_public),))) == []
        assert roundtrip(mesh.bind_port, b"b") == b"b"
        assert other_app.accepted == 1
        sock.sendall(b"c")
        assert sock.recv(10) == b"c"  # still on the first endpoint
        assert mesh.app.accepted == 1
    finally:
        sock.close()
        loop.call(other.close)
        other_app.close()


def test_connect_failure_is_retried_on_another_endpoint(mesh: Mesh, ca: MeshCA) -> None:
    dead = Endpoint(HOST, free_ports(1, HOST)[0])  # nothing listens there
    snap = client_snapshot(ca, mesh.bind_port, (dead, mesh.endpoint))
    assert mesh.apply_client(snap) == []
    for i in range(6):
        assert roundtrip(mesh.bind_port, b"r%d" % i) == b"r%d" % i


def test_unreachable_upstream_closes_the_client(mesh: Mesh, ca: MeshCA) -> None:
    dead = Endpoint(HOST, free_ports(1, HOST)[0])
    assert mesh.apply_client(client_snapshot(ca, mesh.bind_port, (dead,))) == []
    assert roundtrip(mesh.bind_port, b"x") == b""


def test_circuit_breaker_max_connections_refuses_at_once(mesh: Mesh, ca: MeshCA) -> None:
    from meshagent.proxy.snapshot import Limits
    snap = client_snapshot(ca, mesh.bind_port, (mesh.endpoint,), limits=Limits(max_connections=1))
    assert mesh.apply_client(snap) == []
    first = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    first.sendall(b"1")
    assert first.recv(10) == b"1"
    assert roundtrip(mesh.bind_port, b"2") == b""
    assert counter(mesh.client_metrics, "circuit_breaker_trips_total") == 1
    first.close()
    wait_for(lambda: roundtrip(mesh.bind_port, b"3") == b"3", what="slot released")


def test_spiffe_id_defaults_to_the_destination(mesh: Mesh, ca: MeshCA) -> None:
    """An upstream for "cache" whose endpoint is db's sidecar: db's valid leaf is refused (spiffe-mismatch)."""
    snap = client_snapshot(ca, mesh.bind_port, (mesh.endpoint,), destination="cache")
    assert mesh.apply_client(snap) == []
    assert roundtrip(mesh.bind_port, b"x") == b""
    # The identity is checked once our side of the handshake is done: db's sidecar may have finished its side
    # and dialled its app by then (as with any client that hangs up), but no byte of ours ever reaches it.
    assert mesh.app.received == 0
    wire = mesh.client_metrics.to_wire()["counter"]["tls_handshake_failures_total"]
    assert any(labels[-1] == "spiffe-mismatch" for labels, _n in wire)


def test_session_resumed_on_the_second_dial(mesh: Mesh) -> None:
    assert roundtrip(mesh.bind_port, b"first") == b"first"
    assert roundtrip(mesh.bind_port, b"second") == b"second"
    sessions = mesh.loop.call(lambda: mesh.client.contexts.sessions)  # type: ignore[union-attr]
    assert sessions.full == 1 and sessions.resumed >= 1
    assert roundtrip(mesh.bind_port, b"third") == b"third"  # the cached session is offered again
    assert sessions.full == 1 and sessions.resumed == 2


def test_static_snapshot_round_trips_through_the_wire(mesh: Mesh, ca: MeshCA) -> None:
    """What the worker does with --snapshot FILE: from_wire(to_wire()) and apply."""
    snap = ProxySnapshot.from_wire(client_snapshot(ca, mesh.bind_port, (mesh.endpoint,)).to_wire())
    assert mesh.apply_client(replace(snap, version=7)) == []
    assert roundtrip(mesh.bind_port, b"static") == b"static"


def test_hostile_clients_on_the_public_listener_are_refused_and_counted(mesh: Mesh, ca: MeshCA,
                                                                      tmp_path: Any) -> None:
    import ssl
    with socket.create_connection((HOST, mesh.public_port), timeout=10) as sock:  # not TLS at all
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            while sock.recv(100):  # an alert at most, then the close
                pass
        except ConnectionError:
            pass
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS without a client certificate
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.root_pem)
    with socket.create_connection((HOST, mesh.public_port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"hi")
                assert tls.recv(10) == b""
        except (ssl.SSLError, ConnectionError):
            pass
    wait_for(lambda: counter(mesh.server_metrics, "tls_handshake_failures_total") == 2, 10,
             what="both counted", report=lambda: repr(mesh.server_metrics.to_wire()["counter"]))
    assert mesh.app.accepted == 0


def test_a_tcp_probe_of_the_public_listener_is_not_a_tls_failure(mesh: Mesh) -> None:
    """The sidecar's own "listening" check connects and closes every 10 s: no metric noise from it."""
    for _ in range(3):
        socket.create_connection((HOST, mesh.public_port), timeout=10).close()
    wait_for(lambda: mesh.loop.call(lambda: mesh.server.handshakes) == 0, 10, what="probes gone")
    with socket.create_connection((HOST, mesh.public_port), timeout=10) as sock:
        sock.sendall(b"\x00" * 10)  # but bytes that are not TLS are
    wait_for(lambda: counter(mesh.server_metrics, "tls_handshake_failures_total") == 1, 10, what="one failure")


def test_root_rotation_new_leaves_reach_old_ones(mesh: Mesh, ca: MeshCA) -> None:
    """Mid-rotation: db still has the old root's leaf, web already the new one; both trust both roots."""
    new_ca = MeshCA(ca.trust_domain)
    both = (ca.root_pem, new_ca.root_pem)
    server_tls = replace(material(ca, "db"), roots_pem=both)
    assert mesh.apply_server(server_snapshot(ca, mesh.public_port, mesh.app.port, tls=server_tls)) == []
    open_conn = socket.create_connection((HOST, mesh.bind_port), timeout=10)
    open_conn.sendall(b"before")
    assert open_conn.recv(10) == b"before"
    client_tls = replace(material(new_ca, "web"), roots_pem=both)
    assert mesh.apply_client(client_snapshot(ca, mesh.bind_port, (mesh.endpoint,), tls=client_tls)) == []
    assert roundtrip(mesh.bind_port, b"after") == b"after"
    open_conn.sendall(b"still")
    assert open_conn.recv(10) == b"still"
    open_conn.close()


def test_local_application_down_closes_the_mesh_client(mesh: Mesh) -> None:
    mesh.app.close()
    assert roundtrip(mesh.bind_port, b"x") == b""
    assert mesh.loop.reactor.errors == 0


def test_bad_tls_material_keeps_the_previous_and_reports(mesh: Mesh, ca: MeshCA) -> None:
    bad = replace(material(ca, "web"), key_pem="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    errors = mesh.apply_client(client_snapshot(ca, mesh.bind_port, (mesh.endpoint,), tls=bad))
    assert len(errors) == 1 and "key_pem" in errors[0]
    assert roundtrip(mesh.bind_port, b"still served") == b"still served"


CHILD = r"""
import resource, sys, time, os
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import ProxySnapshot
snap = ProxySnapshot.from_wire(__import__("json").loads(sys.stdin.readline()))
reactor = Reactor()
dp = DataPlane(reactor, ProxyMetrics("web", "dc1"))
assert dp.apply(snap) == []
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used - 1, used - 1))  # listdir counted its own fd: no room left
print("ready", flush=True)
sys.stdin.readline()  # the parent's clients are queued now
start = time.process_time()
reactor.call_later(float(sys.argv[1]), reactor.stop)
reactor.run()
print("cpu", time.process_time() - start, flush=True)
"""


def test_out_of_descriptors_the_listener_backs_off_instead_of_spinning(ca: MeshCA) -> None:
    import json
    import subprocess
    import sys
    bind = free_ports(1, HOST)[0]
    snap = client_snapshot(ca, bind, (Endpoint(HOST, free_ports(1, HOST)[0]),))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "1.5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(snap.to_wire()) + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        clients = [socket.create_connection((HOST, bind), timeout=5) for _ in range(3)]  # queued, unaccepted
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline().split()
        assert out[0] == "cpu", out
        # a spinning accept loop would burn most of the 1.5 s; backing off costs a few wake-ups
        assert float(out[1]) < 0.15, out
        for c in clients:
            c.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_handshakes_in_progress_are_bounded_oldest_evicted(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the cap the oldest pending handshake is closed, not the newcomer: idle sockets cannot lock out a
    mesh client that finishes its handshake at once."""
    import meshagent.proxy.dataplane as dataplane
    monkeypatch.setattr(dataplane, "MAX_HANDSHAKES", 3)
    stalled = [socket.create_connection((HOST, mesh.public_port), timeout=10) for _ in range(3)]
    wait_for(lambda: mesh.loop.call(lambda: mesh.server.handshakes) == 3, 10, what="three handshakes pending")
    newcomer = socket.create_connection((HOST, mesh.public_port), timeout=10)
    assert stalled[0].recv(10) == b""  # the oldest is closed at once, not after the 10 s handshake timeout
    def evictions() -> list[int]:
        wire = mesh.loop.call(mesh.server_metrics.to_wire)["counter"]["tls_handshake_failures_total"]
        return [n for labels, n in wire if labels[-1] == "too-many-handshakes"]
    wait_for(lambda: evictions() == [1], 10, what="the eviction counted", report=lambda: repr(evictions()))
    assert mesh.loop.call(lambda: mesh.server.handshakes) == 3
    assert roundtrip(mesh.bind_port, b"ok") == b"ok"  # a mesh client evicts another idle one and is served
    for sock in [*stalled, newcomer]:
        sock.close()
    wait_for(lambda: mesh.loop.call(lambda: mesh.server.handshakes) == 0, 10, what="slots freed")


def test_inbound_connections_to_the_local_app_are_bounded(mesh: Mesh) -> None:
    from meshagent.proxy.resilience import CircuitBreakers
    from meshagent.proxy.snapshot import Limits

    def limit() -> None:
        mesh.server.local_breakers = CircuitBreakers(Limits(max_connections=2))

    mesh.loop.call(limit)
    held = [socket.create_connection((HOST, mesh.bind_port), timeout=10) for _ in range(2)]
    for i, sock in enumerate(held):
        sock.sendall(b"%d" % i)
        assert sock.recv(10) == b"%d" % i
    assert roundtrip(mesh.bind_port, b"third") == b""
    assert counter(mesh.server_metrics, "circuit_breaker_trips_total") == 1
    assert mesh.app.accepted == 2
    held[0].close()
    wait_for(lambda: roundtrip(mesh.bind_port, b"again") == b"again", 10, what="a slot freed")
    held[1].close()
