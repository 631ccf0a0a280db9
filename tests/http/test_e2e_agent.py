"""End to end against a real `meshagent agent -dev` process: py-consul, Prometheus consul_sd, fuzz."""

from __future__ import annotations

import http.server
import os
import random
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import consul
import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.http_fuzz import run_fuzz
from tests.support.wait import wait_for


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_target() -> Iterator[tuple[str, type[_Health]]]:
    """A local HTTP endpoint for HTTP checks; set `.status` on the yielded class to change its answer."""
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    finally:
        server.shutdown()
        server.server_close()


def client(agent: AgentProcess) -> consul.Consul:
    url = urlparse(agent.http_addr)
    return consul.Consul(host=url.hostname, port=url.port)


def test_py_consul_register_with_http_check_then_health_and_catalog(
        dev_agent: AgentProcess, health_target: tuple[str, type[_Health]]) -> None:
    url, handler = health_target
    c = client(dev_agent)
    assert c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=8080, tags=["v1"],
                                    check=consul.Check.http(url, interval="1s", timeout="1s")) is True
    assert "web-1" in c.agent.services()
    wait_for(lambda: [e["Service"]["ID"] for e in c.health.service("web", passing=True)[1]] == ["web-1"],
             10, what="web-1 to pass its HTTP check")
    _, services = c.catalog.services()
    assert services["web"] == ["v1"]
    checks = c.agent.checks()
    (check,) = [ch for ch in checks.values() if ch["ServiceID"] == "web-1"]
    assert check["Status"] == "passing" and check["Type"] == "http"
    r = httpx.get(f"{dev_agent.http_addr}/v1/agent/health/service/name/web")
    assert r.status_code == 200 and r.json()[0]["AggregatedStatus"] == "passing"
    handler.status = 500
    wait_for(lambda: c.health.service("web", passing=True)[1] == [], 10, what="web-1 to turn critical")
    assert httpx.get(f"{dev_agent.http_addr}/v1/agent/health/service/name/web?format=text").status_code == 503
    assert c.agent.service.deregister("web-1") is True
    assert "web" not in c.catalog.services()[1]


def test_py_consul_kv_cas_and_blocking_get(dev_agent: AgentProcess) -> None:
    c = client(dev_agent)
    assert c.kv.put("cfg/a", "1", cas=0) is True
    assert c.kv.put("cfg/a", "2", cas=0) is False  # cas=0 creates only when absent
    index, entry = c.kv.get("cfg/a")
    assert entry["Value"] == b"1"
    assert c.kv.put("cfg/a", "3", cas=entry["ModifyIndex"]) is True
    index, entry = c.kv.get("cfg/a")

    got: list[tuple[float, bytes]] = []

    def blocked() -> None:
        _, new = c.kv.get("cfg/a", index=index, wait="30s")
        got.append((time.monotonic(), new["Value"]))

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    # No hook into the process: give the GET a moment to park, proven by it not having returned.
    with pytest.raises(AssertionError):
        wait_for(lambda: got, 0.3, what="blocking get to stay blocked")
    put_at = time.monotonic()
    assert client(dev_agent).kv.put("cfg/a", "4") is True
    thread.join(5)
    assert got and got[0][1] == b"4" and got[0][0] - put_at < 1.0


def test_agent_endpoints_ttl_maintenance(dev_agent: AgentProcess) -> None:
    base = dev_agent.http_addr
    body = {"Name": "cache", "ID": "cache-1", "Port": 6379, "Check": {"CheckID": "cache-ttl", "TTL": "30s"}}
    assert httpx.put(f"{base}/v1/agent/service/register", json=body).status_code == 200
    svc = httpx.get(f"{base}/v1/agent/service/cache-1")
    assert svc.json()["Service"] == "cache" and svc.headers["x-consul-contenthash"]
    health = lambda: httpx.get(f"{base}/v1/agent/health/service/id/cache-1")  # noqa: E731
    assert health().status_code == 503  # TTL checks start critical
    assert httpx.put(f"{base}/v1/agent/check/warn/cache-ttl", params={"note": "slow"}).status_code == 200
    assert health().status_code == 429
    assert httpx.get(f"{base}/v1/agent/checks").json()["cache-ttl"]["Output"] == "slow"
    assert httpx.put(f"{base}/v1/agent/check/update/cache-ttl",
                     json={"Status": "passing", "Output": "fine"}).status_code == 200
    assert health().status_code == 200
    assert httpx.put(f"{base}/v1/agent/check/pass/nope").status_code == 404
    assert httpx.put(f"{base}/v1/agent/service/maintenance/cache-1",
                     params={"enable": "true", "reason": "upgrade"}).status_code == 200
    assert health().status_code == 503
    assert httpx.put(f"{base}/v1/agent/service/maintenance/cache-1", params={"enable": "false"}).status_code == 200
    assert health().status_code == 200
    assert httpx.put(f"{base}/v1/agent/maintenance", params={"enable": "maybe"}).status_code == 400
    bad = httpx.put(f"{base}/v1/agent/service/register", json={"Port": "x"})
    assert bad.status_code == 400 and "\n" not in bad.text.strip()
    assert httpx.put(f"{base}/v1/agent/service/register", content=b"{nope").status_code == 400
    assert httpx.put(f"{base}/v1/agent/reload").status_code == 200
    self_ = httpx.get(f"{base}/v1/agent/self").json()
    assert {"Datacenter", "NodeName", "NodeID", "Server", "Version"} <= set(self_["Config"])
    assert self_["Member"]["Name"] == self_["Config"]["NodeName"]
    assert httpx.get(f"{base}/v1/agent/members").json()[0]["Status"] == 1


def test_prometheus_consul_sd_calls(dev_agent: AgentProcess) -> None:
    base = dev_agent.http_addr
    http = httpx.Client(base_url=base, timeout=30)
    assert http.get("/v1/agent/self").json()["Config"]["Datacenter"] == "dc1"
    r = http.get("/v1/catalog/services", params={"wait": "2m", "stale": ""})
    index = int(r.headers["x-consul-index"])
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(http.get(
        "/v1/catalog/services", params={"index": index, "wait": "2m", "stale": ""})), daemon=True)
    thread.start()
    with pytest.raises(AssertionError):
        wait_for(lambda: out, 0.3, what="catalog/services to stay blocked")
    assert http.put("/v1/agent/service/register", json={"Name": "api", "Port": 9000, "Tags": ["x"]}).status_code \
        == 200
    thread.join(5)
    assert out and out[0].json()["api"] == ["x"] and int(out[0].headers["x-consul-index"]) > index
    r = http.get("/v1/health/service/api", params={"stale": ""})
    (entry,) = r.json()
    assert entry["Service"]["Port"] == 9000 and entry["Node"]["Address"]
    assert r.headers["x-consul-effective-consistency"] == "stale"


def test_fuzz_10000_requests_against_the_agent(dev_agent: AgentProcess) -> None:
    seed = int(os.environ.get("MESH_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"HTTP fuzz seed: {seed} (re-run with MESH_FUZZ_SEED={seed})")
    host, port = urlparse(dev_agent.http_addr).hostname, urlparse(dev_agent.http_addr).port
    assert host and port
    # The fuzzer pairs ?index= with wait=10ms, but a mutation can cut the wait away, and then the agent
    # rightly holds the query for its default five minutes: only those cases may go unanswered.
    report = run_fuzz(host, port, seed, 10_000, timeout=10.0)
    print(f"{report.cases} connections, {report.responses} responses, statuses {sorted(report.statuses.items())}")
    problems = [p for p in report.problems if not ("no answer within" in p and "index=" in p)]
    assert not problems, f"seed {seed}: " + "\n".join(problems[:20])
    assert dev_agent.proc is not None and dev_agent.proc.poll() is None
    c = client(dev_agent)
    assert c.kv.put("after/fuzz", "ok") is True and c.kv.get("after/fuzz")[1]["Value"] == b"ok"
    assert c.agent.service.register("post-fuzz", port=1) is True
    assert "post-fuzz" in c.catalog.services()[1]
    assert "HTTP handler failed" not in dev_agent.log()  # no request reached the 500 path
