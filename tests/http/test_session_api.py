"""/v1/session/* and KV ?acquire/?release over real HTTP: unmodified py-consul, raw bodies (Consul's spellings and
hostile ones), and ACLs; the in-process API with a SessionRunner on its loop (as a -dev agent has)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import consul
import httpx
import pytest
import trio
from meshagent.agent.catalog import CRITICAL, SERF_CHECK_ID, Check, commands
from meshagent.agent.server.session_runner import SessionRunner

from tests.support.acl_objects import add_token
from tests.support.http_harness import FakeAgent, ServerThread, node, register_instance, wait_waiting
from tests.support.ports import port_free
from tests.support.wait import wait_for

HOST = "127.0.50.1"
ACL_HOST = "127.0.50.2"
MGMT = "5e55-0000-mgmt"


@dataclass
class Env:
    srv: ServerThread
    http: httpx.Client
    runner: SessionRunner

    def py_consul(self, token: str | None = None) -> consul.Consul:
        return consul.Consul(host=self.srv.host, port=self.srv.port, token=token)


def _start(agent: FakeAgent | None, host: str) -> tuple[ServerThread, SessionRunner]:
    if not port_free(host, 0):
        pytest.skip(f"{host} is not usable here")
    srv = ServerThread(agent=agent, host=host).start()
    runner = SessionRunner(srv.agent.store)
    srv.api.sessions = runner

    async def spawn() -> None:
        trio.lowlevel.spawn_system_task(runner.run)  # ends with the server's loop

    srv.run(spawn)
    return srv, runner


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    srv, runner = _start(None, HOST)
    try:
        register_instance(srv, "node1", "db")  # the harness agent's own node, with serfHealth passing
        register_instance(srv, "node2", "web", address="10.0.0.2")
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            yield Env(srv, http, runner)
    finally:
        srv.stop()


def test_py_consul_session_lifecycle_and_kv_locks(env: Env) -> None:
    c = env.py_consul()
    sid = c.session.create(name="leader-election", ttl=10, behavior="delete")
    assert isinstance(sid, str) and len(sid) == 36
    index, info = c.session.info(sid)
    assert int(index) >= 1 and info is not None
    assert info["ID"] == sid and info["Node"] == "node1" and info["TTL"] == "10s" and info["Behavior"] == "delete"
    assert info["NodeChecks"] == ["serfHealth"] and info["LockDelay"] == 15_000_000_000
    assert info["Name"] == "leader-election" and info["CreateIndex"] == info["ModifyIndex"] > 0
    _, listed = c.session.list()
    assert sid in [s["ID"] for s in listed]
    _, on_node = c.session.node("node1")
    assert sid in [s["ID"] for s in on_node]
    assert c.session.node("node2")[1] == []
    renewed = c.session.renew(sid)
    assert renewed is not None and renewed["ID"] == sid and env.runner.renewed >= 1
    # KV locks
    other = c.session.create(node="node2", lock_delay=0)
    assert c.kv.put("service/db/leader", "node1", acquire=sid) is True
    assert c.kv.put("service/db/leader", "node2", acquire=other) is False  # held by sid
    _, entry = c.kv.get("service/db/leader")
    assert entry["Session"] == sid and entry["LockIndex"] == 1 and entry["Value"] == b"node1"
    assert c.kv.put("service/db/leader", "x", release=other) is False  # not the holder
    assert c.kv.put("service/db/leader", "released", release=sid) is True
    _, entry = c.kv.get("service/db/leader")
    assert "Session" not in entry and entry["LockIndex"] == 1 and entry["Value"] == b"released"
    assert c.kv.put("service/db/leader", "node2", acquire=other) is True
    assert c.kv.get("service/db/leader")[1]["LockIndex"] == 2
    # destroy (behavior delete for sid: it holds nothing now; other releases with lock_delay 0)
    assert c.session.destroy(sid) is True
    assert c.session.destroy(sid) is True  # already gone: still true
    assert c.session.info(sid)[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)
    assert c.session.destroy(other) is True
    _, entry = c.kv.get("service/db/leader")
    assert "Session" not in entry and entry["Value"] == b"node2"


def test_blocking_session_list_returns_within_a_second_of_a_create(env: Env) -> None:
    c = env.py_consul()
    index, _ = c.session.list()
    result: list[tuple[float, object]] = []

    def blocked() -> None:
        result.append((time.monotonic(), c.session.list(index=index, wait="20s")))

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    wait_waiting(env.srv, 1)
    created_at = time.monotonic()
    sid = env.py_consul().session.create()
    thread.join(10)
    assert result, "the blocking list never returned"
    returned_at, (new_index, sessions) = result[0]  # type: ignore[misc]
    assert returned_at - created_at < 1.0
    assert int(new_index) > int(index) and sid in [s["ID"] for s in sessions]
    env.py_consul().session.destroy(sid)


def test_every_read_carries_x_consul_index(env: Env) -> None:
    for path in ("/v1/session/list", "/v1/session/node/node1", "/v1/session/node/nobody",
                 "/v1/session/info/00000000-0000-0000-0000-000000000000"):
        r = env.http.get(path)
        assert r.status_code == 200 and int(r.headers["X-Consul-Index"]) >= 1, path
    assert env.http.get("/v1/session/info/00000000-0000-0000-0000-000000000000").json() == []


def test_create_reads_consuls_spellings(env: Env) -> None:
    body = {"Name": "svc", "Node": "node1", "NodeChecks": ["serfHealth"],
            "ServiceChecks": [{"ID": "service:db", "Namespace": ""}], "LockDelay": "5s", "Behavior": "release",
            "TTL": "30s"}
    sid = env.http.put("/v1/session/create", json=body).json()["ID"]
    row = env.http.get(f"/v1/session/info/{sid}").json()[0]
    assert row["LockDelay"] == 5_000_000_000 and row["TTL"] == "30s" and row["Name"] == "svc"
    assert row["ServiceChecks"] == [{"ID": "service:db", "Namespace": ""}]
    assert row["Checks"] == ["serfHealth", "service:db"]
    # LockDelay as a number: under 1000 it is seconds, else nanoseconds (Consul's FixupLockDelay)
    for value, ns in ((7, 7_000_000_000), (2_000_000_000, 2_000_000_000)):
        sid2 = env.http.put("/v1/session/create", json={"LockDelay": value}).json()["ID"]
        assert env.http.get(f"/v1/session/info/{sid2}").json()[0]["LockDelay"] == ns
        assert env.http.put(f"/v1/session/destroy/{sid2}").json() is True
    # the old Checks field: [] means no checks; others join NodeChecks
    none = env.http.put("/v1/session/create", json={"Checks": []}).json()["ID"]
    assert env.http.get(f"/v1/session/info/{none}").json()[0]["NodeChecks"] == []
    both = env.http.put("/v1/session/create", json={"Checks": ["service:db"]}).json()["ID"]
    assert env.http.get(f"/v1/session/info/{both}").json()[0]["NodeChecks"] == ["serfHealth", "service:db"]
    for s in (sid, none, both):
        assert env.http.put(f"/v1/session/destroy/{s}").json() is True


@pytest.mark.parametrize(("body", "text"), [
    (b"{", "Request decod"),
    (b"[1]", "JSON object"),
    (b'{"TTL": "5s"}', "Invalid Session TTL '5s'"),
    (b'{"TTL": "25h"}', "Invalid Session TTL"),
    (b'{"TTL": "soon"}', "TTL"),
    (b'{"TTL": 10}', "TTL must be a string"),
    (b'{"Behavior": "explode"}', "Invalid Behavior setting 'explode'"),
    (b'{"LockDelay": "90s"}', "LockDelay must be between"),
    (b'{"LockDelay": -1}', "LockDelay must be between"),
    (b'{"LockDelay": true}', "LockDelay must be"),
    (b'{"LockDelay": 1e400}', "LockDelay"),
    (b'{"LockDelay": NaN}', "Request decod"),
    (b'{"Name": "' + b"n" * 300 + b'"}', "Name is longer than 256"),
    (b'{"Node": 7}', "Node must be a string"),
    (b'{"NodeChecks": "serfHealth"}', "NodeChecks must be a list"),
    (b'{"NodeChecks": [' + b",".join([b'"c"'] * 65) + b"]}", "at most 64"),
    (b'{"NodeChecks": [""]}', "NodeChecks entries"),
    (b'{"ServiceChecks": [{"Namespace": "x"}]}', "ServiceChecks entries need an ID"),
    (b'{"ServiceChecks": ["service:db"]}', "ServiceChecks entries must be objects"),
    (b'{"Node": "nobody"}', "Missing node registration"),
    (b'{"NodeChecks": ["no-such-check"]}', "Missing check 'no-such-check' registration"),
])
def test_create_refuses_what_consul_refuses_naming_the_field(env: Env, body: bytes, text: str) -> None:
    before = env.http.get("/v1/session/list").headers["X-Consul-Index"]
    r = env.http.put("/v1/session/create", content=body)
    assert r.status_code == 400 and text in r.text, r.text
    assert env.http.get("/v1/session/list").headers["X-Consul-Index"] == before


def test_a_critical_check_refuses_create_and_invalidates_a_session_holding_a_lock(env: Env) -> None:
    register_instance(env.srv, "node3", "cache", address="10.0.0.3")
    sid = env.http.put("/v1/session/create", json={"Node": "node3", "LockDelay": "0s"}).json()["ID"]
    assert env.http.put(f"/v1/kv/locks/cache?acquire={sid}", content=b"node3").json() is True
    env.srv.apply(commands.register(node("node3", "10.0.0.3"), None,
                                    [Check(node="node3", check_id=SERF_CHECK_ID, status=CRITICAL)]))
    wait_for(lambda: env.http.get(f"/v1/session/info/{sid}").json() == [], 5, what="the session invalidated")
    assert "Session" not in env.http.get("/v1/kv/locks/cache").json()[0]
    r = env.http.put("/v1/session/create", json={"Node": "node3"})
    assert r.status_code == 400 and "Check 'serfHealth' is in critical state" in r.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PUT", "/v1/session/destroy/", 400), ("PUT", "/v1/session/renew/", 400), ("GET", "/v1/session/info/", 400),
    ("GET", "/v1/session/node/", 400), ("GET", "/v1/session/info/" + "a" * 65, 400),
    ("PUT", "/v1/session/renew/" + "a" * 65, 400), ("GET", "/v1/session/node/" + "n" * 257, 400),
    ("PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000", 404),
    ("GET", "/v1/session/create", 405), ("POST", "/v1/session/list", 405),
    ("PUT", "/v1/kv/k?acquire=" + "a" * 65, 400), ("PUT", "/v1/kv/k?release=", 400),
])
def test_bad_ids_and_methods(env: Env, method: str, path: str, status: int) -> None:
    assert env.http.request(method, path).status_code == status


RULES = {
    "writer": 'session "node1" { policy = "write" }\nkey_prefix "" { policy = "write" }',
    "reader": 'session_prefix "" { policy = "read" }',
    "node2-reader": 'session "node2" { policy = "read" }',
    "keys-only": 'key_prefix "" { policy = "write" }',
}


@pytest.fixture(scope="module")
def acl_env() -> Iterator[tuple[Env, dict[str, str]]]:
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    agent.config.acl.tokens.initial_management = MGMT
    srv, runner = _start(agent, ACL_HOST)
    try:
        srv.apply(commands.acl_init(MGMT))
        secrets = {name: add_token(srv.apply, name, rules) for name, rules in RULES.items()}
        register_instance(srv, "node1", "db")
        register_instance(srv, "node2", "web", address="10.0.0.2")
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            yield Env(srv, http, runner), secrets
    finally:
        srv.stop()


def test_acls_session_write_on_the_node_and_reads_filtered(acl_env: tuple[Env, dict[str, str]]) -> None:
    env, secrets = acl_env

    def call(method: str, path: str, token: str, **kw: object) -> httpx.Response:
        return env.http.request(method, path, headers={"X-Consul-Token": secrets.get(token, token)}, **kw)  # type: ignore[arg-type]

    assert call("PUT", "/v1/session/create", "keys-only").status_code == 403
    assert call("PUT", "/v1/session/create", "writer", json={"Node": "node2"}).status_code == 403
    mine = call("PUT", "/v1/session/create", "writer").json()["ID"]
    theirs = call("PUT", "/v1/session/create", MGMT, json={"Node": "node2"}).json()["ID"]
    assert call("PUT", f"/v1/session/renew/{theirs}", "writer").status_code == 403
    assert call("PUT", f"/v1/session/renew/{mine}", "writer").status_code == 200
    assert call("PUT", f"/v1/session/destroy/{theirs}", "writer").status_code == 403
    # ?acquire needs key:write and session:write on the session's node
    assert call("PUT", f"/v1/kv/lk?acquire={mine}", "keys-only").status_code == 403
    assert call("PUT", f"/v1/kv/lk?acquire={mine}", "writer").json() is True
    assert call("PUT", f"/v1/kv/lk?release={mine}", "writer").json() is True
    # reads keep what session:read allows, and say so
    r = call("GET", "/v1/session/list", "node2-reader")
    assert [s["ID"] for s in r.json()] == [theirs] and r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert {s["ID"] for s in call("GET", "/v1/session/list", "reader").json()} == {mine, theirs}
    assert call("GET", f"/v1/session/info/{mine}", "node2-reader").json() == []
    assert call("GET", "/v1/session/node/node1", "node2-reader").json() == []
    assert call("GET", "/v1/session/list", "no-such-secret").status_code == 403
    assert call("PUT", f"/v1/session/destroy/{mine}", "writer").json() is True
    assert call("PUT", f"/v1/session/destroy/{theirs}", MGMT).json() is True
