"""`meshagent connect proxy` and its feed (proxy/http_feed.py), against the real /v1 API serving snapshots from
a stand-in ProxyRunner (tests/support/proxy_api_harness.py) on 127.0.19.N:

- the command resolves -sidecar-for / -proxy-id as Consul does and names every refusal (unknown id, not a
  connect-proxy, a sidecar the agent runs itself, agent unreachable, bad flags), reading the address from
  -http-addr, MESH_HTTP_ADDR or CONSUL_HTTP_ADDR;
- the feed follows snapshot versions with blocking queries, keeps the last good snapshot while the agent is
  away and picks up the new one when it is back, and refuses hostile answers with a clear reason;
- run end to end (when the supervisor and worker have landed): mTLS in through the public listener to a local
  app, still served while the agent is down, and SIGTERM stops it with its workers.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner
from meshagent.cli.connect_proxy_cmd import EMBEDDED_HINT
from meshagent.cli.main import cli
from meshagent.proxy import http_feed
from meshagent.proxy.http_feed import FeedError, HTTPFeed, _backoff
from meshagent.proxy.snapshot import ProxySnapshot

from tests.support.agents import MESHAGENT, AgentProcess
from tests.support.ports import free_ports
from tests.support.proxy_api_harness import CA, PROXY_ID, ProxyAPIServer, web_snapshot
from tests.support.wait import wait_for, wait_for_async

HOST = "127.0.19.10"  # the API under test
JUNK_HOST = "127.0.19.11"  # scripted hostile answers
CLOSED_HOST = "127.0.19.12"  # nothing listens here


@pytest.fixture
def agent() -> Iterator[ProxyAPIServer]:
    server = ProxyAPIServer(HOST).start()
    try:
        yield server
    finally:
        server.stop()


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    base = {"MESH_HTTP_ADDR": "", "CONSUL_HTTP_ADDR": "", "MESH_HTTP_TOKEN": ""}
    return CliRunner().invoke(cli, ["connect", "proxy", *args], env={**base, **(env or {})})


# ---------------------------------------------------------------------- the command's refusals


def test_flags_are_checked_first() -> None:
    result = _invoke()
    assert result.exit_code == 1 and "One of -sidecar-for or -proxy-id is required" in result.output
    result = _invoke("-sidecar-for", "web", "-proxy-id", PROXY_ID)
    assert result.exit_code == 1 and "not both" in result.output
    result = _invoke("-sidecar-for", "web", "-log-level", "loud")
    assert result.exit_code == 1 and "Invalid -log-level 'loud'" in result.output


def test_unknown_ids_and_kinds_are_named(agent: ProxyAPIServer) -> None:
    result = _invoke("-sidecar-for", "nope", "-http-addr", agent.url)
    assert result.exit_code == 1 and "No sidecar proxy registered for nope" in result.output
    result = _invoke("-proxy-id", "nope", "-http-addr", agent.url)
    assert result.exit_code == 1 and "Unknown proxy service ID 'nope'" in result.output
    result = _invoke("-proxy-id", "web", "-http-addr", agent.url)
    assert result.exit_code == 1 and "'web' is not a connect-proxy (its kind is typical)" in result.output
    result = _invoke("-sidecar-for", PROXY_ID, "-http-addr", agent.url)
    assert result.exit_code == 1 and f"use -proxy-id {PROXY_ID}" in result.output


def test_two_sidecars_for_one_service_ask_for_proxy_id(agent: ProxyAPIServer) -> None:
    services = agent.agent.local._services
    services["other-proxy"] = services[PROXY_ID]
    result = _invoke("-sidecar-for", "web", "-http-addr", agent.url)
    assert result.exit_code == 1 and "More than one sidecar proxy registered for web" in result.output
    assert f"other-proxy, {PROXY_ID}" in result.output


def test_a_sidecar_the_agent_runs_itself_is_refused() -> None:
    server = ProxyAPIServer(HOST, embedded=True).start()
    try:
        result = _invoke("-sidecar-for", "web", "-http-addr", server.url)
    finally:
        server.stop()
    assert result.exit_code == 1 and EMBEDDED_HINT in result.output and PROXY_ID in result.output


def test_an_unreachable_agent_is_named() -> None:
    port = free_ports(1, CLOSED_HOST)[0]
    result = _invoke("-sidecar-for", "web", "-http-addr", f"{CLOSED_HOST}:{port}")
    assert result.exit_code == 1
    assert f"cannot connect to the agent at http://{CLOSED_HOST}:{port}" in result.output


@pytest.mark.parametrize("variable", ["MESH_HTTP_ADDR", "CONSUL_HTTP_ADDR"])
def test_the_address_comes_from_the_environment(agent: ProxyAPIServer, variable: str) -> None:
    result = _invoke("-sidecar-for", "nope", env={variable: agent.url})
    assert result.exit_code == 1 and "No sidecar proxy registered for nope" in result.output


# ---------------------------------------------------------------------- the feed


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures, ceiling in ((1, 0.25), (2, 0.5), (3, 1.0), (8, 30.0), (80, 30.0)):
        for _ in range(50):
            assert ceiling / 2 <= _backoff(failures, rng) <= ceiling


def test_the_feed_follows_versions(agent: ProxyAPIServer) -> None:
    agent.publish(web_snapshot(1))
    seen: list[ProxySnapshot] = []

    async def main() -> None:
        feed = HTTPFeed(agent.url, PROXY_ID, wait_s=30)
        first = await feed.first()
        assert first == web_snapshot(1) and feed.status.version == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed.run, seen.append, first)
            await wait_for_async(lambda: agent.runner.waiters == 1)  # parked on ?index=1
            assert seen == []  # the same version is not handed on again
            await trio.to_thread.run_sync(agent.publish, web_snapshot(2, local_port=8081))
            await wait_for_async(lambda: len(seen) == 1)
            await trio.to_thread.run_sync(agent.publish, web_snapshot(3, local_port=8082))
            await wait_for_async(lambda: len(seen) == 2)
            nursery.cancel_scope.cancel()
        assert [s.version for s in seen] == [2, 3] and seen[1].local_service_port == 8082
        assert feed.status.version == 3 and feed.status.errors == 0

    trio.run(main)


def test_the_feed_keeps_the_last_snapshot_while_the_agent_is_away() -> None:
    port = free_ports(1, HOST)[0]
    server = ProxyAPIServer(HOST, port).start()
    server.publish(web_snapshot(5))
    seen: list[ProxySnapshot] = []
    holder: dict[str, ProxyAPIServer] = {}

    async def main() -> None:
        feed = HTTPFeed(server.url, PROXY_ID, wait_s=30, backoff_min_s=0.05, backoff_max_s=0.2)
        first = await feed.first()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed.run, seen.append, first)
            await wait_for_async(lambda: server.runner.waiters == 1)
            await trio.to_thread.run_sync(server.stop)  # the agent goes away mid-poll
            await wait_for_async(lambda: feed.status.errors >= 3)
            assert not feed.status.healthy and "cannot connect" in feed.status.last_error
            assert seen == [] and feed.status.version == 5  # nothing replaced what runs
            # The agent is back (restarted: it counts versions from 1 again) with a new configuration.
            back = ProxyAPIServer(HOST, port)
            holder["back"] = back
            await trio.to_thread.run_sync(back.start)
            await trio.to_thread.run_sync(back.publish, web_snapshot(1, local_port=9999))
            await wait_for_async(lambda: len(seen) == 1, 15)
            assert feed.status.healthy and feed.status.last_error == ""
            nursery.cancel_scope.cancel()
        assert seen[0].local_service_port == 9999 and feed.status.version == 1

    try:
        trio.run(main)
    finally:
        if "back" in holder:
            holder["back"].stop()


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the (status, headers, body) the test put in `answer`."""

    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")

    def do_GET(self) -> None:
        status, headers, body = self.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def junk() -> Iterator[Callable[[int, dict[str, str], bytes], str]]:
    server = http.server.ThreadingHTTPServer((JUNK_HOST, 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def answer(status: int, headers: dict[str, str], body: bytes) -> str:
        _Scripted.answer = (status, headers, body)
        return f"http://{JUNK_HOST}:{server.server_address[1]}"

    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()


def _first_error(url: str) -> FeedError:
    async def main() -> FeedError:
        with pytest.raises(FeedError) as info:
            await HTTPFeed(url, PROXY_ID).first()
        return info.value

    return trio.run(main)


def test_hostile_answers_are_refused_with_the_reason(junk: Callable[..., str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    good = json.dumps(web_snapshot(1).to_wire()).encode()
    index = {"X-Consul-Index": "1"}
    err = _first_error(junk(200, index, b"<html>"))
    assert "not JSON" in str(err) and not err.fatal
    for header in ({}, {"X-Consul-Index": "0"}, {"X-Consul-Index": "-3"}, {"X-Consul-Index": "9" * 30}):
        assert "X-Consul-Index" in str(_first_error(junk(200, header, good)))
    bad = web_snapshot(1).to_wire()
    bad["upstreams"][0]["local_bind_port"] = 70000
    err = _first_error(junk(200, index, json.dumps(bad).encode()))
    assert "bad configuration" in str(err) and "upstreams[0].local_bind_port" in str(err)
    other = web_snapshot(1).to_wire()
    other["proxy_id"] = "db-sidecar-proxy"
    assert "not 'web-sidecar-proxy'" in str(_first_error(junk(200, index, json.dumps(other).encode())))
    err = _first_error(junk(200, index, b"[" * 100_000))
    assert "not JSON" in str(err)
    monkeypatch.setattr(http_feed, "MAX_BODY", 1000)
    assert "larger than" in str(_first_error(junk(200, index, good)))
    monkeypatch.undo()
    err = _first_error(junk(500, {}, b"boom\r\n\x1b[31mred"))
    assert not err.fatal and err.status == 500 and "boom [31mred" in str(err) and "\x1b" not in str(err)
    err = _first_error(junk(404, {}, b"unknown proxy service ID: web-sidecar-proxy"))
    assert err.fatal and "unknown proxy service ID" in str(err)
    # and a good answer still works through the same path
    async def ok() -> ProxySnapshot:
        return await HTTPFeed(junk(200, index, good), PROXY_ID).first()

    assert trio.run(ok) == web_snapshot(1)


def test_the_feed_retries_a_503_until_a_snapshot_exists(agent: ProxyAPIServer) -> None:
    seen: list[ProxySnapshot] = []

    async def main() -> None:
        feed = HTTPFeed(agent.url, PROXY_ID, wait_s=1, backoff_min_s=0.05, backoff_max_s=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed.run, seen.append)
            await wait_for_async(lambda: feed.status.errors >= 1, 15)  # ?wait=1s then 503: no snapshot yet
            assert "503" in feed.status.last_error
            await trio.to_thread.run_sync(agent.publish, web_snapshot(4))
            await wait_for_async(lambda: len(seen) == 1, 15)
            nursery.cancel_scope.cancel()
        assert seen[0].version == 4

    trio.run(main)


# ---------------------------------------------------------------------- end to end


APP_HOST = "127.0.19.20"  # the local app and the sidecar's public listener


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _mtls_echo(port: int, leaf_dir: Path, payload: bytes) -> bytes:
    """One mTLS connection as service `api` to the public listener: send, read the echo back."""
    cert, key = CA.leaf("api").write(leaf_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # mesh identities are SPIFFE URIs, not host names
    ctx.load_verify_locations(cadata=CA.root_pem)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection((APP_HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=APP_HOST) as tls:
        tls.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them (trio spawns from a worker thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_the_command_runs_the_data_plane_until_sigterm(tmp_path: Path) -> None:
    echo = socketserver.ThreadingTCPServer((APP_HOST, 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    public = free_ports(1, APP_HOST)[0]
    server = ProxyAPIServer(HOST).start()
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen([MESHAGENT, "connect", "proxy", "-sidecar-for", "web", "-http-addr", server.url,
                             "-log-level", "debug"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def report() -> str:
            return (tmp_path / "proxy.log").read_text(errors="replace")[-3000:]

        # Started before the agent has a configuration (a leaf being signed): it waits for the first one.
        wait_for(lambda: server.runner.waiters == 1, 30, what="the command waiting for a first snapshot",
                 report=report)
        assert proc.poll() is None
        server.publish(web_snapshot(1, public=(APP_HOST, public), local_port=echo.server_address[1],
                                    upstreams=()))
        assert wait_for(lambda: _mtls_echo(public, tmp_path, b"hello") == b"hello", 30,
                        what="an mTLS echo through the standalone proxy", report=report)
        workers = _children(proc.pid)
        assert workers, "the proxy runs worker processes"
        server.stop()  # the agent goes away: what runs keeps running, new connections still served
        wait_for(lambda: "cannot connect" in report() or "RemoteProtocolError" in report(), 30,
                 what="the feed noticing the agent is gone", report=report)
        assert _mtls_echo(public, tmp_path, b"still here") == b"still here"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, report()
        assert "SIGTERM, stopping" in report()
        for pid in workers:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, what=f"worker {pid} gone")
        with pytest.raises(OSError):
            socket.create_connection((APP_HOST, public), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        server.stop()
        echo.shutdown()
        echo.server_close()


AGENT_HOST = "127.0.19.30"  # a real -dev agent, its sidecar's public listener and its app


@pytest.mark.slow
def test_a_real_agent_leaves_an_embedded_false_sidecar_to_the_command(tmp_path: Path) -> None:
    echo = socketserver.ThreadingTCPServer((AGENT_HOST, 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    public = free_ports(1, AGENT_HOST)[0]
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.hcl").write_text(f"""
service {{
  name = "web"
  port = {echo.server_address[1]}
  connect {{
    sidecar_service {{
      port = {public}
      proxy {{
        local_service_address = "{AGENT_HOST}"
        config {{ embedded = false }}
      }}
    }}
  }}
}}
""")
    agent = AgentProcess(host=AGENT_HOST, args=["-dev", "-client", AGENT_HOST, "-bind", AGENT_HOST, "-node",
                                                "proxy-cmd", "-config-dir", str(conf)], workdir=tmp_path).start()
    log = (tmp_path / "proxy.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        assert agent.proc is not None
        with httpx.Client(base_url=agent.http_addr, timeout=10) as http:
            # The agent builds the configuration but runs no worker for it.
            wait_for(lambda: http.get(f"/v1/agent/connect/proxy/{PROXY_ID}").status_code == 200, 30,
                     what="the agent's snapshot of the sidecar", report=agent.log)
            assert _children(agent.proc.pid) == []
            leaf = http.get("/v1/agent/connect/ca/leaf/api").json()
            roots = http.get("/v1/agent/connect/ca/roots").json()
        proc = subprocess.Popen([MESHAGENT, "connect", "proxy", "-sidecar-for", "web"], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "CONSUL_HTTP_ADDR": agent.http_addr,
                                                               "MESH_HTTP_ADDR": ""})

        def report() -> str:
            return (tmp_path / "proxy.log").read_text(errors="replace")[-3000:] + "\n--- agent ---\n" + agent.log()

        (tmp_path / "api.crt").write_text(leaf["CertPEM"])
        (tmp_path / "api.key").write_text(leaf["PrivateKeyPEM"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata="\n".join(r["RootCert"] for r in roots["Roots"]))
        ctx.load_cert_chain(tmp_path / "api.crt", tmp_path / "api.key")

        def echo_through() -> bool:
            with socket.create_connection((AGENT_HOST, public), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=AGENT_HOST) as tls:
                tls.sendall(b"via the agent's CA")
                return tls.recv(100) == b"via the agent's CA"

        wait_for(echo_through, 30, what="an mTLS echo through the command's data plane", report=report)
        assert _children(agent.proc.pid) == []  # the agent still runs none of it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, report()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        agent.stop()
        echo.shutdown()
        echo.server_close()
