"""`/v1/discovery-chain/:service` and chain validation against one real `-dev` agent on 127.0.30.N: unmodified
py-consul `discovery_chain.get` reads the default chain and a compiled router/splitter/resolver chain, with
`compile-dc` and POST overrides; blocking reads wake on a config write; a redirect cycle, a splitter cycle and
weights not adding up to 100 are 400s naming the entry and field; bad names and bodies are 400s."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import consul
import httpx
import pytest

from tests.support.agents import AgentProcess, scratch_dir
from tests.support.ports import ports_free
from tests.support.wait import wait_for

HOSTS = [f"127.0.30.{n}" for n in range(10, 60)]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    host = next((h for h in HOSTS if ports_free(h)), None)
    if host is None:
        raise RuntimeError("no free 127.0.30.N")
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "chain"],
                        workdir=scratch_dir()).start()
    try:
        yield proc
    finally:
        proc.stop()


def client(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host=agent.host, port=8500)


def put(agent: AgentProcess, entry: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{agent.http_addr}/v1/config", json=entry, timeout=10)


def trust_domain(agent: AgentProcess) -> str:
    td: str = httpx.get(f"{agent.http_addr}/v1/connect/ca/roots", timeout=10).json()["TrustDomain"]
    assert td
    return td


def test_py_consul_reads_the_default_and_a_compiled_chain(agent: AgentProcess) -> None:
    c = client(agent)
    chain = c.discovery_chain.get("nothing-configured")["Chain"]
    assert chain["Default"] is True and chain["Protocol"] == "tcp"
    assert chain["StartNode"] == "resolver:nothing-configured.default.default.dc1"
    td = trust_domain(agent)
    target = chain["Targets"]["nothing-configured.default.default.dc1"]
    assert target["SNI"] == f"nothing-configured.default.dc1.internal.{td}"

    for kind, name, body in [
        ("service-defaults", "web", {"Protocol": "http", "Meta": {"owner": "team-a"}}),
        ("service-defaults", "admin", {"Protocol": "http"}),
        ("service-resolver", "web", {"DefaultSubset": "v1", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
            "Failover": {"v2": {"ServiceSubset": "v1"}}}),
        ("service-splitter", "web", {"Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                {"Weight": 10, "ServiceSubset": "v2"}]}),
        ("service-router", "web", {"Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin", "PrefixRewrite": "/"}},
            {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
             "Destination": {"ServiceSubset": "v2"}}]}),
    ]:
        assert c.config.set(kind, name, body) is True, (kind, name)
    chain = c.discovery_chain.get("web")["Chain"]
    assert chain["ServiceName"] == "web" and chain["Protocol"] == "http" and "Default" not in chain
    assert chain["ServiceMeta"] == {"owner": "team-a"}
    assert chain["StartNode"] == "router:web.default.default"
    routes = chain["Nodes"]["router:web.default.default"]["Routes"]
    assert [r["NextNode"] for r in routes] == [
        "resolver:admin.default.default.dc1", "resolver:v2.web.default.default.dc1", "splitter:web.default.default"]
    assert routes[0]["Definition"]["Destination"] == {"Service": "admin", "PrefixRewrite": "/"}
    splits = chain["Nodes"]["splitter:web.default.default"]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [(90, "resolver:v1.web.default.default.dc1"),
                                                             (10, "resolver:v2.web.default.default.dc1")]
    v2 = chain["Nodes"]["resolver:v2.web.default.default.dc1"]["Resolver"]
    assert v2 == {"ConnectTimeout": "5s", "Target": "v2.web.default.default.dc1",
                  "Failover": {"Targets": ["v1.web.default.default.dc1"]}}
    assert chain["Targets"]["v1.web.default.default.dc1"]["Subset"] == {"Filter": "Service.Meta.version == v1"}
    assert set(chain["Targets"]) == {"admin.default.default.dc1", "v1.web.default.default.dc1",
                                     "v2.web.default.default.dc1"}

    other = c.discovery_chain.get("web", compile_dc="dc2")["Chain"]
    assert other["Datacenter"] == "dc2" and "v1.web.default.default.dc2" in other["Targets"]
    custom = c.discovery_chain.get("web", override_protocol="tcp", override_connect_timeout="7s",
                                   override_mesh_gateway_mode="local")["Chain"]
    assert custom["Protocol"] == "tcp" and len(custom["CustomizationHash"]) == 8
    assert custom["StartNode"] == "resolver:v1.web.default.default.dc1"  # tcp: no router, no splitter
    resolver = custom["Nodes"][custom["StartNode"]]["Resolver"]
    assert resolver["ConnectTimeout"] == "7s"
    assert custom["Targets"]["v1.web.default.default.dc1"]["MeshGateway"] == {"Mode": "local"}


def test_a_blocking_read_wakes_on_a_config_write(agent: AgentProcess) -> None:
    url = f"{agent.http_addr}/v1/discovery-chain/blocking"
    first = httpx.get(url, timeout=10)
    index = int(first.headers["X-Consul-Index"])
    assert first.json()["Chain"]["Default"] is True
    # The request is sent before the reader waits for its answer, so an unrelated write made readable after
    # it proves the read is parked (a non-blocking answer would be back by then), not merely not sent yet.
    conn = http.client.HTTPConnection(agent.host, 8500, timeout=30)
    conn.request("GET", f"/v1/discovery-chain/blocking?index={index}&wait=20s")
    answer: dict[str, Any] = {}

    def wait() -> None:
        response = conn.getresponse()
        answer["index"], answer["body"] = response.getheader("X-Consul-Index"), response.read()

    reader = threading.Thread(target=wait)
    reader.start()
    try:
        kv = f"{agent.http_addr}/v1/kv/x1-unrelated"
        assert httpx.put(kv, content=b"1", timeout=10).json() is True
        wait_for(lambda: httpx.get(kv, timeout=10).status_code == 200, timeout=10)
        assert reader.is_alive(), "the blocking read answered before any config entry changed"
        assert put(agent, {"Kind": "service-resolver", "Name": "blocking", "ConnectTimeout": "3s"}).status_code == 200
        reader.join(30)
    finally:
        conn.close()
    assert int(answer["index"]) > index
    chain = json.loads(answer["body"])["Chain"]
    assert "Default" not in chain
    assert chain["Nodes"][chain["StartNode"]]["Resolver"]["ConnectTimeout"] == "3s"


def test_cycles_and_bad_weights_are_400s_naming_entry_and_field(agent: AgentProcess) -> None:
    assert put(agent, {"Kind": "service-resolver", "Name": "ra", "Redirect": {"Service": "rb"}}).status_code == 200
    cycle = put(agent, {"Kind": "service-resolver", "Name": "rb", "Redirect": {"Service": "ra"}})
    assert cycle.status_code == 400
    assert cycle.text.strip() == "service-resolver rb: field Redirect.Service: redirect cycle rb -> ra -> rb"
    assert httpx.get(f"{agent.http_addr}/v1/config/service-resolver/rb", timeout=10).status_code == 404

    weights = put(agent, {"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 5, "ServiceSubset": "v2"}]})
    assert weights.status_code == 400
    assert weights.text.strip() == "service-splitter web: field Splits: weights must add up to 100, they add up to 95"

    for name in ("sa", "sb"):
        assert put(agent, {"Kind": "service-defaults", "Name": name, "Protocol": "http"}).status_code == 200
    assert put(agent, {"Kind": "service-splitter", "Name": "sa", "Splits": [
        {"Weight": 50, "Service": "sb"}, {"Weight": 50, "Service": "sa"}]}).status_code == 200
    loop = put(agent, {"Kind": "service-splitter", "Name": "sb", "Splits": [{"Weight": 100, "Service": "sa"}]})
    assert loop.status_code == 400
    assert loop.text.strip() == "service-splitter sb: field Splits[0].Service: splitter cycle sb -> sa -> sb"
    # the chain that would have looped still compiles as stored
    assert client(agent).discovery_chain.get("sa")["Chain"]["StartNode"] == "splitter:sa.default.default"


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/discovery-chain/" + "a" * 257, None, "invalid chain name"),
    ("/v1/discovery-chain/we%20b", None, "invalid chain name"),
    ("/v1/discovery-chain/", None, "Missing chain name"),
    ("/v1/discovery-chain/web?compile-dc=d%2Fc", None, "invalid compile-dc"),
    ("/v1/discovery-chain/web", b"[1]", "must be a JSON object"),
    ("/v1/discovery-chain/web", b"{", "Request decoding failed"),
    ("/v1/discovery-chain/web", b'{"OverrideProtocol": "udp"}', "OverrideProtocol"),
    ("/v1/discovery-chain/web", b'{"OverrideConnectTimeout": "soon"}', "OverrideConnectTimeout"),
    ("/v1/discovery-chain/web", b'{"OverrideConnectTimeout": "-1s"}', "OverrideConnectTimeout"),
    ("/v1/discovery-chain/web", b'{"OverrideMeshGateway": {"Mode": 3}}', "OverrideMeshGateway.Mode"),
    ("/v1/discovery-chain/web", b'{"OverrideProtocol": "' + b"x" * 20000 + b'"}', "larger than"),
])
def test_bad_requests_are_400s(agent: AgentProcess, path: str, body: bytes | None, reason: str) -> None:
    method = "GET" if body is None else "POST"
    got = httpx.request(method, f"{agent.http_addr}{path}", content=body, timeout=10)
    assert got.status_code == 400, got.text
    assert reason in got.text
