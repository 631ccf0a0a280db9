"""ACL enforcement on the mesh and operator endpoints (issue 15), over real HTTP against the in-process API under
`default_policy = "deny"`: tokens and policies are written to the real catalog (acl_* commands through
`store.apply`) and resolved by the agent's ACLResolver. Each family shows both sides (allowed, and 403 naming
the permission), an unknown token is 403 "ACL not found" everywhere, and with ACLs off nothing changes.

The issue's acceptance: a `service "web" { policy = "write" }` token gets web's leaf and not db's; a
`key_prefix "app/" { policy = "write" }` token is refused by the keyring, snapshot and /v1/acl endpoints."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.catalog import commands
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.http.server import HTTPServer

from tests.support.http_harness import FakeAgent, ServerThread
from tests.support.wait import wait_for

HOST_ON, HOST_OFF = "127.0.40.1", "127.0.40.2"
MGMT = "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0001"
FILTERED = "x-consul-results-filtered-by-acls"
ANON_ACCESSOR = "00000000-0000-0000-0000-000000000002"
UNKNOWN = "5b6a4c1e-0000-4000-8000-00000000dead"

# name -> (rules, secret); the AccessorID is derived from the secret's last digits
POLICIES = {
    "web": ('service "web" { policy = "write" }', "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0002"),
    "app-kv": ('key_prefix "app/" { policy = "write" }', "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0003"),
    "db-intentions": ('service "db" {\n  policy = "read"\n  intentions = "write"\n}',
                      "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0004"),
    "op-read": ('operator = "read"', "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0005"),
    "op-write": ('operator = "write"', "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0006"),
    "keyring-read": ('keyring = "read"', "8f0b3b1e-6c52-4a53-9c55-0b7a3c1e0007"),
}


def secret(name: str) -> str:
    return POLICIES[name][1]


def accessor(name: str) -> str:
    return "a" + secret(name)[1:]


def _start(agent: FakeAgent, host: str) -> ServerThread:
    thread = ServerThread(agent=agent)
    thread.server = HTTPServer(thread.api, host, 0)  # this suite's own address (127.0.40.N)
    return thread.start()


def _seed(server: ServerThread) -> None:
    """The builtins, one policy + token per POLICIES entry, and what the endpoints read."""
    server.apply(commands.acl_init(MGMT))
    for name, (rules, sec) in POLICIES.items():
        pid = "b" + sec[1:]
        server.apply(commands.acl_policy_set(Policy(id=pid, name=name, rules=rules)))
        server.apply(commands.acl_token_set(Token(accessor_id=accessor(name), secret_id=sec,
                                                  policies=(Link(pid, name),))))


@pytest.fixture(scope="module")
def mesh() -> Iterator[ServerThread]:
    """One API under default deny, shared by the module's tests (each reads, or writes its own names)."""
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    server = _start(agent, HOST_ON)
    try:
        _seed(server)
        server.run(agent.leaves.get, "web")  # the CA's first root and a leaf: later reads are fast
        wait_for(lambda: agent.store.catalog.connect.trust_domain, 10, what="the CA's trust domain")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(mesh: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{HOST_ON}:{mesh.port}", timeout=20) as client:
        yield client


def call(http: httpx.Client, method: str, path: str, token: str | None = None, body: Any = None) -> httpx.Response:
    headers = {"X-Consul-Token": token} if token else {}
    content = None if body is None else json.dumps(body).encode()
    return http.request(method, path, headers=headers, content=content)


def denied(response: httpx.Response, who: str, permission: str, name: str | None = None) -> None:
    """A 403 with Consul's text for AccessorID `who` lacking `permission` (on `name`)."""
    on = f' on "{name}"' if name is not None else ""
    expected = f"Permission denied: token with AccessorID '{who}' lacks permission '{permission}'{on}"
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.text.rstrip("\n") == expected


def ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code == 200, (response.status_code, response.text)
    return response


def spiffe(mesh: ServerThread, service: str) -> str:
    return f"spiffe://{mesh.agent.store.catalog.connect.trust_domain}/ns/default/dc/dc1/svc/{service}"


# ---------------------------------------------------------------------------------------------- connect


def test_web_token_gets_webs_leaf_and_not_dbs_and_roots_need_nothing(mesh: ServerThread, http: httpx.Client) -> None:
    leaf = ok(call(http, "GET", "/v1/agent/connect/ca/leaf/web", secret("web"))).json()
    assert leaf["Service"] == "web" and "PRIVATE KEY" in leaf["PrivateKeyPEM"]
    denied(call(http, "GET", "/v1/agent/connect/ca/leaf/db", secret("web")), accessor("web"), "service:write", "db")
    denied(call(http, "GET", "/v1/agent/connect/ca/leaf/web"), ANON_ACCESSOR, "service:write", "web")
    denied(call(http, "GET", "/v1/agent/connect/ca/leaf/web", secret("app-kv")), accessor("app-kv"),
           "service:write", "web")
    for path in ("/v1/agent/connect/ca/roots", "/v1/connect/ca/roots"):
        assert ok(call(http, "GET", path)).json()["Roots"]


def test_authorize_needs_service_write_on_the_target_also_for_a_remembered_answer(
        mesh: ServerThread, http: httpx.Client) -> None:
    body = {"Target": "web", "ClientCertURI": spiffe(mesh, "api"), "ClientCertSerial": "01"}
    first = ok(call(http, "POST", "/v1/agent/connect/authorize", secret("web"), body)).json()
    assert set(first) == {"Authorized", "Reason"}
    # The same bytes again: the agent answers from what it remembered, and must still check the token.
    denied(call(http, "POST", "/v1/agent/connect/authorize", secret("db-intentions"), body),
           accessor("db-intentions"), "service:write", "web")
    denied(call(http, "POST", "/v1/agent/connect/authorize", None, body), ANON_ACCESSOR, "service:write", "web")
    denied(call(http, "POST", "/v1/agent/connect/authorize", secret("web"), {**body, "Target": "db"}),
           accessor("web"), "service:write", "db")


def test_ca_configuration_needs_operator_write(http: httpx.Client) -> None:
    config = ok(call(http, "GET", "/v1/connect/ca/configuration", secret("op-write"))).json()
    assert config["Provider"] == "consul"
    denied(call(http, "GET", "/v1/connect/ca/configuration", secret("op-read")), accessor("op-read"),
           "operator:write")
    denied(call(http, "PUT", "/v1/connect/ca/configuration", secret("op-read"),
                {"Provider": "consul", "Config": {}}), accessor("op-read"), "operator:write")


def test_proxy_config_needs_service_write_on_its_destination(mesh: ServerThread, http: httpx.Client) -> None:
    for dest in ("web", "db"):
        mesh.agent.local._services[f"{dest}-sidecar-proxy"] = ServiceDefinition(
            name=f"{dest}-sidecar-proxy", id=f"{dest}-sidecar-proxy", kind="connect-proxy",
            proxy={"DestinationServiceName": dest})
    # Allowed: past the ACL check to this harness's missing data plane (500), not a 403.
    allowed = call(http, "GET", "/v1/agent/connect/proxy/web-sidecar-proxy", secret("web"))
    assert allowed.status_code == 500 and "connect is not enabled" in allowed.text
    denied(call(http, "GET", "/v1/agent/connect/proxy/db-sidecar-proxy", secret("web")), accessor("web"),
           "service:write", "db")


def test_discovery_chain_needs_service_read(http: httpx.Client) -> None:
    chain = ok(call(http, "GET", "/v1/discovery-chain/web", secret("web"))).json()
    assert chain["Chain"]["ServiceName"] == "web"
    denied(call(http, "GET", "/v1/discovery-chain/db", secret("web")), accessor("web"), "service:read", "db")
    denied(call(http, "POST", "/v1/discovery-chain/db", secret("web"), {}), accessor("web"), "service:read", "db")


# ---------------------------------------------------------------------------------------------- config entries


def test_config_entries_by_kind(mesh: ServerThread, http: httpx.Client) -> None:
    web = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
    assert ok(call(http, "PUT", "/v1/config", secret("web"), web)).json() is True
    denied(call(http, "PUT", "/v1/config", secret("web"), {**web, "Name": "db"}), accessor("web"),
           "service:write", "db")
    assert ok(call(http, "PUT", "/v1/config", MGMT, {**web, "Name": "db"})).json() is True
    # A router of web sending to db needs read on db, which the web token lacks (Consul's related services).
    router = {"Kind": "service-router", "Name": "web",
              "Routes": [{"Match": {"HTTP": {"PathPrefix": "/db"}}, "Destination": {"Service": "db"}}]}
    denied(call(http, "PUT", "/v1/config", secret("web"), router), accessor("web"), "service:read", "db")
    # proxy-defaults: anyone reads it, writing needs mesh:write (operator:write counts)
    proxy = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
    denied(call(http, "PUT", "/v1/config", secret("web"), proxy), accessor("web"), "mesh:write")
    assert ok(call(http, "PUT", "/v1/config", secret("op-write"), proxy)).json() is True
    assert ok(call(http, "GET", "/v1/config/proxy-defaults/global")).json()["Name"] == "global"
    # reads: one entry needs read on its name; the list keeps what the token may read
    assert ok(call(http, "GET", "/v1/config/service-defaults/web", secret("web"))).json()["Protocol"] == "http"
    denied(call(http, "GET", "/v1/config/service-defaults/db", secret("web")), accessor("web"), "service:read", "db")
    listed = ok(call(http, "GET", "/v1/config/service-defaults", secret("web")))
    assert [e["Name"] for e in listed.json()] == ["web"] and listed.headers[FILTERED] == "true"
    everything = ok(call(http, "GET", "/v1/config/service-defaults", MGMT))
    assert {e["Name"] for e in everything.json()} >= {"web", "db"} and FILTERED not in everything.headers
    # service-intentions entries: intentions rights on the destination
    ixns = {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "allow"}]}
    denied(call(http, "PUT", "/v1/config", secret("web"), ixns), accessor("web"), "intention:write", "db")
    assert ok(call(http, "PUT", "/v1/config", secret("db-intentions"), ixns)).json() is True
    denied(call(http, "GET", "/v1/config/service-intentions/db", secret("web")), accessor("web"),
           "intention:read", "db")
    # deletes are writes
    denied(call(http, "DELETE", "/v1/config/service-defaults/db", secret("web")), accessor("web"),
           "service:write", "db")
    denied(call(http, "DELETE", "/v1/config/service-intentions/db", secret("web")), accessor("web"),
           "intention:write", "db")
    assert ok(call(http, "DELETE", "/v1/config/service-intentions/db", secret("db-intentions"))).json() == {}
    assert mesh.agent.store.catalog.config_entries.get("service-intentions", "db") is None


# ---------------------------------------------------------------------------------------------- intentions


def test_intentions_read_and_write_on_the_destination(mesh: ServerThread, http: httpx.Client) -> None:
    created = ok(call(http, "POST", "/v1/connect/intentions", MGMT,
                      {"SourceName": "api", "DestinationName": "web", "Action": "allow"})).json()["ID"]
    denied(call(http, "POST", "/v1/connect/intentions", secret("web"),
                {"SourceName": "api", "DestinationName": "db", "Action": "allow"}),
           accessor("web"), "intention:write", "db")
    assert ok(call(http, "PUT", "/v1/connect/intentions/exact?source=api&destination=db", secret("db-intentions"),
                   {"Action": "deny"})).json() is True
    denied(call(http, "PUT", "/v1/connect/intentions/exact?source=api&destination=db", secret("web"),
                {"Action": "allow"}), accessor("web"), "intention:write", "db")
    db_id = next(i["ID"] for i in ok(call(http, "GET", "/v1/connect/intentions", MGMT)).json()
                 if i["DestinationName"] == "db")
    # reads: the list keeps web's (service write gives intentions read), match and exact need read on the name
    listed = ok(call(http, "GET", "/v1/connect/intentions", secret("web")))
    assert [(i["SourceName"], i["DestinationName"]) for i in listed.json()] == [("api", "web")]
    assert listed.headers[FILTERED] == "true"
    matched = ok(call(http, "GET", "/v1/connect/intentions/match?by=destination&name=web", secret("web"))).json()
    assert [i["ID"] for i in matched["web"]] == [created]
    denied(call(http, "GET", "/v1/connect/intentions/match?by=destination&name=db", secret("web")),
           accessor("web"), "intention:read", "db")
    ok(call(http, "GET", "/v1/connect/intentions/exact?source=api&destination=web", secret("web")))
    denied(call(http, "GET", "/v1/connect/intentions/exact?source=api&destination=db", secret("web")),
           accessor("web"), "intention:read", "db")
    # by ID: the stored intention's destination decides
    assert ok(call(http, "GET", f"/v1/connect/intentions/{created}", secret("web"))).json()["ID"] == created
    denied(call(http, "GET", f"/v1/connect/intentions/{db_id}", secret("web")), accessor("web"),
           "intention:read", "db")
    denied(call(http, "PUT", f"/v1/connect/intentions/{db_id}", secret("web"),
                {"SourceName": "api", "DestinationName": "db", "Action": "allow"}),
           accessor("web"), "intention:write", "db")
    denied(call(http, "PUT", f"/v1/connect/intentions/{db_id}", secret("db-intentions"),
                {"SourceName": "api", "DestinationName": "web", "Action": "allow"}),
           accessor("db-intentions"), "intention:write", "web")  # a move needs write on the new end too
    denied(call(http, "DELETE", f"/v1/connect/intentions/{db_id}", secret("web")), accessor("web"),
           "intention:write", "db")
    denied(call(http, "DELETE", "/v1/connect/intentions/exact?source=api&destination=db", secret("web")),
           accessor("web"), "intention:write", "db")
    # check reveals no intention: service:read on the destination is enough (Consul)
    assert ok(call(http, "GET", "/v1/connect/intentions/check?source=api&destination=db",
                   secret("db-intentions"))).json() == {"Allowed": False}
    denied(call(http, "GET", "/v1/connect/intentions/check?source=api&destination=db", secret("web")),
           accessor("web"), "service:read", "db")
    assert ok(call(http, "DELETE", f"/v1/connect/intentions/{db_id}", secret("db-intentions"))).json() is True


# ---------------------------------------------------------------------------------------------- operator


def test_operator_endpoints_refuse_a_kv_token(http: httpx.Client) -> None:
    kv = secret("app-kv")
    for path in ("/v1/status/leader", "/v1/status/peers"):
        ok(call(http, "GET", path))
    denied(call(http, "GET", "/v1/operator/keyring", kv), accessor("app-kv"), "keyring:read")
    for method in ("POST", "PUT", "DELETE"):
        denied(call(http, method, "/v1/operator/keyring", secret("keyring-read"), {"Key": "AAAA"}),
               accessor("keyring-read"), "keyring:write")
    denied(call(http, "GET", "/v1/snapshot", kv), accessor("app-kv"), "acl:write")
    denied(call(http, "GET", "/v1/snapshot", secret("op-write")), accessor("op-write"), "acl:write")
    denied(call(http, "GET", "/v1/operator/raft/configuration", kv), accessor("app-kv"), "operator:read")
    denied(call(http, "DELETE", "/v1/operator/raft/peer?id=x", secret("op-read")), accessor("op-read"),
           "operator:write")
    # Allowed tokens get past the check to this harness's missing gossip pool and Raft (500s, not 403s).
    past = [call(http, "GET", "/v1/operator/keyring", secret("keyring-read")),
            call(http, "GET", "/v1/operator/raft/configuration", secret("op-read")),
            call(http, "GET", "/v1/snapshot", MGMT)]
    assert [r.status_code for r in past] == [500, 500, 500], [r.text for r in past]


def test_a_refused_restore_is_answered_before_its_body_is_sent(mesh: ServerThread) -> None:
    """PUT /v1/snapshot declaring 900 MB and sending none: the 403 comes at once, the connection closes."""
    with socket.create_connection((HOST_ON, mesh.port), timeout=10) as sock:
        sock.sendall(f"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nX-Consul-Token: {secret('app-kv')}\r\n"
                     f"Content-Length: 900000000\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), received[:200]
    assert body.decode().rstrip("\n").endswith(f"'{accessor('app-kv')}' lacks permission 'acl:write'")


# ---------------------------------------------------------------------------------------------- every family


ENDPOINTS = [
    ("GET", "/v1/agent/connect/ca/leaf/web", None), ("POST", "/v1/agent/connect/authorize",
                                                      {"Target": "web", "ClientCertURI": "spiffe://x/ns/default/dc/dc1/svc/a"}),
    ("GET", "/v1/connect/ca/configuration", None), ("GET", "/v1/agent/connect/proxy/web-sidecar-proxy", None),
    ("GET", "/v1/discovery-chain/web", None), ("GET", "/v1/config/service-defaults", None),
    ("GET", "/v1/config/proxy-defaults/global", None), ("PUT", "/v1/config",
                                                        {"Kind": "service-defaults", "Name": "web"}),
    ("DELETE", "/v1/config/service-defaults/web", None), ("GET", "/v1/connect/intentions", None),
    ("GET", "/v1/connect/intentions/match?by=source&name=web", None),
    ("GET", "/v1/connect/intentions/check?source=a&destination=web", None),
    ("GET", "/v1/connect/intentions/00000000-0000-4000-8000-000000000000", None),
    ("DELETE", "/v1/connect/intentions/00000000-0000-4000-8000-000000000000", None),
    ("GET", "/v1/operator/raft/configuration", None), ("GET", "/v1/operator/keyring", None),
    ("GET", "/v1/snapshot", None),
]


def test_an_unknown_token_is_acl_not_found_everywhere(http: httpx.Client) -> None:
    answers = {(m, p): call(http, m, p, UNKNOWN, body) for m, p, body in ENDPOINTS}
    wrong = {k: (r.status_code, r.text) for k, r in answers.items()
             if (r.status_code, r.text.rstrip("\n")) != (403, "ACL not found")}
    assert not wrong


def test_with_acls_off_nothing_changes() -> None:
    agent = FakeAgent()
    server = _start(agent, HOST_OFF)
    try:
        with httpx.Client(base_url=f"http://{HOST_OFF}:{server.port}", timeout=20) as http:
            assert ok(call(http, "GET", "/v1/agent/connect/ca/leaf/db", UNKNOWN)).json()["Service"] == "db"
            assert ok(call(http, "PUT", "/v1/config", None, {"Kind": "proxy-defaults", "Name": "global"})).json()
            listed = ok(call(http, "GET", "/v1/config/proxy-defaults"))
            assert len(listed.json()) == 1 and FILTERED not in listed.headers
            ok(call(http, "GET", "/v1/discovery-chain/db"))
            assert ok(call(http, "GET", "/v1/connect/intentions/check?source=a&destination=db")).json() == \
                {"Allowed": True}
            assert call(http, "GET", "/v1/operator/keyring").status_code == 500  # no gossip here: not a 403
    finally:
        server.stop()


def test_acl_endpoints_refuse_a_kv_token(http: httpx.Client) -> None:
    kv = secret("app-kv")
    for path in ("/v1/acl/tokens", "/v1/acl/policies", "/v1/acl/roles"):
        denied(call(http, "GET", path, kv), accessor("app-kv"), "acl:read")
        ok(call(http, "GET", path, MGMT))
    denied(call(http, "PUT", "/v1/acl/policy", kv, {"Name": "mine", "Rules": 'key_prefix "" { policy = "write" }'}),
           accessor("app-kv"), "acl:write")
    denied(call(http, "PUT", "/v1/acl/token", kv, {"Policies": [{"Name": "web"}]}), accessor("app-kv"), "acl:write")
