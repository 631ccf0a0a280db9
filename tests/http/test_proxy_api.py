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
from meshagent.proxy.snapshot import ProxySnapshot

from tests.support.proxy_api_harness import PROXY_ID, ProxyAPIServer, StandInRunner, web_snapshot
from tests.support.wait import wait_for

HOST = "127.0.19.1"


def _snapshot(version: int) -> ProxySnapshot:
    return web_snapshot(version)


@pytest.fixture
def setup() -> Iterator[tuple[ProxyAPIServer, StandInRunner, httpx.Client]]:
    server = ProxyAPIServer(HOST).start()
    runner = server.runner
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
    # and so does one above it: the caller's version is from before the agent restarted
    r = client.get(f"/v1/agent/connect/proxy/{PROXY_ID}?index=9&wait=30s")
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
