"""Harness for the :8300 security tests (tests/tls): a 3-server + 1-client cluster on 127.0.0.80-109, and an
attacker that speaks the server port with nothing but a socket (plaintext, or TLS without our credentials)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from meshagent.agent.rpc.framing import FrameReader, pack_frame
from meshagent.raft.messages import AppendRequest, encode_message

from .agents import AgentProcess
from .ports import free_hosts
from .wait import wait_for

FIRST, LAST = 80, 109  # this suite's own addresses


@contextmanager
def cluster(tmp: Path, extra_server: list[str], extra_client: list[str]) -> Iterator[list[AgentProcess]]:
    """Three servers (bootstrap_expect 3) and one client agent; yields [s1, s2, s3, client] once the servers
    have a leader and the client has registered its node. Kills them all by PID on exit."""
    hosts = free_hosts(4, FIRST, LAST)
    started: list[AgentProcess] = []
    try:
        for i, host in enumerate(hosts[:3]):
            started.append(AgentProcess(host=host, workdir=tmp, args=[
                "-server", "-bootstrap-expect", "3", "-node", f"s{i + 1}", "-bind", host, "-client", host,
                "-data-dir", str(tmp / f"s{i + 1}"), "-retry-join", hosts[0], *extra_server]).start(wait=False))
        for agent in started:
            agent.wait_ready(30)
        wait_for(lambda: all(httpx.get(f"{a.http_addr}/v1/status/leader", timeout=2).json() for a in started),
                 40, what="a leader known on every server")
        client = AgentProcess(host=hosts[3], workdir=tmp, args=[
            "-node", "c1", "-bind", hosts[3], "-client", hosts[3], "-data-dir", str(tmp / "c1"),
            "-retry-join", hosts[0], *extra_client]).start()
        started.append(client)
        yield started
    finally:
        for agent in started:
            agent.kill()


def kv(agent: AgentProcess, key: str) -> str | None:
    """A KV value read from `agent` (None when absent)."""
    r = httpx.get(f"{agent.http_addr}/v1/kv/{key}?raw", timeout=10)
    return r.text if r.status_code == 200 else None


def raft_servers(agent: AgentProcess) -> list[tuple[str, bool]]:
    """(address, voter) of the Raft configuration as `agent` sees it."""
    r = httpx.get(f"{agent.http_addr}/v1/operator/raft/configuration", timeout=10).json()
    return sorted((s["Address"], s["Voter"]) for s in r["Servers"])


def attack_frames() -> list[bytes]:
    """What an outsider sends: a KV write, an add_server that would demote a voter, a forged Raft append,
    and a feed subscription."""
    import msgpack
    from meshagent.agent.catalog.commands import kv_set

    cmd = msgpack.packb(kv_set("owned", b"by-attacker"), use_bin_type=True)
    forged = AppendRequest(term=1, leader="evil", prev_index=0, prev_term=0, entries=(), commit=0, seq=1)
    return [pack_frame(["req", 1, "apply", cmd]),
            pack_frame(["req", 2, "add_server", {"id": "evil", "address": "127.0.0.1:1", "name": "evil"}]),
            pack_frame(["raft", "evil", "127.0.0.1:1", encode_message(forged)]),
            pack_frame(["sub", "evil"])]


def answers_until_close(sock: socket.socket | ssl.SSLSocket) -> list[object]:
    """Frames the server sends back before it closes (or 3 s pass)."""
    reader = FrameReader()
    frames: list[object] = []
    sock.settimeout(3)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            frames += reader.feed(data)
    except (OSError, ValueError):
        pass
    return frames


def plaintext_attempt(host: str, frame: bytes) -> list[object]:
    """Send `frame` in plaintext; the server's answers (none when refused)."""
    with socket.create_connection((host, 8300), timeout=5) as sock:
        try:
            sock.sendall(frame)
        except OSError:
            return []
        return answers_until_close(sock)


def tls_attempt(host: str, frame: bytes, cert: tuple[str, str] | None = None) -> list[object]:
    """Send `frame` over TLS 1.3 without verifying the server, presenting `cert` (cert, key files) or
    nothing; the server's answers (none when refused)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    try:
        with socket.create_connection((host, 8300), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
            sock.sendall(frame)
            return answers_until_close(sock)
    except OSError:  # ssl.SSLError included: the handshake was refused
        return []


def openssl_refused(host: str) -> bool:
    """Debian's `openssl s_client` without a client certificate, sending a frame: True when the server cut
    the connection at the handshake (TLS 1.3 checks the client's certificate after the client's Finished, so
    s_client sees an alert or the close when it next reads) and answered nothing."""
    frame = pack_frame(["req", 1, "barrier", False])
    proc = subprocess.run(["openssl", "s_client", "-connect", f"{host}:8300", "-tls1_3", "-ign_eof", "-quiet"],
                          input=frame, capture_output=True, timeout=20, check=False)
    err = proc.stderr.decode(errors="replace")
    reached = "CN = server." in err  # the server's certificate arrived: it was a refusal, not a dead port
    assert reached and proc.stdout == b"" and proc.returncode != 0, (proc.returncode, proc.stdout, err)
    return True


def assert_cluster_works(servers: list[AgentProcess], client: AgentProcess) -> None:
    """A KV write on one server reaches another, and the client agent's registration reaches the catalog."""
    s1, s2, s3 = servers
    assert httpx.put(f"{s2.http_addr}/v1/kv/greeting", content="hello", timeout=10).json() is True
    assert wait_for(lambda: kv(s3, "greeting") == "hello", 10, what="the write on another server")
    r = httpx.put(f"{client.http_addr}/v1/agent/service/register", json={"Name": "web", "Port": 80}, timeout=15)
    assert r.status_code == 200, r.text
    wait_for(lambda: any(i["Node"] == "c1" for i in httpx.get(f"{s1.http_addr}/v1/catalog/service/web",
                                                               timeout=5).json()),
             20, what="the client's registration in the catalog")
