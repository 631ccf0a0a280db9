"""`/v1/acl/*` on a client agent (issue 15): the client's replica holds no secrets, so the request runs on a
server over RPC `acl_http` and its answer is relayed. A real server and client process on 127.0.42.N under
default deny: SecretIDs come back through the client, refusals keep Consul's text and status, bootstrap
is once, and a blocking read on the client wakes on a write made on the server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

MGMT = "9c1f3d6e-6a55-4a51-b6a2-0d9a5b7c4e11"


def _hosts(n: int) -> list[str]:
    found = [h for i in range(10, 60) if ports_free(h := f"127.0.42.{i}")][:n]
    if len(found) < n:
        pytest.skip("no free agent ports on 127.0.42.10-59")
    return found


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    tmp: Path = tmp_path_factory.mktemp("acl-client")
    (tmp / "server.hcl").write_text(
        f'acl {{\n  enabled = true\n  default_policy = "deny"\n  tokens {{\n    initial_management = "{MGMT}"\n'
        f'    agent = "{MGMT}"\n  }}\n}}\n')
    (tmp / "client.hcl").write_text(
        f'acl {{\n  enabled = true\n  default_policy = "deny"\n  tokens {{\n    agent = "{MGMT}"\n  }}\n}}\n')
    s_host, c_host = _hosts(2)
    started: list[AgentProcess] = []
    try:
        server = AgentProcess(host=s_host, workdir=tmp, args=[
            "-server", "-bootstrap-expect", "1", "-node", "acl-srv", "-bind", s_host, "-client", s_host,
            "-data-dir", str(tmp / "srv"), "-config-file", str(tmp / "server.hcl")]).start()
        started.append(server)
        client = AgentProcess(host=c_host, workdir=tmp, args=[
            "-node", "acl-cli", "-bind", c_host, "-client", c_host, "-data-dir", str(tmp / "cli"),
            "-retry-join", s_host, "-config-file", str(tmp / "client.hcl")]).start()
        started.append(client)
        # The management token resolves on the client once the replica carries the builtins.
        wait_for(lambda: _get(client, "/v1/acl/token/self").status_code == 200, 20,
                 what="the client to resolve the management token")
        yield server, client
    finally:
        for agent in started:
            agent.kill()


def _get(agent: AgentProcess, path: str, token: str | None = MGMT) -> httpx.Response:
    return httpx.get(agent.http_addr + path, headers={"X-Consul-Token": token} if token else {}, timeout=15)


def _put(agent: AgentProcess, path: str, body: object, token: str | None = MGMT) -> httpx.Response:
    return httpx.put(agent.http_addr + path, json=body, headers={"X-Consul-Token": token} if token else {},
                     timeout=15)


def test_a_client_shows_secret_ids_it_does_not_hold(pair: tuple[AgentProcess, AgentProcess]) -> None:
    _, client = pair
    me = _get(client, "/v1/acl/token/self").json()
    assert me["SecretID"] == MGMT and me["Policies"][0]["Name"] == "global-management"
    policy = _put(client, "/v1/acl/policy", {"Name": "kv-ro", "Rules": 'key_prefix "" { policy = "read" }'})
    assert policy.status_code == 200, policy.text
    token = _put(client, "/v1/acl/token", {"Description": "via client", "Policies": [{"Name": "kv-ro"}]})
    assert token.status_code == 200, token.text
    secret = token.json()["SecretID"]
    assert uuid.UUID(secret) and secret != "<hidden>"
    listed = _get(client, "/v1/acl/tokens").json()
    assert secret in {t["SecretID"] for t in listed} and int(_get(client, "/v1/acl/tokens").headers["X-Consul-Index"])
    # The new token reads itself through the client; it may not read others (Consul's 403 text).
    assert _get(client, "/v1/acl/token/self", token=secret).json()["SecretID"] == secret
    denied = _get(client, f"/v1/acl/token/{me['AccessorID']}", token=secret)
    assert denied.status_code == 403 and "lacks permission 'acl:read'" in denied.text
    assert _get(client, "/v1/acl/tokens", token=str(uuid.uuid4())).text.strip() == "ACL not found"
    dup = _put(client, "/v1/acl/policy", {"Name": "kv-ro"})
    assert (dup.status_code, dup.text.strip()) == (400, 'Invalid Policy: A Policy with Name "kv-ro" already exists')


def test_bootstrap_through_a_client_is_refused_after_the_initial_management_token(
        pair: tuple[AgentProcess, AgentProcess]) -> None:
    # The server's tokens { initial_management } was the bootstrap (as in Consul): its reset index is the
    # initial management token's CreateIndex, relayed through the client with Consul's status and text.
    _, client = pair
    me = _get(client, "/v1/acl/token/self")
    assert me.status_code == 200, me.text
    again = _put(client, "/v1/acl/bootstrap", {}, token=None)
    assert (again.status_code, again.text.strip()) == (
        403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {me.json()['CreateIndex']})")


def test_a_blocking_read_on_the_client_wakes_on_a_server_write(pair: tuple[AgentProcess, AgentProcess]) -> None:
    server, client = pair
    index = int(_get(client, "/v1/acl/roles").headers["X-Consul-Index"])
    result: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: result.append(_get(client, f"/v1/acl/roles?index={index}&wait=10s")))
    waiter.start()
    assert _put(server, "/v1/acl/role", {"Name": "woken"}).status_code == 200
    waiter.join(15)
    assert result and result[0].status_code == 200
    assert int(result[0].headers["X-Consul-Index"]) > index and [r["Name"] for r in result[0].json()] == ["woken"]
