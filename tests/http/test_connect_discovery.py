"""`/v1/health/connect/:svc` and `/v1/catalog/connect/:svc`: a service's sidecars and Connect-native
instances, with the options and blocking of the service endpoints, over real HTTP."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import consul
import dns.message
import dns.query
import httpx
import pytest
from meshagent.agent.catalog import CRITICAL, PASSING, WARNING, Check, Service, commands

from tests.support.agents import start_agent
from tests.support.http_harness import ServerThread, node, register_instance, wait_waiting
from tests.support.wait import wait_for


def register_sidecar(server: ServerThread, node_name: str, dest: str, *, address: str = "10.0.0.1",
                     port: int = 21000, status: str = PASSING, tags: list[str] | None = None,
                     sid: str = "", key: str = "DestinationServiceName") -> None:
    """A node with serfHealth, one connect-proxy in front of `dest` and its check with `status`."""
    sid = sid or f"{dest}-sidecar-proxy"
    svc = Service(node=node_name, id=sid, service=f"{dest}-sidecar-proxy", kind="connect-proxy", port=port,
                  tags=list(tags or []),
                  proxy={key: dest, "DestinationServiceID": dest, "LocalServicePort": 8080})
    server.apply(commands.register(node(node_name, address), svc, [
        Check(node=node_name, check_id="serfHealth", status=PASSING),
        Check(node=node_name, check_id=f"service:{sid}", status=status, service_id=sid)]))


@pytest.fixture
def client(api_server: ServerThread) -> httpx.Client:
    register_instance(api_server, "n1", "web", port=8080)
    register_sidecar(api_server, "n1", "web", port=21000, tags=["v1"])
    register_instance(api_server, "n2", "web", address="10.0.0.2", port=8080)
    register_sidecar(api_server, "n2", "web", address="10.0.0.2", port=21001, status=CRITICAL, tags=["v2"],
                     key="destination_service_name")
    register_sidecar(api_server, "n3", "web", address="10.0.0.3", port=21002, status=WARNING, tags=["v1"])
    api_server.apply(commands.register(node("n4", "10.0.0.4"), Service(
        node="n4", id="api-1", service="api", port=9000, connect={"Native": True})))
    register_instance(api_server, "n4", "db", address="10.0.0.4")
    return httpx.Client(base_url=api_server.url, timeout=30)


def names(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries]


def test_health_connect_lists_the_sidecars_with_their_checks(client: httpx.Client) -> None:
    r = client.get("/v1/health/connect/web")
    assert r.status_code == 200 and int(r.headers["x-consul-index"]) > 0
    body = r.json()
    assert names(body) == [("n1", "web-sidecar-proxy"), ("n2", "web-sidecar-proxy"), ("n3", "web-sidecar-proxy")]
    first = body[0]
    assert first["Service"]["Kind"] == "connect-proxy" and first["Service"]["Port"] == 21000
    assert first["Service"]["Proxy"]["DestinationServiceName"] == "web"
    assert [c["CheckID"] for c in first["Checks"]] == ["serfHealth", "service:web-sidecar-proxy"]
    # the application instances themselves are not mesh endpoints
    assert all(e["Service"]["Kind"] == "connect-proxy" for e in body)


def test_health_connect_passing_tag_filter_and_near(client: httpx.Client) -> None:
    assert names(client.get("/v1/health/connect/web?passing").json()) == [("n1", "web-sidecar-proxy")]
    assert names(client.get("/v1/health/connect/web?passing=false").json())[1:2] == [("n2", "web-sidecar-proxy")]
    assert [n for n, _ in names(client.get("/v1/health/connect/web?tag=v1").json())] == ["n1", "n3"]
    assert names(client.get("/v1/health/connect/web?tag=v1&tag=v2").json()) == []
    r = client.get("/v1/health/connect/web", params={"filter": 'Service.Port == 21002'})
    assert [n for n, _ in names(r.json())] == ["n3"]
    assert client.get("/v1/health/connect/web", params={"filter": "Service.Port =="}).status_code == 400
    # ?near is accepted and ignored (no coordinates yet): same answer
    assert client.get("/v1/health/connect/web?near=_agent").json() == client.get("/v1/health/connect/web").json()


def test_connect_native_services_are_their_own_mesh_endpoints(client: httpx.Client) -> None:
    assert names(client.get("/v1/health/connect/api").json()) == [("n4", "api-1")]
    rows = client.get("/v1/catalog/connect/API").json()
    assert [(r["Node"], r["ServiceID"], r["ServiceConnect"]) for r in rows] == [("n4", "api-1", {"Native": True})]
    # a service with neither sidecars nor native instances has no mesh endpoints (an empty list, as Consul)
    for path in ("/v1/health/connect/db", "/v1/catalog/connect/db", "/v1/health/connect/nothing"):
        r = client.get(path)
        assert r.status_code == 200 and r.json() == []


def test_catalog_connect_rows_any_health(client: httpx.Client) -> None:
    rows = client.get("/v1/catalog/connect/web").json()
    assert [(r["Node"], r["ServiceKind"], r["ServicePort"]) for r in rows] == [
        ("n1", "connect-proxy", 21000), ("n2", "connect-proxy", 21001), ("n3", "connect-proxy", 21002)]
    assert rows[1]["ServiceProxy"]["destination_service_name"] == "web"  # stored as given
    assert [r["Node"] for r in client.get("/v1/catalog/connect/web?tag=V2").json()] == ["n2"]
    r = client.get("/v1/catalog/connect/web", params={"filter": 'ServiceTags contains "v1"'})
    assert [row["Node"] for row in r.json()] == ["n1", "n3"]


def test_missing_name_and_wrong_method(client: httpx.Client) -> None:
    for path in ("/v1/health/connect/", "/v1/catalog/connect/"):
        r = client.get(path)
        assert r.status_code == 400 and "Missing service name" in r.text
    assert client.put("/v1/health/connect/web").status_code == 405
    assert client.get("/v1/health/connect/web?dc=other").status_code == 500


def blocking_get(client: httpx.Client, path: str, out: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(client.get(path)), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("path", ["/v1/health/connect/web", "/v1/catalog/connect/web"])
def test_blocking_wakes_on_sidecar_changes_only(api_server: ServerThread, client: httpx.Client,
                                                path: str) -> None:
    index = int(client.get(path).headers["x-consul-index"])
    out: list[httpx.Response] = []
    t0 = time.monotonic()
    thread = blocking_get(client, f"{path}?index={index}&wait=30s", out)
    wait_waiting(api_server, 1)
    # the destination's own instances, other services, KV: none of these is a mesh endpoint of web
    register_instance(api_server, "n5", "web", address="10.0.0.5")
    register_instance(api_server, "n5", "other", sid="other")
    client.put("/v1/kv/unrelated", content=b"1")
    api_server.apply(commands.register(node("n9", "10.0.0.9"), Service(
        node="n9", id="p", service="p", kind="connect-proxy", proxy={"DestinationServiceName": "db"})))
    assert thread.is_alive() and not out
    register_sidecar(api_server, "n5", "web", address="10.0.0.5", port=21005)
    thread.join(5)
    assert out and time.monotonic() - t0 < 5
    assert int(out[0].headers["x-consul-index"]) > index
    assert "n5" in str(out[0].json())


def test_blocking_wakes_when_a_sidecar_health_changes(api_server: ServerThread, client: httpx.Client) -> None:
    r = client.get("/v1/health/connect/web?passing")
    index = int(r.headers["x-consul-index"])
    out: list[httpx.Response] = []
    thread = blocking_get(client, f"/v1/health/connect/web?passing&index={index}&wait=30s", out)
    wait_waiting(api_server, 1)
    api_server.apply(commands.register(node("n2", "10.0.0.2"), None, [
        Check(node="n2", check_id="service:web-sidecar-proxy", status=PASSING, service_id="web-sidecar-proxy")]))
    thread.join(5)
    assert out and [e["Node"]["Node"] for e in out[0].json()] == ["n1", "n2"]
    # and the node's own health (serfHealth) counts too
    index = int(out[0].headers["x-consul-index"])
    out.clear()
    thread = blocking_get(client, f"/v1/health/connect/web?passing&index={index}&wait=30s", out)
    wait_waiting(api_server, 1)
    api_server.apply(commands.register(node("n1"), None, [Check(node="n1", check_id="serfHealth",
                                                                 status=CRITICAL)]))
    thread.join(5)
    assert out and [e["Node"]["Node"] for e in out[0].json()] == ["n2"]


def test_py_consul_reads_both_endpoints(api_server: ServerThread, client: httpx.Client) -> None:
    c = consul.Consul(host="127.0.0.1", port=api_server.port)
    index, entries = c.health.connect("web", passing=True)
    assert int(index) > 0 and [e["Node"]["Node"] for e in entries] == ["n1"]
    index, rows = c.catalog.connect("web")
    assert [r["ServiceID"] for r in rows] == ["web-sidecar-proxy"] * 3


WEB_WITH_SIDECAR = """
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {}
  }
}
"""


@pytest.mark.slow
def test_a_real_agent_serves_its_sidecars_over_http_and_dns(tmp_path: Path) -> None:
    """End to end through a -dev agent: a file sidecar and an API-registered standalone proxy (Consul's
    CamelCase body) are found by destination over HTTP, and the healthy one over DNS."""
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "web.hcl").write_text(WEB_WITH_SIDECAR)
    agent = start_agent(tmp_path, "-config-dir", str(config_dir))
    try:
        with httpx.Client(base_url=agent.http_addr, timeout=10) as http:
            put = http.put("/v1/agent/service/register", json={
                "Kind": "connect-proxy", "Name": "web-proxy", "Port": 21500,
                "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080}, "Check": {"TTL": "60s"}})
            assert put.status_code == 200, put.text
            assert http.put("/v1/agent/check/pass/service:web-proxy").status_code == 200

            def ids() -> list[str]:
                return sorted(e["Service"]["ID"] for e in http.get("/v1/health/connect/web").json())

            wait_for(lambda: ids() == ["web-proxy", "web-sidecar-proxy"], 10, what="both proxies by destination")
            rows = http.get("/v1/catalog/connect/web").json()
            assert sorted(r["ServicePort"] for r in rows) == sorted([21000, 21500])
            # nothing listens on the sidecar's port, so only the TTL-passing proxy is healthy
            passing = [e["Service"]["ID"] for e in http.get("/v1/health/connect/web?passing").json()]
            assert passing == ["web-proxy"]
            query = dns.message.make_query("web.connect.mesh", "SRV")
            answer = dns.query.udp(query, agent.host, port=agent.dns_port, timeout=5)
            assert [rr.port for rrset in answer.answer for rr in rrset] == [21500]  # type: ignore[attr-defined]
    finally:
        agent.stop()
