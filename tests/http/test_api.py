"""The /v1 catalog, health, KV and status endpoints in-process: shapes, params, blocking, errors."""

from __future__ import annotations

import base64
import socket
import threading
import time

import httpx
import pytest
from meshagent.agent.catalog import commands
from meshagent.agent.http.query import parse_duration

from tests.support.http_harness import ServerThread, register_instance, wait_waiting


@pytest.fixture
def client(api_server: ServerThread) -> httpx.Client:
    register_instance(api_server, "n1", "db", tags=["primary"], meta={"version": "v1"},
                      node_meta={"rack": "r1"})
    register_instance(api_server, "n2", "db", address="10.0.0.2", tags=["replica"], meta={"version": "v2"},
                      node_meta={"rack": "r2"}, status="critical")
    register_instance(api_server, "n3", "db", address="10.0.0.3", tags=["replica"], status="warning")
    register_instance(api_server, "n1", "web", sid="web-1", port=80, node_meta={"rack": "r1"})
    return httpx.Client(base_url=api_server.url, timeout=30)


def test_duration_parsing() -> None:
    assert parse_duration("2m") == 120 and parse_duration("30s") == 30 and parse_duration("1h30m") == 5400
    assert parse_duration("150ms") == pytest.approx(0.15) and parse_duration("0") == 0
    for bad in ("", "10", "1x", "m", "1.2.3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_health_service_shape_and_headers(client: httpx.Client) -> None:
    r = client.get("/v1/health/service/db")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["x-consul-index"]) >= 1
    assert r.headers["x-consul-knownleader"] == "true" and r.headers["x-consul-lastcontact"] == "0"
    assert r.headers["x-consul-effective-consistency"] == "leader"
    entries = r.json()
    assert [e["Node"]["Node"] for e in entries] == ["n1", "n2", "n3"]
    e = entries[0]
    assert set(e) == {"Node", "Service", "Checks"}
    assert {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"} <= set(e["Node"])
    assert {"ID", "Service", "Tags", "Address", "Meta", "Port", "Weights"} <= set(e["Service"])
    assert e["Checks"][0]["CheckID"] == "serfHealth" and e["Checks"][0]["Name"] == "Serf Health Status"
    assert {"Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName",
            "ServiceTags"} <= set(e["Checks"][1])


def test_health_service_passing_tag_filter(client: httpx.Client) -> None:
    nodes = lambda r: [e["Node"]["Node"] for e in r.json()]  # noqa: E731
    assert nodes(client.get("/v1/health/service/db?passing")) == ["n1"]
    assert nodes(client.get("/v1/health/service/db?passing=true")) == ["n1"]
    assert nodes(client.get("/v1/health/service/db?passing=false")) == ["n1", "n2", "n3"]
    assert nodes(client.get("/v1/health/service/db?tag=replica")) == ["n2", "n3"]
    assert nodes(client.get("/v1/health/service/DB?tag=REPLICA&tag=replica")) == ["n2", "n3"]
    assert nodes(client.get("/v1/health/service/db", params={"filter": "Service.Meta.version == v2"})) == ["n2"]
    assert nodes(client.get("/v1/health/service/db", params={"filter": "Checks.Status == warning"})) == ["n3"]
    assert nodes(client.get("/v1/health/service/db", params={"filter": '"primary" in Service.Tags'})) == ["n1"]
    assert nodes(client.get("/v1/health/service/db", params={"node-meta": "rack:r2"})) == ["n2"]
    assert nodes(client.get("/v1/health/service/db", params={"filter": "Node.Meta.rack == r1 or Node.Node == n3"})) \
        == ["n1", "n3"]
    assert client.get("/v1/health/service/nope").json() == []


def test_catalog_endpoints(client: httpx.Client) -> None:
    assert client.get("/v1/catalog/services").json() == {"db": ["primary", "replica"], "web": []}
    assert client.get("/v1/catalog/services", params={"filter": "ServiceName == web"}).json() == {"web": []}
    assert client.get("/v1/catalog/services", params={"node-meta": "rack:r2"}).json() == {"db": ["replica"]}
    rows = client.get("/v1/catalog/service/db").json()
    assert [r["Node"] for r in rows] == ["n1", "n2", "n3"]  # raw: not health-filtered
    assert {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceID", "ServiceName",
            "ServiceTags", "ServiceAddress", "ServicePort", "ServiceMeta", "ServiceWeights",
            "ServiceEnableTagOverride", "CreateIndex", "ModifyIndex"} <= set(rows[0])
    assert [r["Node"] for r in client.get("/v1/catalog/service/db?tag=primary").json()] == ["n1"]
    assert [r["Node"] for r in client.get("/v1/catalog/service/db", params={
        "filter": "ServiceMeta.version == v1 and NodeMeta.rack == r1"}).json()] == ["n1"]
    assert [n["Node"] for n in client.get("/v1/catalog/nodes").json()] == ["n1", "n2", "n3"]
    assert [n["Node"] for n in client.get("/v1/catalog/nodes", params={"filter": "Meta.rack == r2"}).json()] \
        == ["n2"]
    node = client.get("/v1/catalog/node/n1").json()
    assert node["Node"]["Node"] == "n1" and set(node["Services"]) == {"db", "web-1"}
    assert client.get("/v1/catalog/node/missing").json() is None
    assert client.get("/v1/catalog/datacenters").json() == ["dc1"]


def test_health_check_lists(client: httpx.Client) -> None:
    assert {c["Node"] for c in client.get("/v1/health/checks/db").json()} == {"n1", "n2", "n3"}
    assert {c["CheckID"] for c in client.get("/v1/health/node/n1").json()} == {"serfHealth", "service:db",
                                                                               "service:web-1"}
    assert [c["Node"] for c in client.get("/v1/health/state/critical").json()] == ["n2"]
    assert len(client.get("/v1/health/state/any").json()) == 7
    assert client.get("/v1/health/state/bogus").status_code == 400
    crit = client.get("/v1/health/state/any", params={"filter": "Status == critical"}).json()
    assert [c["Node"] for c in crit] == ["n2"]


def test_errors_are_one_line(client: httpx.Client) -> None:
    cases = {
        "/v1/nope": 404, "/v2/catalog/services": 404, "/v1/health/service/": 400,
        "/v1/health/service/db?index=abc": 400, "/v1/health/service/db?index=1&wait=forever": 400,
        "/v1/health/service/db?stale&consistent": 400, "/v1/health/service/db?passing=maybe": 400,
        "/v1/health/service/db?filter=Service.Nope%20%3D%3D%201": 400, "/v1/catalog/nodes?dc=dc9": 500,
        "/v1/health/service/db?node-meta=nocolon": 400, "/v1/kv/a?flags=-1": 400,
    }
    for path, status in cases.items():
        r = client.put(path) if "flags" in path else client.get(path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.text.count("\n") <= 1 and "Traceback" not in r.text, path
    r = client.delete("/v1/catalog/services")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.post("/v1/kv/x")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PUT"


def test_consistency_headers_and_pretty(client: httpx.Client) -> None:
    assert client.get("/v1/catalog/nodes?stale").headers["x-consul-effective-consistency"] == "stale"
    assert client.get("/v1/catalog/nodes?consistent").headers["x-consul-effective-consistency"] == "consistent"
    pretty = client.get("/v1/catalog/services?pretty").text
    assert pretty.startswith("{\n    \"db\": [") and pretty.endswith("}\n")


def test_status(client: httpx.Client) -> None:
    assert client.get("/v1/status/leader").json() == "127.0.0.1:8300"
    assert client.get("/v1/status/peers").json() == ["127.0.0.1:8300"]


def test_kv_roundtrip(client: httpx.Client) -> None:
    r = client.get("/v1/kv/app/config")
    assert r.status_code == 404 and int(r.headers["x-consul-index"]) >= 1
    assert client.put("/v1/kv/app/config?flags=42", content=b"hello").json() is True
    r = client.get("/v1/kv/app/config")
    (entry,) = r.json()
    assert entry["Key"] == "app/config" and entry["Flags"] == 42
    assert base64.b64decode(entry["Value"]) == b"hello"
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(r.headers["x-consul-index"])
    raw = client.get("/v1/kv/app/config?raw")
    assert raw.content == b"hello" and raw.headers["x-content-type-options"] == "nosniff"
    # cas=0 creates only when absent; cas=N only at ModifyIndex N
    assert client.put("/v1/kv/app/config?cas=0", content=b"x").json() is False
    assert client.put("/v1/kv/app/new?cas=0", content=b"x").json() is True
    assert client.put("/v1/kv/app/config?cas=1", content=b"x").json() is False
    assert client.put(f"/v1/kv/app/config?cas={entry['ModifyIndex']}", content=b"v2").json() is True
    client.put("/v1/kv/app/db/host", content=b"h")
    client.put("/v1/kv/other", content=b"")
    assert [e["Key"] for e in client.get("/v1/kv/app?recurse").json()] == ["app/config", "app/db/host",
                                                                           "app/new"]
    assert client.get("/v1/kv/other").json()[0]["Value"] is None
    assert client.get("/v1/kv/?keys").json() == ["app/config", "app/db/host", "app/new", "other"]
    assert client.get("/v1/kv/app/?keys&separator=/").json() == ["app/config", "app/db/", "app/new"]
    assert client.get("/v1/kv/zzz?keys").status_code == 404
    assert client.get("/v1/kv/zzz?recurse").status_code == 404
    # deletes
    modify = client.get("/v1/kv/app/new").json()[0]["ModifyIndex"]
    assert client.delete("/v1/kv/app/new?cas=1").json() is False
    assert client.delete(f"/v1/kv/app/new?cas={modify}").json() is True
    assert client.delete("/v1/kv/app/new?cas=5").json() is True  # already gone
    assert client.delete("/v1/kv/app?recurse").json() is True
    assert client.get("/v1/kv/?keys").json() == ["other"]
    assert client.delete("/v1/kv/other").json() is True
    assert client.get("/v1/kv/?keys").json() == []
    assert client.put("/v1/kv/").status_code == 400
    assert client.put("/v1/kv/k?acquire=abc").json() is False  # issue 16: an unknown session locks nothing
    assert client.put("/v1/kv/k?acquire=").status_code == 400


def test_kv_value_size_limit(client: httpx.Client) -> None:
    assert client.put("/v1/kv/big", content=b"x" * 512 * 1024).json() is True
    r = client.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413
    assert len(client.get("/v1/kv/big?raw").content) == 512 * 1024


def test_kv_key_with_escapes(client: httpx.Client) -> None:
    assert client.put("/v1/kv/sp%20ace/%C3%A9t%C3%A9", content=b"1").json() is True
    assert client.get("/v1/kv/?keys").json() == ["sp ace/été"]


def blocking_get(client: httpx.Client, path: str, out: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(client.get(path)), daemon=True)
    thread.start()
    return thread


def test_blocking_query_returns_on_change_only(api_server: ServerThread, client: httpx.Client) -> None:
    r = client.get("/v1/health/service/db")
    index = int(r.headers["x-consul-index"])
    # Unrelated writes (KV, another service) do not wake it; a db change does.
    out: list[httpx.Response] = []
    t0 = time.monotonic()
    thread = blocking_get(client, f"/v1/health/service/db?index={index}&wait=30s", out)
    wait_waiting(api_server, 1)
    client.put("/v1/kv/unrelated", content=b"1")
    register_instance(api_server, "n9", "other")
    assert thread.is_alive()
    register_instance(api_server, "n4", "db", address="10.0.0.4")
    thread.join(5)
    assert out and time.monotonic() - t0 < 5
    assert int(out[0].headers["x-consul-index"]) > index
    assert "n4" in [e["Node"]["Node"] for e in out[0].json()]


def test_blocking_query_times_out_with_same_index(client: httpx.Client) -> None:
    index = int(client.get("/v1/catalog/services").headers["x-consul-index"])
    t0 = time.monotonic()
    r = client.get(f"/v1/catalog/services?index={index}&wait=300ms")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and int(r.headers["x-consul-index"]) == index
    assert 0.29 <= elapsed < 0.3 * (1 + 1 / 16) + 1.0


def test_blocking_kv_prefix_and_missing_key(api_server: ServerThread, client: httpx.Client) -> None:
    r = client.get("/v1/kv/cfg/?recurse")
    assert r.status_code == 404
    index = int(r.headers["x-consul-index"])
    out: list[httpx.Response] = []
    thread = blocking_get(client, f"/v1/kv/cfg/?recurse&index={index}&wait=30s", out)
    wait_waiting(api_server, 1)
    client.put("/v1/kv/cfg/a/b", content=b"v")
    thread.join(5)
    assert out and out[0].status_code == 200 and out[0].json()[0]["Key"] == "cfg/a/b"


def test_catalog_write_invalidates_cached_answer(api_server: ServerThread, client: httpx.Client) -> None:
    first = client.get("/v1/health/service/db?passing").json()
    again = client.get("/v1/health/service/db?passing").json()
    assert first == again and api_server.api.cache_hits >= 1
    register_instance(api_server, "n3", "db", address="10.0.0.3", tags=["replica"], status="passing")
    assert [e["Node"]["Node"] for e in client.get("/v1/health/service/db?passing").json()] == ["n1", "n3"]
    api_server.apply(commands.deregister("n1"))
    assert [e["Node"]["Node"] for e in client.get("/v1/health/service/db?passing").json()] == ["n3"]


def test_client_hang_up_ends_a_blocking_query(api_server: ServerThread, client: httpx.Client) -> None:
    index = int(client.get("/v1/catalog/nodes").headers["x-consul-index"])
    sock = socket.create_connection(("127.0.0.1", api_server.port), timeout=5)
    sock.sendall(f"GET /v1/catalog/nodes?index={index}&wait=5m HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    wait_waiting(api_server, 1)
    sock.close()
    deadline = time.monotonic() + 5
    while api_server.agent.store.hub.waiting:
        assert time.monotonic() < deadline, "blocking query kept waiting after the client left"
        time.sleep(0.005)


def test_request_pipelined_behind_a_blocking_query_is_kept(api_server: ServerThread,
                                                          client: httpx.Client) -> None:
    index = int(client.get("/v1/kv/p").headers["x-consul-index"])
    sock = socket.create_connection(("127.0.0.1", api_server.port), timeout=5)
    sock.sendall(f"GET /v1/kv/p?index={index}&wait=30s HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    wait_waiting(api_server, 1)
    sock.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: t\r\n\r\n")  # read by the hang-up watcher
    client.put("/v1/kv/p", content=b"x")
    data = b""
    while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b'"127.0.0.1:8300"'):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert b'"Key":"p"' in data
