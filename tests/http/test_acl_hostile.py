"""Red team of the ACL system over HTTP (issue 15): an outsider with no token and holders of weak tokens
attack a harness agent under `default_policy = "deny"` (127.0.46.1, real sockets, the agent's ACLResolver).
Each test names the attack; those that found a hole fail without its fix (see the commit messages)."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import consul
import httpx
import msgpack
import pytest
from meshagent.agent.catalog import commands
from meshagent.agent.http.api import API
from meshagent.agent.http.messages import Request
from meshagent.agent.server.acl_endpoints import AclHttpEndpoint

from tests.support.acl_objects import add_token
from tests.support.http_fuzz import ALLOWED_STATUS, PATHS, run_fuzz
from tests.support.http_harness import ACLEnv, FakeAgent, ServerThread, register_instance, wait_waiting
from tests.support.ports import port_free

HOST = "127.0.46.1"  # this suite's address (127.0.46.N is the red team's); the port is ephemeral
FILTERED = "x-consul-results-filtered-by-acls"
MGMT = str(uuid.uuid4())

RULES = {
    "web": 'service "web" { policy = "write" }\nnode_prefix "" { policy = "read" }\n',
    "kv": 'key_prefix "app/" { policy = "write" }\n',
    # everything readable but web and the key app/x
    # writes every service but web, and every node
    "allbutweb": ('service_prefix "" { policy = "write" }\nservice "web" { policy = "deny" }\n'
                  'node_prefix "" { policy = "write" }\n'),
    "noweb": ('service "web" { policy = "deny" }\nservice_prefix "" { policy = "read" }\n'
              'node_prefix "" { policy = "read" }\nkey "app/x" { policy = "deny" }\n'
              'key_prefix "" { policy = "read" }\n'),
}


Env = ACLEnv


def _token(srv: ServerThread, name: str, rules: str) -> str:
    return add_token(srv.apply, name, rules)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if not port_free(HOST, 0):
        pytest.skip(f"{HOST} is not usable here")
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    agent.config.acl.tokens.initial_management = MGMT
    srv = ServerThread(agent=agent, host=HOST).start()
    try:
        srv.apply(commands.acl_init(MGMT))  # as the leader writes it with tokens { initial_management } set
        secrets = {name: _token(srv, name, rules) for name, rules in RULES.items()}
        secrets["mgmt"] = MGMT
        register_instance(srv, "n1", "web", sid="web1", address="10.0.0.1")
        register_instance(srv, "n2", "db", sid="db1", address="10.0.0.2")
        for key in ("app/x", "app/y", "secret/z"):
            srv.apply(commands.kv_set(key, b"v", 0))
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            yield Env(srv, http, secrets)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------ bootstrap


def test_no_bootstrap_once_an_initial_management_token_is_configured(env: Env) -> None:
    """Finding: with tokens { initial_management } set, /v1/acl/bootstrap still handed anyone without a
    token a global-management token. Consul bootstraps with the initial management token (reset index)."""
    r = env.call("PUT", "/v1/acl/bootstrap")
    assert r.status_code == 403, r.text[:200]
    assert r.text.strip().startswith("Permission denied: ACL bootstrap no longer allowed (reset index: ")
    assert "SecretID" not in r.text


def test_token_self_without_a_token_does_not_show_the_agents_default_secret(env: Env) -> None:
    """Finding: GET /v1/acl/token/self with no token answered the agent's `default` token with its SecretID,
    so anyone reaching the HTTP port could carry that secret to other agents and to :8300 (where no token
    means anonymous, not this agent's default). A presented token still sees its own secret."""
    resolver = env.srv.agent.acl
    resolver.tokens.default = env.secrets["web"]
    try:
        r = env.call("GET", "/v1/acl/token/self")
        assert r.status_code == 200 and r.json()["SecretID"] == "<hidden>", r.text[:200]
        assert env.secrets["web"] not in r.text
        assert env.call("GET", "/v1/acl/token/self", "web").json()["SecretID"] == env.secrets["web"]
    finally:
        resolver.tokens.default = ""


class _ToServer:
    """A client agent's way to a server (RPCCaller): acl_http run by the env's server endpoint."""

    def __init__(self, endpoint: AclHttpEndpoint) -> None:
        self.endpoint = endpoint

    async def call(self, method: str, args: Any) -> Any:
        assert method == "acl_http"
        return await self.endpoint.call(msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False))


def test_token_self_through_a_client_does_not_show_its_default_secret(env: Env) -> None:
    """The same finding on a client agent: it forwards its default token to a server, which saw it as
    presented; the relayed answer hides the secret unless the request presented a token."""
    client = FakeAgent(node_name="client1")
    client.is_server = False
    client.config.acl.enabled = True
    client.config.acl.default_policy = "deny"
    client.acl.tokens.default = env.secrets["web"]
    client.store.replicator = _ToServer(AclHttpEndpoint(env.srv.api))
    api = API(client)

    def self_read(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        request = Request(method="GET", path="/v1/acl/token/self", query="", headers=headers, body=b"")
        status, _, body = env.srv.run(api, request)
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    assert self_read([])["SecretID"] == "<hidden>"
    assert self_read([(b"x-consul-token", env.secrets["web"].encode())])["SecretID"] == env.secrets["web"]


def test_concurrent_bootstraps_exactly_one_wins() -> None:
    """Held: 8 bootstraps at once on a system not yet bootstrapped (no initial management token): one
    management token, seven refusals with its reset index."""
    if not port_free(HOST, 0):
        pytest.skip(f"{HOST} is not usable here")
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    srv = ServerThread(agent=agent, host=HOST).start()
    try:
        srv.apply(commands.acl_init(""))
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def bootstrap() -> None:
            answer = httpx.put(f"{srv.url}/v1/acl/bootstrap", timeout=10)
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=bootstrap) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(a.status_code for a in answers) == [200] + [403] * 7, [a.text for a in answers]
        winner = next(a.json() for a in answers if a.status_code == 200)
        assert {a.text.strip() for a in answers if a.status_code == 403} == {
            f"Permission denied: ACL bootstrap no longer allowed (reset index: {winner['CreateIndex']})"}
        assert len([t for t in agent.store.catalog.acl.tokens() if t.description.startswith("Bootstrap")]) == 1
    finally:
        srv.stop()


def test_a_token_in_the_url_is_never_logged_or_echoed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Held: ?token= on refused, failed and answered requests shows up in no log record and no body."""
    caplog.set_level(logging.DEBUG)
    secret = env.secrets["kv"]
    for method, path in [("GET", "/v1/kv/secret/z"), ("GET", "/v1/catalog/services?filter=%28%28"),
                         ("PUT", "/v1/snapshot"), ("GET", "/v1/acl/token/self"), ("GET", "/v1/nope"),
                         ("GET", "/v1/health/service/web?index=abc"), ("PUT", "/v1/kv/app/x?cas=x")]:
        sep = "&" if "?" in path else "?"
        r = env.http.request(method, f"{path}{sep}token={secret}")
        assert r.status_code in (200, 400, 403, 404, 405), (path, r.status_code)
        assert secret not in r.text or path == "/v1/acl/token/self", path  # its own token/self: as Consul
    unknown = str(uuid.uuid4())
    r = env.http.get(f"/v1/kv/app/x?token={unknown}")
    assert (r.status_code, r.text.strip()) == (403, "ACL not found")
    for record in caplog.records:
        if record.name.startswith(("httpx", "httpcore")):
            continue  # this test's own client logs the URLs it requests
        text = record.getMessage() + str(record.exc_info or "")
        assert secret not in text and unknown not in text, text[:200]


# ------------------------------------------------------------------------------------------ catalog writes


def _checks(env: Env, node: str) -> dict[str, tuple[str, str]]:
    rows = env.call("GET", f"/v1/health/node/{node}", "mgmt").json()
    return {c["CheckID"]: (c["ServiceID"], c["Status"]) for c in rows}


def test_a_service_token_cannot_take_over_another_services_check_by_id(env: Env) -> None:
    """Finding: web's token re-registered db1's check ID under its own instance (and could the node's
    serfHealth), so a critical db instance lost its check and read as healthy. The existing check's owner
    must be writable too (stricter than Consul, which vets only the new owner)."""
    before = _checks(env, "n2")
    for check_id in ("service:db1", "serfHealth"):
        body = {"Node": "n2", "Address": "10.0.0.2", "SkipNodeUpdate": True,
                "Service": {"ID": "web-n2", "Service": "web", "Port": 81},
                "Check": {"CheckID": check_id, "ServiceID": "web-n2", "Status": "critical"}}
        r = env.call("PUT", "/v1/catalog/register", "web", json=body)
        assert r.status_code == 403, (check_id, r.status_code, r.text)
    assert _checks(env, "n2") == before
    # Its own new check on its own instance is fine.
    body = {"Node": "n2", "Address": "10.0.0.2", "SkipNodeUpdate": True,
            "Service": {"ID": "web-n2", "Service": "web", "Port": 81},
            "Check": {"CheckID": "web-n2-alive", "ServiceID": "web-n2", "Status": "passing"}}
    assert env.call("PUT", "/v1/catalog/register", "web", json=body).status_code == 200
    assert env.call("PUT", "/v1/catalog/register", "web", json=body).status_code == 200  # and again
    assert env.call("PUT", "/v1/catalog/deregister", "web", json={"Node": "n2", "ServiceID": "web-n2"}).status_code \
        == 200


# ------------------------------------------------------------------------------------------ name games


@pytest.mark.parametrize("name", ["WEB", "Web"])
def test_a_deny_on_a_service_cannot_be_dodged_by_case(env: Env, name: str) -> None:
    """Finding: the catalog matches service names case-insensitively and the rules compared exactly, so a
    token denied "web" registered an instance named "WEB" that /v1/health/service/web (and DNS) then served
    as web's, and got a leaf certificate for it. Service and node rules now match names as the catalog does."""
    body = {"Node": "n1", "Address": "10.0.0.1", "SkipNodeUpdate": True,
            "Service": {"ID": f"evil-{name}", "Service": name, "Port": 666}}
    r = env.call("PUT", "/v1/catalog/register", "allbutweb", json=body)
    assert r.status_code == 403, r.text
    assert r.text.strip().endswith(f"lacks permission 'service:write' on \"{name}\""), r.text
    r = env.call("PUT", "/v1/agent/service/register", "allbutweb", json={"ID": f"evil-{name}", "Name": name})
    assert r.status_code == 403, r.text
    assert env.call("GET", f"/v1/agent/connect/ca/leaf/{name}", "allbutweb").status_code == 403
    served = env.call("GET", "/v1/health/service/web", "mgmt").json()
    assert [e["Service"]["Port"] for e in served] == [8080]
    # Reads too: a token denied web does not see it under another case.
    for path in (f"/v1/catalog/service/{name}", f"/v1/health/service/{name}"):
        assert env.call("GET", path, "noweb").json() == [], path
    # Everything else it may write still works, in any case.
    body["Service"] = {"ID": "api-1", "Service": "API", "Port": 80}
    assert env.call("PUT", "/v1/catalog/register", "allbutweb", json=body).status_code == 200


# ------------------------------------------------------------------------------------------ blocking queries


@pytest.mark.parametrize("path", ["/v1/health/service/web", "/v1/kv/app/x", "/v1/config/service-defaults"])
def test_a_blocking_query_stops_answering_once_its_token_is_deleted(env: Env, path: str) -> None:
    """Finding: a blocking query started with a token that was then deleted (revoked) still got the next
    answer, built with the deleted token's rights; it is now 403 "ACL not found" when it wakes."""
    secret = _token(env.srv, f"doomed-{abs(hash(path)) % 10**6}",
                    'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
                    'key_prefix "" { policy = "read" }\n')
    first = env.call("GET", path, secret)
    assert first.status_code == 200, first.text
    index = first.headers["X-Consul-Index"]
    answers: list[httpx.Response] = []
    waiting = env.srv.agent.store.hub.waiting
    waiter = threading.Thread(target=lambda: answers.append(env.call("GET", f"{path}?index={index}&wait=20s", secret)))
    waiter.start()
    wait_waiting(env.srv, waiting + 1)
    token = env.srv.agent.store.catalog.acl.token_by_secret(secret)
    assert token is not None
    env.srv.apply(commands.acl_token_delete(token.accessor_id))
    n = uuid.uuid4().hex[:8]  # wake it: a change under every watched key
    register_instance(env.srv, f"n-{n}", "web", sid=f"web-{n}")
    env.srv.apply(commands.kv_set("app/x", n.encode(), 0))
    env.srv.apply(commands.config_entry_set({"Kind": "service-defaults", "Name": "web", "Meta": {"n": n}}))
    waiter.join(30)
    assert answers and (answers[0].status_code, answers[0].text.strip()) == (403, "ACL not found"), \
        (answers[0].status_code, answers[0].text[:200]) if answers else "no answer"


# ------------------------------------------------------------------------------------------ fuzz, ACLs on

ACL_PATHS = [*PATHS, "/v1/acl/bootstrap", "/v1/acl/token", "/v1/acl/token/self", "/v1/acl/tokens", "/v1/acl/policy",
             "/v1/acl/policies", "/v1/acl/role", "/v1/acl/roles", "/v1/acl/../kv/secret/x", "/v1/agent/token/default",
             "/v1/agent/token/agent", "/v1/snapshot", "/v1/operator/keyring", "/v1/operator/raft/configuration",
             "/v1/catalog/register", "/v1/catalog/deregister", "/v1/agent/connect/ca/leaf/web",
             "/v1/agent/connect/ca/leaf/db", "/v1/agent/connect/authorize", "/v1/connect/intentions",
             "/v1/connect/ca/configuration", "/v1/config", "/v1/config/service-defaults/web", "/v1/event/fire/x",
             "/v1/event/list", "/v1/kv/secret/z", "/v1/kv/fuzz/ok/a", "/v1/kv/Fuzz/ok", "/v1/kv/fuzz%2f..%2fsecret",
             "/v1/discovery-chain/web", "/v1/agent/reload", "/v1/agent/leave", "/v1/agent/join/127.0.46.9"]


def test_fuzz_with_acls_on_no_crash_no_500_no_write_without_rights() -> None:
    """The hostile-input fuzz (tests/support/http_fuzz.py) against default deny, presenting weak tokens, an
    unknown one and none: every answer well formed (403 now among them), and afterwards every write in the
    store is one the tokens allowed (KV under fuzz/, services named web, no ACL object, event or entry)."""
    if not port_free(HOST, 0):
        pytest.skip(f"{HOST} is not usable here")
    agent = FakeAgent()
    agent.config.default_query_time = 0.05  # fuzzed ?index= must not park connections for minutes
    agent.config.max_query_time = 0.1
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    srv = ServerThread(agent=agent, host=HOST).start()
    try:
        srv.apply(commands.acl_init(MGMT))
        weak = [_token(srv, "fz-kv", 'key_prefix "fuzz/" { policy = "write" }\nservice_prefix "" { policy = "read" }\n'
                                     'node_prefix "" { policy = "read" }\n'),
                _token(srv, "fz-web", 'service "web" { policy = "write" }\nnode_prefix "" { policy = "read" }\n')]
        register_instance(srv, "n1", "web", tags=["primary"])
        srv.apply(commands.kv_set("secret/z", b"keep", 0))
        catalog = agent.store.catalog
        acl_index, bootstrap_index = catalog.acl.index, catalog.acl.bootstrap_index
        seed = int(os.environ.get("MESH_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
        print(f"ACL HTTP fuzz seed: {seed} (re-run with MESH_FUZZ_SEED={seed})")
        tokens = (*(s.encode() for s in weak), str(uuid.uuid4()).encode(), b"anonymous")
        report = run_fuzz(HOST, srv.port, seed, 3_000, tokens=tokens, paths=ACL_PATHS, allowed={*ALLOWED_STATUS, 403})
        print(f"{report.cases} connections, {report.responses} responses, statuses {sorted(report.statuses.items())}")
        assert not report.problems, f"seed {seed}: " + "\n".join(report.problems[:20])
        assert report.statuses.get(403, 0) > 100 and report.statuses.get(200, 0) > 40, report.statuses
        # No write without rights.
        assert (catalog.acl.index, catalog.acl.bootstrap_index) == (acl_index, bootstrap_index)
        keys = [e.key for e in catalog.kv_list("")]
        assert all(k.startswith("fuzz/") for k in keys if k != "secret/z"), keys
        secret = catalog.kv_get("secret/z")
        assert secret is not None and secret.value == b"keep"
        assert {d.name for d in agent.local.services().values()} <= {"web"}
        assert set(catalog.services()) <= {"web"} and [n.node for n in catalog.nodes()] == ["n1"]
        assert agent.leave_calls == 0 and agent.shutdowns == 0  # /v1/agent/leave needs agent:write
        assert agent.events.recent == [] and all(row.name == "web" for row in catalog.config_entries.all())
        # Still answering correctly, as the management token.
        c = consul.Consul(host=HOST, port=srv.port, token=MGMT)
        assert c.kv.put("after/fuzz", "ok") is True and c.kv.get("after/fuzz")[1]["Value"] == b"ok"
        assert [e["Node"]["Node"] for e in c.health.service("web", passing=True)[1]] == ["n1"]
    finally:
        srv.stop()
