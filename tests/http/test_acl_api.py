"""`/v1/acl/*` (agent/http/acl_api.py, acl_policy_api.py) on the in-process HTTP harness with ACLs on, under
default deny, on 127.0.42.1: bootstrap once, token/policy/role CRUD with Consul's shapes and statuses,
SecretIDs only for acl:write, unmodified py-consul, blocking reads, hostile bodies; and the `acl_http` RPC's
argument and answer checks (agent/server/acl_endpoints.py, agent/http/acl_forward.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import consul
import httpx
import pytest
from meshagent.agent.acl.objects import Link, Token
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import commands
from meshagent.agent.http.acl_forward import forward_args, parse_answer
from meshagent.agent.http.api import API
from meshagent.agent.http.messages import Request
from meshagent.agent.http.server import HTTPServer
from meshagent.agent.rpc.errors import Rejected, ServerError
from meshagent.agent.server.acl_endpoints import AclHttpEndpoint, parse_args

from tests.support.http_harness import FakeAgent, ServerThread, wait_waiting
from tests.support.ports import port_free

MGMT = "6a1e7b7e-0c2f-4b0e-9a53-2f0c9d9e1a01"
GM = "00000000-0000-0000-0000-000000000001"
ANON = "00000000-0000-0000-0000-000000000002"


class ACLServer(ServerThread):
    """The harness on 127.0.42.N with `acl { enabled = true default_policy = "deny" }`."""

    def __init__(self, host: str, enabled: bool = True) -> None:
        agent = FakeAgent()
        agent.config = replace(agent.config, acl=replace(agent.config.acl, enabled=enabled, default_policy="deny"))
        agent.acl = ACLResolver(agent.config, agent.store)
        super().__init__(agent=agent)
        self.server = HTTPServer(self.api, host, 0)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _host(n: int) -> str:
    host = f"127.0.42.{n}"
    if not port_free(host, 0):
        pytest.skip(f"{host} is not usable here")
    return host


@pytest.fixture
def acl_server() -> Iterator[ACLServer]:
    server = ACLServer(_host(1)).start()
    try:
        # The builtins, and a management token that is not an initial_management one (that one would be the
        # bootstrap, as in Consul: the bootstrap tests need the system not yet bootstrapped).
        server.apply(commands.acl_init(""))
        server.apply(commands.acl_token_set(Token(accessor_id=str(uuid.uuid4()), secret_id=MGMT,
                                                  policies=(Link(GM, "global-management"),))))
        yield server
    finally:
        server.stop()


def _c(server: ACLServer, token: str | None = MGMT) -> consul.Consul:
    return consul.Consul(host=server.host, port=server.port, token=token)


def _req(server: ACLServer, method: str, path: str, token: str | None = MGMT, **kw: Any) -> httpx.Response:
    headers = {"X-Consul-Token": token} if token else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=10, **kw)


def _token_with(server: ACLServer, rules: str, name: str) -> dict[str, Any]:
    policy = _req(server, "PUT", "/v1/acl/policy", json={"Name": name, "Rules": rules}).json()
    return _req(server, "PUT", "/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]}).json()


# ------------------------------------------------------------------------------------------- disabled, bootstrap


def test_acls_disabled_answer_401_everywhere() -> None:
    server = ACLServer(_host(2), enabled=False).start()
    try:
        for method, path in [("PUT", "/v1/acl/bootstrap"), ("GET", "/v1/acl/tokens"), ("GET", "/v1/acl/token/self"),
                             ("PUT", "/v1/acl/policy"), ("GET", "/v1/acl/roles")]:
            answer = _req(server, method, path)
            assert (answer.status_code, answer.text.strip()) == (401, "ACL support disabled"), path
    finally:
        server.stop()


def test_bootstrap_once_then_403_with_the_reset_index(acl_server: ACLServer) -> None:
    first = _c(acl_server, token=None).acl.bootstrap()
    assert first["ID"] == first["SecretID"] and uuid.UUID(first["SecretID"])
    assert first["Policies"] == [{"ID": GM, "Name": "global-management"}]
    assert first["Description"] == "Bootstrap Token (Global Management)"
    # The bootstrap token works: it reads itself with its secret.
    assert _c(acl_server, first["SecretID"]).acl.token.read_self()["AccessorID"] == first["AccessorID"]
    again = _req(acl_server, "PUT", "/v1/acl/bootstrap", token=None)
    assert again.status_code == 403
    assert again.text.strip() == ("Permission denied: ACL bootstrap no longer allowed (reset index: "
                                  f"{first['CreateIndex']})")
    with pytest.raises(consul.ACLPermissionDenied):
        _c(acl_server, token=None).acl.bootstrap()


def test_bootstrap_with_a_given_secret_and_a_bad_one(acl_server: ACLServer) -> None:
    bad = _req(acl_server, "PUT", "/v1/acl/bootstrap", token=None, json={"BootstrapSecret": "not-a-uuid"})
    assert bad.status_code == 400 and "BootstrapSecret" in bad.text and "not-a-uuid" not in bad.text
    secret = str(uuid.uuid4())
    token = _req(acl_server, "POST", "/v1/acl/bootstrap", token=None, json={"BootstrapSecret": secret}).json()
    assert token["SecretID"] == secret


# ------------------------------------------------------------------------------------------- tokens


def test_py_consul_policy_and_token_lifecycle(acl_server: ACLServer) -> None:
    c = _c(acl_server)
    policy = c.acl.policy.create("kv-app", rules={"key_prefix": {"app/": {"policy": "write"}}},
                                 description="app keys")
    assert policy["Name"] == "kv-app" and "key_prefix" in policy["Rules"] and policy["Description"] == "app keys"
    assert c.acl.policy.read(policy["ID"])["Rules"] == policy["Rules"]
    assert {p["Name"] for p in c.acl.policy.list()} == {"global-management", "kv-app"}
    assert all("Rules" not in p for p in c.acl.policy.list())  # list stubs, as Consul's
    token = c.acl.token.create(description="app", policies_name=["kv-app"])
    assert token["Policies"] == [{"ID": policy["ID"], "Name": "kv-app"}] and uuid.UUID(token["SecretID"])
    read = c.acl.token.read(token["AccessorID"])
    assert read["SecretID"] == token["SecretID"] and read["Description"] == "app"
    listed = c.acl.token.list(policy=policy["ID"])
    assert [t["AccessorID"] for t in listed] == [token["AccessorID"]]
    # The new token reads itself (nothing else needed), SecretID included; it may not list tokens.
    assert _c(acl_server, token["SecretID"]).acl.token.read_self()["SecretID"] == token["SecretID"]
    with pytest.raises(consul.ACLPermissionDenied):
        _c(acl_server, token["SecretID"]).acl.token.list()
    updated = c.acl.token.update(token["AccessorID"], description="app v2", policies_name=["kv-app"])
    assert updated["SecretID"] == token["SecretID"] and updated["Description"] == "app v2"
    assert updated["CreateIndex"] == token["CreateIndex"] < updated["ModifyIndex"]
    assert c.acl.token.delete(token["AccessorID"]) is True
    assert c.acl.token.read(token["AccessorID"]) is None  # 404
    assert c.acl.policy.delete(policy["ID"]) is True
    assert c.acl.policy.read(policy["ID"]) is None


def test_secret_ids_only_for_acl_write(acl_server: ACLServer) -> None:
    reader = _token_with(acl_server, 'acl = "read"', "acl-read")
    listed = _req(acl_server, "GET", "/v1/acl/tokens", token=reader["SecretID"])
    assert listed.status_code == 200 and listed.headers["X-Consul-Index"]
    assert {t["SecretID"] for t in listed.json()} == {"<hidden>"}
    assert MGMT not in listed.text and reader["SecretID"] not in listed.text
    one = _req(acl_server, "GET", f"/v1/acl/token/{reader['AccessorID']}", token=reader["SecretID"]).json()
    assert one["SecretID"] == "<hidden>"
    denied = _req(acl_server, "PUT", "/v1/acl/token", token=reader["SecretID"], json={})
    assert denied.status_code == 403
    assert denied.text.strip() == (f"Permission denied: token with AccessorID '{reader['AccessorID']}' lacks "
                                   "permission 'acl:write'")
    anonymous = _req(acl_server, "GET", "/v1/acl/tokens", token=None)
    assert anonymous.status_code == 403 and ANON in anonymous.text
    unknown = _req(acl_server, "GET", "/v1/acl/tokens", token=str(uuid.uuid4()))
    assert (unknown.status_code, unknown.text.strip()) == (403, "ACL not found")


def test_token_update_rules_clone_and_the_anonymous_token(acl_server: ACLServer) -> None:
    dns = _req(acl_server, "PUT", "/v1/acl/policy",
               json={"Name": "dns", "Rules": 'service_prefix "" { policy = "read" }'})
    anon = _req(acl_server, "PUT", f"/v1/acl/token/{ANON}", json={"Policies": [{"Name": "dns"}]})
    assert anon.status_code == 200, anon.text
    assert anon.json()["Policies"] == [{"ID": dns.json()["ID"], "Name": "dns"}]
    assert anon.json()["SecretID"] == "anonymous"
    token = _req(acl_server, "PUT", "/v1/acl/token", json={"Description": "t", "Local": True}).json()
    aid = token["AccessorID"]
    for body, text in [({"SecretID": str(uuid.uuid4())}, "Changing a token's SecretID is not permitted"),
                       ({"AccessorID": str(uuid.uuid4())}, "Token Accessor ID in URL and payload do not match"),
                       ({"Local": False}, f"Cannot toggle local mode of {aid}")]:
        answer = _req(acl_server, "PUT", f"/v1/acl/token/{aid}", json={"Local": True, **body})
        assert (answer.status_code, answer.text.strip()) == (400, text)
    assert _req(acl_server, "PUT", f"/v1/acl/token/{uuid.uuid4()}", json={}).status_code == 404
    clone = _c(acl_server).acl.token.clone(aid, description="copy")
    assert clone["AccessorID"] != aid and clone["SecretID"] != token["SecretID"] and clone["Local"] is True
    assert clone["Description"] == "copy"
    # The same AccessorID or SecretID twice is refused.
    again = _req(acl_server, "PUT", "/v1/acl/token", json={"AccessorID": aid})
    assert (again.status_code, again.text.strip()) == (400, "Invalid Token: AccessorID is already in use")
    again = _req(acl_server, "PUT", "/v1/acl/token", json={"SecretID": token["SecretID"]})
    assert (again.status_code, again.text.strip()) == (400, "Invalid Token: SecretID is already in use")
    assert _req(acl_server, "DELETE", f"/v1/acl/token/{ANON}").status_code == 400  # the FSM keeps it
    assert _req(acl_server, "DELETE", f"/v1/acl/token/{uuid.uuid4()}").status_code == 404


def test_a_token_cannot_delete_itself(acl_server: ACLServer) -> None:
    # Review F8: Consul's TokenDelete refuses the request's own token (an operator cannot lock himself out).
    admin = _req(acl_server, "PUT", "/v1/acl/token", json={"Policies": [{"ID": GM}]}).json()
    answer = _req(acl_server, "DELETE", f"/v1/acl/token/{admin['AccessorID']}", token=admin["SecretID"])
    assert (answer.status_code, answer.text.strip()) == (
        400, "Deletion of the request's authorization token is not permitted")
    assert _req(acl_server, "GET", "/v1/acl/token/self", token=admin["SecretID"]).status_code == 200
    # As the server's default token (no token presented) too; another token may delete it.
    acl_server.agent.acl.tokens.default = admin["SecretID"]
    assert _req(acl_server, "DELETE", f"/v1/acl/token/{admin['AccessorID']}", token=None).status_code == 400
    assert _req(acl_server, "DELETE", f"/v1/acl/token/{admin['AccessorID']}").json() is True


def test_token_list_filters_by_role_and_service_name(acl_server: ACLServer) -> None:
    role = _req(acl_server, "PUT", "/v1/acl/role", json={"Name": "ops", "Description": "d"}).json()
    with_role = _req(acl_server, "PUT", "/v1/acl/token", json={"Roles": [{"Name": "ops"}]}).json()
    web = _req(acl_server, "PUT", "/v1/acl/token", json={"ServiceIdentities": [{"ServiceName": "web"}]}).json()
    ids = lambda q: [t["AccessorID"] for t in _req(acl_server, "GET", f"/v1/acl/tokens?{q}").json()]  # noqa: E731
    assert ids(f"role={role['ID']}") == [with_role["AccessorID"]]
    assert ids("servicename=web") == [web["AccessorID"]]
    assert ids("authmethod=x") == []
    assert len(ids("")) == 4  # management, anonymous and the two


# ------------------------------------------------------------------------------------------- policies, roles


def test_policy_refusals_in_consul_words(acl_server: ACLServer) -> None:
    ok = _req(acl_server, "PUT", "/v1/acl/policy", json={"name": "p1", "rules": 'node_prefix "" { policy = "read" }'})
    assert ok.status_code == 200 and ok.json()["Name"] == "p1"  # Go's decoder ignores key case, so do we
    cases = [
        ({"Name": "p1"}, 'Invalid Policy: A Policy with Name "p1" already exists'),
        ({"Name": "p2", "ID": str(uuid.uuid4())}, "Cannot specify the ID when creating a new policy"),
        ({"Name": "bad name!"}, "Policy decoding failed: Name:"),
        ({"Name": "p3", "Rules": 'service "web" { policy = "wrte" }'}, "Policy decoding failed: Rules:"),
        ({"Name": 7}, "Policy decoding failed: Name: must be a string"),
    ]
    for body, text in cases:
        answer = _req(acl_server, "PUT", "/v1/acl/policy", json=body)
        assert answer.status_code == 400 and answer.text.startswith(text), (body, answer.text)
    by_name = _req(acl_server, "GET", "/v1/acl/policy/name/p1")
    assert by_name.json()["ID"] == ok.json()["ID"] and int(by_name.headers["X-Consul-Index"]) > 0
    other = _req(acl_server, "PUT", f"/v1/acl/policy/{ok.json()['ID']}", json={"ID": str(uuid.uuid4()), "Name": "p1"})
    assert (other.status_code, other.text.strip()) == (400, "Policy ID in URL and payload do not match")
    gm = _req(acl_server, "PUT", f"/v1/acl/policy/{GM}", json={"Name": "global-management", "Rules": ""})
    assert gm.status_code == 400 and "global-management" in gm.text
    assert _req(acl_server, "DELETE", f"/v1/acl/policy/{GM}").status_code == 400
    missing = _req(acl_server, "GET", "/v1/acl/policy/name/nope")
    assert (missing.status_code, missing.text.strip()) == (404, "Requested policy does not exist: ACL not found")
    unknown_link = _req(acl_server, "PUT", "/v1/acl/token", json={"Policies": [{"Name": "nope"}]})
    assert (unknown_link.status_code, unknown_link.text.strip()) == (400, 'No such ACL policy with name "nope"')


def test_role_lifecycle(acl_server: ACLServer) -> None:
    policy = _req(acl_server, "PUT", "/v1/acl/policy",
                  json={"Name": "r", "Rules": 'node_prefix "" { policy = "read" }'})
    role = _req(acl_server, "PUT", "/v1/acl/role", json={
        "Name": "readers", "Policies": [{"Name": "r"}], "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}]})
    assert role.status_code == 200, role.text
    rid = role.json()["ID"]
    assert role.json()["Policies"] == [{"ID": policy.json()["ID"], "Name": "r"}]
    assert _req(acl_server, "GET", "/v1/acl/role/name/readers").json()["ID"] == rid
    assert [r["ID"] for r in _req(acl_server, "GET", f"/v1/acl/roles?policy={policy.json()['ID']}").json()] == [rid]
    renamed = _req(acl_server, "PUT", f"/v1/acl/role/{rid}", json={"Name": "readers2"})
    assert renamed.json()["Name"] == "readers2" and "Policies" not in renamed.json()
    dup = _req(acl_server, "PUT", "/v1/acl/role", json={"Name": "readers2"})
    assert (dup.status_code, dup.text.strip()) == (400, 'Invalid Role: A Role with Name "readers2" already exists')
    assert _req(acl_server, "DELETE", f"/v1/acl/role/{rid}").json() is True
    gone = _req(acl_server, "GET", f"/v1/acl/role/{rid}")
    assert (gone.status_code, gone.text.strip()) == (404, "Requested role does not exist: ACL not found")


def test_templated_policies(acl_server: ACLServer) -> None:
    listed = _c(acl_server).acl.templated_policy.list()
    assert {"builtin/service", "builtin/node", "builtin/dns"} <= set(listed)
    one = _c(acl_server).acl.templated_policy.read("builtin/service")
    assert one["TemplateName"] == "builtin/service" and 'service "{{.Name}}"' in one["Template"]
    assert _req(acl_server, "GET", "/v1/acl/templated-policies", token=None).status_code == 403


# ------------------------------------------------------------------------------------------- blocking, hostile


def test_a_blocking_read_wakes_on_an_acl_write(acl_server: ACLServer) -> None:
    first = _req(acl_server, "GET", "/v1/acl/policies")
    index = int(first.headers["X-Consul-Index"])
    result: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: result.append(
        _req(acl_server, "GET", f"/v1/acl/policies?index={index}&wait=20s")))
    waiter.start()
    wait_waiting(acl_server, 1)
    _req(acl_server, "PUT", "/v1/acl/policy", json={"Name": "woke"})
    waiter.join(15)
    assert result and int(result[0].headers["X-Consul-Index"]) > index
    assert "woke" in {p["Name"] for p in result[0].json()}


@pytest.mark.parametrize("body", [b"{", b"[1]", b'"x"', b'{"Description": ' + b'"a"' * 1 + b", 1}",
                                  b'{"Policies": 3}', b'{"Policies": [{"ID": "nope"}]}',
                                  b'{"Description": "' + b"x" * 9000 + b'"}', b'{"ExpirationTTL": "1s"}',
                                  b'{"SecretID": "hunter2"}', b'{"TemplatedPolicies": [{"TemplateName": "x"}]}',
                                  b'{"Local": "yes"}', b'[' * 5000])
def test_hostile_token_bodies_are_400s_naming_the_field(acl_server: ACLServer, body: bytes) -> None:
    answer = _req(acl_server, "PUT", "/v1/acl/token", content=body)
    assert answer.status_code == 400, answer.text
    assert "hunter2" not in answer.text and len(answer.text) < 2048


def test_long_or_odd_ids_name_nothing(acl_server: ACLServer) -> None:
    assert _req(acl_server, "GET", "/v1/acl/token/" + "a" * 5000).status_code == 404
    assert _req(acl_server, "GET", "/v1/acl/policy/%00").status_code == 404
    assert _req(acl_server, "GET", "/v1/acl/token/").status_code == 400  # Missing token AccessorID


# ------------------------------------------------------------------------------------------- acl_http wire


def _args(**kw: Any) -> dict[str, Any]:
    return {"method": "GET", "path": "/v1/acl/tokens", "query": "", "body": b"", "token": "", **kw}


@pytest.mark.parametrize("args", [
    None, [], {"method": "GET"}, _args(extra=1), _args(method="PATCH"), _args(method=1),
    _args(path="/v1/kv/x"), _args(path="/v1/acl/../kv/x"), _args(path="/v1/acl/token\r\n"),
    _args(path="/v1/acl/" + "a" * 2000), _args(query="token=abc"), _args(query="policy=p&token="),
    _args(query=5), _args(body="text"),
    _args(body=b"x" * (1024 * 1024 + 1)), _args(token="x" * 300), _args(token="a\nb"),
    # Review F5: a raw :8300 caller must not park a server handler with blocking parameters.
    _args(query="index=5"), _args(query="policy=p&wait=10m"), _args(query="index"),
    _args(query="&".join(f"p{i}=1" for i in range(101))),
])
def test_acl_http_arguments_are_checked_strictly(args: Any) -> None:
    with pytest.raises(Rejected):
        parse_args(args)


def test_acl_http_runs_the_request_through_the_servers_api(acl_server: ACLServer) -> None:
    endpoint = AclHttpEndpoint(acl_server.api)
    assert parse_args(_args(query="mytoken=1&policy=p")).query == "mytoken=1&policy=p"
    request = Request(method="GET", path="/v1/acl/token/self", query="", headers=[], body=b"")
    status, headers, body = acl_server.run(endpoint.call, forward_args(request, MGMT))
    assert status == 200 and MGMT.encode() in body
    assert parse_answer([status, headers, body])[0] == 200
    unwired = AclHttpEndpoint()
    with pytest.raises(Rejected):
        acl_server.run(unwired.call, _args())
    # The client strips the token and the blocking parameters from the query it forwards.
    request = Request(method="GET", path="/v1/acl/tokens", query="token=s&index=5&wait=1s&policy=p", headers=[],
                      body=b"")
    assert forward_args(request, "s")["query"] == "policy=p"


def test_acl_http_without_a_token_is_anonymous_not_the_servers_default(acl_server: ACLServer) -> None:
    # Review F2: a client's caller without a token (token "") was lent the server's own default token.
    reader = _token_with(acl_server, 'acl = "read"', "server-default")
    acl_server.agent.acl.tokens.default = reader["SecretID"]
    assert _req(acl_server, "GET", "/v1/acl/tokens", token=None).status_code == 200  # its own API: default
    status, _, body = acl_server.run(AclHttpEndpoint(acl_server.api).call, _args(token=""))
    assert status == 403 and b"Permission denied" in body
    status, _, _ = acl_server.run(AclHttpEndpoint(acl_server.api).call, _args(token=reader["SecretID"]))
    assert status == 200


@pytest.mark.parametrize("answer", [None, [200, [], "body"], [99, [], b""], [True, [], b""],
                                    [200, [[b"a"]], b""], [200, "x", b""], [200, [[b"a", 1]], b""]])
def test_a_malformed_acl_http_answer_is_an_error(answer: Any) -> None:
    with pytest.raises(ServerError):
        parse_answer(answer)


def test_an_answer_keeps_only_consuls_headers() -> None:
    status, headers, body = parse_answer([201, [[b"X-Consul-Index", b"7"], [b"set-cookie", b"x"],
                                                [b"content-type", b"a\r\nb"]], b"{}"])
    assert (status, headers, body) == (201, [(b"x-consul-index", b"7")], b"{}")


def test_routes_exist_for_every_acl_path() -> None:
    from meshagent.agent.http.api import ROUTES
    for path in ("/v1/acl/bootstrap", "/v1/acl/token", "/v1/acl/token/self", "/v1/acl/token/", "/v1/acl/tokens",
                 "/v1/acl/policy", "/v1/acl/policy/", "/v1/acl/policy/name/", "/v1/acl/policies", "/v1/acl/role",
                 "/v1/acl/role/", "/v1/acl/role/name/", "/v1/acl/roles", "/v1/acl/templated-policies"):
        assert path in ROUTES
    assert API  # the harness's API is the agent's


# ------------------------------------------------------------------------------------------- default allow


def test_default_allow_still_needs_a_token_for_acl_snapshot_and_agent_tokens(acl_server: ACLServer) -> None:
    # Review F1: under default_policy "allow" (security.md's step 1 of turning ACLs on) an anonymous caller
    # listed every SecretID and minted a global-management token. Consul's allow-all denies acl read/write.
    acl_server.agent.config.acl.default_policy = "allow"
    assert _req(acl_server, "GET", "/v1/catalog/services", token=None).status_code == 200  # the rest: allowed
    for method, path, body in [("GET", "/v1/acl/tokens", None), ("GET", "/v1/acl/policies", None),
                               ("PUT", "/v1/acl/token", {"Policies": [{"ID": GM}]}), ("GET", "/v1/snapshot", None),
                               ("PUT", "/v1/agent/token/default", {"Token": MGMT})]:
        answer = _req(acl_server, method, path, token=None, json=body)
        assert answer.status_code == 403, (method, path, answer.text)
        assert MGMT not in answer.text
    reader = _token_with(acl_server, 'acl = "read"', "acl-reader")
    listed = _req(acl_server, "GET", "/v1/acl/tokens", token=reader["SecretID"])
    assert listed.status_code == 200 and MGMT not in listed.text  # acl:read: no SecretIDs
    denied = _req(acl_server, "PUT", "/v1/acl/token", token=reader["SecretID"], json={"Policies": [{"ID": GM}]})
    assert denied.status_code == 403
