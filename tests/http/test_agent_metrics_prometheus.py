"""GET /v1/agent/metrics?format=prometheus over real HTTP: the agent's own counters and gauges and every
local sidecar's proxy metrics (merged, each family once, told apart by their `source` label), as text the
reference parser (prometheus_client) reads; the JSON form is unchanged and an unknown format is a 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from meshagent.agent.http.render import metrics_prometheus
from meshagent.agent.http.server import HTTPServer
from meshagent.agent.http.view import Metrics
from meshagent.proxy.metrics import ProxyMetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http_harness import FakeAgent, ServerThread

HOST = "127.0.17.40"


class StandInRunner:
    """The part of ProxyRunner the endpoint uses: each sidecar's merged metrics wire."""

    def __init__(self, wires: list[dict[str, Any]]) -> None:
        self.wires = wires

    async def metrics(self) -> list[dict[str, Any]]:
        return self.wires


def proxy_wire(service: str, ok: int, failed: int) -> dict[str, Any]:
    m = ProxyMetrics(service, "dc1")
    for _ in range(ok):
        m.request("inbound", "", 200, 0.002)
    for _ in range(failed):
        m.request("outbound", "db", 503, 0.3)
    m.denial("api => web", "l4")
    return m.to_wire()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    agent = FakeAgent()
    thread = ServerThread(agent=agent)
    thread.server = HTTPServer(thread.api, HOST, 0)  # this module's address, not the harness's 127.0.0.1
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_agents_own_metrics_render_as_prometheus_text() -> None:
    text = metrics_prometheus(Metrics([("dns.queries", 7), ("gossip.bad-packets", 1)], [("client.stale_seconds", 1.5)]))
    fams = families(text)
    assert fams["meshagent_dns_queries"].type == "counter"
    assert fams["meshagent_dns_queries"].samples[0].value == 7
    assert fams["meshagent_gossip_bad_packets"].samples[0].value == 1  # a dash is not a metric-name character
    assert fams["meshagent_client_stale_seconds"].type == "gauge"
    assert fams["meshagent_client_stale_seconds"].samples[0].value == 1.5
    assert metrics_prometheus(Metrics()) == ""


def test_prometheus_format_holds_the_agent_and_every_sidecar(server: ServerThread) -> None:
    server.agent.proxy_runner = StandInRunner([proxy_wire("web", 3, 0), proxy_wire("api", 2, 4)])
    server.agent.metrics = lambda: Metrics([("dns.queries", 5)], [("proxy.sidecars", 2.0)])  # type: ignore[method-assign]
    resp = httpx.get(f"http://{HOST}:{server.port}/v1/agent/metrics?format=prometheus", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = resp.text.splitlines()
    type_lines = [line for line in lines if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))  # one family per name, whatever the number of sidecars
    fams = families(resp.text)
    requests = {(s.labels["source"], s.labels["direction"], s.labels["code_class"]): s.value
                for s in fams["meshagent_proxy_requests"].samples if s.name.endswith("_total")}
    assert requests[("web", "inbound", "2xx")] == 3
    assert requests[("api", "inbound", "2xx")] == 2 and requests[("api", "outbound", "5xx")] == 4
    assert fams["meshagent_dns_queries"].samples[0].value == 5
    assert fams["meshagent_proxy_sidecars"].samples[0].value == 2


def test_without_sidecars_only_the_agent_and_the_json_form_is_unchanged(server: ServerThread) -> None:
    base = f"http://{HOST}:{server.port}/v1/agent/metrics"
    text = httpx.get(f"{base}?format=prometheus", timeout=10).text
    assert "meshagent_proxy_" not in text
    body = httpx.get(base, timeout=10).json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    bad = httpx.get(f"{base}?format=xml", timeout=10)
    assert bad.status_code == 400 and "prometheus" in bad.text
