"""ACL enforcement on /v1/catalog, /v1/health, /v1/kv, /v1/agent and /v1/event (issue 15) under
`default_policy = "deny"`: each family both ways (allowed with a token granting it, 403 with Consul's text
without), filtered lists with X-Consul-Results-Filtered-By-ACLs, an unknown token refused, ACLs off unchanged.

One harness server per module on 127.0.39.N, real HTTP over sockets; tokens and policies are written with the
FSM's acl_* commands and resolved by the agent's real ACLResolver.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from meshagent.agent.catalog import PASSING, Service, commands
from meshagent.agent.config.types import CheckDefinition, ServiceDefinition
from meshagent.agent.local_sync import LocalCheck

from tests.support.acl_objects import add_token
from tests.support.http_harness import ACLEnv, FakeAgent, FakeLocal, ServerThread, TokenRecorder, register_instance

HOST = "127.0.39.1"  # this suite's addresses: 127.0.39.N (the HTTP port is ephemeral)
FILTERED = "x-consul-results-filtered-by-acls"
MGMT = str(uuid.uuid4())

RULES = {
    # reads web on n1 only (n2's instance filtered); writes web
    "svc": 'service "web" { policy = "write" }\nnode "n1" { policy = "read" }\n',
    "kv": 'key_prefix "app/" { policy = "write" }\n',
    "kvlist": 'key_prefix "" { policy = "list" }\nkey "secret/z" { policy = "deny" }\n',
    "agent_read": 'agent "node1" { policy = "read" }\n',
    "agent_write": ('agent "node1" { policy = "write" }\nnode "node1" { policy = "write" }\n'
                    'service "api" { policy = "write" }\n'),
    "api": 'service "api" { policy = "write" }\nservice "api-sidecar-proxy" { policy = "read" }\n',
    "api_sidecar": 'service_prefix "api" { policy = "write" }\n',
    "event": 'event "deploy" { policy = "write" }\n',
    "node_write": 'node "n1" { policy = "write" }\n',
    "proxy_only": 'service "web-sidecar-proxy" { policy = "read" }\nnode_prefix "" { policy = "read" }\n',
    "web_and_proxy": 'service_prefix "web" { policy = "read" }\nnode_prefix "" { policy = "read" }\n',
}


@dataclass
class RecordingLocal(FakeLocal):
    """FakeLocal that keeps the token each registration was made with."""

    tokens: dict[str, str | None] = field(default_factory=dict)

    async def register_service(self, defn: ServiceDefinition, replace_existing_checks: bool = False,
                               token: str | None = None) -> None:
        self.tokens[defn.id or defn.name] = token
        await super().register_service(defn, replace_existing_checks, token)

    async def register_check(self, cdef: CheckDefinition, token: str | None = None) -> None:
        self.tokens[cdef.id] = token


@dataclass
class Env(ACLEnv):
    forwarder: TokenRecorder


def _token(srv: ServerThread, name: str, rules: str) -> str:
    return add_token(srv.apply, name, rules)


def _populate(srv: ServerThread) -> None:
    register_instance(srv, "n1", "web", sid="web1", address="10.0.0.1")
    register_instance(srv, "n2", "web", sid="web2", address="10.0.0.2")
    register_instance(srv, "n1", "db", sid="db1", address="10.0.0.1")
    n1 = srv.agent.store.catalog.node("n1")
    assert n1 is not None
    proxy = Service(node="n1", id="web1-sidecar-proxy", service="web-sidecar-proxy", kind="connect-proxy",
                    port=21000, proxy={"DestinationServiceName": "web", "DestinationServiceID": "web1"})
    srv.apply(commands.register(n1, proxy, []))
    for key in ("app/x", "app/y", "secret/z"):
        srv.apply(commands.kv_set(key, b"v", 0))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    agent = FakeAgent()
    agent.local = RecordingLocal()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    # Config secrets only /v1/agent/self could show (the resolver copied the tokens before: they act nowhere).
    agent.config.acl.tokens.initial_management = MGMT
    agent.config.acl.tokens.agent = str(uuid.uuid4())
    srv = ServerThread(agent=agent, host=HOST).start()
    try:
        srv.apply(commands.acl_init(MGMT))
        secrets = {name: _token(srv, name, rules) for name, rules in RULES.items()}
        secrets["mgmt"] = MGMT
        secrets["config_agent"] = agent.config.acl.tokens.agent
        _populate(srv)
        forwarder = TokenRecorder(agent.store)
        agent.store.replicator = forwarder
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            yield Env(srv, http, secrets, forwarder)
    finally:
        srv.stop()


def _denied(r: httpx.Response, permission: str, name: str | None = None) -> None:
    assert r.status_code == 403, (r.status_code, r.text)
    assert "Permission denied: token with AccessorID '" in r.text
    on = f' on "{name}"' if name is not None else ""
    assert r.text.strip().endswith(f"lacks permission '{permission}'{on}"), r.text


def _filtered(r: httpx.Response) -> bool:
    assert r.status_code == 200, (r.status_code, r.text)
    return r.headers.get(FILTERED) == "true"


# ---------------------------------------------------------------------- catalog


def test_catalog_reads_filter_by_service_and_node_read(env: Env) -> None:
    # no token at all under default deny: nothing, and (Consul's maskResultsFilteredByACLs) not told so
    r = env.call("GET", "/v1/catalog/services")
    assert not _filtered(r) and r.json() == {}
    r = env.call("GET", "/v1/catalog/services", "svc")
    assert _filtered(r) and set(r.json()) == {"web"}
    r = env.call("GET", "/v1/catalog/services", "mgmt")
    assert not _filtered(r) and set(r.json()) == {"web", "db", "web-sidecar-proxy"}

    r = env.call("GET", "/v1/catalog/service/web", "svc")
    assert _filtered(r) and [e["Node"] for e in r.json()] == ["n1"]
    r = env.call("GET", "/v1/catalog/service/web", "svc")  # the cached answer keeps the header
    assert _filtered(r) and len(r.json()) == 1
    r = env.call("GET", "/v1/catalog/service/web", "mgmt")  # same path, other identity: not that cache entry
    assert not _filtered(r) and len(r.json()) == 2

    r = env.call("GET", "/v1/catalog/nodes", "svc")
    assert _filtered(r) and [n["Node"] for n in r.json()] == ["n1"]
    r = env.call("GET", "/v1/catalog/node/n2", "svc")  # a node you may not see reads as an unknown one
    assert _filtered(r) and r.json() is None
    r = env.call("GET", "/v1/catalog/node/n1", "svc")  # db on n1 left out
    assert _filtered(r) and set(r.json()["Services"]) == {"web1"}
    assert env.call("GET", "/v1/catalog/datacenters").json() == ["dc1"]  # needs nothing


def test_catalog_register_and_deregister_need_node_and_service_write(env: Env) -> None:
    body = {"Node": "n1", "Address": "10.0.0.1", "SkipNodeUpdate": True,
            "Service": {"ID": "web-extra", "Service": "web", "Port": 81}}
    assert env.call("PUT", "/v1/catalog/register", "svc", json=body).status_code == 200
    assert env.forwarder.tokens[-1] == env.secrets["svc"]
    _denied(env.call("PUT", "/v1/catalog/register", "svc", json={**body, "Service": {"Service": "db"}}),
            "service:write", "db")
    _denied(env.call("PUT", "/v1/catalog/register", json=body), "service:write", "web")  # anonymous
    # A new node, or changed node fields, need node:write; a node check too.
    _denied(env.call("PUT", "/v1/catalog/register", "svc", json={**body, "Node": "n9", "SkipNodeUpdate": False}),
            "node:write", "n9")
    _denied(env.call("PUT", "/v1/catalog/register", "svc",
                     json={**body, "Check": {"CheckID": "disk", "Status": PASSING}}), "node:write", "n1")
    # A check on another service of the node needs service:write on that service.
    _denied(env.call("PUT", "/v1/catalog/register", "svc",
                     json={"Node": "n1", "Address": "10.0.0.1", "SkipNodeUpdate": True,
                           "Check": {"CheckID": "dbc", "ServiceID": "db1"}}), "service:write", "db")

    _denied(env.call("PUT", "/v1/catalog/deregister", "svc", json={"Node": "n1", "ServiceID": "db1"}),
            "service:write", "db")
    _denied(env.call("PUT", "/v1/catalog/deregister", "svc", json={"Node": "n1"}), "node:write", "n1")
    assert env.call("PUT", "/v1/catalog/deregister", "svc",
                    json={"Node": "n1", "ServiceID": "web-extra"}).status_code == 200
    assert "web-extra" not in {s.id for s in env.srv.agent.store.catalog.node_services("n1")}
    # node:write on the node allows deregistering anything on it (Consul since 1.4.1).
    assert env.call("PUT", "/v1/catalog/register", "mgmt",
                    json={**body, "Service": {"ID": "gone", "Service": "gone"}}).status_code == 200
    assert env.call("PUT", "/v1/catalog/deregister", "node_write",
                    json={"Node": "n1", "ServiceID": "gone"}).status_code == 200


# ---------------------------------------------------------------------- health


def test_health_lists_filter_each_entry(env: Env) -> None:
    r = env.call("GET", "/v1/health/service/web?passing", "svc")
    assert _filtered(r) and [e["Node"]["Node"] for e in r.json()] == ["n1"]
    r = env.call("GET", "/v1/health/service/web?passing")  # no token: filtered, the header masked
    assert not _filtered(r) and r.json() == []
    r = env.call("GET", "/v1/health/service/web?passing", "mgmt")
    assert not _filtered(r) and len(r.json()) == 2
    r = env.call("GET", "/v1/health/checks/web", "svc")
    assert _filtered(r) and {c["Node"] for c in r.json()} == {"n1"}
    r = env.call("GET", "/v1/health/node/n2", "svc")
    assert _filtered(r) and r.json() == []
    r = env.call("GET", "/v1/health/node/n1", "svc")  # node checks and web's, not db's
    assert _filtered(r) and {c["ServiceName"] for c in r.json()} == {"", "web"}
    r = env.call("GET", "/v1/health/state/any", "svc")
    assert _filtered(r) and {(c["Node"], c["ServiceName"]) for c in r.json()} == {("n1", ""), ("n1", "web")}
    # Entries the query's own conditions leave out do not count as hidden (Consul filters ACLs after them).
    r = env.call("GET", "/v1/health/service/web?tag=none", "svc")
    assert not _filtered(r) and r.json() == []
    r = env.call("GET", "/v1/catalog/service/web?tag=none", "svc")
    assert not _filtered(r) and r.json() == []
    r = env.call("GET", "/v1/health/connect/web", "web_and_proxy")
    assert not _filtered(r) and [e["Service"]["ID"] for e in r.json()] == ["web1-sidecar-proxy"]
    for path in ("/v1/health/connect/web", "/v1/catalog/connect/web"):
        # The proxy's own name is readable but not the service it fronts: Consul answers nothing.
        r = env.call("GET", path, "proxy_only")
        assert _filtered(r) and r.json() == [], path
        r = env.call("GET", path, "svc")  # web readable, its proxy's name not
        assert _filtered(r) and r.json() == [], path
    r = env.call("GET", "/v1/catalog/connect/web", "web_and_proxy")
    assert not _filtered(r) and [e["ServiceID"] for e in r.json()] == ["web1-sidecar-proxy"]


# ---------------------------------------------------------------------- kv


def test_kv_read_write_and_list(env: Env) -> None:
    assert env.call("PUT", "/v1/kv/app/new", "kv", content=b"1").json() is True
    assert env.forwarder.tokens[-1] == env.secrets["kv"]  # the write carries the request's token
    _denied(env.call("PUT", "/v1/kv/secret/new", "kv", content=b"1"), "key:write", "secret/new")
    _denied(env.call("PUT", "/v1/kv/app/new?cas=0"), "key:write", "app/new")
    assert env.call("GET", "/v1/kv/app/new?raw", "kv").content == b"1"
    _denied(env.call("GET", "/v1/kv/secret/z", "kv"), "key:read", "secret/z")
    _denied(env.call("GET", "/v1/kv/app/new"), "key:read", "app/new")
    # Without acl.enable_key_list_policy (Consul's default) a subtree needs no key:list: it is filtered.
    r = env.call("GET", "/v1/kv/?recurse", "kv")
    assert _filtered(r) and [e["Key"] for e in r.json()] == ["app/new", "app/x", "app/y"]
    r = env.call("GET", "/v1/kv/?recurse")  # nothing readable: the 404 of an empty prefix, unmarked for no token
    assert r.status_code == 404 and FILTERED not in r.headers
    r = env.call("GET", "/v1/kv/?recurse", "event")  # a token that reads no key: marked
    assert r.status_code == 404 and r.headers.get(FILTERED) == "true"
    r = env.call("GET", "/v1/kv/app/?recurse", "kv")  # write grants list: nothing to drop
    assert not _filtered(r) and [e["Key"] for e in r.json()] == ["app/new", "app/x", "app/y"]
    r = env.call("GET", "/v1/kv/?recurse", "kvlist")
    assert _filtered(r) and [e["Key"] for e in r.json()] == ["app/new", "app/x", "app/y"]
    r = env.call("GET", "/v1/kv/?keys&separator=/", "kvlist")
    assert not _filtered(r) and r.json() == ["app/", "secret/"]  # folded names are read on themselves
    r = env.call("GET", "/v1/kv/secret/?keys", "kvlist")  # all left out: the 404 of an empty prefix, marked
    assert r.status_code == 404 and r.headers.get(FILTERED) == "true"
    _denied(env.call("DELETE", "/v1/kv/?recurse", "kv"), "key:write", "")
    _denied(env.call("DELETE", "/v1/kv/secret/z", "kv"), "key:write", "secret/z")
    assert env.call("DELETE", "/v1/kv/app/new", "kv").json() is True
    assert env.call("DELETE", "/v1/kv/app/?recurse", "kv").json() is True
    assert env.forwarder.tokens[-1] == env.secrets["kv"]
    # No token: the agent's default token decides, and the write carries it.
    env.srv.agent.acl.tokens.default = env.secrets["kv"]
    try:
        assert env.call("PUT", "/v1/kv/app/by-default", content=b"1").json() is True
        assert env.forwarder.tokens[-1] == env.secrets["kv"]
    finally:
        env.srv.agent.acl.tokens.default = ""
    _denied(env.call("PUT", "/v1/kv/app/by-default", content=b"1"), "key:write", "app/by-default")
    env.srv.apply(commands.kv_delete("app/by-default"))
    assert env.srv.agent.store.catalog.kv_list("app/") == []
    for key in ("app/x", "app/y"):  # for the other tests
        env.srv.apply(commands.kv_set(key, b"v", 0))


# ---------------------------------------------------------------------- agent


def test_agent_self_metrics_members(env: Env) -> None:
    _denied(env.call("GET", "/v1/agent/self"), "agent:read", "node1")
    r = env.call("GET", "/v1/agent/self", "agent_read")
    assert r.status_code == 200 and r.json()["Config"]["NodeName"] == "node1"
    debug = r.json()["DebugConfig"]
    assert debug["ACLsEnabled"] is True and debug["ACLResolverSettings"]["ACLDefaultPolicy"] == "deny"
    assert debug["ACLTokens"]["ACLInitialManagementToken"] == "hidden"  # set in the config: never shown
    assert debug["ACLTokens"]["ACLAgentToken"] == "hidden"
    for secret in env.secrets.values():
        assert secret not in r.text
    _denied(env.call("GET", "/v1/agent/metrics"), "agent:read", "node1")
    _denied(env.call("GET", "/v1/agent/metrics?format=prometheus"), "agent:read", "node1")
    assert env.call("GET", "/v1/agent/metrics", "agent_read").status_code == 200
    assert env.call("GET", "/v1/agent/metrics?format=prometheus", "agent_read").status_code == 200
    r = env.call("GET", "/v1/agent/members", "agent_read")  # no node:read on node1
    assert _filtered(r) and r.json() == []
    r = env.call("GET", "/v1/agent/members", "agent_write")
    assert not _filtered(r) and [m["Name"] for m in r.json()] == ["node1"]


def test_agent_service_register_and_reads(env: Env) -> None:
    local: RecordingLocal = env.srv.agent.local  # type: ignore[assignment]
    api = {"Name": "api", "Port": 9000}
    _denied(env.call("PUT", "/v1/agent/service/register", json=api), "service:write", "api")
    _denied(env.call("PUT", "/v1/agent/service/register", "api", json={"Name": "db", "Port": 1}),
            "service:write", "db")
    assert env.call("PUT", "/v1/agent/service/register", "api", json=api).status_code == 200
    assert local.tokens["api"] == env.secrets["api"]  # anti-entropy writes it as the registering token
    # The sidecar is registered too: service:write on its name; a proxy needs write on its destination.
    sidecar = {**api, "Connect": {"SidecarService": {}}}
    _denied(env.call("PUT", "/v1/agent/service/register", "api", json=sidecar), "service:write",
            "api-sidecar-proxy")
    assert env.call("PUT", "/v1/agent/service/register", "api_sidecar", json=sidecar).status_code == 200
    proxy = {"Name": "web-proxy", "Kind": "connect-proxy", "Port": 21001,
             "Proxy": {"DestinationServiceName": "db"}}
    _denied(env.call("PUT", "/v1/agent/service/register", "api_sidecar",
                     json={**proxy, "Name": "api-proxy"}), "service:write", "db")
    # Script checks over HTTP need agent:write on this node, on top of the config flag.
    script = {**api, "Check": {"Args": ["/bin/true"], "Interval": "10s"}}
    _denied(env.call("PUT", "/v1/agent/service/register", "api", json=script), "agent:write", "node1")
    assert env.call("PUT", "/v1/agent/service/register", "agent_write", json=script).status_code == 200

    local._services["db-local"] = ServiceDefinition(name="db", id="db-local")
    r = env.call("GET", "/v1/agent/services", "api")
    assert _filtered(r) and set(r.json()) == {"api"}
    r = env.call("GET", "/v1/agent/services", "mgmt")
    assert not _filtered(r) and {"api", "db-local"} <= set(r.json())
    r = env.call("GET", "/v1/agent/services", "svc")
    assert _filtered(r) and r.json() == {}
    assert env.call("GET", "/v1/agent/service/api", "api").status_code == 200
    _denied(env.call("GET", "/v1/agent/service/api", "svc"), "service:read", "api")
    _denied(env.call("GET", "/v1/agent/health/service/name/api", "svc"), "service:read", "api")
    _denied(env.call("GET", "/v1/agent/health/service/id/api", "svc"), "service:read", "api")
    assert env.call("GET", "/v1/agent/health/service/id/api", "api").status_code in (200, 429, 503)

    _denied(env.call("PUT", "/v1/agent/service/maintenance/api?enable=true", "svc"), "service:write", "api")
    assert env.call("PUT", "/v1/agent/service/maintenance/api?enable=true", "api").status_code == 200
    _denied(env.call("PUT", "/v1/agent/service/deregister/api", "svc"), "service:write", "api")
    assert env.call("PUT", "/v1/agent/service/deregister/api", "api").status_code == 200
    assert "api" not in local.services()


def test_agent_checks_and_lifecycle(env: Env) -> None:
    local: RecordingLocal = env.srv.agent.local  # type: ignore[assignment]
    local._services["web-local"] = ServiceDefinition(name="web", id="web-local")
    local._checks["node-disk"] = LocalCheck(check_id="node-disk", name="disk", status=PASSING)
    local._checks["web-ttl"] = LocalCheck(check_id="web-ttl", name="ttl", status=PASSING,
                                          service_id="web-local", service_name="web", type="ttl")
    r = env.call("GET", "/v1/agent/checks", "svc")  # web's check; the node check needs node:read on node1
    assert _filtered(r) and set(r.json()) == {"web-ttl"}
    r = env.call("GET", "/v1/agent/checks", "agent_write")
    assert _filtered(r) and set(r.json()) == {"node-disk"}

    _denied(env.call("PUT", "/v1/agent/check/pass/web-ttl", "api"), "service:write", "web")
    assert env.call("PUT", "/v1/agent/check/pass/web-ttl", "svc").status_code == 200
    _denied(env.call("PUT", "/v1/agent/check/fail/node-disk", "svc"), "node:write", "node1")
    assert env.call("PUT", "/v1/agent/check/warn/node-disk", "agent_write").status_code == 200
    _denied(env.call("PUT", "/v1/agent/check/update/web-ttl", "api", json={"Status": "passing"}),
            "service:write", "web")
    node_check = {"ID": "mem", "Name": "mem", "TTL": "10s"}
    _denied(env.call("PUT", "/v1/agent/check/register", "svc", json=node_check), "node:write", "node1")
    assert env.call("PUT", "/v1/agent/check/register", "agent_write", json=node_check).status_code == 200
    assert local.tokens["mem"] == env.secrets["agent_write"]
    svc_check = {"ID": "web2", "Name": "w", "TTL": "10s", "ServiceID": "web-local"}
    _denied(env.call("PUT", "/v1/agent/check/register", "agent_write", json=svc_check), "service:write", "web")
    assert env.call("PUT", "/v1/agent/check/register", "svc", json=svc_check).status_code == 200
    _denied(env.call("PUT", "/v1/agent/check/deregister/web-ttl", "agent_write"), "service:write", "web")
    assert env.call("PUT", "/v1/agent/check/deregister/web-ttl", "svc").status_code == 200

    _denied(env.call("PUT", "/v1/agent/maintenance?enable=true", "svc"), "node:write", "node1")
    assert env.call("PUT", "/v1/agent/maintenance?enable=true", "agent_write").status_code == 200
    _denied(env.call("PUT", "/v1/agent/reload", "agent_read"), "agent:write", "node1")
    assert env.call("PUT", "/v1/agent/reload", "agent_write").status_code == 200
    _denied(env.call("PUT", "/v1/agent/join/127.0.39.9", "agent_read"), "agent:write", "node1")
    _denied(env.call("PUT", "/v1/agent/leave", "agent_read"), "agent:write", "node1")
    _denied(env.call("PUT", "/v1/agent/force-leave/n2", "agent_write"), "operator:write")
    assert env.srv.agent.leave_calls == 0


# ---------------------------------------------------------------------- events, unknown tokens


def test_events_fire_and_list(env: Env) -> None:
    assert env.call("PUT", "/v1/event/fire/deploy", "event", content=b"x").status_code == 200
    _denied(env.call("PUT", "/v1/event/fire/other", "event"), "event:write", "other")
    assert env.call("PUT", "/v1/event/fire/other", "mgmt").status_code == 200
    r = env.call("GET", "/v1/event/list", "event")
    assert _filtered(r) and {e["Name"] for e in r.json()} == {"deploy"}
    last_deploy = r.headers["x-consul-index"]
    r = env.call("GET", "/v1/event/list", "mgmt")
    assert not _filtered(r) and {e["Name"] for e in r.json()} == {"deploy", "other"}
    assert r.headers["x-consul-index"] != last_deploy  # the index is of what the token sees


def test_unknown_token_is_acl_not_found(env: Env) -> None:
    bogus = str(uuid.uuid4())
    for method, path in (("GET", "/v1/catalog/services"), ("GET", "/v1/health/service/web"),
                         ("GET", "/v1/kv/app/x"), ("PUT", "/v1/kv/app/x"), ("GET", "/v1/agent/self"),
                         ("GET", "/v1/event/list"), ("PUT", "/v1/catalog/deregister")):  # a valid body: 400s come first
        r = env.call(method, path, bogus, content=b'{"Node": "n1"}' if method == "PUT" else None)
        assert (r.status_code, r.text.strip()) == (403, "ACL not found"), (path, r.text)
    r = env.http.get("/v1/catalog/services", params={"token": bogus})  # ?token= and Bearer too
    assert r.status_code == 403
    r = env.http.get("/v1/kv/app/x", headers={"Authorization": f"Bearer {env.secrets['kv']}"})
    assert r.status_code == 200


def test_acls_off_nothing_changes() -> None:
    srv = ServerThread(agent=FakeAgent(), host=HOST).start()
    try:
        _populate(srv)
        forwarder = srv.agent.store.replicator = TokenRecorder(srv.agent.store)
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            bogus = {"X-Consul-Token": str(uuid.uuid4())}  # ignored: nothing resolves with ACLs off
            r = http.get("/v1/health/service/web?passing", headers=bogus)
            assert r.status_code == 200 and len(r.json()) == 2 and FILTERED not in r.headers
            assert set(http.get("/v1/catalog/services", headers=bogus).json()) == {"web", "db", "web-sidecar-proxy"}
            assert http.put("/v1/kv/secret/new", content=b"1", headers=bogus).json() is True
            assert forwarder.tokens == [None]  # the agent's own write, as before ACLs
            assert [e["Key"] for e in http.get("/v1/kv/?recurse").json()][-1] == "secret/z"
            assert http.get("/v1/agent/self", headers=bogus).status_code == 200
            assert http.put("/v1/agent/service/register", headers=bogus,
                            content=json.dumps({"Name": "x", "Check": {"Args": ["/bin/true"],
                                                                       "Interval": "10s"}})).status_code == 200
    finally:
        srv.stop()
