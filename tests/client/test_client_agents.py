"""Client agents on loopback against one real server: the catalog replica, read barriers, blocking queries,
staleness, and resubscription after a server restart. (The whole fleet in namespaces: tests/cluster.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import free_loopback_host
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


def _metric(agent: AgentProcess, name: str) -> float:
    data = httpx.get(f"{agent.http_addr}/v1/agent/metrics", timeout=5).json()
    for item in data["Counters"]:
        if item["Name"] == name:
            return float(item["Count"])
    for item in data["Gauges"]:
        if item["Name"] == name:
            return float(item["Value"])
    raise KeyError(name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, AgentProcess, AgentProcess]]:
    tmp: Path = tmp_path_factory.mktemp("clients")
    started: list[AgentProcess] = []
    try:
        host = free_loopback_host()
        server = AgentProcess(host=host, workdir=tmp, args=[
            "-server", "-bootstrap-expect", "1", "-node", "srv", "-bind", host, "-client", host,
            "-data-dir", str(tmp / "srv")]).start()
        started.append(server)
        clients = []
        for name in ("c1", "c2"):
            h = free_loopback_host()
            clients.append(AgentProcess(host=h, workdir=tmp, args=[
                "-node", name, "-bind", h, "-client", h, "-data-dir", str(tmp / name),
                "-retry-join", host]).start())
            started.append(clients[-1])
        wait_for(lambda: all(_metric(c, "meshagent.client.stale_seconds") == 0 for c in clients), 30,
                 what="both clients fed by the server")
        yield server, clients[0], clients[1]
    finally:
        for agent in started:
            agent.kill()


def test_a_write_through_one_client_is_read_consistently_on_the_other(
        fleet: tuple[AgentProcess, AgentProcess, AgentProcess]) -> None:
    _, c1, c2 = fleet
    for i in range(20):
        assert httpx.put(f"{c1.http_addr}/v1/kv/seq", content=str(i), timeout=10).json() is True
        # A default read on another client waits for its replica to reach the leader's index: never old.
        assert httpx.get(f"{c2.http_addr}/v1/kv/seq?raw", timeout=10).text == str(i)


def test_a_blocking_query_on_a_client_wakes_on_a_write_made_elsewhere(
        fleet: tuple[AgentProcess, AgentProcess, AgentProcess]) -> None:
    server, c1, _ = fleet
    httpx.put(f"{server.http_addr}/v1/kv/block", content="a", timeout=10)
    first = httpx.get(f"{c1.http_addr}/v1/kv/block", timeout=10)
    index = int(first.headers["X-Consul-Index"])
    result: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: result.append(
        httpx.get(f"{c1.http_addr}/v1/kv/block?index={index}&wait=30s&raw", timeout=40)))
    waiter.start()
    wait_for(lambda: httpx.put(f"{server.http_addr}/v1/kv/block", content="b", timeout=10).json(), 10,
             what="the write on the server")
    waiter.join(35)
    assert result and result[0].text == "b" and int(result[0].headers["X-Consul-Index"]) > index


def test_clients_register_their_node_and_the_leader_adds_serf_health(
        fleet: tuple[AgentProcess, AgentProcess, AgentProcess]) -> None:
    server, _, _ = fleet
    def checks() -> dict[str, str]:
        rows = httpx.get(f"{server.http_addr}/v1/health/state/any", timeout=5).json()
        return {r["Node"]: r["Status"] for r in rows if r["CheckID"] == "serfHealth"}
    wait_for(lambda: checks() == {"srv": "passing", "c1": "passing", "c2": "passing"}, 20,
             what="serfHealth passing for every member")


def test_without_its_server_a_client_answers_stale_and_says_so_then_resubscribes(
        fleet: tuple[AgentProcess, AgentProcess, AgentProcess]) -> None:
    server, c1, _ = fleet
    assert httpx.put(f"{server.http_addr}/v1/kv/stale", content="kept", timeout=10).json() is True
    wait_for(lambda: httpx.get(f"{c1.http_addr}/v1/kv/stale?raw&stale", timeout=5).text == "kept", 10,
             what="the key on the client")
    server.kill()
    try:
        wait_for(lambda: _metric(c1, "meshagent.client.stale_seconds") > 0, 15, what="the client to notice")
        stale = httpx.get(f"{c1.http_addr}/v1/kv/stale?raw&stale", timeout=5)
        assert stale.text == "kept" and stale.headers["X-Consul-KnownLeader"] == "false"
        wait_for(lambda: int(httpx.get(f"{c1.http_addr}/v1/kv/stale?stale", timeout=5)
                             .headers["X-Consul-LastContact"]) >= 1000, 10, what="LastContact to grow")
        # A default read cannot be vouched for without a server: an error, not old data.
        assert httpx.get(f"{c1.http_addr}/v1/kv/stale", timeout=20).status_code == 500
    finally:
        server.start()
    wait_for(lambda: _metric(c1, "meshagent.client.stale_seconds") == 0, 30, what="the client fed again")
    assert _metric(c1, "meshagent.client.feed_resubscribes") >= 2
    assert httpx.get(f"{c1.http_addr}/v1/kv/stale?raw", timeout=10).text == "kept"
