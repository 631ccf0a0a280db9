"""Unmodified clients against the in-process API: py-consul (PyPI) and Prometheus consul_sd's call pattern."""

from __future__ import annotations

import threading
import time

import consul
import httpx

from tests.support.http_harness import ServerThread, register_instance, wait_waiting


def py_consul(server: ServerThread) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def test_py_consul_kv_with_cas(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    index, value = c.kv.get("app/missing")
    assert value is None and int(index) >= 1
    assert c.kv.put("app/key", "v1") is True
    index, entry = c.kv.get("app/key")
    assert entry["Value"] == b"v1" and entry["ModifyIndex"] == int(index)
    assert c.kv.put("app/key", "nope", cas=0) is False  # cas=0: only when absent
    assert c.kv.put("app/new", "created", cas=0) is True
    assert c.kv.put("app/key", "v2", cas=entry["ModifyIndex"] + 100) is False
    assert c.kv.put("app/key", "v2", cas=entry["ModifyIndex"]) is True
    assert c.kv.get("app/key")[1]["Value"] == b"v2"
    assert c.kv.put("app/flagged", "x", flags=7) is True
    assert c.kv.get("app/flagged")[1]["Flags"] == 7
    _, entries = c.kv.get("app/", recurse=True)
    assert [e["Key"] for e in entries] == ["app/flagged", "app/key", "app/new"]
    assert c.kv.get("app/", keys=True)[1] == ["app/flagged", "app/key", "app/new"]
    assert c.kv.delete("app/", recurse=True) is True
    assert c.kv.get("app/", recurse=True)[1] is None


def test_py_consul_blocking_get_returns_within_a_second_of_a_put(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    c.kv.put("watched", "before")
    index, _ = c.kv.get("watched")
    result: list[tuple[float, object]] = []

    def blocked() -> None:
        new_index, entry = c.kv.get("watched", index=index, wait="30s")
        result.append((time.monotonic(), (new_index, entry)))

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    wait_waiting(api_server, 1)
    put_at = time.monotonic()
    assert py_consul(api_server).kv.put("watched", "after") is True
    thread.join(5)
    assert result, "blocking get never returned"
    returned_at, (new_index, entry) = result[0]
    assert returned_at - put_at < 1.0
    assert int(new_index) > int(index) and entry["Value"] == b"after"  # type: ignore[index]


def test_py_consul_catalog_and_health(api_server: ServerThread) -> None:
    register_instance(api_server, "n1", "db", tags=["primary"])
    register_instance(api_server, "n2", "db", address="10.0.0.2", status="critical")
    c = py_consul(api_server)
    _, services = c.catalog.services()
    assert services == {"db": ["primary"]}
    _, nodes = c.catalog.nodes()
    assert [n["Node"] for n in nodes] == ["n1", "n2"]
    _, instances = c.catalog.service("db")
    assert [i["ServiceAddress"] or i["Address"] for i in instances] == ["10.0.0.1", "10.0.0.2"]
    _, healthy = c.health.service("db", passing=True)
    assert [e["Node"]["Node"] for e in healthy] == ["n1"]
    _, checks = c.health.state("critical")
    assert [ch["Node"] for ch in checks] == ["n2"]
    _, node_checks = c.health.node("n1")
    assert {ch["CheckID"] for ch in node_checks} == {"serfHealth", "service:db"}
    assert c.status.leader() == "127.0.0.1:8300"
    assert c.status.peers() == ["127.0.0.1:8300"]
    assert c.agent.self()["Config"]["Datacenter"] == "dc1"
    assert c.agent.members()[0]["Status"] == 1


def test_prometheus_consul_sd_flow(api_server: ServerThread) -> None:
    """consul_sd: agent/self for the datacenter, then blocking catalog/services and health/service with
    ?stale, each repeating with the last X-Consul-Index until something changes."""
    register_instance(api_server, "n1", "web", tags=["a", "b"], port=80)
    http = httpx.Client(base_url=api_server.url, timeout=30)
    assert http.get("/v1/agent/self").json()["Config"]["Datacenter"] == "dc1"

    r = http.get("/v1/catalog/services", params={"wait": "2m", "stale": ""})  # first call: no index yet
    assert r.headers["x-consul-effective-consistency"] == "stale"
    services_index = int(r.headers["x-consul-index"])
    assert r.json() == {"web": ["a", "b"]}

    r = http.get("/v1/health/service/web", params={"stale": ""})
    (entry,) = r.json()
    target = f"{entry['Service']['Address'] or entry['Node']['Address']}:{entry['Service']['Port']}"
    assert target == "10.0.0.1:80"
    health_index = int(r.headers["x-consul-index"])

    # Both watches block until a new instance appears.
    out: dict[str, httpx.Response] = {}
    threads = [
        threading.Thread(target=lambda: out.__setitem__("services", http.get(
            "/v1/catalog/services", params={"index": services_index, "wait": "2m", "stale": ""})), daemon=True),
        threading.Thread(target=lambda: out.__setitem__("health", http.get(
            "/v1/health/service/web", params={"index": health_index, "wait": "2m", "stale": ""})), daemon=True),
    ]
    for t in threads:
        t.start()
    wait_waiting(api_server, 2)
    assert not out
    register_instance(api_server, "n2", "web", address="10.0.0.2", tags=["c"], port=81)
    for t in threads:
        t.join(5)
    assert out["services"].json() == {"web": ["a", "b", "c"]}
    assert int(out["services"].headers["x-consul-index"]) > services_index
    assert [e["Node"]["Node"] for e in out["health"].json()] == ["n1", "n2"]
    assert int(out["health"].headers["x-consul-index"]) > health_index


def test_py_consul_service_register_body_parses(api_server: ServerThread) -> None:
    """py-consul's register body (CamelCase service, snake-ish check keys) through the shared loader."""
    c = py_consul(api_server)
    assert c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=8080, tags=["v1"],
                                    check=consul.Check.http("http://127.0.0.1:1/h", interval="1s")) is True
    defn = api_server.agent.local.services()["web-1"]
    assert (defn.name, defn.port, defn.tags) == ("web", 8080, ["v1"])
    assert defn.checks[0].http == "http://127.0.0.1:1/h" and defn.checks[0].interval == 1.0
    r = httpx.put(f"{api_server.url}/v1/agent/service/register", json={"Name": "x", "Port": "bad"})
    assert r.status_code == 400 and "port" in r.text.lower() and r.text.count("\n") == 1
