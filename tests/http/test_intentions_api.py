"""/v1/connect/intentions against the in-process API on a real CatalogStore: every py-consul intentions call
unmodified, the legacy ID API, precedence and the default policy in `check`, concurrent writers to one
destination (cas retries), blocking lists, and hostile input (always a 4xx, never a 500)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import consul
import httpx
import pytest
import trio
from consul.exceptions import BadRequest
from meshagent.agent.catalog import commands

from tests.support.http_harness import FakeAgent, ServerThread, wait_waiting

INTENTIONS = "/v1/connect/intentions"


def py_consul(server: ServerThread) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


@pytest.fixture
def deny_server() -> Iterator[ServerThread]:
    """The API on an agent whose `acl { default_policy = "deny" }`."""
    agent = FakeAgent()
    agent.config = dataclasses.replace(agent.config, acl_default_policy="deny")
    server = ServerThread(agent=agent).start()
    try:
        yield server
    finally:
        server.stop()


def test_py_consul_upsert_read_list_check_match_delete(api_server: ServerThread) -> None:
    ixns = py_consul(api_server).connect.intentions
    assert ixns.upsert("web", "db", action="allow", description="web reads") is True
    assert ixns.upsert("*", "db", action="deny") is True
    assert ixns.upsert("web", "cache", action="deny") is True
    got = ixns.read("web", "db")
    assert got["SourceName"] == "web" and got["DestinationName"] == "db" and got["Action"] == "allow"
    assert got["Description"] == "web reads" and got["SourceType"] == "consul" and got["Precedence"] == 9
    assert got["SourceNS"] == "default" and got["DestinationNS"] == "default" and got["ID"]
    assert got["CreateIndex"] >= 1 and got["ModifyIndex"] >= got["CreateIndex"]
    assert ixns.read("api", "db") is None
    listed = ixns.list()
    assert [(i["SourceName"], i["DestinationName"]) for i in listed] == [
        ("web", "cache"), ("web", "db"), ("*", "db")]  # precedence 9, 9, 8; then by names
    assert ixns.check("web", "db") is True  # exact beats the wildcard deny
    assert ixns.check("api", "db") is False  # only the wildcard matches
    assert ixns.check("web", "cache") is False
    assert ixns.check("api", "elsewhere") is True  # nothing matches: default allow
    matched = ixns.match("destination", "db")
    assert list(matched) == ["db"]
    assert [(i["SourceName"], i["Action"]) for i in matched["db"]] == [("web", "allow"), ("*", "deny")]
    by_source = ixns.match("source", "web")
    assert [(i["SourceName"], i["DestinationName"]) for i in by_source["web"]] == [
        ("web", "cache"), ("web", "db"), ("*", "db")]  # a wildcard source matches web too
    assert ixns.upsert("web", "db", action="deny") is True  # replace
    assert ixns.read("web", "db")["Action"] == "deny" and ixns.check("web", "db") is False
    assert ixns.delete("web", "db") is True
    assert ixns.read("web", "db") is None
    assert ixns.delete("web", "db") is True  # already gone: still true, as Consul
    assert ixns.check("web", "db") is False  # the wildcard deny is left
    assert ixns.delete("*", "db") is True and ixns.delete("web", "cache") is True
    assert ixns.list() == []
    # The last source gone, the destination's entry goes too.
    assert httpx.get(f"{api_server.url}/v1/config/service-intentions").json() == []


def test_intentions_are_service_intentions_entries(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    assert c.connect.intentions.upsert("web", "db", action="allow") is True
    entry = c.config.get("service-intentions", "db")
    assert [(s["Name"], s["Action"]) for s in entry["Sources"]] == [("web", "allow")]
    # And the other way: an entry written as config is an intention.
    assert c.config.set("service-intentions", "db", {"Sources": [
        {"Name": "web", "Action": "deny"}, {"Name": "api", "Action": "allow"}]}) is True
    assert c.connect.intentions.read("web", "db")["Action"] == "deny"
    assert c.connect.intentions.check("api", "db") is True and c.connect.intentions.check("web", "db") is False


def test_check_follows_the_default_policy(deny_server: ServerThread) -> None:
    ixns = py_consul(deny_server).connect.intentions
    assert ixns.check("web", "db") is False  # nothing matches: default deny
    assert ixns.upsert("web", "db", action="allow") is True
    assert ixns.check("web", "db") is True
    assert ixns.check("api", "db") is False


def test_l7_permissions_deny_at_l4(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    permissions = [{"Action": "allow", "HTTP": {"PathPrefix": "/api"}}]
    with pytest.raises(BadRequest, match="Permissions"):  # db still speaks tcp
        c.connect.intentions.upsert("web", "db", permissions=permissions)
    assert c.config.set("service-defaults", "db", {"Protocol": "http"}) is True
    assert c.connect.intentions.upsert("web", "db", permissions=permissions) is True
    got = c.connect.intentions.read("web", "db")
    assert got["Action"] == "" and got["Permissions"][0]["HTTP"]["PathPrefix"] == "/api"
    assert c.connect.intentions.check("web", "db") is False


def test_meta_only_on_the_enclosing_entry(api_server: ServerThread) -> None:
    ixns = py_consul(api_server).connect.intentions
    with pytest.raises(BadRequest, match="Meta must not be specified"):
        ixns.upsert("web", "db", action="allow", meta={"owner": "x"})
    assert ixns.list() == []


def test_legacy_id_api(api_server: ServerThread) -> None:
    url = api_server.url + INTENTIONS
    r = httpx.post(url, json={"SourceName": "web", "DestinationName": "db", "Action": "allow",
                              "Description": "legacy", "Meta": {"owner": "team-a"}})
    assert r.status_code == 200, r.text
    ixn_id = r.json()["ID"]
    got = httpx.get(f"{url}/{ixn_id}").json()
    assert got["ID"] == ixn_id and got["Meta"] == {"owner": "team-a"} and got["Description"] == "legacy"
    assert got["CreatedAt"] == got["UpdatedAt"] and got["CreatedAt"].endswith("Z")
    assert py_consul(api_server).connect.intentions.read("web", "db")["ID"] == ixn_id
    # The same pair again is refused; another source for the same destination joins its entry.
    dup = httpx.post(url, json={"SourceName": "web", "DestinationName": "db", "Action": "deny"})
    assert dup.status_code == 400 and "duplicate intention" in dup.text
    other = httpx.post(url, json={"SourceName": "api", "DestinationName": "db", "Action": "deny"}).json()["ID"]
    assert other != ixn_id
    # Update by ID (a deny now), keeping the ID and CreatedAt.
    r = httpx.put(f"{url}/{ixn_id}", json={"SourceName": "web", "DestinationName": "db", "Action": "deny"})
    assert (r.status_code, r.json()) == (200, {"ID": ixn_id})
    updated = httpx.get(f"{url}/{ixn_id}").json()
    assert updated["Action"] == "deny" and updated["CreatedAt"] == got["CreatedAt"]
    moved = httpx.put(f"{url}/{ixn_id}", json={"SourceName": "web", "DestinationName": "cache", "Action": "deny"})
    assert moved.status_code == 400 and "DestinationName" in moved.text
    # Delete by ID.
    assert httpx.delete(f"{url}/{ixn_id}").json() is True
    assert httpx.get(f"{url}/{ixn_id}").status_code == 404
    assert httpx.delete(f"{url}/{ixn_id}").status_code == 404
    assert [i["ID"] for i in httpx.get(url).json()] == [other]
    # An intention made as a config entry has a stable ID too, usable here.
    assert httpx.put(f"{url}/exact", params={"source": "ops", "destination": "db"}, json={"Action": "allow"}).json()
    ops = py_consul(api_server).connect.intentions.read("ops", "db")["ID"]
    assert httpx.get(f"{url}/{ops}").json()["SourceName"] == "ops"


@pytest.mark.parametrize("body, text", [
    ({"DestinationName": "db", "Action": "allow"}, "SourceName"),
    ({"SourceName": "web", "Action": "allow"}, "DestinationName"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "maybe"}, "Action"),
    ({"SourceName": "web", "DestinationName": "db"}, "Action"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "ID": "x"}, "ID must be empty"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "SourceType": "external-uri"},
     "SourceType"),
    ({"SourceName": 7, "DestinationName": "db", "Action": "allow"}, "SourceName"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "Meta": {"k": 1}}, "Meta"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "Meta": ["k"]}, "Meta"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow",
      "Permissions": [{"Action": "allow"}]}, "Permissions"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "SourcePartition": "p1"}, "partition"),
    ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "DestinationNS": "ns1"}, "namespace"),
])
def test_bad_legacy_bodies_are_400(api_server: ServerThread, body: dict[str, Any], text: str) -> None:
    r = httpx.post(api_server.url + INTENTIONS, json=body)
    assert r.status_code == 400 and text in r.text, (r.status_code, r.text)
    assert httpx.get(api_server.url + INTENTIONS).json() == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/exact?source=web"), ("GET", "/exact?destination=db"), ("PUT", "/exact?source=&destination=db"),
    ("DELETE", "/exact?source=web&source=api&destination=db"), ("GET", "/exact?source=a/b/c&destination=db"),
    ("GET", "/exact?source=peer:x/web&destination=db"), ("GET", "/exact?source=ns1/web&destination=db"),
    ("GET", "/exact?source=" + "w" * 300 + "&destination=db"),
    ("GET", "/match?name=db"), ("GET", "/match?by=sideways&name=db"), ("GET", "/match?by=source"),
    ("GET", "/check?source=web"), ("GET", "/check?source=web&destination=db&source-type=external-uri"),
    ("GET", "/not-a-uuid"), ("PUT", "/not-a-uuid"), ("DELETE", "/not-a-uuid"),
])
def test_bad_parameters_are_400(api_server: ServerThread, method: str, path: str) -> None:
    r = httpx.request(method, api_server.url + INTENTIONS + path, json={"Action": "allow"})
    assert r.status_code == 400, (r.status_code, r.text)


HOSTILE = [b"{Action: allow", b"[]", b'"allow"', b"null", b'{"Action": ["allow"]}', b'{"Action": NaN}',
           b'{"Description": 7, "Action": "allow"}', b'{"Action": "allow", "Description": "' + b"d" * 600 + b'"}',
           b'{"Permissions": {"Action": "allow"}}', b'{"Permissions": [' + b"[" * 50000 + b"]" * 50000 + b"]}",
           b'{"Action": "allow", "Meta": {"a": "b"}, "X": "\xff"}']


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bodies_are_a_4xx_never_a_500(api_server: ServerThread, body: bytes) -> None:
    for method, path in (("PUT", "/exact?source=web&destination=db"), ("POST", "")):
        r = httpx.request(method, api_server.url + INTENTIONS + path, content=body)
        assert 400 <= r.status_code < 500, (method, r.status_code, r.text[:300])
    assert httpx.get(api_server.url + INTENTIONS).json() == []


def test_concurrent_writers_to_one_destination_lose_nothing(api_server: ServerThread) -> None:
    """Each upsert rewrites the destination's whole entry; writers on one agent take turns per destination
    (cas conflicts between agents: test_a_write_beaten_by_another_agent_is_retried_on_top_of_it), so none is lost."""
    sources = [f"svc-{i}" for i in range(24)]

    def upsert(name: str) -> bool:
        return bool(py_consul(api_server).connect.intentions.upsert(name, "db", action="allow"))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(upsert, sources))
    entry = py_consul(api_server).config.get("service-intentions", "db")
    assert sorted(s["Name"] for s in entry["Sources"]) == sorted(sources)

    def delete(name: str) -> bool:
        return bool(py_consul(api_server).connect.intentions.delete(name, "db"))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(delete, sources))
    assert py_consul(api_server).config.get("service-intentions", "db") is None


class RoundTripReplicator:
    """Applies each write to the catalog only after a few scheduler turns, as a Raft round trip would. Before
    the first intention write lands, another agent's write to the same entry lands first (`interloper`)."""

    def __init__(self, server: ServerThread, interloper: dict[str, Any]) -> None:
        self.store = server.agent.store
        self.interloper: dict[str, Any] | None = interloper
        self.refused = 0

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        if self.interloper is not None and command.get("cas") is not None:
            self.store.apply_committed(self.store.catalog.last_index + 1, self.interloper)
            self.interloper = None
        result = self.store.apply_committed(self.store.catalog.last_index + 1, command)
        self.refused += result is False
        return result

    async def read_barrier(self, consistent: bool) -> None:
        return None


def test_a_write_beaten_by_another_agent_is_retried_on_top_of_it(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    assert c.connect.intentions.upsert("web", "db", action="allow") is True
    other = {"Kind": "service-intentions", "Name": "db", "Meta": {"by": "other-agent"},
             "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "ops", "Action": "deny"}]}
    replicator = RoundTripReplicator(api_server, commands.config_entry_set(other))
    api_server.agent.store.replicator = replicator
    assert c.connect.intentions.upsert("api", "db", action="allow") is True
    assert replicator.refused == 1  # the first try lost to the other agent's write ...
    entry = c.config.get("service-intentions", "db")  # ... and the retry kept it
    assert entry["Meta"] == {"by": "other-agent"}
    assert sorted(s["Name"] for s in entry["Sources"]) == ["api", "ops", "web"]


def test_interleaved_writers_on_one_agent_lose_nothing(api_server: ServerThread) -> None:
    replicator = RoundTripReplicator(api_server, {})
    replicator.interloper = None
    api_server.agent.store.replicator = replicator
    sources = [f"svc-{i}" for i in range(16)]

    def upsert(name: str) -> bool:
        return bool(py_consul(api_server).connect.intentions.upsert(name, "db", action="allow"))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(upsert, sources))
    entry = py_consul(api_server).config.get("service-intentions", "db")
    assert sorted(s["Name"] for s in entry["Sources"]) == sorted(sources)


def test_blocking_list_wakes_on_an_upsert(api_server: ServerThread) -> None:
    ixns = py_consul(api_server).connect.intentions
    assert ixns.upsert("web", "db", action="allow") is True
    index = int(httpx.get(api_server.url + INTENTIONS).headers["x-consul-index"])
    out: list[tuple[float, httpx.Response]] = []

    def blocked() -> None:
        r = httpx.get(api_server.url + INTENTIONS, params={"index": index, "wait": "30s"}, timeout=40)
        out.append((time.monotonic(), r))

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    wait_waiting(api_server, 1)
    assert py_consul(api_server).config.set("service-defaults", "db", {"Protocol": "http"})  # not an intention
    assert not out
    written_at = time.monotonic()
    assert ixns.upsert("api", "db", action="deny") is True
    thread.join(10)
    assert out, "the blocking list never returned"
    returned_at, r = out[0]
    assert returned_at - written_at < 5.0 and int(r.headers["x-consul-index"]) > index  # the wait is 30 s
    assert sorted(i["SourceName"] for i in r.json()) == ["api", "web"]


def test_list_filter_and_match_several_names(api_server: ServerThread) -> None:
    ixns = py_consul(api_server).connect.intentions
    for src, dst, action in (("web", "db", "allow"), ("api", "db", "deny"), ("web", "cache", "allow")):
        assert ixns.upsert(src, dst, action=action) is True
    denied = ixns.list(filter_expr='Action == "deny"')
    assert [(i["SourceName"], i["DestinationName"]) for i in denied] == [("api", "db")]
    r = httpx.get(api_server.url + INTENTIONS + "/match", params=[("by", "destination"), ("name", "db"),
                                                                   ("name", "cache"), ("name", "none")])
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["db", "cache", "none"] and body["none"] == []
    assert len(body["db"]) == 2 and body["cache"][0]["SourceName"] == "web"
