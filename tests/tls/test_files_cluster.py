"""Consul-style TLS on :8300 with files from `meshagent tls ca create` / `cert create`: servers verify
incoming and server hostnames, a client agent gets its certificate through auto_encrypt. An outsider is
refused at the handshake; a client certificate cannot act as a server; the cluster works."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshagent.agent.rpc.framing import pack_frame

from tests.support.agents import MESHAGENT, AgentProcess
from tests.support.tls_cluster import (
    answers_until_close,
    assert_cluster_works,
    attack_frames,
    cluster,
    kv,
    openssl_refused,
    plaintext_attempt,
    raft_servers,
    tls_attempt,
)

pytestmark = pytest.mark.slow


def _tls(tmp: Path, *args: str) -> None:
    subprocess.run([MESHAGENT, "tls", *args], cwd=tmp, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[AgentProcess]]]:
    tmp: Path = tmp_path_factory.mktemp("files-tls")
    _tls(tmp, "ca", "create")
    _tls(tmp, "cert", "create", "-server", "-dc", "dc1")
    _tls(tmp, "cert", "create", "-client", "-dc", "dc1")
    (tmp / "server.hcl").write_text(f'''
tls {{
  defaults {{
    ca_file = "{tmp / "mesh-agent-ca.pem"}"
    cert_file = "{tmp / "dc1-server-mesh-0.pem"}"
    key_file = "{tmp / "dc1-server-mesh-0-key.pem"}"
    verify_incoming = true
    verify_outgoing = true
  }}
  internal_rpc {{ verify_server_hostname = true }}
}}
auto_encrypt {{ allow_tls = true }}
''')
    (tmp / "client.hcl").write_text(f'''
tls {{
  defaults {{
    ca_file = "{tmp / "mesh-agent-ca.pem"}"
    verify_outgoing = true
  }}
  internal_rpc {{ verify_server_hostname = true }}
}}
auto_encrypt {{ tls = true }}
''')
    with cluster(tmp, ["-config-file", str(tmp / "server.hcl")],
                 ["-config-file", str(tmp / "client.hcl")]) as started:
        yield tmp, started


def test_an_outsider_is_refused_at_the_handshake(agents: tuple[Path, list[AgentProcess]]) -> None:
    _, (s1, s2, s3, _) = agents
    before = raft_servers(s1)
    for server in (s1, s2, s3):
        for frame in attack_frames():
            assert plaintext_attempt(server.host, frame) == []
            assert tls_attempt(server.host, frame) == []
    assert openssl_refused(s2.host)
    assert kv(s1, "owned") is None
    assert raft_servers(s1) == before and len(before) == 3


def test_a_client_certificate_cannot_act_as_a_server(agents: tuple[Path, list[AgentProcess]]) -> None:
    tmp, (s1, *_) = agents
    client_cert = (str(tmp / "dc1-client-mesh-0.pem"), str(tmp / "dc1-client-mesh-0-key.pem"))
    apply, add_server, raft, _ = attack_frames()
    answer = tls_attempt(s1.host, add_server, client_cert)
    assert answer and "permission denied" in str(answer[0]), answer
    assert tls_attempt(s1.host, raft, client_cert) == []  # dropped
    # A client agent's own call is let through (this one writes a key: clients forward writes).
    answer = tls_attempt(s1.host, apply, client_cert)
    assert answer and answer[0][2] is None, answer  # type: ignore[index]
    assert kv(s1, "owned") == "by-attacker"
    httpx.delete(f"{s1.http_addr}/v1/kv/owned", timeout=10)


def test_the_auto_encrypt_channel_only_signs(agents: tuple[Path, list[AgentProcess]]) -> None:
    _, (s1, *_) = agents
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((s1.host, 8300), timeout=5) as raw:
        raw.sendall(b"\x07")
        with ctx.wrap_socket(raw) as sock:
            sock.sendall(pack_frame(["req", 1, "barrier", False]))
            answer = answers_until_close(sock)
    assert answer and "permission denied" in str(answer[0]), answer


def test_the_cluster_works_and_the_auto_encrypt_client_forwards(agents: tuple[Path, list[AgentProcess]]) -> None:
    _, (s1, s2, s3, client) = agents
    assert_cluster_works([s1, s2, s3], client)
    assert "auto_encrypt: got a client certificate" in client.log()
