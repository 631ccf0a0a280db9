"""A refused TLS handshake logs OpenSSL's reason (127.0.36.2): a peer whose leaf the trust bundle cannot
verify (a pruned root's leaf, issue 17 part T) is "unable to get local issuer certificate" in the log, while
the metric keeps its coarse "tls-handshake"; the lines are rate limited per worker."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.proxy import stream as stream_mod
from meshagent.proxy.dial import accept_tls
from meshagent.proxy.snapshot import TLSMaterial
from meshagent.proxy.stream import Stream
from meshagent.proxy.tls import TLSContexts

from tests.support.dataplane_harness import Loop, client_ctx
from tests.support.mesh_certs import MeshCA
from tests.support.wait import wait_for

HOST = "127.0.36.2"


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def _refused(ctx: ssl.SSLContext, port: int) -> bool:
    """One connection presenting ctx's leaf; True when the server refused it (TLS 1.3: after our handshake)."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"hi")
                return tls.recv(10) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def test_a_leaf_of_a_root_not_in_the_bundle_is_refused_and_the_reason_logged_once_per_interval(
        loop: Loop, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kept, pruned = MeshCA(), MeshCA()
    server_leaf = kept.leaf("web")
    ctxs = TLSContexts.build(TLSMaterial(server_leaf.cert_pem, server_leaf.key_pem, (kept.root_pem,),
                                         kept.trust_domain, server_leaf.spiffe_id))
    outcomes: list[str] = []
    lsock = socket.create_server((HOST, 0))
    lsock.setblocking(False)
    port = lsock.getsockname()[1]

    def ready(stream: Stream) -> None:
        outcomes.append("ok")
        stream.close()

    def accept() -> None:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            return
        accept_tls(loop.reactor, conn, ctxs.server, ready, outcomes.append)

    loop.call(lambda: loop.reactor.add_reader(lsock.fileno(), accept))
    stream_mod._hs_log[:] = [float("-inf"), 0.0]  # another test's failure in this process must not mute ours
    old = pruned.leaf("frontend")
    client = client_ctx(kept, tmp_path, old.cert_pem, old.key_pem)
    try:
        with caplog.at_level(logging.WARNING, logger="meshagent.proxy.stream"):
            for _ in range(3):
                assert _refused(client, port)
            wait_for(lambda: len(outcomes) == 3, 10, what="three refused handshakes")
        assert outcomes == ["tls-handshake"] * 3  # the metric's reason stays coarse
        lines = [r.getMessage() for r in caplog.records if r.name == "meshagent.proxy.stream"]
        assert len(lines) == 1, lines  # rate limited: one line per HS_LOG_INTERVAL_S
        assert "server side" in lines[0] and "unable to get local issuer certificate" in lines[0], lines
        assert stream_mod._hs_log[1] == 2  # the two not written are counted for the next line
    finally:
        loop.call(lambda: loop.reactor.remove_reader(lsock.fileno()))
        lsock.close()
