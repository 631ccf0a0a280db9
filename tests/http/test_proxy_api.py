"""GET /v1/agent/connect/proxy/:id over real HTTP: a local sidecar's ProxySnapshot as `to_wire()` JSON that
`ProxySnapshot.from_wire` takes back, blocking on the snapshot version (X-Consul-Index), and clear errors
(unknown id 404, not a connect-proxy 400, no snapshot yet 503, deregistered while blocked 404).

The agent's ProxyRunner is stood in for by a small runner with the same two calls (i14-interfaces.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import trio
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.http.server import HTTPServer
from meshagent.proxy.snapshot import ProxySnapshot, TLSMaterial, Upstream

from tests.support.http_harness import FakeAgent, ServerThread
from tests.support.mesh_certs import MeshCA
from tests.support.wait import wait_for

HOST = "127.0.19.1"
PROXY_ID = "web-sidecar-proxy"


class StandInRunner:
    """ProxyRunner's snapshot/wait_snapshot over a dict; counts waiters so tests can see a request parked."""

    def __init__(self) -> None:
        self.snaps: dict[str, tuple[int, ProxySnapshot]] = {}
        self.changed = trio.Event()
        self.waiters = 0

    def snapshot(self, proxy_id: str) -> tuple[int, ProxySnapshot] | None:
        return self.snaps.get(proxy_id)

    async def wait_snapshot(self, proxy_id: str, after_version: int,
                            timeout: float) -> tuple[int, ProxySnapshot] | None:
        self.waiters += 1
        try:
            with trio.move_on_after(timeout):
                while True:
                    current = self.snaps.get(proxy_id)
                    if current is not None and current[0] > after_version:
                        return current
                    if current is None and after_version > 0:
                        return None  # the id went away (ProxyRunner returns early then)
                    await self.changed.wait()
        finally:
            self.waiters -= 1
        return self.snaps.get(proxy_id)

    async def publish(self, snap: ProxySnapshot) -> None:
        self.snaps[snap.proxy_id] = (snap.version, snap)
        self.poke()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Server19(ServerThread):
    """The harness's in-process API, on this suite's own loopback address."""

    def __init__(self, agent: FakeAgent) -> None:
        super().__init__(agent=agent)
        self.server = HTTPServer(self.api, HOST, 0)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _snapshot(version: int) -> ProxySnapshot:
    leaf = CA.leaf("web")
    return ProxySnapshot(proxy_id=PROXY_ID, service="web", datacenter="dc1",
                         tls=TLSMaterial(leaf.cert_pem, leaf.key_pem, (CA.root_pem,), CA.trust_domain,
                                         leaf.spiffe_id),
                         public_address="127.0.19.2", public_port=21000, local_service_port=8080,
                         upstreams=(Upstream("db", "127.0.19.3", 9191, spiffe_ids=(CA.spiffe_id("db"),)),),
                         version=version)


CA = MeshCA()


@pytest.fixture
def setup() -> Iterator[tuple[Server19, StandInRunner, httpx.Client]]:
    agent = FakeAgent()
    agent.local._services["web"] = ServiceDefinition(name="web", id="web", port=8080)
    agent.local._services[PROXY_ID] = ServiceDefinition(
        name="web-sidecar-proxy", id=PROXY_ID, port=21000, kind="connect-proxy",
        proxy={"DestinationServiceName": "web", "DestinationServiceID": "web"})
    runner = StandInRunner()
    agent.proxy_runner = runner  # type: ignore[attr-defined]
    server = Server19(agent).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield server, runner, client
    finally:
        server.stop()


def test_the_snapshot_comes_back_whole_with_its_version_as_index(setup: Any) -> None:
    server, runner, client = setup
    snap = _snapshot(3)
    server.run(runner.publish, snap)
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}")
    assert r.status_code == 200, r.text
    assert r.headers["x-consul-index"] == "3"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == snap.to_wire()
    assert ProxySnapshot.from_wire(r.json()) == snap  # the feeder's side takes it back as it was


def test_errors_name_the_id_and_the_reason(setup: Any) -> None:
    server, _runner, client = setup
    r = client.get("/v1/agent/connect/proxy/nope-sidecar-proxy")
    assert r.status_code == 404 and "nope-sidecar-proxy" in r.text
    r = client.get("/v1/agent/connect/proxy/web")
    assert r.status_code == 400 and "not a connect-proxy" in r.text and "typical" in r.text
    r = client.get("/v1/agent/connect/proxy/")
    assert r.status_code == 400 and "Missing proxy service ID" in r.text
    r = client.post(f"/v1/agent/connect/proxy/{PROXY_ID}")
    assert r.status_code == 405
    server.agent.proxy_runner = None
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}")
    assert r.status_code == 500 and "connect is not enabled" in r.text


def test_no_snapshot_yet_is_a_503_after_the_wait(setup: Any) -> None:
    _server, _runner, client = setup
    started = time.monotonic()
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}?wait=1s")
    assert r.status_code == 503 and PROXY_ID in r.text and "retry" in r.text
    assert time.monotonic() - started >= 0.9


def test_a_first_read_waits_for_the_first_snapshot(setup: Any) -> None:
    server, runner, client = setup
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=client.get(f"/v1/agent/connect/proxy/{PROXY_ID}")))
    thread.start()
    wait_for(lambda: runner.waiters == 1, 10, what="the request parked in wait_snapshot")
    assert "r" not in result
    server.run(runner.publish, _snapshot(1))
    thread.join(10)
    assert result["r"].status_code == 200 and result["r"].headers["x-consul-index"] == "1"


def test_blocking_returns_when_the_version_passes_the_index(setup: Any) -> None:
    server, runner, client = setup
    server.run(runner.publish, _snapshot(4))
    result: dict[str, httpx.Response] = {}
    url = f"/v1/agent/connect/proxy/{PROXY_ID}?index=4&wait=30s"
    thread = threading.Thread(target=lambda: result.update(r=client.get(url)))
    thread.start()
    wait_for(lambda: runner.waiters == 1, 10, what="the blocking request parked")
    assert "r" not in result  # an unchanged version does not answer
    newer = replace(_snapshot(5), upstreams=())
    server.run(runner.publish, newer)
    thread.join(10)
    r = result["r"]
    assert r.status_code == 200 and r.headers["x-consul-index"] == "5"
    assert ProxySnapshot.from_wire(r.json()) == newer
    # an index below the current version answers at once
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}?index=2&wait=30s")
    assert r.headers["x-consul-index"] == "5" and runner.waiters == 0


def test_blocking_times_out_with_the_current_snapshot(setup: Any) -> None:
    server, runner, client = setup
    server.run(runner.publish, _snapshot(7))
    started = time.monotonic()
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}?index=7&wait=1s")
    assert r.status_code == 200 and r.headers["x-consul-index"] == "7"
    assert time.monotonic() - started >= 0.9


def test_deregistered_while_blocked_is_a_404(setup: Any) -> None:
    server, runner, client = setup
    server.run(runner.publish, _snapshot(2))
    result: dict[str, httpx.Response] = {}
    url = f"/v1/agent/connect/proxy/{PROXY_ID}?index=2&wait=30s"
    thread = threading.Thread(target=lambda: result.update(r=client.get(url)))
    thread.start()
    wait_for(lambda: runner.waiters == 1, 10, what="the blocking request parked")

    async def remove() -> None:
        del server.agent.local._services[PROXY_ID]
        runner.snaps.pop(PROXY_ID)
        runner.poke()

    server.run(remove)
    thread.join(10)
    assert result["r"].status_code == 404 and PROXY_ID in result["r"].text


def test_a_client_that_hangs_up_ends_the_wait(setup: Any) -> None:
    server, runner, _client = setup
    server.run(runner.publish, _snapshot(2))
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=0.5)) as short:
        with pytest.raises(httpx.ReadTimeout):
            short.get(f"/v1/agent/connect/proxy/{PROXY_ID}?index=2&wait=60s")
    wait_for(lambda: runner.waiters == 0, 15, what="the parked request ended after the client left")
