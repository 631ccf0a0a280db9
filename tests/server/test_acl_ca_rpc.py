"""The mesh CA's RPCs under ACLs (issue 15): `connect_ca_sign` needs service:write on the CSR's service and
`connect_ca_set_config` operator:write, checked by the server that receives the call and again by the leader
when a follower forwards it (agent/connect/ca_acl.py).

Three in-process servers on real :8300 sockets (127.0.48.1-3), each with its CAManager and the agent's
ACLResolver under default deny; tokens and policies go in as the leader's own writes. Raw RPCClient calls
stand for whatever can reach :8300 (plaintext: roles unknown, so a `forwarded` flag skips nothing).
End to end, a server and a client agent process (127.0.48.10-59): the client's sidecar gets web's leaf only
because the signing carries web's registering token (its agent token may not write web). LeafCache's choice
of token runs against an in-process signer on trio's mock clock.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from cryptography import x509
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import commands
from meshagent.agent.config.types import AgentConfig, ServiceDefinition
from meshagent.agent.connect import ca
from meshagent.agent.connect.authority import SignedLeaf
from meshagent.agent.connect.ca_manager import CAManager
from meshagent.agent.connect.ca_plan import ca_root, root_fields
from meshagent.agent.connect.leaf_cache import LeafCache, leaf_token
from meshagent.agent.connect.spiffe import service_id
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ACLDenied, ACLNotFound, Rejected
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from tests.support.acl_raft import acl_servers, running
from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for, wait_for_async

HOSTS = ["127.0.48.1", "127.0.48.2", "127.0.48.3"]
ANONYMOUS = "00000000-0000-0000-0000-000000000002"


def denied(accessor: str, permission: str, name: str | None = None) -> str:
    text = f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}'"
    return text + (f' on "{name}"' if name is not None else "")


def token_for(name: str, rules: str) -> tuple[Policy, Token]:
    policy = Policy(id=str(uuid.uuid4()), name=name, rules=rules)
    return policy, Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()),
                         policies=(Link(policy.id, policy.name),))


@asynccontextmanager
async def cluster() -> AsyncIterator[list[tuple[RaftServer, CAManager]]]:
    nodes = []
    for server in acl_servers(HOSTS, "acl-ca"):
        manager = CAManager(server.store, "dc1", server)
        manager.acl = server.endpoints.acl
        server.endpoints.ca = manager
        nodes.append((server, manager))
    async with running([s for s, _ in nodes], also=[m.run for _, m in nodes]):
        await wait_for_async(lambda: all(m.state.active_root is not None for _, m in nodes), 10,
                             what="the CA on every server")
        yield nodes


def leaf_ttl(manager: CAManager) -> Any:
    return manager.state.config.get("Config", {}).get("LeafCertTTL")


def csr_for(trust_domain: str, service: str) -> str:
    return ca.leaf_key_and_csr(service_id(trust_domain, "dc1", service))[1]


@pytest.mark.slow  # a 3-server Raft cluster in process (~2 s)
def test_ca_rpcs_are_checked_against_their_token_here_and_at_the_leader() -> None:
    web_policy, web = token_for("web-writer", 'service "web" { policy = "write" }')
    op_policy, operator = token_for("operator", 'operator = "write"')

    async def main() -> None:
        async with cluster() as nodes:
            (leader, leader_ca), = [(s, m) for s, m in nodes if s.is_leader()]
            followers = [(s, m) for s, m in nodes if s is not leader]
            # A server's `default` token is for its own HTTP API: a :8300 caller without a token is anonymous.
            assert leader_ca.acl is not None
            leader_ca.acl.tokens.default = web.secret_id
            await leader.apply(commands.acl_init(""))
            for cmd in (commands.acl_policy_set(web_policy), commands.acl_policy_set(op_policy),
                        commands.acl_token_set(web), commands.acl_token_set(operator)):
                await leader.apply(cmd)
            await wait_for_async(lambda: all(s.store.catalog.acl.token(operator.accessor_id) for s, _ in nodes),
                                 10, what="the tokens on every server")
            trust_domain = leader_ca.state.trust_domain
            web_csr, db_csr = csr_for(trust_domain, "web"), csr_for(trust_domain, "db")

            async with trio.open_nursery() as nursery:
                follower, leader_client = RPCClient(followers[0][0].address), RPCClient(leader.address)

                async def sign(client: RPCClient, args: dict[str, Any]) -> SignedLeaf:
                    return SignedLeaf.from_wire(await client.call(nursery, "connect_ca_sign", args, 10))

                for client in (follower, leader_client):
                    with pytest.raises(ACLDenied) as anonymous:
                        await sign(client, {"csr": web_csr})
                    assert (anonymous.value.status, str(anonymous.value)) == (403, denied(
                        ANONYMOUS, "service:write", "web"))
                    with pytest.raises(ACLDenied, match=denied(web.accessor_id, "service:write", "db")):
                        await sign(client, {"csr": db_csr, "token": web.secret_id})
                    with pytest.raises(ACLNotFound):
                        await sign(client, {"csr": web_csr, "token": str(uuid.uuid4())})
                    with pytest.raises(ACLNotFound):
                        await sign(client, {"csr": web_csr, "token": "x" * 300})
                    with pytest.raises(Rejected, match="token must be a string"):
                        await sign(client, {"csr": web_csr, "token": 5})
                    with pytest.raises(Rejected, match="CSR refused"):
                        await sign(client, {"csr": "not a CSR", "token": web.secret_id})
                # A caller claiming to be a forwarding server is checked all the same.
                with pytest.raises(ACLDenied, match=f"AccessorID '{ANONYMOUS}'"):
                    await sign(leader_client, {"csr": web_csr, "forwarded": True})
                assert leader_ca.signed == 0  # every refusal came before any signing work

                # Through a follower (which checks, then forwards with the token: the leader checks again).
                leaf = await sign(follower, {"csr": web_csr, "token": web.secret_id})
                assert (leaf.service, leader_ca.signed) == ("web", 1)
                assert leaf.service_uri == service_id(trust_domain, "dc1", "web").uri()

                # CA configuration: operator:write, wherever it arrives.
                change = {"provider": "consul", "config": {"LeafCertTTL": "48h"}}
                for client in (follower, leader_client):
                    with pytest.raises(ACLDenied, match=denied(ANONYMOUS, "operator:write") + "$"):
                        await client.call(nursery, "connect_ca_set_config", change, 10)
                    with pytest.raises(ACLDenied, match=f"AccessorID '{web.accessor_id}'"):
                        await client.call(nursery, "connect_ca_set_config", {**change, "token": web.secret_id}, 10)
                assert leaf_ttl(leader_ca) != "48h"
                assert await follower.call(nursery, "connect_ca_set_config",
                                           {**change, "token": operator.secret_id}, 10) is True
                await wait_for_async(lambda: leaf_ttl(leader_ca) == "48h", 5, what="the new config")
                for client in (follower, leader_client):
                    client.close()
                nursery.cancel_scope.cancel()

            # A follower's own calls (its HTTP API checked them) carry the token to the leader, which checks it.
            follower_ca = followers[1][1]
            assert (await follower_ca.sign(web_csr, token=web.secret_id)).service == "web"
            with pytest.raises(ACLDenied, match=f"AccessorID '{ANONYMOUS}'"):
                await follower_ca.sign(web_csr)
            with pytest.raises(ACLDenied, match=f"AccessorID '{web.accessor_id}'"):
                await follower_ca.set_config("consul", {"LeafCertTTL": "24h"}, token=web.secret_id)
            await follower_ca.set_config("consul", {"LeafCertTTL": "24h"}, token=operator.secret_id)
            # The leader's own calls are not checked (as its internal Raft writes).
            assert (await leader_ca.sign(db_csr)).service == "db"

    async def bounded() -> None:
        with trio.fail_after(25):
            await main()

    trio.run(bounded)


def test_with_acls_off_tokens_mean_nothing() -> None:
    """No ACLs: a call signs with no token, an unknown one, or one too long (dropped unread), as before."""
    store = CatalogStore()
    manager = CAManager(store, "dc1", min_leaf_ttl=1.0)
    manager.acl = ACLResolver(AgentConfig(node_name="n"), store)

    async def main() -> None:
        await manager.initialized()
        csr = csr_for(manager.state.trust_domain, "web")
        for extra in ({}, {"token": str(uuid.uuid4())}, {"token": "x" * 300}):
            assert (await manager.rpc_sign({"csr": csr, **extra}))["service"] == "web"
        assert await manager.rpc_set_config({"config": {"LeafCertTTL": "48h"}, "token": "y"}) is True
        with pytest.raises(Rejected, match="token must be a string"):
            await manager.rpc_sign({"csr": csr, "token": ["x"]})

    trio.run(main)


class Tokens:
    """ACLResolver's face for leaf_token: enabled and the agent token."""

    def __init__(self, enabled: bool, agent: str) -> None:
        self.enabled, self.agent = enabled, agent

    def agent_secret(self) -> str:
        return self.agent


def test_a_local_service_leaf_is_signed_as_its_registering_token_else_the_agent_token() -> None:
    services = {"web-1": ServiceDefinition(name="web", id="web-1"),
                "web-sidecar-proxy": ServiceDefinition(name="web-sidecar-proxy", id="web-sidecar-proxy", kind=
                                                       "connect-proxy", proxy={"DestinationServiceName": "api"}),
                "db": ServiceDefinition(name="db", id="db")}
    registered = {"web-1": "web-secret", "web-sidecar-proxy": "api-secret"}.get
    on = Tokens(True, "agent-secret")
    assert leaf_token("web", services, registered, on) == "web-secret"
    assert leaf_token("api", services, registered, on) == "api-secret"  # the sidecar fronting it
    assert leaf_token("db", services, registered, on) == "agent-secret"  # registered without a token
    assert leaf_token("other", services, registered, on) == "agent-secret"
    assert leaf_token("other", services, registered, Tokens(True, "")) is None
    assert leaf_token("web", services, registered, Tokens(False, "agent-secret")) is None  # ACLs off


# ------------------------------------------------------------------------------------------- end to end

AGENT_HOSTS = [f"127.0.48.{n}" for n in range(10, 60)]  # a closed agent's ports stay in TIME_WAIT a while


def acl_file(path: Path, **tokens: str) -> str:
    lines = "\n".join(f'    {k} = "{v}"' for k, v in tokens.items())
    path.write_text(f'acl {{\n  enabled = true\n  default_policy = "deny"\n  tokens {{\n{lines}\n  }}\n}}\n')
    return str(path)


@pytest.mark.slow  # a server and a client agent process, and the client's sidecar worker (~5 s)
def test_a_client_agents_sidecar_leaf_is_signed_as_its_services_registering_token(tmp_path: Path) -> None:
    """The client's agent token may not write web, so its sidecar's leaf (asked for by the agent itself, no
    HTTP request in between) is signed only if the signing carries web's registering token to the server."""
    free = [h for h in AGENT_HOSTS if ports_free(h)][:2]
    if len(free) < 2:
        pytest.skip("agent ports busy on 127.0.48.10-59")
    server_host, client_host = free
    mgmt, agent_secret, web_secret = (str(uuid.uuid4()) for _ in range(3))
    server = AgentProcess(host=server_host, workdir=tmp_path, args=[
        "-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / "s"), "-client", server_host,
        "-bind", server_host, "-node", "ca-s1",
        "-config-file", acl_file(tmp_path / "s.hcl", initial_management=mgmt, agent=mgmt)])
    client: AgentProcess | None = None
    try:
        server.start()
        http = httpx.Client(timeout=10, trust_env=False)

        def call(agent: AgentProcess, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
            return http.request(method, agent.http_addr + path, json=body, headers={"X-Consul-Token": token})

        wait_for(lambda: call(server, "GET", "/v1/acl/token/self", mgmt).status_code == 200, 20,
                 what="the management token", report=server.log)
        for secret, rules in ((agent_secret, 'node "ca-c1" { policy = "write" }'),
                              (web_secret, 'service_prefix "web" { policy = "write" }')):
            policy = call(server, "PUT", "/v1/acl/policy", mgmt, {"Name": f"p-{secret[:8]}", "Rules": rules})
            assert policy.status_code == 200, policy.text
            token = call(server, "PUT", "/v1/acl/token", mgmt,
                         {"SecretID": secret, "Policies": [{"ID": policy.json()["ID"]}]})
            assert token.status_code == 200, token.text
        client = AgentProcess(host=client_host, workdir=tmp_path, args=[
            "-data-dir", str(tmp_path / "c"), "-client", client_host, "-bind", client_host, "-node", "ca-c1",
            "-retry-join", server_host, "-config-file", acl_file(tmp_path / "c.hcl", agent=agent_secret)]).start()
        registered = call(client, "PUT", "/v1/agent/service/register", web_secret,
                          {"Name": "web", "Port": 7002, "Connect": {"SidecarService": {}}})
        assert registered.status_code == 200, registered.text

        def snapshot() -> Any:
            resp = call(client, "GET", "/v1/agent/connect/proxy/web-sidecar-proxy?wait=1s", web_secret)
            return resp.json() if resp.status_code == 200 else None

        def report() -> str:
            assert client is not None
            return client.log()[-3000:]

        snap = wait_for(snapshot, 20, what="the sidecar's snapshot with its leaf", report=report)
        cert = x509.load_pem_x509_certificate(snap["tls"]["cert_pem"].encode())
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        assert uris == [snap["tls"]["spiffe_id"]] and uris[0].endswith("/dc/dc1/svc/web")
        assert web_secret not in client.log() and web_secret not in server.log()

        # A CA configuration change through the client carries its token to a server, which checks it.
        change = {"Provider": "consul", "Config": {"LeafCertTTL": "48h"}}
        assert call(client, "PUT", "/v1/connect/ca/configuration", web_secret, change).status_code == 403
        resp = call(client, "PUT", "/v1/connect/ca/configuration", mgmt, change)
        assert resp.status_code == 200, resp.text
        http.close()
    finally:
        if client is not None:
            client.stop()
        server.stop()


class TokenSigner:
    """A real in-process signer (ca.sign_leaf with the catalog's root) that records each signing's token and
    refuses one token as a server refuses a deleted one."""

    def __init__(self, store: CatalogStore, refused: str) -> None:
        self.store, self.refused = store, refused
        self.tokens: list[str | None] = []

    async def sign(self, csr_pem: str, token: str | None = None) -> SignedLeaf:
        self.tokens.append(token)
        if token == self.refused:
            raise ACLNotFound()
        connect = self.store.catalog.connect
        row = connect.active_root
        assert row is not None
        at = datetime.datetime.fromtimestamp(1_800_000_000 + trio.current_time(), datetime.UTC)
        leaf = ca.sign_leaf(ca_root(row, connect.trust_domain), csr_pem, "dc1", at, datetime.timedelta(hours=72))
        return SignedLeaf(leaf.cert_pem, leaf.serial_number, leaf.service.service, leaf.service.uri(),
                          leaf.valid_after.timestamp(), leaf.valid_before.timestamp(), row.id, (),
                          self.store.catalog.last_index)


def test_leaf_cache_signs_as_the_requester_then_falls_back_to_the_services_own_token() -> None:
    """A request's token (checked by the HTTP API) signs first; refused by the servers, it is dropped and
    the retry signs as token_for(service); with no request token, token_for; None sends no token at all."""
    async def main() -> None:
        store = CatalogStore()
        await store.apply(commands.connect_ca("init", cluster_id="c1", trust_domain="c1.mesh", config={},
                                              root=root_fields(ca.new_root("c1.mesh", datetime.datetime.now(
                                                  datetime.UTC)))))
        signer = TokenSigner(store, refused="deleted-token")
        own = {"web": "web-own", "db": "db-own"}
        cache = LeafCache(store, "dc1", lambda: signer, token_for=own.get, clock=lambda: 1_800_000_000
                          + trio.current_time())
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            assert (await cache.get("web")).service == "web"
            assert signer.tokens == ["web-own"]
            with pytest.raises(ACLNotFound):
                await cache.get("db", token="deleted-token")
            await wait_for_async(lambda: cache.peek("db") is not None, 5,
                                 what="db's leaf after the retry")  # (virtual time)
            assert signer.tokens == ["web-own", "deleted-token", "db-own"]
            assert (await cache.get("api", token="api-requester")).service == "api"
            assert (await cache.get("other")).service == "other"  # token_for: None, no token sent
            assert signer.tokens[-2:] == ["api-requester", None]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
