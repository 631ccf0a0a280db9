"""The :8300 TLS policy in one process, over real sockets: keyring CAs, roles, rotation cutting old-key
connections, auto_encrypt's authorization, the plaintext warning's rate limit."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import trio
import trio.testing
from meshagent import certs
from meshagent.agent.config.types import TLSConfig
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ServerError
from meshagent.agent.server.listener import ServerListener
from meshagent.agent.tls.auto_encrypt import request_certificate
from meshagent.agent.tls.policy import RPCTLS
from meshagent.gossip.keyring import Keyring


def test_every_holder_of_a_key_derives_the_same_ca_and_another_key_another() -> None:
    key = os.urandom(32)
    assert certs.keyring_ca(key).cert_pem == certs.keyring_ca(key).cert_pem
    assert certs.keyring_ca(key).cert.subject != certs.keyring_ca(os.urandom(32)).cert.subject


async def _echo(method: str, args: Any) -> Any:
    return [method, args]


async def _call(address: str, tls: RPCTLS | None, method: str = "barrier", **kw: Any) -> Any:
    """The call's result, or the ServerError it raised."""
    async with trio.open_nursery() as nursery:
        try:
            return await RPCClient(address, tls, **kw).call(nursery, method, "x", timeout=5)
        except ServerError as exc:
            return exc
        finally:
            nursery.cancel_scope.cancel()


def _agent(keyring: Keyring, server: bool = False, **tls: Any) -> RPCTLS:
    return RPCTLS(TLSConfig(**tls), "dc1", server=server, keyring=keyring)


async def _rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    ring = Keyring([old])
    listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo, tls=_agent(ring, server=True))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        address = f"127.0.0.1:{port}"
        peer_ring = Keyring([old])
        peer = _agent(peer_ring, server=True)
        client = RPCClient(address, peer)
        assert await client.call(nursery, "hello", 1) == ["hello", 1]  # a server certificate: anything
        assert isinstance(await _call(address, _agent(Keyring([old])), "hello"), ServerError)  # client: denied
        assert await _call(address, _agent(Keyring([old]))) == ["barrier", "x"]
        # Rotation, in the order `meshagent keyring` does it; the peer follows a step behind at each stage.
        ring.install(new)
        assert await client.call(nursery, "hello", 2) == ["hello", 2]
        peer_ring.install(new)
        peer_ring.use(new)  # presents under NEW before the server switched: already trusted
        assert await _call(address, peer, "hello") == ["hello", "x"]
        ring.use(new)
        ring.remove(old)
        assert isinstance(await _call(address, _agent(Keyring([old]))), ServerError)
        # The first connection's certificate came from OLD's CA: cut at its next frame; the client reconnects
        # (under NEW, the peer's primary now).
        with pytest.raises(ServerError, match="lost connection"):
            await client.call(nursery, "hello", 3)
        assert await client.call(nursery, "hello", 4) == ["hello", 4]
        nursery.cancel_scope.cancel()


def test_rotation_moves_trust_without_a_gap_and_cuts_the_old_key() -> None:
    trio.run(_rotation)


async def _auto_encrypt(tmp: Any) -> None:
    key = os.urandom(32)
    ca = certs.new_ca()
    (tmp / "ca.pem").write_bytes(ca.cert_pem)
    server_cert, server_key = certs.issue(ca, "server", "dc1")
    assert server_key is not None
    (tmp / "s.pem").write_bytes(server_cert)
    (tmp / "s-key.pem").write_bytes(server_key)
    files = {"ca_file": str(tmp / "ca.pem"), "cert_file": str(tmp / "s.pem"), "key_file": str(tmp / "s-key.pem"),
             "verify_incoming": True, "verify_outgoing": True, "verify_server_hostname": True}
    server = _agent(Keyring([key]), server=True, auto_encrypt_allow_tls=True, **files)
    listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo, tls=server)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        address = f"127.0.0.1:{port}"
        client_cfg = {"ca_file": str(tmp / "ca.pem"), "verify_outgoing": True, "verify_server_hostname": True,
                      "auto_encrypt_tls": True}
        # Without a gossip key of the cluster, the signing call is refused (the server has a keyring).
        stranger = RPCTLS(TLSConfig(**client_cfg), "dc1", server=False)
        with pytest.raises(ServerError, match="permission denied"):
            await request_certificate(stranger, address, "stranger")
        assert stranger.auto_encrypt_pending
        assert isinstance(await _call(address, stranger), ServerError)  # no certificate: nothing else either
        # A member: signed by the server's keyring CA (no CA key beside ca_file here), then let in as a client.
        member = RPCTLS(TLSConfig(**client_cfg), "dc1", server=False, keyring=Keyring([key]))
        await request_certificate(member, address, "member")
        assert await _call(address, member) == ["barrier", "x"]
        assert isinstance(await _call(address, member, "hello"), ServerError)  # a client, not a server
        # The auto_encrypt channel allows nothing but signing.
        assert isinstance(await _call(address, member, bootstrap=True), ServerError)
        nursery.cancel_scope.cancel()


def test_auto_encrypt_needs_a_keyring_proof_when_the_server_has_a_keyring(tmp_path: Any) -> None:
    trio.run(_auto_encrypt, tmp_path)


async def _warnings() -> None:
    listener = ServerListener("0.0.0.0", 0, lambda *a: None, _echo)
    assert listener.plaintext_open
    assert not ServerListener("127.0.0.1", 0, lambda *a: None, _echo).plaintext_open
    assert not ServerListener("0.0.0.0", 0, lambda *a: None, _echo, tls=_agent(Keyring([os.urandom(32)]),
                                                                                 server=True)).plaintext_open
    for _ in range(5):
        listener._warn_plaintext("192.0.2.1")
    await trio.sleep(listener.PLAINTEXT_WARN_EVERY + 1)  # virtual time (MockClock)
    listener._warn_plaintext("192.0.2.2")


def test_plaintext_connections_are_warned_about_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "meshagent.server.transport")
    trio.run(_warnings, clock=trio.testing.MockClock(autojump_threshold=0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "192.0.2.1" in lines[0] and "192.0.2.2" in lines[1] and "4 more" in lines[1]


async def _migration() -> None:
    key = os.urandom(32)
    # Step 1-2 of turning a gossip key on: the server accepts TLS and plaintext; agents still sending
    # plaintext and agents already sending TLS both get through.
    open_server = RPCTLS(TLSConfig(), "dc1", server=True, keyring=Keyring([key]), encrypt_verify_incoming=False,
                         encrypt_verify_outgoing=False)
    assert open_server.accepts_plaintext and open_server.accepts_tls and not open_server.sends_tls
    # Step 3: plaintext refused.
    closed_server = RPCTLS(TLSConfig(), "dc1", server=True, keyring=Keyring([key]))
    assert not closed_server.accepts_plaintext
    sending_tls = RPCTLS(TLSConfig(), "dc1", server=False, keyring=Keyring([key]), encrypt_verify_incoming=False)
    async with trio.open_nursery() as nursery:
        for server, plaintext_ok in ((open_server, True), (closed_server, False)):
            listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo, tls=server)
            port = await nursery.start(listener.run)
            address = f"127.0.0.1:{port}"
            assert await _call(address, sending_tls) == ["barrier", "x"]
            plain = await _call(address, None)
            assert (plain == ["barrier", "x"]) if plaintext_ok else isinstance(plain, ServerError)
        nursery.cancel_scope.cancel()


def test_turning_a_gossip_key_on_accepts_both_until_verify_incoming() -> None:
    trio.run(_migration)
