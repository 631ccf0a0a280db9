"""`meshagent acl …` and the ACL token on every command (-token, -token-file, CONSUL_HTTP_TOKEN(_FILE)).

Argument handling, request shapes and Consul's output layouts run against a small stand-in HTTP server on a
real socket (127.0.43.1) that records what it is sent; the end-to-end tests against a real `meshagent agent -dev`
with ACLs on are in test_acl_cli_agent.py (slow)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner, Result
from meshagent.cli import acl_format
from meshagent.cli.main import cli

from tests.support.cli_env import ENV_CLEAR
from tests.support.ports import free_ports

STAND_IN_HOST = "127.0.43.1"
SECRET = "6a1f0c3e-8a37-4c5b-9f1e-2b7d4c1a9e55"
OTHER = "0d9b2e4c-1111-4a2a-8c3c-7e6f5a4b3c2d"

TOKEN = {"AccessorID": "8d1b3e58-5d2b-4a4e-9b8e-1f2a3b4c5d6e", "SecretID": SECRET, "Description": "web writer",
         "Policies": [{"ID": "b1c2d3e4-0000-4000-8000-000000000001", "Name": "web-write"}],
         "Roles": [{"ID": "c1c2d3e4-0000-4000-8000-000000000002", "Name": "ops"}],
         "ServiceIdentities": [{"ServiceName": "web"}, {"ServiceName": "db", "Datacenters": ["dc1", "dc2"]}],
         "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}],
         "Local": False, "CreateTime": "2026-12-05T08:44:55.123400Z",
         "Hash": base64.b64encode(b"\x01\xab").decode(), "CreateIndex": 7, "ModifyIndex": 9}
POLICY = {"ID": "b1c2d3e4-0000-4000-8000-000000000001", "Name": "web-write", "Description": "web",
          "Rules": 'service "web" {\n  policy = "write"\n}', "Hash": "", "CreateIndex": 5, "ModifyIndex": 5}
ROLE = {"ID": "c1c2d3e4-0000-4000-8000-000000000002", "Name": "ops", "Description": "",
        "Policies": [{"ID": POLICY["ID"], "Name": "web-write"}], "CreateIndex": 6, "ModifyIndex": 6}


# ------------------------------------------------------------------------------------------ the stand-in


@dataclass
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    """An HTTP server answering scripted (method, path) -> (status, JSON) and recording every request."""

    addr: str
    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def last(self, method: str, path: str) -> Seen:
        """The last request for (method, path); fails the test if there was none."""
        found = [s for s in self.seen if (s.method, s.path) == (method, path)]
        assert found, f"no {method} {path} among {[(s.method, s.path) for s in self.seen]}"
        return found[-1]


@pytest.fixture(scope="module")
def stand_in_server() -> Iterator[StandIn]:
    """A stand-in for the agent's HTTP API on 127.0.43.1 (one per module; routes reset per test)."""
    port = free_ports(1, host=STAND_IN_HOST)[0]
    state = StandIn(addr=f"http://{STAND_IN_HOST}:{port}")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            state.seen.append(Seen(self.command, url.path, parse_qs(url.query, keep_blank_values=True),
                                   {k.lower(): v for k, v in self.headers.items()},
                                   json.loads(raw) if raw else None))
            status, body = state.routes.get((self.command, url.path), (404, "no route"))
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((STAND_IN_HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(stand_in_server: StandIn) -> StandIn:
    """The stand-in with no routes and nothing seen."""
    stand_in_server.routes.clear()
    stand_in_server.seen.clear()
    return stand_in_server


def run(api: StandIn, *args: str, env: dict[str, str | None] | None = None, stdin: str | None = None) -> Result:
    """The CLI in this process against the stand-in, with no token variables unless `env` sets them."""
    return CliRunner().invoke(cli, [*args, "-http-addr", api.addr], env={**ENV_CLEAR, **(env or {})}, input=stdin)


# ------------------------------------------------------------------------------------ tokens on requests


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, str]:
    """Token files: `flag` and `env` hold different secrets, `empty` only whitespace."""
    files = {"flag": f"  {OTHER}\n", "env": "11111111-2222-4333-8444-555555555555\n", "empty": " \n"}
    out = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        out[name] = str(tmp_path / name)
    return out


@pytest.mark.parametrize("flags,env,expect", [
    (["-token", SECRET, "-token-file", "FLAG"], {"CONSUL_HTTP_TOKEN": "ENVTOKEN"}, SECRET),
    (["-token-file", "FLAG"], {"CONSUL_HTTP_TOKEN": "envtoken", "CONSUL_HTTP_TOKEN_FILE": "ENV"}, OTHER),
    ([], {"CONSUL_HTTP_TOKEN": "envtoken", "CONSUL_HTTP_TOKEN_FILE": "ENV"}, "envtoken"),
    ([], {"CONSUL_HTTP_TOKEN_FILE": "ENV"}, "11111111-2222-4333-8444-555555555555"),
    ([], {"MESH_HTTP_TOKEN": "meshtoken", "CONSUL_HTTP_TOKEN": "envtoken"}, "meshtoken"),
    ([], {"MESH_HTTP_TOKEN_FILE": "ENV"}, "11111111-2222-4333-8444-555555555555"),
    ([], {}, None),
])
def test_token_precedence_flag_file_env_envfile(api: StandIn, token_files: dict[str, str], flags: list[str],
                                                env: dict[str, str], expect: str | None) -> None:
    api.routes[("GET", "/v1/agent/self")] = (200, {"Config": {}, "Member": {}})
    swap = {"FLAG": token_files["flag"], "ENV": token_files["env"]}
    result = run(api, "info", *[swap.get(f, f) for f in flags], env={k: swap.get(v, v) for k, v in env.items()})
    assert result.exit_code == 0, result.output
    assert api.last("GET", "/v1/agent/self").headers.get("x-consul-token") == expect


def test_every_http_command_takes_the_token_flags() -> None:
    """-token and -token-file come from the one shared decorator: every command with -http-addr has both."""
    import click

    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, cmd

    checked = 0
    for path, cmd in walk(cli, "meshagent"):
        names = {opt for p in cmd.params for opt in p.opts}
        if "-http-addr" in names:
            checked += 1
            assert {"-token", "-token-file"} <= names, path
    assert checked > 40


@pytest.mark.parametrize("which,message", [
    ("missing", "No such file or directory"),
    ("empty", "the file is empty"),
    ("dir", "Is a directory"),
])
def test_bad_token_file_is_a_clear_error_naming_the_file(api: StandIn, token_files: dict[str, str],
                                                         tmp_path: Path, which: str, message: str) -> None:
    path = {"missing": str(tmp_path / "nope"), "empty": token_files["empty"], "dir": str(tmp_path)}[which]
    for flags, env in (([ "-token-file", path], {}), ([], {"CONSUL_HTTP_TOKEN_FILE": path})):
        result = run(api, "kv", "get", "k", *flags, env=env)
        assert result.exit_code == 1
        assert f"Error loading token file {path!r}" in result.stderr and message in result.stderr, result.stderr
    assert api.seen == []  # nothing was sent without the token the operator asked for


def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(api: StandIn, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"abc\r\nX-Evil: 1-" + SECRET.encode())
    big = tmp_path / "big"
    big.write_bytes(b"a" * 5000)
    for flags in (["-token-file", str(bad)], ["-token", "sec ret" + SECRET], ["-token-file", str(big)]):
        result = run(api, "kv", "get", "k", *flags)
        assert result.exit_code == 1 and "Error" in result.stderr, result.output
        assert SECRET not in result.output and "X-Evil" not in result.output
    assert api.seen == []


def test_a_refused_request_does_not_echo_the_secret(api: StandIn) -> None:
    api.routes[("PUT", "/v1/acl/bootstrap")] = (403, "Permission denied: ACL bootstrap no longer allowed "
                                                     "(reset index: 12)")
    result = run(api, "acl", "bootstrap", "-token", SECRET)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Failed ACL bootstrapping: Unexpected response code: 403 (Permission denied: "
                                     "ACL bootstrap no longer allowed (reset index: 12))")
    assert SECRET not in result.output


# ---------------------------------------------------------------------------------------- output layouts


def test_token_pretty_layout_is_consuls() -> None:
    assert acl_format.token_text(TOKEN) == "\n".join([
        "AccessorID:       8d1b3e58-5d2b-4a4e-9b8e-1f2a3b4c5d6e",
        f"SecretID:         {SECRET}",
        "Description:      web writer",
        "Local:            false",
        "Create Time:      2026-12-05 08:44:55.1234 +0000 UTC",
        "Policies:",
        "   b1c2d3e4-0000-4000-8000-000000000001 - web-write",
        "Roles:",
        "   c1c2d3e4-0000-4000-8000-000000000002 - ops",
        "Service Identities:",
        "   web (Datacenters: all)",
        "   db (Datacenters: dc1, dc2)",
        "Node Identities:",
        "   n1 (Datacenter: dc1)",
    ])
    with_meta = acl_format.token_text({**TOKEN, "ExpirationTime": "2026-12-05T09:44:55Z"}, meta=True)
    assert "Expiration Time:  2026-12-05 09:44:55 +0000 UTC\nHash:             01ab\nCreate Index:     7\n" \
           "Modify Index:     9\nPolicies:" in with_meta


def test_policy_and_role_layouts_are_consuls() -> None:
    assert acl_format.policy_text(POLICY) == "\n".join([
        "ID:           b1c2d3e4-0000-4000-8000-000000000001", "Name:         web-write", "Description:  web",
        "Datacenters:  ", "Rules:", 'service "web" {', '  policy = "write"', "}"])
    assert acl_format.policy_list_text([POLICY, {**POLICY, "Name": "b", "Datacenters": ["dc1", "dc2"]}]) == \
        "\n".join(["web-write:", "   ID:           b1c2d3e4-0000-4000-8000-000000000001", "   Description:  web",
                   "   Datacenters:  ", "b:", "   ID:           b1c2d3e4-0000-4000-8000-000000000001",
                   "   Description:  web", "   Datacenters:  dc1, dc2"])
    assert acl_format.role_text(ROLE) == "\n".join([
        "ID:           c1c2d3e4-0000-4000-8000-000000000002", "Name:         ops", "Description:  ",
        "Policies:", "   b1c2d3e4-0000-4000-8000-000000000001 - web-write"])
    assert acl_format.role_list_text([ROLE]) == "\n".join([
        "ops:", "   ID:           c1c2d3e4-0000-4000-8000-000000000002", "   Description:  ",
        "   Policies:", "      b1c2d3e4-0000-4000-8000-000000000001 - web-write"])
    assert acl_format.token_list_text([TOKEN, TOKEN]).count("\n\nAccessorID:") == 1


def test_hostile_fields_cannot_rewrite_the_terminal() -> None:
    text = acl_format.token_text({"AccessorID": "x\x1b[2J", "Description": "a\nSecretID: fake", "Policies": "no",
                                  "ServiceIdentities": [{"ServiceName": 5, "Datacenters": "dc1"}], "Local": "yes",
                                  "CreateTime": "not a time"})
    assert "\x1b" not in text and "\\x1b[2J" in text and "a\\x0aSecretID: fake" in text
    assert "Local:            false" in text and "Create Time:      not a time" in text and "Policies:" not in text
    assert acl_format.token_text(["not", "a", "dict"]).startswith("AccessorID:       \n")
    assert acl_format.policy_text({"Rules": "a\n\x07b"}).endswith("Rules:\na\n\\x07b")
    assert acl_format.hash_hex("%%%") == "%%%" and acl_format.go_time(None) == ""


# ------------------------------------------------------------------------------------ commands (stand-in)


def test_bootstrap_prints_the_token_and_json_on_request(api: StandIn) -> None:
    api.routes[("PUT", "/v1/acl/bootstrap")] = (200, TOKEN)
    pretty = run(api, "acl", "bootstrap")
    assert pretty.exit_code == 0 and pretty.output == acl_format.token_text(TOKEN) + "\n"
    as_json = run(api, "acl", "bootstrap", "-format", "json")
    assert json.loads(as_json.output) == TOKEN and as_json.output.startswith('{\n    "AccessorID"')
    bad = run(api, "acl", "bootstrap", "-format", "yaml")
    assert bad.exit_code == 1 and "Unknown format: yaml" in bad.stderr
    assert len([s for s in api.seen if s.path == "/v1/acl/bootstrap"]) == 2  # the bad format sent nothing


def test_token_create_sends_consuls_body(api: StandIn) -> None:
    api.routes[("PUT", "/v1/acl/token")] = (200, TOKEN)
    api.routes[("GET", "/v1/acl/policies")] = (200, [POLICY, {**POLICY, "ID": "ffff0000-0000-4000-8000-000000000000"}])
    result = run(api, "acl", "token", "create", "-description", "d", "-policy-name", "web-write", "-policy-id", "b1c2",
                 "-role-name", "ops", "-service-identity", "web", "-service-identity", "db:dc1,dc2",
                 "-node-identity", "n1:dc1", "-secret", SECRET, "-accessor", TOKEN["AccessorID"], "-expires-ttl", "1h",
                 "-local")
    assert result.exit_code == 0, result.output
    assert api.last("PUT", "/v1/acl/token").body == {
        "Description": "d", "Local": True, "AccessorID": TOKEN["AccessorID"], "SecretID": SECRET,
        "ExpirationTTL": "1h", "Policies": [{"Name": "web-write"}, {"ID": POLICY["ID"]}], "Roles": [{"Name": "ops"}],
        "ServiceIdentities": [{"ServiceName": "web"}, {"ServiceName": "db", "Datacenters": ["dc1", "dc2"]}],
        "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}]}


@pytest.mark.parametrize("args,message", [
    (["-node-identity", "n1"], "Malformed -node-identity argument: 'n1'"),
    (["-service-identity", "a:b:c"], "Malformed -service-identity argument: 'a:b:c'"),
    (["-expires-ttl", "soon"], "invalid value for -expires-ttl: invalid duration"),
    (["-policy-id", "zz"], "Error determining policy ID: 'zz' is not an ID or a prefix of one"),
    (["-policy-id", "b1"], "Error determining policy ID: Partial policy ID is not unique"),
    (["-policy-id", "aa"], "Error determining policy ID: No such policy ID with prefix: aa"),
])
def test_token_create_argument_errors(api: StandIn, args: list[str], message: str) -> None:
    api.routes[("GET", "/v1/acl/policies")] = (200, [POLICY, {**POLICY, "ID": "b1000000-0000-4000-8000-000000000000"}])
    result = run(api, "acl", "token", "create", *args, "-secret", SECRET)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert SECRET not in result.output and ("PUT", "/v1/acl/token") not in [(s.method, s.path) for s in api.seen]


def test_token_read_self_delete_and_list(api: StandIn) -> None:
    tid = TOKEN["AccessorID"]
    api.routes[("GET", f"/v1/acl/token/{tid}")] = (200, TOKEN)
    api.routes[("GET", "/v1/acl/token/self")] = (200, TOKEN)
    api.routes[("GET", "/v1/acl/tokens")] = (200, [TOKEN])
    api.routes[("DELETE", f"/v1/acl/token/{tid}")] = (200, True)
    assert run(api, "acl", "token", "read", "-id", "8d1b").output == acl_format.token_text(TOKEN) + "\n"
    assert run(api, "acl", "token", "read", "-self").exit_code == 0
    api.routes[("PUT", f"/v1/acl/token/{tid}/clone")] = (200, TOKEN)
    cloned = run(api, "acl", "token", "clone", "-id", tid, "-description", "copy")
    assert cloned.output == acl_format.token_text(TOKEN) + "\n"
    assert api.last("PUT", f"/v1/acl/token/{tid}/clone").body == {"Description": "copy"}
    deleted = run(api, "acl", "token", "delete", "-accessor-id", tid)
    assert deleted.output == f'Token "{tid}" deleted successfully\n'
    listed = run(api, "acl", "token", "list", "-service-name", "web", "-format", "json")
    assert json.loads(listed.output) == [TOKEN] and api.last("GET", "/v1/acl/tokens").query == {"servicename": ["web"]}
    missing = run(api, "acl", "token", "read")
    assert missing.exit_code == 1 and "Must specify the -id parameter" in missing.stderr
    api.routes[("GET", "/v1/acl/token/00000000-0000-0000-0000-000000000002")] = (403, "ACL not found")
    anon = run(api, "acl", "token", "read", "-id", "anonymous")
    assert anon.stderr.strip() == ('Error reading token "00000000-0000-0000-0000-000000000002": '
                                   "Unexpected response code: 403 (ACL not found)")


def test_token_update_keeps_what_is_not_given_and_replaces_or_appends(api: StandIn) -> None:
    tid = TOKEN["AccessorID"]
    api.routes[("GET", f"/v1/acl/token/{tid}")] = (200, {**TOKEN, "SecretID": "<hidden>"})
    api.routes[("PUT", f"/v1/acl/token/{tid}")] = (200, TOKEN)
    assert run(api, "acl", "token", "update", "-id", tid, "-description", "new").exit_code == 0
    body = api.last("PUT", f"/v1/acl/token/{tid}").body
    assert "SecretID" not in body and "Hash" not in body and "CreateIndex" not in body
    assert body["Description"] == "new" and body["Policies"] == TOKEN["Policies"]
    assert body["ServiceIdentities"] == TOKEN["ServiceIdentities"] and body["Roles"] == TOKEN["Roles"]
    run(api, "acl", "token", "update", "-id", tid, "-policy-name", "other")
    assert api.last("PUT", f"/v1/acl/token/{tid}").body["Policies"] == [{"Name": "other"}]
    run(api, "acl", "token", "update", "-id", tid, "-append-policy-name", "other",
        "-append-service-identity", "web:dc9")
    body = api.last("PUT", f"/v1/acl/token/{tid}").body
    assert body["Policies"] == [*TOKEN["Policies"], {"Name": "other"}]
    assert body["ServiceIdentities"] == [TOKEN["ServiceIdentities"][1], {"ServiceName": "web", "Datacenters": ["dc9"]}]
    both = run(api, "acl", "token", "update", "-id", tid, "-policy-name", "a", "-append-policy-name", "b")
    assert both.exit_code == 1 and "Cannot combine the use of policy-id/policy-name flags" in both.stderr


def crud_routes(api: StandIn, kind: str, plural: str, obj: dict[str, Any]) -> str:
    """Answer create, read (by ID and name), update, delete and list of `obj` (a policy or role); its ID."""
    oid, path = obj["ID"], f"/v1/acl/{kind}"
    api.routes.update({("PUT", path): (200, obj), ("GET", f"{path}/{oid}"): (200, obj),
                       ("GET", f"{path}/name/{obj['Name']}"): (200, obj), ("PUT", f"{path}/{oid}"): (200, obj),
                       ("DELETE", f"{path}/{oid}"): (200, True), ("GET", f"/v1/acl/{plural}"): (200, [obj])})
    return str(oid)


def test_policy_commands(api: StandIn, tmp_path: Path) -> None:
    pid = crud_routes(api, "policy", "policies", POLICY)
    rules = tmp_path / "rules.hcl"
    rules.write_text('key_prefix "app/" { policy = "write" }\n')
    created = run(api, "acl", "policy", "create", "-name", "web-write", "-rules", f"@{rules}",
                  "-valid-datacenter", "dc1")
    assert created.output == acl_format.policy_text(POLICY) + "\n"
    assert api.last("PUT", "/v1/acl/policy").body == {"Name": "web-write", "Description": "",
                                                      "Rules": rules.read_text(), "Datacenters": ["dc1"]}
    run(api, "acl", "policy", "create", "-name", "p2", "-rules", "-", stdin='node_prefix "" { policy = "read" }')
    assert api.last("PUT", "/v1/acl/policy").body["Rules"] == 'node_prefix "" { policy = "read" }'
    missing = run(api, "acl", "policy", "create", "-name", "x", "-rules", f"@{tmp_path / 'nope'}")
    assert missing.exit_code == 1 and "Error loading rules: Failed to read file" in missing.stderr
    assert run(api, "acl", "policy", "create").stderr.strip() == "Missing require '-name' flag"
    assert run(api, "acl", "policy", "read", "-name", "web-write").exit_code == 0
    run(api, "acl", "policy", "update", "-name", "web-write", "-description", "changed")
    assert api.last("PUT", f"/v1/acl/policy/{pid}").body == {**{k: POLICY[k] for k in ("ID", "Name", "Rules")},
                                                             "Description": "changed"}
    run(api, "acl", "policy", "update", "-id", pid, "-name", "renamed", "-no-merge")
    assert api.last("PUT", f"/v1/acl/policy/{pid}").body == {"ID": pid, "Name": "renamed", "Description": "",
                                                             "Rules": "", "Datacenters": []}
    assert run(api, "acl", "policy", "delete", "-id", "b1c2").output == f'Policy "{pid}" deleted successfully\n'
    assert run(api, "acl", "policy", "list").output == acl_format.policy_list_text([POLICY]) + "\n"
    gone = run(api, "acl", "policy", "read", "-name", "nope")
    assert gone.exit_code == 1 and "policy not found with name 'nope'" in gone.stderr


def test_role_commands(api: StandIn) -> None:
    rid = crud_routes(api, "role", "roles", ROLE)
    none = run(api, "acl", "role", "create", "-name", "ops")
    assert none.exit_code == 1 and "Cannot create a role without specifying -policy-name" in none.stderr
    assert run(api, "acl", "role", "create", "-name", "ops", "-policy-name", "web-write").exit_code == 0
    assert api.last("PUT", "/v1/acl/role").body == {"Name": "ops", "Description": "",
                                                    "Policies": [{"Name": "web-write"}]}
    run(api, "acl", "role", "update", "-id", rid, "-service-identity", "api")
    body = api.last("PUT", f"/v1/acl/role/{rid}").body
    assert body["Policies"] == ROLE["Policies"] and body["ServiceIdentities"] == [{"ServiceName": "api"}]
    assert run(api, "acl", "role", "read", "-name", "ops").output == acl_format.role_text(ROLE) + "\n"
    assert run(api, "acl", "role", "delete", "-name", "ops").output == f'Role "{rid}" deleted successfully\n'
    assert run(api, "acl", "role", "list").output == acl_format.role_list_text([ROLE]) + "\n"


@pytest.mark.parametrize("kind,path", [("default", "default"), ("agent", "agent"), ("agent_master", "agent_recovery"),
                                       ("agent_recovery", "agent_recovery"), ("replication", "replication"),
                                       ("config_file_service_registration", "config_file_service_registration")])
def test_set_agent_token(api: StandIn, kind: str, path: str) -> None:
    api.routes[("PUT", f"/v1/agent/token/{path}")] = (200, "")
    result = run(api, "acl", "set-agent-token", kind, SECRET)
    assert result.exit_code == 0 and result.output == f'ACL token "{kind}" set successfully\n'
    assert api.last("PUT", f"/v1/agent/token/{path}").body == {"Token": SECRET}


def test_set_agent_token_errors_and_stdin(api: StandIn) -> None:
    api.routes[("PUT", "/v1/agent/token/agent")] = (403, "Permission denied: token lacks permission 'agent:write'")
    assert run(api, "acl", "set-agent-token", "agent").stderr.strip() == "Missing TYPE and TOKEN arguments"
    unknown = run(api, "acl", "set-agent-token", "bogus", SECRET)
    assert unknown.exit_code == 1 and "Unknown token type 'bogus'" in unknown.stderr and SECRET not in unknown.output
    denied = run(api, "acl", "set-agent-token", "agent", "-", stdin=SECRET + "\n")
    assert denied.exit_code == 1 and denied.stderr.startswith("Failed setting the ACL token: Unexpected response "
                                                              "code: 403")
    assert SECRET not in denied.output and api.last("PUT", "/v1/agent/token/agent").body == {"Token": SECRET}


# ------------------------------------------------------------------------------- a real agent with ACLs
