"""A cluster started with only `-encrypt KEY` is closed on :8300 (mutual TLS under a CA derived from the
keyring): an outsider cannot apply a command, add a server, send Raft messages or subscribe to the feed;
openssl without a certificate is refused; the cluster works; keyring rotation keeps :8300 working."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from meshagent.agent.config.types import TLSConfig
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ServerError
from meshagent.agent.tls.policy import RPCTLS
from meshagent.gossip.keyring import Keyring

from tests.support.agents import MESHAGENT, AgentProcess
from tests.support.tls_cluster import (
    assert_cluster_works,
    attack_frames,
    cluster,
    kv,
    openssl_refused,
    plaintext_attempt,
    raft_servers,
    tls_attempt,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

OLD = os.urandom(32)
NEW = os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[AgentProcess]]:
    tmp: Path = tmp_path_factory.mktemp("keyring-tls")
    with cluster(tmp, ["-encrypt", _b64(OLD)], ["-encrypt", _b64(OLD)]) as started:
        yield started


def _barrier_with(key: bytes, host: str) -> object:
    """A `barrier` call from an in-process client holding only `key` (raises ServerError when refused)."""
    tls = RPCTLS(TLSConfig(), "dc1", server=False, keyring=Keyring([key]))

    async def call() -> object:
        async with trio.open_nursery() as nursery:
            try:
                return await RPCClient(f"{host}:8300", tls).call(nursery, "barrier", False, timeout=5)
            except ServerError as exc:
                return exc
            finally:
                nursery.cancel_scope.cancel()
    result = trio.run(call)
    if isinstance(result, ServerError):
        raise result
    return result


def test_an_outsider_cannot_write_join_send_raft_or_subscribe(agents: list[AgentProcess]) -> None:
    s1, s2, s3, _ = agents
    before = raft_servers(s1)
    for server in (s1, s2, s3):
        for frame in attack_frames():
            assert plaintext_attempt(server.host, frame) == []
            assert tls_attempt(server.host, frame) == []
    # A certificate from a key the cluster does not hold is refused too.
    with pytest.raises(ServerError):
        _barrier_with(os.urandom(32), s1.host)
    assert openssl_refused(s1.host)
    assert kv(s1, "owned") is None
    assert raft_servers(s1) == before
    assert all(voter for _, voter in before) and len(before) == 3


def test_the_cluster_works_and_a_client_forwards_its_registration(agents: list[AgentProcess]) -> None:
    s1, s2, s3, client = agents
    assert_cluster_works([s1, s2, s3], client)
    assert _barrier_with(OLD, s1.host) is not None  # a holder of the key is let in


def _keyring(agent: AgentProcess, *args: str) -> None:
    subprocess.run([MESHAGENT, "keyring", *args, "-http-addr", agent.http_addr], check=True, timeout=60,
                   capture_output=True)


def test_keyring_rotation_keeps_the_server_port_working(agents: list[AgentProcess]) -> None:
    s1, s2, s3, client = agents
    mark = len(client.log())
    _keyring(s1, "-install", _b64(NEW))
    _keyring(s1, "-use", _b64(NEW))
    assert httpx.put(f"{s3.http_addr}/v1/kv/mid", content="1", timeout=10).json() is True
    _keyring(s1, "-remove", _b64(OLD))
    # Connections made under the old key's CA are cut; new ones are made under the new key's.
    with pytest.raises(ServerError):
        _barrier_with(OLD, s2.host)
    assert _barrier_with(NEW, s2.host) is not None
    for i, (writer, reader) in enumerate(((s2, s3), (s3, s1), (s1, s2))):
        assert wait_for(lambda w=writer, n=i: httpx.put(f"{w.http_addr}/v1/kv/after{n}", content="ok",
                                                         timeout=10).json(), 20, what="a write after rotation")
        assert wait_for(lambda r=reader, n=i: kv(r, f"after{n}") == "ok", 10, what="the write elsewhere")
    r = httpx.put(f"{client.http_addr}/v1/kv/from-client", content="yes", timeout=15)
    assert r.status_code == 200 and r.json() is True, r.text
    assert kv(s1, "from-client") == "yes"
    # The client's feed subscription was made under OLD too: it is cut and resubscribes under NEW.
    wait_for(lambda: re.search(r"catalog feed from \S+ lost", client.log()[mark:]), 20,
             what="the old-key feed subscription cut")
    assert wait_for(lambda: kv(client, "after2") == "ok", 20, what="the client's catalog feed after rotation")
    for agent in (s1, s2, s3, client):
        assert agent.proc is not None and agent.proc.poll() is None
