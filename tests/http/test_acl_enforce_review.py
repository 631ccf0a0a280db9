"""ACL fixes from the issue-15 review (v15 findings F19, F20, F7, F18, F6, F10): rights that change during a
blocking wait, writes applied without an RPC re-check (-dev), tokens on unknown agent IDs, and what a write
carries with ACLs off.

One harness server per module on 127.0.49.N (real HTTP over sockets; the HTTP port is ephemeral); tokens and
policies are FSM acl_* commands resolved by the agent's real ACLResolver; the store has no replicator, as under
-dev, so writes apply here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import trio
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import Check, Service, commands
from meshagent.agent.config.types import ACLConfig, AgentConfig, ServiceDefinition
from meshagent.agent.rpc.errors import ACLDenied, ACLNotFound
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from tests.support.http_harness import FakeAgent, ServerThread, TokenRecorder, node, register_instance, wait_waiting
from tests.support.ports import free_ports
from tests.support.wait import wait_for, wait_for_async

HOST = "127.0.49.1"  # this suite's addresses: 127.0.49.N
FILTERED = "x-consul-results-filtered-by-acls"
MGMT = str(uuid.uuid4())
ALL_NODES = 'node_prefix "" { policy = "read" }\n'


@dataclass
class Env:
    srv: ServerThread
    http: httpx.Client

    def token(self, rules: str) -> tuple[str, str, str]:
        """A new token with one policy of `rules`: (secret, accessor, policy id)."""
        policy_id, secret, accessor = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        name = f"p-{policy_id[:8]}"
        self.srv.apply(commands.acl_policy_set(Policy(id=policy_id, name=name, rules=rules)))
        self.srv.apply(commands.acl_token_set(Token(accessor_id=accessor, secret_id=secret, description=name,
                                                    policies=(Link(policy_id, name),))))
        return secret, accessor, policy_id

    def set_rules(self, policy_id: str, rules: str) -> None:
        policy = self.srv.agent.store.catalog.acl.policy(policy_id)
        assert policy is not None
        self.srv.apply(commands.acl_policy_set(replace(policy, rules=rules)))

    def apply_as(self, command: dict[str, Any], token: str) -> Any:
        """A write as `token` through the store (no replicator: applied here, as under -dev)."""
        return self.srv.run(self.srv.agent.store.apply, command, token)

    def call(self, method: str, path: str, secret: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"X-Consul-Token": secret} if secret else {}
        return self.http.request(method, path, headers=headers, **kw)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    agent.store.write_acl = agent.acl  # as agent.py wires it: local writes (no replicator: -dev) are re-checked
    srv = ServerThread(agent=agent, host=HOST).start()
    try:
        srv.apply(commands.acl_init(MGMT))
        register_instance(srv, "n1", "db", sid="db1", address="10.0.0.1")
        register_instance(srv, "n1", "web", sid="web1", address="10.0.0.1")
        with httpx.Client(base_url=srv.url, timeout=20) as http:
            yield Env(srv, http)
    finally:
        srv.stop()


def _blocked(env: Env, path: str, secret: str, during: Callable[[], None]) -> httpx.Response:
    """GET `path` at its current index (parked), run `during` (which must wake it), and return the answer."""
    first = env.call("GET", path, secret)
    assert first.status_code == 200, first.text
    index = first.headers["x-consul-index"]
    out: dict[str, httpx.Response] = {}
    sep = "&" if "?" in path else "?"
    waiting = env.srv.agent.store.hub.waiting

    def go() -> None:
        out["r"] = env.call("GET", f"{path}{sep}index={index}&wait=15s", secret)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    wait_waiting(env.srv, waiting + 1)
    during()
    thread.join(20)
    assert "r" in out, "the blocking request did not return"
    return out["r"]


# ---------------------------------------------------------------------- F19: rights narrowed during a wait


@pytest.mark.parametrize("path", ["/v1/health/service/db", "/v1/catalog/service/db", "/v1/health/checks/db",
                                  "/v1/catalog/services"])
def test_list_narrowed_during_wait_is_built_and_cached_with_new_rights(env: Env, path: str) -> None:
    secret, _, policy_id = env.token('service "db" { policy = "read" }\n' + ALL_NODES)
    assert "db" in env.call("GET", path, secret).text
    node = f"n-{uuid.uuid4().hex[:8]}"

    def narrow_then_wake() -> None:
        env.set_rules(policy_id, 'service "db" { policy = "deny" }\n' + ALL_NODES)
        register_instance(env.srv, node, "db", sid=f"db-{node}", address="10.0.0.9")

    r = _blocked(env, path, secret, narrow_then_wake)
    assert r.status_code == 200, r.text
    assert "db" not in r.text, f"built with the rights before the wait: {r.text}"
    assert r.headers.get(FILTERED) == "true"
    again = env.call("GET", path, secret)  # a cache hit must not serve a body built with the old rights
    assert "db" not in again.text and again.headers.get(FILTERED) == "true"


def test_kv_keys_and_single_key_narrowed_during_wait(env: Env) -> None:
    env.srv.apply(commands.kv_set("f19/a", b"1", 0))
    secret, _, policy_id = env.token('key_prefix "f19/" { policy = "read" }\n')

    def narrow(key: str) -> Callable[[], None]:
        def run() -> None:
            env.set_rules(policy_id, 'key_prefix "f19/" { policy = "deny" }\n')
            env.srv.apply(commands.kv_set(key, b"2", 0))
        return run

    r = _blocked(env, "/v1/kv/f19/?keys", secret, narrow("f19/b"))
    assert r.status_code == 404 or "f19/" not in r.text, r.text  # nothing readable is left: Consul's 404
    env.set_rules(policy_id, 'key_prefix "f19/" { policy = "read" }\n')
    r = _blocked(env, "/v1/kv/f19/a", secret, narrow("f19/a"))
    assert r.status_code == 403, (r.status_code, r.text)
    assert "lacks permission 'key:read'" in r.text


def test_match_and_config_reads_narrowed_during_wait(env: Env) -> None:
    secret, _, policy_id = env.token('service "db" { policy = "read" intentions = "read" }\n')
    mgmt = {"X-Consul-Token": MGMT}
    entry = {"Kind": "service-defaults", "Name": "db", "Protocol": "http"}
    assert env.http.put("/v1/config", json=entry, headers=mgmt).status_code == 200

    def narrow_then_touch() -> None:
        env.set_rules(policy_id, 'service "db" { policy = "deny" intentions = "deny" }\n')
        assert env.http.put("/v1/config", json={**entry, "Protocol": "grpc"}, headers=mgmt).status_code == 200
        source = f"s-{uuid.uuid4().hex[:8]}"  # a new intention each time: a write that changes nothing wakes none
        ixn = {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": source, "Action": "allow"}]}
        assert env.http.put("/v1/config", json=ixn, headers=mgmt).status_code == 200

    r = _blocked(env, "/v1/config/service-defaults/db", secret, narrow_then_touch)
    assert r.status_code == 403, (r.status_code, r.text)
    env.set_rules(policy_id, 'service "db" { policy = "read" intentions = "read" }\n')
    r = _blocked(env, "/v1/connect/intentions/match?by=destination&name=db", secret, narrow_then_touch)
    assert r.status_code == 403, (r.status_code, r.text)


# ---------------------------------------------------------------------- F7: local writes re-checked


def test_dev_store_rechecks_writes_the_http_layer_let_through(env: Env) -> None:
    # The FSM deregisters by CheckID first: a service:write token for "web" naming its own ServiceID and db's
    # check used to delete db's check on -dev (and on a leader), where no RPC re-check ran.
    secret, accessor, _ = env.token('service "web" { policy = "write" }\nnode "n1" { policy = "read" }\n')
    r = env.call("PUT", "/v1/catalog/deregister", secret,
                 json={"Node": "n1", "ServiceID": "web1", "CheckID": "service:db1"})
    assert r.status_code == 403, (r.status_code, r.text)
    assert "lacks permission 'service:write' on \"db\"" in r.text
    assert any(c.check_id == "service:db1" for c in env.srv.agent.store.catalog.service_checks("db"))
    # the store's own check, whatever the HTTP layer decides (command_rights: the servers' definition)
    with pytest.raises(ACLDenied) as refused:
        env.apply_as(commands.deregister("n1", check_id="service:db1"), secret)
    assert accessor in str(refused.value)
    with pytest.raises(ACLNotFound):
        env.apply_as(commands.kv_set("x", b"1"), str(uuid.uuid4()))
    with pytest.raises(ACLDenied):
        env.apply_as(commands.kv_set("x", b"1"), "")  # "" is the anonymous token (default deny)
    assert env.apply_as(commands.kv_set("x", b"1"), MGMT) is True
    assert env.srv.apply(commands.kv_set("y", b"1")) is True  # None: the agent's own write, not checked


def test_leader_rechecks_its_own_http_writes() -> None:
    # RaftServer.apply on the leader (a server's own HTTP write) runs Endpoints.check_write: one leader, in-process.
    host = "127.0.49.2"
    policy = Policy(id=str(uuid.uuid4()), name="web", rules='service "web" { policy = "write" }\n')
    web = Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()), policies=(Link(policy.id, "web"),))

    async def main() -> None:
        store = CatalogStore()
        server = RaftServer(node_id=str(uuid.uuid4()), node_name="x3-leader", bind=host, advertise=host,
                            port=free_ports(1, host)[0], data_dir=None, store=store, bootstrap_expect=1, join=[])
        store.replicator = server
        config = AgentConfig(node_name="x3-leader", acl=ACLConfig(enabled=True, default_policy="deny"))
        server.endpoints.acl = ACLResolver(config, store, clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await wait_for_async(server.is_leader, 15, what="the single server leading")
            for command in (commands.acl_init(""), commands.acl_policy_set(policy), commands.acl_token_set(web)):
                await server.apply(command)  # token None: the server's own write
            n1 = node("n1")
            db_check = Check(node="n1", check_id="service:db1", name="db", status="critical", service_id="db1")
            await server.apply(commands.register(n1, Service(node="n1", id="db1", service="db"), [db_check]))
            with pytest.raises(ACLDenied, match="service:write' on \"db\""):
                await server.apply(commands.deregister("n1", check_id="service:db1"), token=web.secret_id)
            assert store.catalog.service_checks("db")
            web1 = Service(node="n1", id="web1", service="web")
            await server.apply(commands.register(n1, web1, []), token=web.secret_id)
            assert store.catalog.service_instances("web")
            nursery.cancel_scope.cancel()

    trio.run(main)


# ---------------------------------------------------------------------- F20: waits outside API.block


def _revoked_during(env: Env, path: str, secret: str, accessor: str, parked: Callable[[], bool],
                    wake: Callable[[], None]) -> httpx.Response:
    """GET `path` (blocking), delete the token once `parked()`, then `wake()` the wait; the answer."""
    out: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: out.update(r=env.call("GET", path, secret)), daemon=True)
    thread.start()
    wait_for(parked, 10, 0.005, "the request to park")
    env.srv.apply(commands.acl_token_delete(accessor))
    wake()
    thread.join(20)
    assert "r" in out, "the blocking request did not return"
    return out["r"]


def test_leaf_wait_does_not_outlive_a_revoked_token(env: Env) -> None:
    secret, accessor, _ = env.token('service "web" { policy = "write" }\n')
    first = env.call("GET", "/v1/agent/connect/ca/leaf/web", secret)
    assert first.status_code == 200, first.text
    leaves = env.srv.agent.leaves

    def parked() -> bool:
        changed = leaves._changed.get("web")
        return changed is not None and changed.statistics().tasks_waiting > 0

    # No new leaf comes: the wait ends at ?wait (2 s) with the current one, which must not go to a revoked token.
    r = _revoked_during(env, f"/v1/agent/connect/ca/leaf/web?index={first.headers['x-consul-index']}&wait=2s",
                        secret, accessor, parked, lambda: None)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert "ACL not found" in r.text and "PRIVATE KEY" not in r.text


def test_event_list_wait_does_not_outlive_a_revoked_token(env: Env) -> None:
    secret, accessor, _ = env.token('event "deploy" { policy = "read" }\n')
    env.srv.agent.fire_event("deploy", b"1")
    first = env.call("GET", "/v1/event/list?name=deploy", secret)
    assert first.status_code == 200 and first.json(), first.text
    arrived = env.srv.agent.events.arrived

    def wake() -> None:
        env.srv.run(_fire, env.srv.agent, "deploy")

    r = _revoked_during(env, f"/v1/event/list?name=deploy&index={first.headers['x-consul-index']}&wait=15s",
                        secret, accessor, lambda: arrived.statistics().tasks_waiting > 0, wake)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert "ACL not found" in r.text


class StandInRunner:
    """The ProxyRunner's face for /v1/agent/connect/proxy (snapshot, wait_snapshot): version 1, then parks."""

    def __init__(self) -> None:
        self.parked = 0
        self.release = trio.Event()

    def snapshot(self, proxy_id: str) -> tuple[int, Any]:
        return 1, self

    async def wait_snapshot(self, proxy_id: str, after_version: int, timeout: float) -> tuple[int, Any]:
        self.parked += 1
        await self.release.wait()
        return 2, self

    def to_wire(self) -> dict[str, Any]:
        return {"LeafKey": "PRIVATE KEY"}


def test_proxy_config_wait_does_not_outlive_a_revoked_token(env: Env) -> None:
    secret, accessor, _ = env.token('service "web" { policy = "write" }\n')
    defn = ServiceDefinition(id="web1-sidecar-proxy", name="web-sidecar-proxy", kind="connect-proxy",
                             proxy={"DestinationServiceName": "web"})
    env.srv.run(env.srv.agent.local.register_service, defn)
    runner = env.srv.agent.proxy_runner = StandInRunner()  # type: ignore[assignment]
    try:
        path = "/v1/agent/connect/proxy/web1-sidecar-proxy"
        assert env.call("GET", path, secret).status_code == 200
        r = _revoked_during(env, f"{path}?index=1&wait=15s", secret, accessor, lambda: runner.parked > 0,
                            lambda: env.srv.run(_set, runner.release))
        assert r.status_code == 403, (r.status_code, r.text[:200])
        assert "ACL not found" in r.text and "PRIVATE KEY" not in r.text
    finally:
        env.srv.agent.proxy_runner = None
        env.srv.run(env.srv.agent.local.deregister_service, defn.id)


async def _set(event: trio.Event) -> None:
    event.set()


async def _fire(agent: FakeAgent, name: str) -> None:
    agent.fire_event(name, b"2")


# ---------------------------------------------------------------------- F6: ACLs off, no secret travels


def test_acls_off_writes_carry_no_token() -> None:
    agent = FakeAgent()
    agent.acl.tokens.default = "default-secret"
    recorder = agent.store.replicator = TokenRecorder(agent.store)
    srv = ServerThread(agent=agent, host="127.0.49.3").start()
    try:
        headers = {"X-Consul-Token": "presented-secret"}
        base = f"http://127.0.49.3:{srv.port}"
        entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
        assert httpx.put(f"{base}/v1/config", json=entry, headers=headers).status_code == 200
        ixn = {"SourceName": "a", "DestinationName": "web", "Action": "allow"}
        assert httpx.post(f"{base}/v1/connect/intentions", json=ixn, headers=headers).status_code == 200
        assert httpx.put(f"{base}/v1/kv/k", content=b"v", headers=headers).status_code == 200
        assert httpx.delete(f"{base}/v1/config/service-defaults/web", headers=headers).status_code == 200
        assert len(recorder.tokens) >= 4 and all(t is None for t in recorder.tokens), recorder.tokens
    finally:
        srv.stop()


# ---------------------------------------------------------------------- F18: tokens on unknown agent IDs


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/agent/service/nope"), ("GET", "/v1/agent/health/service/id/nope"),
    ("PUT", "/v1/agent/service/deregister/nope"), ("PUT", "/v1/agent/service/maintenance/nope?enable=true"),
    ("PUT", "/v1/agent/check/deregister/nope"), ("PUT", "/v1/agent/check/pass/nope"),
])
def test_unknown_agent_id_still_resolves_the_token(env: Env, method: str, path: str) -> None:
    r = env.call(method, path, str(uuid.uuid4()))  # a token nobody has: refused before the ID is looked up
    assert r.status_code == 403 and "ACL not found" in r.text, (r.status_code, r.text)
    secret, _, _ = env.token('service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "write" }\n')
    assert env.call(method, path, secret).status_code in (200, 404)  # a valid one: the ID's own answer


# ---------------------------------------------------------------------- F10: no secret in cache keys


def test_response_cache_keys_hold_no_secret(env: Env) -> None:
    secret, _, _ = env.token('service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n')
    first = env.http.get(f"/v1/catalog/services?token={secret}&stale")
    assert first.status_code == 200 and "db" in first.json()
    assert not any(secret in key[1] for key in env.srv.api._cache), "a secret in the response cache's keys"
    hits = env.srv.api.cache_hits
    again = env.call("GET", "/v1/catalog/services?stale", secret)  # the same identity as a header: a cache hit
    assert again.content == first.content and env.srv.api.cache_hits == hits + 1
