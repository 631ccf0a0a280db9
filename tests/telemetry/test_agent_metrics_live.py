"""/v1/agent/metrics from a real `meshagent agent -dev` (127.0.54.41+): the Prometheus text parses clean with
prometheus_client's parser and holds every metric README.md names (README_METRICS below is that list), the
openmetrics Accept header gives the same text, and the JSON form is Consul's shape with the same figures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agents import AgentProcess
from tests.support.ports import free_host_in

pytestmark = pytest.mark.slow

def _readme_metrics() -> dict[str, str]:
    """README.md's metrics list (between its metrics:begin/end markers): `name` (type) pairs."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- metrics:begin -->", 1)[1].split("<!-- metrics:end -->", 1)[0]
    return dict(re.findall(r"`(meshagent_[A-Za-z0-9_]+)` \((counter|gauge|summary)\)", block))


# Prometheus family names (prometheus_client drops a counter's _total) with their types, as README.md lists them.
README_METRICS = _readme_metrics()
assert len(README_METRICS) >= 20, "README.md's metrics list went missing"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    host = free_host_in("127.0.54", 41, 80)
    workdir = Path(tmp_path_factory.mktemp("metrics-live"))
    agent = AgentProcess(host=host, workdir=workdir, args=["-dev", "-client", host, "-bind", host, "-node", "m"])
    agent.start()
    try:
        # Traffic for the per-route HTTP timers (Consul's http.<METHOD>.<route>).
        httpx.put(f"{agent.http_addr}/v1/kv/app/x", content=b"1", timeout=5).raise_for_status()
        httpx.get(f"{agent.http_addr}/v1/kv/app/x", timeout=5).raise_for_status()
        yield agent
    finally:
        agent.stop()


def _families(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} twice"
        out[family.name] = (family.type, {s.name + str(sorted(s.labels.items())): s.value for s in family.samples})
    return out


def test_prometheus_text_parses_and_holds_every_readme_metric(dev: AgentProcess) -> None:
    resp = httpx.get(f"{dev.http_addr}/v1/agent/metrics", params={"format": "prometheus"}, timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = _families(resp.text)
    missing = {name: kind for name, kind in README_METRICS.items() if parsed.get(name, ("",))[0] != kind}
    assert not missing, f"missing or of another type: {missing}\n{resp.text[:3000]}"
    puts = parsed["meshagent_http_PUT_v1_kv__"][1]
    assert puts["meshagent_http_PUT_v1_kv___count[]"] >= 1
    labelled = parsed["meshagent_api_http"][1]
    assert labelled["meshagent_api_http_count[('method', 'GET'), ('path', 'v1.kv._')]"] >= 1
    for line in resp.text.splitlines():  # each family's TYPE once, no stray lines
        assert line.startswith(("# TYPE ", "# HELP ", "meshagent_")), line


def test_openmetrics_accept_header_gets_the_text(dev: AgentProcess) -> None:
    resp = httpx.get(f"{dev.http_addr}/v1/agent/metrics", timeout=5,
                     headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    assert resp.status_code == 200 and "meshagent_raft_apply" in _families(resp.text)


def test_json_is_consuls_shape_with_samples(dev: AgentProcess) -> None:
    body = httpx.get(f"{dev.http_addr}/v1/agent/metrics", timeout=5).json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    samples = {s["Name"]: s for s in body["Samples"] if not s["Labels"]}
    kv_get = samples["meshagent.http.GET.v1.kv._"]
    assert set(kv_get) == {"Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"}
    assert kv_get["Count"] >= 1 and kv_get["Min"] <= kv_get["Mean"] <= kv_get["Max"]
    counters = {c["Name"] for c in body["Counters"]}
    assert {"meshagent.raft.apply", "meshagent.dns.stale_queries", "meshagent.serf.member.flap"} <= counters
    gauges = {g["Name"] for g in body["Gauges"]}
    assert "meshagent.memberlist.health.score" in gauges  # disable_hostname's default (true): no host part
