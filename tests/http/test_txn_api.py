"""`PUT /v1/txn` over real HTTP (the in-process API on 127.0.52.1): unmodified py-consul, Consul's shapes,
ACLs per op, hostile bodies. The FSM side is tests/catalog/test_txn.py."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import httpx
import msgpack
import pytest
from meshagent.agent.acl import command_rights
from meshagent.agent.catalog import commands

from tests.support.acl_objects import add_token
from tests.support.agents import AgentProcess
from tests.support.http_harness import ACLEnv, FakeAgent, ServerThread, TokenRecorder, register_instance
from tests.support.ports import port_free, ports_free
from tests.support.wait import wait_for

HOST = "127.0.52.1"
ACL_HOST = "127.0.52.2"
RAFT_HOSTS = [f"127.0.52.{n}" for n in range(10, 30)]  # the first with the agent's ports free
MGMT = str(uuid.uuid4())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def state(srv: ServerThread) -> bytes:
    raw = msgpack.unpackb(srv.agent.store.catalog.snapshot(), raw=False, strict_map_key=False)
    raw.pop("last_index")  # a refused transaction still uses its log index, as any rejected command
    return msgpack.packb(raw, use_bin_type=True)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    if not port_free(HOST, 0):
        pytest.skip(f"{HOST} is not usable here")
    server = ServerThread(host=HOST).start()
    try:
        register_instance(server, "n1", "db", sid="db1")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=10, trust_env=False) as client:
        yield client


def test_pyconsul_txn_commits_and_a_failing_cas_rolls_back_every_op(srv: ServerThread) -> None:
    c = consul.Consul(host=HOST, port=srv.port)
    out = c.txn.put([{"KV": {"Verb": "set", "Key": "py/a", "Value": b64(b"1")}},
                     {"KV": {"Verb": "set", "Key": "py/b", "Value": b64(b"2"), "Flags": 3}},
                     {"KV": {"Verb": "get", "Key": "py/a"}}])
    assert out["Errors"] is None
    assert [r["KV"]["Key"] for r in out["Results"]] == ["py/a", "py/b", "py/a"]
    assert out["Results"][0]["KV"]["Value"] is None and out["Results"][2]["KV"]["Value"] == b64(b"1")
    index_b = out["Results"][1]["KV"]["ModifyIndex"]
    assert out["Results"][0]["KV"]["ModifyIndex"] == index_b  # one transaction, one index
    before = state(srv)
    with pytest.raises(consul.ConsulException) as err:  # py-consul raises its ClientError on Consul's 409
        c.txn.put([{"KV": {"Verb": "set", "Key": "py/a", "Value": b64(b"changed")}},
                   {"KV": {"Verb": "delete", "Key": "py/b"}},
                   {"Node": {"Verb": "set", "Node": {"Node": "n-txn", "Address": "10.9.9.9"}}},
                   {"KV": {"Verb": "cas", "Key": "py/b", "Index": index_b + 100, "Value": b64(b"x")}},
                   {"KV": {"Verb": "set", "Key": "py/c", "Value": b64(b"3")}}])
    assert "409" in str(err.value)
    body = json.loads(str(err.value).split(" ", 1)[1])
    assert body == {"Results": None, "Errors": [{"OpIndex": 3, "What": "failed to set key 'py/b', index is stale"}]}
    assert state(srv) == before
    assert c.kv.get("py/a")[1]["Value"] == b"1" and c.kv.get("py/b")[1] is not None
    assert c.kv.get("py/c")[1] is None and c.catalog.node("n-txn")[1] is None


def test_catalog_ops_and_read_only_fast_path(srv: ServerThread, http: httpx.Client) -> None:
    r = http.put("/v1/txn", json=[
        {"Node": {"Verb": "set", "Node": {"Node": "n-t2", "Address": "10.1.1.1", "Meta": {"rack": "a"}}}},
        {"Service": {"Verb": "set", "Node": "n-t2", "Service": {"ID": "web1", "Service": "web", "Port": 80}}},
        {"Check": {"Verb": "set", "Check": {"Node": "n-t2", "CheckID": "c1", "ServiceID": "web1",
                                            "Status": "passing"}}}])
    assert r.status_code == 200, r.text
    results = r.json()["Results"]
    assert results[0]["Node"]["Meta"] == {"rack": "a"} and results[1]["Service"]["Port"] == 80
    assert results[2]["Check"]["ServiceName"] == "web" and results[2]["Check"]["Status"] == "passing"
    index = srv.agent.store.catalog.last_index
    r = http.put("/v1/txn?stale", json=[{"Node": {"Verb": "get", "Node": {"Node": "n-t2"}}},
                                        {"Service": {"Verb": "get", "Node": "n-t2", "Service": {"ID": "web1"}}}])
    assert r.status_code == 200 and r.headers["x-consul-knownleader"] == "true"
    assert [next(iter(x)) for x in r.json()["Results"]] == ["Node", "Service"]
    assert srv.agent.store.catalog.last_index == index  # no log entry for a read
    r = http.put("/v1/txn", json=[{"KV": {"Verb": "get", "Key": "nope"}}])
    assert r.status_code == 409 and r.json()["Errors"] == [{"OpIndex": 0, "What": "key 'nope' doesn't exist"}]


@pytest.mark.parametrize(("body", "status", "text"), [
    (b"{", 400, "Failed to parse body"),
    (b'{"KV": {}}', 400, "JSON array"),
    (b"[1]", 400, "exactly one of"),
    (b'[{"KV": {"Verb": "set", "Key": "k"}, "Node": {"Verb": "get"}}]', 400, "exactly one of"),
    (b'[{"KV": {"Verb": "set", "Key": "k", "Value": "***"}}]', 400, "not base64"),
    (b'[{"KV": {"Verb": "set", "Key": "k", "Value": 5}}]', 400, "KV.Value must be a base64 string"),
    (b'[{"KV": {"Verb": "set", "Key": 5}}]', 400, "KV.Key"),
    (b'[{"KV": {"Verb": "set", "Key": "k", "Flags": -1}}]', 400, "KV.Flags"),
    (b'[{"KV": {"Verb": "set", "Key": "k", "Index": 1.5}}]', 400, "KV.Index"),
    (b'[{"Node": {"Verb": "set", "Node": []}}]', 400, "Node.Node must be an object"),
    (b'[{"Service": {"Verb": "set", "Node": "n1", "Service": {"Service": "x", "Port": 70000}}}]', 400, "Port"),
    (b'[{"Check": {"Verb": "set", "Check": {"Node": "n1", "CheckID": "c", "Status": "ok"}}}]', 400, "Status"),
    (b'[{"Service": {"Verb": "set", "Node": "n1", "Service": {"Service": "x", "Weights": {"Passing": "1"}}}}]', 400,
     "Weights"),
    (b'[{"Service": {"Verb": "set", "Node": "n1", "Service": {"Service": "x", "TaggedAddresses": {"lan": 1}}}}]',
     400, "TaggedAddresses"),
    (b'[{"Service": {"Verb": "set", "Node": "n1", "Service": {"Service": "x", "Proxy": []}}}]', 400, "Proxy"),
    (b'[{"Node": {"Verb": "set", "Node": {"Node": "x", "Meta": {"a": {}}}}}]', 400, "Meta"),
    (b'[{"KV": {"Verb": "set", "Key": "' + b"k" * 2000 + b'"}}]', 400, "KV.Key"),
    (json.dumps([{"KV": {"Verb": "set", "Key": "k"}}] * 65).encode(), 413, "too many operations (65 > 64)"),
    (b'[{"KV": {"Verb": "frob", "Key": "k"}}]', 409, "unknown KV verb 'frob'"),
    (b'[{"KV": {"Verb": "set", "Key": ""}}]', 409, "missing key name"),
    (b"[" * 100_000, 400, "Failed to parse body"),
])
def test_hostile_bodies(srv: ServerThread, http: httpx.Client, body: bytes, status: int, text: str) -> None:
    before = state(srv)
    r = http.put("/v1/txn", content=body)
    assert r.status_code == status, r.text
    assert text in r.text
    assert state(srv) == before


def test_sixty_four_ops_is_the_limit_not_beyond(http: httpx.Client) -> None:
    r = http.put("/v1/txn", json=[{"KV": {"Verb": "set", "Key": f"many/{i}"}} for i in range(64)])
    assert r.status_code == 200 and len(r.json()["Results"]) == 64


# ------------------------------------------------------------------------------------------ ACLs


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLEnv]:
    if not port_free(ACL_HOST, 0):
        pytest.skip(f"{ACL_HOST} is not usable here")
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    agent.config.acl.tokens.initial_management = MGMT
    srv = ServerThread(agent=agent, host=ACL_HOST).start()
    try:
        srv.apply(commands.acl_init(MGMT))
        secrets = {"app": add_token(srv.apply, "app", 'key_prefix "app/" { policy = "write" }\n'
                                    'key "app/hidden" { policy = "deny" }\n'),
                   "mgmt": MGMT}
        for key in ("app/x", "app/hidden", "other/y"):
            srv.apply(commands.kv_set(key, b"v", 0))
        recorder = TokenRecorder(agent.store)
        agent.store.replicator = recorder  # what a client agent would send to its servers
        with httpx.Client(base_url=srv.url, timeout=10, trust_env=False) as client:
            yield ACLEnv(srv, client, secrets)
    finally:
        srv.stop()


def test_acl_denied_op_is_an_error_entry_and_nothing_applies(acl: ACLEnv) -> None:
    before = state(acl.srv)
    r = acl.call("PUT", "/v1/txn", "app", json=[{"KV": {"Verb": "set", "Key": "app/new"}},
                                                 {"KV": {"Verb": "set", "Key": "other/z"}},
                                                 {"KV": {"Verb": "check-index", "Key": "other/y", "Index": 1}}])
    assert r.status_code == 409
    errors = r.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [1, 2]
    assert "Permission denied" in errors[0]["What"] and "key:write" in errors[0]["What"]
    assert "key:read" in errors[1]["What"]
    assert state(acl.srv) == before
    assert acl.call("PUT", "/v1/txn", None, json=[{"KV": {"Verb": "set", "Key": "app/new"}}]).status_code == 409


def test_acl_writes_carry_the_token_and_reads_are_filtered(acl: ACLEnv) -> None:
    recorder = acl.srv.agent.store.replicator
    assert isinstance(recorder, TokenRecorder)
    r = acl.call("PUT", "/v1/txn", "app", json=[{"KV": {"Verb": "set", "Key": "app/w", "Value": b64(b"1")}},
                                                 {"KV": {"Verb": "get-tree", "Key": ""}}])
    assert r.status_code == 200, r.text
    assert recorder.tokens[-1] == acl.secrets["app"]
    keys = [x["KV"]["Key"] for x in r.json()["Results"]]
    assert keys == ["app/w", "app/w", "app/x"]  # app/hidden and other/y left out, as Consul's FilterTxnResults
    r = acl.call("PUT", "/v1/txn", "app", json=[{"KV": {"Verb": "get", "Key": "other/y"}}])
    assert r.status_code == 200 and r.json()["Results"] == []
    r = acl.call("PUT", "/v1/txn", "mgmt", json=[{"KV": {"Verb": "get", "Key": "other/y"}}])
    assert [x["KV"]["Key"] for x in r.json()["Results"]] == ["other/y"]


def test_server_recheck_refuses_a_txn_with_any_denied_op(acl: ACLEnv) -> None:
    """The servers' re-check (command_rights) sees every op of the one txn command."""
    store = acl.srv.agent.store
    app = acl.srv.agent.acl.resolve_rpc(acl.secrets["app"])
    ok = commands.txn([{"type": "kv", "verb": "set", "key": "app/1"},
                       {"type": "kv", "verb": "get", "key": "other/y"}])
    bad = commands.txn([{"type": "kv", "verb": "set", "key": "app/1"},
                        {"type": "node", "verb": "set", "node": {"node": "n9"}}])
    assert command_rights.authorize(app, ok, store.catalog) is None
    decision = command_rights.authorize(app, bad, store.catalog)
    assert decision is not None and not decision.allowed
    with pytest.raises(command_rights.MalformedCommand):
        command_rights.authorize(app, {"op": "txn", "ops": "x"}, store.catalog)




# ------------------------------------------------------------------------------------------ real Raft


@pytest.mark.slow
def test_through_raft_on_a_real_server_one_entry_all_or_none(tmp_path: Path) -> None:
    """A bootstrapped `meshagent agent -server`: the txn is one Raft entry (one index for every op), a failing
    op leaves nothing, and a read-only txn uses no log index. ~2 s."""
    host = next((h for h in RAFT_HOSTS if ports_free(h)), None)
    if host is None:
        pytest.skip("no free 127.0.52.10-29 here")
    agent = AgentProcess(host=host, workdir=tmp_path, args=[
        "-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / "data"), "-client", host,
        "-bind", host, "-node", "txn-raft", "-log-level", "warn"]).start()
    try:
        wait_for(lambda: httpx.get(f"{agent.http_addr}/v1/status/leader", timeout=2).json(), 30, what="a leader")
        c = consul.Consul(host=host, port=8500)
        out = c.txn.put([{"KV": {"Verb": "set", "Key": f"r/{i}", "Value": b64(b"v")}} for i in range(10)])
        assert out["Errors"] is None and len({r["KV"]["ModifyIndex"] for r in out["Results"]}) == 1
        with pytest.raises(consul.ConsulException, match="409"):
            c.txn.put([{"KV": {"Verb": "delete-tree", "Key": "r/"}},
                       {"KV": {"Verb": "get", "Key": "r/0"}}])  # it sees the delete: fails
        index, keys = c.kv.get("r/", keys=True)
        assert len(keys) == 10
        r = httpx.put(f"{agent.http_addr}/v1/txn?consistent", json=[{"KV": {"Verb": "get-tree", "Key": "r/"}}],
                      timeout=10, trust_env=False)
        assert r.status_code == 200 and len(r.json()["Results"]) == 10
        assert c.kv.get("r/", keys=True)[0] == index  # neither the refused txn's entry nor a read moved r/
    finally:
        agent.stop()


def test_txn_op_rights_each_op_as_its_single_op_rights() -> None:
    """command_rights.txn_op_rights, pure: what each op needs (Consul's txn preCheck), both ways."""
    from meshagent.agent.acl.authorizer import Authorizer
    from meshagent.agent.acl.rules import parse_rules
    from meshagent.agent.catalog import Catalog, Check, Node, Service

    cat = Catalog()
    cat.apply(1, commands.register(Node(node="n1"), Service(node="n1", id="w1", service="web"),
                                   [Check(node="n1", check_id="wc", service_id="w1"), Check(node="n1", check_id="nc")]))
    sid = "11111111-2222-3333-4444-555555555555"
    cat.apply(2, commands.session_create({"id": sid, "node": "n1", "node_checks": []}))

    def needs(op: dict[str, Any], rules: str) -> bool:
        authz = Authorizer([parse_rules(rules)], False)
        return all(d.allowed for d in command_rights.txn_op_rights(authz, op, cat))

    kv_w, kv_r = 'key_prefix "a/" { policy = "write" }', 'key_prefix "a/" { policy = "read" }'
    assert needs({"type": "kv", "verb": "set", "key": "a/1"}, kv_w)
    assert not needs({"type": "kv", "verb": "set", "key": "a/1"}, kv_r)
    assert needs({"type": "kv", "verb": "check-index", "key": "a/1"}, kv_r)
    assert not needs({"type": "kv", "verb": "check-not-exists", "key": "a/1"}, kv_r)  # Consul: key write
    assert needs({"type": "kv", "verb": "get-tree", "key": ""}, "")  # filtered on output instead
    assert not needs({"type": "kv", "verb": "delete-tree", "key": "a"}, kv_w)  # "a" covers more than a/
    assert not needs({"type": "kv", "verb": "lock", "key": "a/1", "session": sid}, kv_w)
    assert needs({"type": "kv", "verb": "lock", "key": "a/1", "session": sid},
                 kv_w + '\nsession "n1" { policy = "write" }')
    node = {"type": "node", "verb": "set", "node": {"node": "n1"}}
    assert needs(node, 'node "n1" { policy = "write" }') and not needs(node, 'node "n1" { policy = "read" }')
    web = {"type": "service", "verb": "set", "node": "n1", "service": {"id": "w1", "service": "web"}}
    assert needs(web, 'service "web" { policy = "write" }')
    renamed = {**web, "service": {"id": "w1", "service": "api"}}
    assert not needs(renamed, 'service "api" { policy = "write" }')  # it takes over web's ID
    gone = {"type": "service", "verb": "delete", "node": "n1", "service": {"id": "w1"}}
    assert needs(gone, 'service "web" { policy = "write" }') and not needs(gone, 'service "x" { policy = "write" }')
    svc_check = {"type": "check", "verb": "delete", "check": {"node": "n1", "check_id": "wc"}}
    assert needs(svc_check, 'service "web" { policy = "write" }')
    node_check = {"type": "check", "verb": "set", "check": {"node": "n1", "check_id": "nc"}}
    assert needs(node_check, 'node "n1" { policy = "write" }')
    assert not needs(node_check, 'service "web" { policy = "write" }')
    assert needs({"type": "check", "verb": "get", "check": {"node": "n1", "check_id": "nc"}}, "")
    assert not needs({"type": "acl", "verb": "set"}, 'acl = "write"')
