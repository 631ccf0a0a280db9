"""The agent's own ACL tokens (issue 15): anti-entropy writes each service as its registering token (else the
definition's, else config_file_service_registration for file services, else the agent token), refusals are
logged once without the secret; PUT /v1/agent/token/<type> with acl-tokens.json persistence.

Anti-entropy runs against a real CatalogStore whose `apply` re-checks each write as a server does
(agent/acl/command_rights.authorize), as the agent's real ACLResolver over that catalog resolves the token
(policies and tokens written with the FSM's acl_* commands). The HTTP part is a real HTTPServer on 127.0.44.N.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest
import trio
from meshagent.agent.acl.command_rights import authorize
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import Node, commands
from meshagent.agent.config.loader import parse_service
from meshagent.agent.config.types import ACLConfig, AgentConfig, Source
from meshagent.agent.local_persist import TOKENS_FILE, AgentTokenFile
from meshagent.agent.local_state import LocalState
from meshagent.agent.rpc.errors import ACLDenied
from meshagent.agent.store import CatalogStore

from tests.support.acl_objects import accessor_of, apply_now, grant
from tests.support.agents import AgentProcess
from tests.support.http_harness import FakeAgent, ServerThread
from tests.support.ports import free_host_in
from tests.support.wait import wait_for

RULES = {
    "agent-secret": 'node "web-1" { policy = "write" }\nservice_prefix "" { policy = "read" }\n',
    "web-secret": 'service "web" { policy = "write" }\n',
    "weak-secret": 'service "api" { policy = "read" }\n',
    "file-secret": 'service "filesvc" { policy = "write" }\n',
    "cfsr-secret": 'service "other" { policy = "write" }\n',
    "mgmt-secret": 'acl = "write"\n',
    "reader-secret": 'acl = "read"\n',
}


def _seed(store: CatalogStore) -> None:
    """The builtins and RULES' policies and tokens (the secret is the RULES key; the AccessorID is
    acl_objects.accessor_of(its first word))."""
    apply_now(store, [commands.acl_init("")])
    for secret, rules in RULES.items():
        apply_now(store, grant(secret.split("-")[0], rules, secret))


def _acl(store: CatalogStore, enabled: bool = True) -> ACLResolver:
    """The agent's real resolver (default deny) over `store`, seeded; the agent token is agent-secret."""
    _seed(store)
    acl = ACLResolver(AgentConfig(node_name="web-1", acl=ACLConfig(enabled=enabled, default_policy="deny")), store)
    acl.tokens.agent = "agent-secret"
    return acl


class CheckingStore(CatalogStore):
    """A store that records each write's token and re-checks it as a server re-checks forwarded writes."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.acl = _acl(self, enabled)
        self.writes: list[tuple[str, str, str | None]] = []  # (op, service id or check id, token)

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        svc = command.get("service") or {}
        what = svc.get("id") or command.get("service_id") or command.get("check_id") or \
            ",".join(c["check_id"] for c in command.get("checks") or [])
        self.writes.append((command["op"], what, token))
        if token is not None:
            identity = self.acl.resolve(token)
            decision = authorize(identity, command, self.catalog)
            if decision is not None:
                raise ACLDenied(decision.denied_message(identity.accessor_id))
        return await super().apply(command, token)


def _local(store: CheckingStore, data_dir: Path) -> LocalState:
    local = LocalState(node=Node(node="web-1", address="127.0.44.1"), store=store, data_dir=str(data_dir),
                       enable_local_script_checks=False, enable_script_checks=False)
    local.sync.acl = store.acl
    return local


def _svc(body: dict[str, Any]) -> Any:
    return parse_service(body, Source("<test>"))


def _tokens_for(store: CheckingStore, what: str) -> set[str | None]:
    return {token for _, w, token in store.writes if w == what}


def test_anti_entropy_writes_each_service_as_its_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    store = CheckingStore()
    store.acl.tokens.config_file_service_registration = "cfsr-secret"

    async def scenario() -> None:
        local = _local(store, tmp_path)
        files = [_svc({"Name": "filesvc", "Port": 1, "Token": "file-secret"}), _svc({"Name": "other", "Port": 2})]
        await local.start(files, [])
        await local.register_service(_svc({"Name": "web", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "1h"}}),
                                     token="web-secret")
        await local.update_ttl("web-ttl", "passing", "ok")
        names = {s.service for s in store.catalog.node_services("web-1")}
        assert names == {"filesvc", "other", "web"}
        assert _tokens_for(store, "filesvc") == {"file-secret"}  # the definition's own token
        assert _tokens_for(store, "other") == {"cfsr-secret"}  # a file service without one
        assert _tokens_for(store, "web") == {"web-secret"}  # the registering token
        assert _tokens_for(store, "web-ttl") == {"web-secret"}  # its check's status, as the service's token
        assert {t for op, w, t in store.writes if op == "register" and w == ""} == {"agent-secret"}  # the node
        assert not local.sync.out_of_sync

        # A token without service:write on "api": refused by the re-check, the agent stays out of sync and
        # says so once (the AccessorID, never the secret), however often it retries.
        await local.register_service(_svc({"Name": "api", "Port": 81}), token="weak-secret")
        assert "api" not in {s.service for s in store.catalog.node_services("web-1")}
        assert local.sync.out_of_sync
        for _ in range(3):
            await local.sync_full()
        refusals = [r for r in caplog.records if "refused by ACLs" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert accessor_of("weak") in refusals[0].getMessage() and "'api'" in refusals[0].getMessage()
        assert _tokens_for(store, "api") == {"weak-secret"}

        # Deregistration is written as the service's token too.
        await local.deregister_service("web")
        assert ("deregister", "web", "web-secret") in store.writes

    trio.run(scenario)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(secret in everything for secret in RULES)


def test_registering_tokens_survive_a_restart_in_a_0600_file(tmp_path: Path) -> None:
    async def first() -> None:
        local = _local(CheckingStore(), tmp_path)
        await local.start([], [])
        await local.register_service(_svc({"Name": "web", "Port": 80}), token="web-secret")

    trio.run(first)
    state = tmp_path / "local-state.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert json.loads(state.read_text())["service_tokens"] == {"web": "web-secret"}

    store = CheckingStore()  # a fresh catalog: the restarted agent must write web again, as web-secret

    async def second() -> None:
        local = _local(store, tmp_path)
        await local.start([], [])
        assert {s.service for s in store.catalog.node_services("web-1")} == {"web"}

    trio.run(second)
    assert _tokens_for(store, "web") == {"web-secret"}


def test_acls_off_writes_carry_no_token(tmp_path: Path) -> None:
    store = CheckingStore(enabled=False)

    async def scenario() -> None:
        local = _local(store, tmp_path)
        await local.start([_svc({"Name": "filesvc", "Port": 1, "Token": "file-secret"})], [])
        await local.register_service(_svc({"Name": "web", "Port": 80}), token="web-secret")

    trio.run(scenario)
    assert {token for _, _, token in store.writes} == {None}


# ---------------------------------------------------------------------- PUT /v1/agent/token/<type>


@pytest.fixture
def token_api(tmp_path: Path) -> Iterator[tuple[str, FakeAgent]]:
    agent = FakeAgent()
    _seed(agent.store)  # the harness agent's own resolver resolves RULES' tokens from its catalog
    agent.acl.tokens.agent = "agent-secret"
    agent.config.acl.enabled, agent.config.acl.default_policy = True, "deny"
    agent.config.acl.enable_token_persistence = True
    agent.acl_token_file = AgentTokenFile(str(tmp_path))  # type: ignore[attr-defined]
    thread = ServerThread(agent=agent, host=free_host_in("127.0.44", ports=(8500,))).start()
    try:
        yield f"{thread.host}:{thread.port}", agent
    finally:
        thread.stop()


def _put(where: str, path: str, body: bytes, token: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(where, timeout=5)
    try:
        conn.request("PUT", path, body=body, headers={"X-Consul-Token": token} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_set_agent_token_needs_acl_write_and_persists(token_api: tuple[str, FakeAgent], tmp_path: Path) -> None:
    where, agent = token_api
    body = json.dumps({"Token": "dns-default"}).encode()
    status, text = _put(where, "/v1/agent/token/default", body)
    assert status == 403 and b"acl:write" in text
    status, text = _put(where, "/v1/agent/token/default", body, "reader-secret")
    assert status == 403 and accessor_of("reader").encode() in text
    assert agent.acl.tokens.default == ""

    assert _put(where, "/v1/agent/token/default", body, "mgmt-secret") == (200, b"")
    assert agent.acl.tokens.default == "dns-default"
    for path, field in (("agent_master", "agent_recovery"), ("acl_agent_token", "agent"),
                        ("replication", "replication"), ("config_file_service_registration",
                                                         "config_file_service_registration")):
        assert _put(where, f"/v1/agent/token/{path}", json.dumps({"Token": f"t-{path}"}).encode(),
                    "mgmt-secret") == (200, b"")
        assert getattr(agent.acl.tokens, field) == f"t-{path}"

    saved = tmp_path / TOKENS_FILE
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    assert json.loads(saved.read_text())["default"] == "dns-default"
    # a restart reads them back (Agent applies these over its config's tokens)
    assert AgentTokenFile(str(tmp_path)).load() == {
        "default": "dns-default", "agent_recovery": "t-agent_master", "agent": "t-acl_agent_token",
        "replication": "t-replication", "config_file_service_registration": "t-config_file_service_registration"}
    # an empty Token clears it, in memory and on disk
    assert _put(where, "/v1/agent/token/default", b'{"Token": ""}', "mgmt-secret") == (200, b"")
    assert agent.acl.tokens.default == "" and "default" not in json.loads(saved.read_text())


def test_set_agent_token_refusals(token_api: tuple[str, FakeAgent]) -> None:
    where, agent = token_api
    status, text = _put(where, "/v1/agent/token/bogus", b'{"Token": "x"}', "mgmt-secret")
    assert (status, text) == (404, b'Token "bogus" is unknown\n')
    for bad in (b"[1]", b'{"Token": 5}', b"{not json", b'{"Token": "' + b"a" * 300 + b'"}',
                b'{"Token": "a\\nb"}'):
        status, text = _put(where, "/v1/agent/token/agent", bad, "mgmt-secret")
        assert status == 400 and text.startswith(b"Request decode failed"), (bad, text)
        assert b"aaaa" not in text  # a secret is never echoed
    assert agent.acl.tokens.agent == "agent-secret"
    agent.config.acl.enabled = False
    assert _put(where, "/v1/agent/token/agent", b'{"Token": "x"}', "mgmt-secret") == (401, b"ACL support disabled\n")


def test_a_hostile_tokens_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_text('{"default": "ok-secret", "agent": 5, "bogus": "x", "agent_master": "' + "r" * 300 + '"}')
    assert AgentTokenFile(str(tmp_path)).load() == {"default": "ok-secret"}
    path.write_text("{not json")
    assert AgentTokenFile(str(tmp_path)).load() == {}
    path.write_text('["agent-secret"]')
    assert AgentTokenFile(str(tmp_path)).load() == {}
    assert "agent-secret" not in caplog.text and "ok-secret" not in caplog.text
    # valid JSON past the 64 KiB bound (a padded object) is refused, never half-parsed
    path.write_text('{"default": "ok-secret"' + " " * (64 * 1024) + "}")
    assert AgentTokenFile(str(tmp_path)).load() == {}
    assert AgentTokenFile(None).load() == {}


# ---------------------------------------------------------------------- a real server agent


ROOT = "5e0b5a4f-3c1f-4c59-9f3e-0d6f1c2b7a11"
ANONYMOUS = "00000000-0000-0000-0000-000000000002"
DNS_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def _dns_rcode(host: str, name: str) -> int:
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=8600, timeout=2)
    return -1 if reply.answer else int(reply.rcode())  # -1: answered


@pytest.mark.slow
def test_a_server_agent_with_acls_end_to_end(tmp_path: Path) -> None:
    """Registering token, DNS as the default token (or anonymous with a policy), and a default token set
    over HTTP that survives a restart (acl-tokens.json), on a one-server agent with default deny."""
    host = free_host_in("127.0.44")
    config = tmp_path / "acl.hcl"
    config.write_text('acl {\n  enabled = true\n  default_policy = "deny"\n  enable_token_persistence = true\n'
                      f'  tokens {{\n    initial_management = "{ROOT}"\n  }}\n}}\n')
    data = tmp_path / "data"
    agent = AgentProcess(host=host, workdir=tmp_path, args=[
        "-server", "-bootstrap-expect", "1", "-data-dir", str(data), "-client", host, "-bind", host,
        "-node", "acl-f", "-config-file", str(config)])
    api = f"http://{host}:8500"
    root = {"X-Consul-Token": ROOT}

    def up() -> None:
        agent.start(timeout=20)
        wait_for(lambda: httpx.get(f"{api}/v1/acl/token/self", headers=root, timeout=2).status_code == 200, 20,
                 what="the initial management token to resolve", report=agent.log)

    try:
        up()
        policy = httpx.put(f"{api}/v1/acl/policy", headers=root, json={"Name": "dns", "Rules": DNS_RULES})
        assert policy.status_code == 200, policy.text
        httpx.put(f"{api}/v1/acl/policy", headers=root,
                  json={"Name": "web-write", "Rules": 'service "web" { policy = "write" }'}).raise_for_status()
        dns_secret = httpx.put(f"{api}/v1/acl/token", headers=root,
                               json={"Policies": [{"Name": "dns"}]}).json()["SecretID"]
        web_secret = httpx.put(f"{api}/v1/acl/token", headers=root,
                               json={"Policies": [{"Name": "web-write"}]}).json()["SecretID"]

        # the registering token: refused without it, the service lands in the catalog with it
        body = {"Name": "web", "Port": 80, "Address": "127.0.44.250"}
        assert httpx.put(f"{api}/v1/agent/service/register", json=body).status_code == 403
        reg = httpx.put(f"{api}/v1/agent/service/register", json=body, headers={"X-Consul-Token": web_secret})
        assert reg.status_code == 200, reg.text
        wait_for(lambda: httpx.get(f"{api}/v1/catalog/service/web", headers=root).json(), 10,
                 what="web in the catalog")

        # DNS as anonymous under default deny: as if web did not exist
        assert _dns_rcode(host, "web.service.mesh.") == dns.rcode.NXDOMAIN
        # the agent's default token, set over HTTP (acl:write), is what DNS answers as
        assert httpx.put(f"{api}/v1/agent/token/default", json={"Token": dns_secret}).status_code == 403
        assert httpx.put(f"{api}/v1/agent/token/default", json={"Token": dns_secret}, headers=root).status_code == 200
        assert _dns_rcode(host, "web.service.mesh.") == -1
        saved = data / TOKENS_FILE
        assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600

        agent.stop()
        up()  # the persisted default token is loaded over the config (which has none)
        wait_for(lambda: _dns_rcode(host, "web.service.mesh.") == -1, 10, what="DNS answering as the default token")

        # back to anonymous, then an anonymous policy granting reads: DNS answers again
        assert httpx.put(f"{api}/v1/agent/token/default", json={"Token": ""}, headers=root).status_code == 200
        assert _dns_rcode(host, "web.service.mesh.") == dns.rcode.NXDOMAIN
        anon = httpx.put(f"{api}/v1/acl/token/{ANONYMOUS}", headers=root, json={"Policies": [{"Name": "dns"}]})
        assert anon.status_code == 200, anon.text
        assert _dns_rcode(host, "web.service.mesh.") == -1
        assert ROOT not in agent.log() and dns_secret not in agent.log() and web_secret not in agent.log()
    finally:
        agent.stop()
