"""A client agent answers what a server answers (issue 16): `/v1/status/*`, `/v1/operator/raft/*` and
`/v1/snapshot` run on a server over RPC `http_forward` (agent/http/server_forward.py,
agent/server/acl_endpoints.py). Unit checks of the RPC's arguments, its body bounds and the restore's
inflation bound; then two server processes and a client on 127.0.55.10-19: list-peers, the leader, the peers
and a snapshot (saved and restored) through the client equal the servers', and a restarted server names its
peers at once; `catalog datacenters` lists ours."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner, Result
from meshagent.agent.acl.objects import Link, Token
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import commands
from meshagent.agent.http import operator_api, server_forward
from meshagent.agent.http.api import API
from meshagent.agent.http.messages import Request
from meshagent.agent.http.query import HTTPError
from meshagent.agent.rpc.errors import Rejected
from meshagent.agent.server import acl_endpoints
from meshagent.agent.server.acl_endpoints import FORWARDED, MAX_SNAPSHOT_BODY, parse_args
from meshagent.cli.main import cli
from meshagent.snapshot_archive import pack, unpack

from tests.support.agents import AgentProcess
from tests.support.cli_env import ENV_CLEAR
from tests.support.http_harness import FakeAgent
from tests.support.ports import ports_free
from tests.support.wait import wait_for

MiB = 1024 * 1024


def _args(**kw: Any) -> dict[str, Any]:
    return {"method": "GET", "path": "/v1/status/leader", "query": "", "body": b"", "token": "", **kw}


# --------------------------------------------------------------------------------------------- the RPC


@pytest.mark.parametrize("path", ["/v1/status/leader", "/v1/status/peers", "/v1/operator/raft/configuration",
                                  "/v1/operator/raft/peer", "/v1/operator/autopilot/health", "/v1/snapshot",
                                  "/v1/acl/tokens"])
def test_http_forward_takes_the_server_only_paths(path: str) -> None:
    assert parse_args(_args(path=path), FORWARDED, "http_forward").path == path


@pytest.mark.parametrize("args", [
    _args(path="/v1/kv/x"), _args(path="/v1/snapshotx"), _args(path="/v1/status/leader/x"),
    _args(path="/v1/status/"), _args(path="/v1/operator/keyring"), _args(path="/v1/agent/self"),
    _args(path="/v1/operator/raft/../../kv/x"), _args(query="index=3"), _args(query="token=x"),
    _args(body=b"x" * (MiB + 1)), _args(method="PUT", path="/v1/snapshot", body=b"x" * (MAX_SNAPSHOT_BODY + 1)),
    _args(method="PUT", path="/v1/acl/token", body=b"x" * (MiB + 1)), _args(token=7), _args(extra=1), None,
])
def test_http_forward_refuses_anything_else(args: Any) -> None:
    with pytest.raises(Rejected):
        parse_args(args, FORWARDED, "http_forward")


def test_acl_http_stays_acl_only_and_a_restore_may_be_a_frame() -> None:
    with pytest.raises(Rejected, match="acl_http: path must be one of /v1/acl/"):
        parse_args(_args())
    request = parse_args(_args(method="PUT", path="/v1/snapshot", body=b"x" * (2 * MiB)), FORWARDED, "http_forward")
    assert len(request.body) == 2 * MiB and request.header(b"x-consul-token") == b"anonymous"


def test_an_unwired_endpoint_refuses() -> None:
    with pytest.raises(Rejected, match="http_forward: this server's HTTP API is not running"):
        trio.run(acl_endpoints.AclHttpEndpoint().forward, _args())


class _Caller:
    """A client's way to a server (RPCCaller) that keeps what it was asked and answers 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, args: Any) -> Any:
        self.calls.append((method, args))
        return [200, [[b"Content-Type", b"application/json"], [b"Set-Cookie", b"x"]], b'"ok"']


class _Chunks:
    """A streamed body (BodyStream's `async for`) of `count` chunks of `size` bytes."""

    def __init__(self, size: int, count: int) -> None:
        self.left, self.chunk = count, b"z" * size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return self.chunk


def _api(default: str = "") -> Any:
    return SimpleNamespace(agent=SimpleNamespace(acl=SimpleNamespace(tokens=SimpleNamespace(default=default))))


def test_forward_sends_the_token_and_relays_only_consuls_headers() -> None:
    caller = _Caller()
    request = Request(method="GET", path="/v1/snapshot", query="stale&token=abc&index=4", headers=[], body=b"")
    answer = trio.run(server_forward.forward, _api("default-secret"), caller, request)
    assert answer == (200, [(b"content-type", b"application/json")], b'"ok"')
    assert caller.calls == [("http_forward", {"method": "GET", "path": "/v1/snapshot", "query": "stale=",
                                              "body": b"", "token": "abc"})]
    bare = Request(method="GET", path="/v1/status/peers", query="", headers=[], body=b"")
    trio.run(server_forward.forward, _api("default-secret"), caller, bare)
    trio.run(server_forward.forward, _api(), caller, bare)
    assert [args["token"] for _, args in caller.calls[1:]] == ["default-secret", ""]  # "" is anonymous there


def test_a_streamed_body_over_the_frame_is_413_before_any_call() -> None:
    caller = _Caller()
    big = Request(method="PUT", path="/v1/snapshot", query="", headers=[], body=b"",
                  body_stream=_Chunks(MiB, 17))  # type: ignore[arg-type]
    status, _, text = trio.run(lambda: server_forward.forward(_api(), caller, big, max_body=MAX_SNAPSHOT_BODY))
    assert status == 413 and b"send it to a server's HTTP API" in text and not caller.calls
    fits = Request(method="PUT", path="/v1/snapshot", query="", headers=[], body=b"",
                   body_stream=_Chunks(MiB, 3))  # type: ignore[arg-type]
    trio.run(lambda: server_forward.forward(_api(), caller, fits, max_body=MAX_SNAPSHOT_BODY))
    assert len(caller.calls[0][1]["body"]) == 3 * MiB


def _tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_a_forwarded_restore_inflates_no_bomb() -> None:
    # 20 MiB of zeros is ~20 KiB of gzip: an in-memory body is measured before it is inflated whole.
    bomb = _tar_gz({"meta.json": b"{}", "state.bin": bytes(20 * MiB)})
    assert len(bomb) < MiB
    with pytest.raises(HTTPError) as refused:
        operator_api._unpack_bounded(bomb)
    assert refused.value.status == 413 and "inflates to more than" in str(refused.value)
    # ... also behind a small first gzip member.
    with pytest.raises(HTTPError):
        operator_api._unpack_bounded(gzip.compress(b"x") + bomb)
    meta, state = operator_api._unpack_bounded(pack({"Index": 3, "Term": 1, "ID": "1-3-0", "Version": 1}, b"st"))
    assert state == b"st" and meta["Index"] == 3
    with pytest.raises(HTTPError) as bad:
        operator_api._unpack_bounded(b"not an archive")
    assert bad.value.status == 400


def test_http_forward_checks_acls_as_the_servers_own_api() -> None:
    # A server's API under default deny, its `default` token a management one: a forwarded request without a
    # token is anonymous (403), never that default; a management token gets past every check.
    mgmt = "55555555-0c2f-4b0e-9a53-2f0c9d9e1a01"
    agent = FakeAgent()
    agent.config = replace(agent.config, acl=replace(agent.config.acl, enabled=True, default_policy="deny"))
    agent.acl = ACLResolver(agent.config, agent.store)
    catalog = agent.store.catalog
    catalog.apply(catalog.last_index + 1, commands.acl_init(""))
    catalog.apply(catalog.last_index + 1, commands.acl_token_set(Token(
        accessor_id="55555555-0000-4000-8000-000000000001", secret_id=mgmt,
        policies=(Link("00000000-0000-0000-0000-000000000001", "global-management"),))))
    agent.acl.tokens.default = mgmt
    endpoint = acl_endpoints.AclHttpEndpoint(API(agent))
    for method, path in (("GET", "/v1/operator/raft/configuration"), ("GET", "/v1/snapshot"),
                         ("PUT", "/v1/snapshot"), ("DELETE", "/v1/operator/raft/peer")):
        status, _, body = trio.run(endpoint.forward, _args(method=method, path=path, query="id=x"))
        assert status == 403 and b"Permission denied" in body, (path, body)
        status, _, body = trio.run(endpoint.forward, _args(method=method, path=path, query="id=x", token=mgmt))
        assert status != 403, (path, body)  # past the check (this stand-in agent runs no Raft: a 500)
    assert trio.run(endpoint.forward, _args())[0] == 200  # status needs no token


# --------------------------------------------------------------------------------------------- processes


def _hosts(n: int) -> list[str]:
    found = [h for i in range(10, 20) if ports_free(h := f"127.0.55.{i}")][:n]
    if len(found) < n:
        pytest.skip("no free agent ports on 127.0.55.10-19")
    return found


def _server_args(name: str, host: str, join: str, tmp: Path) -> list[str]:
    return ["-server", "-bootstrap-expect", "2", "-node", name, "-bind", host, "-client", host,
            "-data-dir", str(tmp / name), "-retry-join", join]


@pytest.fixture(scope="module")
def trio_of(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[AgentProcess]]:
    """[server 1, server 2, client]: two servers (bootstrap_expect 2) with a leader, and a client agent."""
    tmp = tmp_path_factory.mktemp("forwarding")
    s1, s2, c = _hosts(3)
    started: list[AgentProcess] = []
    try:
        for name, host in (("fw-s1", s1), ("fw-s2", s2)):
            started.append(AgentProcess(host=host, workdir=tmp, args=_server_args(name, host, s1, tmp)).start(
                wait=False))
        started.append(AgentProcess(host=c, workdir=tmp, args=[
            "-node", "fw-c", "-bind", c, "-client", c, "-data-dir", str(tmp / "fw-c"), "-retry-join", s1]).start(
            wait=False))
        for agent in started:
            agent.wait_ready(30)
        wait_for(lambda: all(_get(a, "/v1/status/leader").json() for a in started), 30,
                 what="a leader known on the servers and through the client")
        yield started
    finally:
        for agent in started:
            agent.kill()


def _get(agent: AgentProcess, path: str) -> httpx.Response:
    return httpx.get(agent.http_addr + path, timeout=10)


def _cli(agent: AgentProcess, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-http-addr", agent.http_addr], env=ENV_CLEAR)


@pytest.mark.slow
def test_status_and_raft_through_a_client_equal_a_servers(trio_of: list[AgentProcess]) -> None:
    s1, _, client = trio_of
    assert _get(client, "/v1/status/leader").json() == _get(s1, "/v1/status/leader").json() != ""
    assert sorted(_get(client, "/v1/status/peers").json()) == sorted(_get(s1, "/v1/status/peers").json())
    assert len(_get(client, "/v1/status/peers").json()) == 2
    config = _get(client, "/v1/operator/raft/configuration")
    assert config.status_code == 200 and config.json() == _get(s1, "/v1/operator/raft/configuration").json()
    assert {s["Node"] for s in config.json()["Servers"]} == {"fw-s1", "fw-s2"}
    via_client, via_server = _cli(client, "operator", "raft", "list-peers"), _cli(s1, "operator", "raft", "list-peers")
    assert via_client.exit_code == 0, via_client.output
    assert via_client.output == via_server.output and "fw-s2" in via_client.output
    # meshagent catalog datacenters, for people and for programs.
    assert (_cli(client, "catalog", "datacenters").output, _cli(client, "catalog", "datacenters", "-format", "json")
            .output) == ("dc1\n", '[\n    "dc1"\n]\n')
    # The keyring stays the agent's own (its Serf query reaches every member from any agent).
    assert _get(client, "/v1/operator/keyring").status_code == 200
    # A removal of an unknown peer is the server's refusal, relayed.
    refused = httpx.delete(client.http_addr + "/v1/operator/raft/peer?id=nobody", timeout=10)
    assert refused.status_code >= 400 and "nobody" in refused.text


@pytest.mark.slow
def test_snapshot_save_and_restore_through_a_client(trio_of: list[AgentProcess], tmp_path: Path) -> None:
    s1, _, client = trio_of
    assert httpx.put(s1.http_addr + "/v1/kv/forwarded", content=b"before", timeout=10).json() is True
    saved = tmp_path / "via-client.snap"
    result = _cli(client, "snapshot", "save", str(saved))
    assert result.exit_code == 0, result.output
    meta, state = unpack(saved.read_bytes())

    def same_as_a_servers() -> bool:
        # The server's state at the index the client's snapshot has: the same bytes.
        answer = _get(s1, "/v1/snapshot?stale")
        server_meta, server_state = unpack(answer.content)
        return server_meta["Index"] == meta["Index"] and server_state == state

    if not same_as_a_servers():  # the catalog moved between the two (anti-entropy): take the client's again
        def again() -> bool:
            nonlocal meta, state
            meta, state = unpack(_get(client, "/v1/snapshot").content)
            return same_as_a_servers()
        wait_for(again, 10, what="a client snapshot equal to the server's at its index")
    assert httpx.put(s1.http_addr + "/v1/kv/forwarded", content=b"after", timeout=10).json() is True
    restored = httpx.put(client.http_addr + "/v1/snapshot", content=saved.read_bytes(), timeout=30)
    assert restored.status_code == 200, restored.text
    wait_for(lambda: _get(s1, "/v1/kv/forwarded?raw").content == b"before", 10, what="the restored value")


@pytest.mark.slow
def test_a_restarted_server_names_its_peers_at_once(trio_of: list[AgentProcess]) -> None:
    _, s2, _ = trio_of
    # The names are saved once a second, off the loop: kill only once they are on disk (the test is of
    # the restart, not of a kill racing the first save).
    names = s2.workdir / "fw-s2" / "raft" / "peer-names.json"
    def saved() -> bool:
        try:
            return {"fw-s1", "fw-s2"} <= set(json.loads(names.read_text()).values())
        except (OSError, ValueError):
            return False

    wait_for(saved, 15, what="server 2's peer names saved")
    s2.kill()
    s2.start(wait=False)
    s2.wait_ready(30)
    servers = _get(s2, "/v1/operator/raft/configuration").json()["Servers"]
    assert sorted(s["Node"] for s in servers) == ["fw-s1", "fw-s2"], json.dumps(servers)
