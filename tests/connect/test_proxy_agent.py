"""A real -dev agent runs the data plane of its file sidecar by itself: worker processes (children of the
agent, seen by PID) listen on the sidecar's public port and its upstream's port; an intention write reaches
the sidecar's snapshot within a second; its metrics are in the agent's Prometheus text; removing the
`sidecar_service` block and reloading stops the workers and frees the ports."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agents import AgentProcess, accepts, proxy_workers_of
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

PROXY_ID = "web-sidecar-proxy"


def service_file(host: str, sidecar: bool) -> str:
    connect = f"""
  connect {{
    sidecar_service {{
      proxy {{
        upstreams {{
          destination_name   = "db"
          local_bind_address = "{host}"
          local_bind_port    = 9191
        }}
      }}
    }}
  }}""" if sidecar else ""
    return f'service {{\n  name = "web"\n  port = 8080\n{connect}\n}}\n'


def agent_host() -> str:
    for n in range(10, 250):
        host = f"127.0.17.{n}"
        if ports_free(host, (8500, 8600, 8300, 8301, 21000, 9191)):
            return host
    raise RuntimeError("no free 127.0.17.N")


def test_the_agent_runs_its_sidecars_data_plane(tmp_path: Path) -> None:
    host = agent_host()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.hcl").write_text(service_file(host, sidecar=True))
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "proxy-agent",
                                          "-config-dir", str(conf)], workdir=tmp_path).start()
    try:
        assert agent.proc is not None
        pid = agent.proc.pid
        with httpx.Client(base_url=agent.http_addr, timeout=10) as http:
            workers = wait_for(lambda: proxy_workers_of(pid), 20, what="a worker process", report=agent.log)
            wait_for(lambda: accepts(host, 21000) and accepts(host, 9191), 20,
                     what="the public and upstream listeners", report=agent.log)

            def version() -> int:
                resp = http.get(f"/v1/agent/connect/proxy/{PROXY_ID}")
                assert resp.status_code == 200, resp.text
                return int(resp.headers["X-Consul-Index"])

            before = version()
            resp = http.put("/v1/config", json={"Kind": "service-intentions", "Name": "web",
                                                "Sources": [{"Name": "api", "Action": "deny"}]})
            assert resp.status_code == 200, resp.text
            start = time.monotonic()
            wait_for(lambda: version() > before, 5, what="a new snapshot version", report=agent.log)
            assert time.monotonic() - start < 1.0
            wire = http.get(f"/v1/agent/connect/proxy/{PROXY_ID}").json()
            assert wire["intentions"]["rules"][0]["source"] == "api"

            text = http.get("/v1/agent/metrics?format=prometheus").text
            names = {f.name for f in text_string_to_metric_families(text)}
            assert "meshagent_proxy_sidecars" in names
            assert any(n.startswith("meshagent_proxy_") and n != "meshagent_proxy_sidecars" for n in names), text

            (conf / "web.hcl").write_text(service_file(host, sidecar=False))
            agent.signal(signal.SIGHUP)
            # Gone and reaped (no zombie left behind), and the ports free again.
            wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers) and not accepts(host, 21000),
                     20, what="the workers to stop", report=agent.log)
            assert proxy_workers_of(pid) == []
    finally:
        agent.stop()


MESH = """
service {{
  name    = "db"
  address = "{host}"
  port    = {app_port}
  connect {{
    sidecar_service {{
      check {{
        tcp      = "{host}:21000"
        interval = "1s"
      }}
      proxy {{ local_service_address = "{host}" }}
    }}
  }}
}}
service {{
  name = "web"
  port = 7002
  connect {{
    sidecar_service {{
      port = 21001
      proxy {{
        upstreams {{
          destination_name   = "db"
          local_bind_address = "{host}"
          local_bind_port    = 9191
        }}
      }}
    }}
  }}
}}
"""


class EchoApp:
    """db's application: a TCP echo server on a thread (real sockets)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def echo_through(host: str, payload: bytes) -> bytes:
    """Send `payload` to the web sidecar's db upstream; what comes back before the peer closes or 2 s pass."""
    with socket.create_connection((host, 9191), timeout=2) as conn:
        conn.sendall(payload)
        got = b""
        try:
            while len(got) < len(payload) and (chunk := conn.recv(65536)):
                got += chunk
        except OSError:
            pass
        return got


def test_bytes_cross_two_agent_run_sidecars_and_an_intention_deny_stops_new_connections(tmp_path: Path) -> None:
    host = agent_host()
    app = EchoApp(host)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mesh.hcl").write_text(MESH.format(host=host, app_port=app.port))
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "mesh-agent",
                                          "-config-dir", str(conf)], workdir=tmp_path).start()
    try:
        payload = os.urandom(200_000)
        # db's sidecar passes its check within a second or two; then web's sidecar has an endpoint.
        wait_for(lambda: echo_through(host, payload) == payload, 30, what="an echo through both sidecars",
                 report=agent.log)
        resp = httpx.put(f"{agent.http_addr}/v1/config", timeout=10, json={
            "Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "deny"}]})
        assert resp.status_code == 200, resp.text
        wait_for(lambda: echo_through(host, b"ping") == b"", 5, what="new connections refused", report=agent.log)
    finally:
        agent.stop()
        app.close()
