"""A standalone `kind = "connect-proxy"` registration (not a sidecar_service expansion) gets its data plane
from the agent as a sidecar does; a worker killed with SIGKILL is replaced and listens again; deregistering
the proxy stops its workers. A real -dev agent over its HTTP API."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess, accepts, proxy_workers_of
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

PORT = 21500


def agent_host() -> str:
    for n in range(10, 250):
        host = f"127.0.26.{n}"
        if ports_free(host, (8500, 8600, 8300, 8301, PORT)):
            return host
    raise RuntimeError("no free 127.0.26.N")


def test_a_standalone_connect_proxy_registration_runs_restarts_and_stops(tmp_path: Path) -> None:
    host = agent_host()
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "standalone"],
                         workdir=tmp_path).start()
    try:
        assert agent.proc is not None
        pid = agent.proc.pid
        with httpx.Client(base_url=agent.http_addr, timeout=10) as http:
            resp = http.put("/v1/agent/service/register", json={
                "Kind": "connect-proxy", "ID": "web-proxy", "Name": "web-proxy", "Port": PORT,
                "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080}})
            assert resp.status_code == 200, resp.text
            first = wait_for(lambda: proxy_workers_of(pid), 20, what="a worker for the standalone proxy",
                             report=agent.log)
            wait_for(lambda: accepts(host, PORT), 20, what="its public listener", report=agent.log)

            os.kill(first[0], signal.SIGKILL)
            wait_for(lambda: [w for w in proxy_workers_of(pid) if w not in first], 20, what="a replacement worker",
                     report=agent.log)
            wait_for(lambda: accepts(host, PORT), 20, what="the replacement's listener", report=agent.log)

            resp = http.put("/v1/agent/service/deregister/web-proxy")
            assert resp.status_code == 200, resp.text
            wait_for(lambda: not proxy_workers_of(pid) and not accepts(host, PORT), 20, what="the workers to stop",
                     report=agent.log)
    finally:
        agent.stop()
