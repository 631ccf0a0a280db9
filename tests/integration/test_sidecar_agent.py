"""A real -dev agent: a file service with connect.sidecar_service, and one registered over the API, show their
sidecars in /v1/agent/services and the catalog with Consul's fields; a SIGHUP reload keeps the port and
dropping the block removes the sidecar."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agents import start_agent
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

WEB = """
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  connect {
    sidecar_service {
      proxy {
        upstreams {
          destination_name = "db"
          local_bind_port  = 9191
        }
      }
    }
  }
}
"""


def test_sidecar_services_through_a_real_agent(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "web.hcl").write_text(WEB)
    agent = start_agent(tmp_path, "-config-dir", str(config_dir))
    base = agent.http_addr
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            services: dict[str, Any] = http.get("/v1/agent/services").json()
            side = services["web-sidecar-proxy"]
            assert (side["Kind"], side["ID"], side["Service"], side["Port"], side["Tags"]) == (
                "connect-proxy", "web-sidecar-proxy", "web-sidecar-proxy", 21000, ["v1"])
            assert side["Proxy"] == {
                "DestinationServiceName": "web", "DestinationServiceID": "web", "LocalServiceAddress": "127.0.0.1",
                "LocalServicePort": 8080, "MeshGateway": {}, "Expose": {},
                "Upstreams": [{"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191,
                               "MeshGateway": {}}]}
            [row] = http.get("/v1/catalog/service/web-sidecar-proxy").json()
            assert (row["ServiceKind"], row["ServicePort"]) == ("connect-proxy", 21000)
            assert row["ServiceProxy"]["DestinationServiceName"] == "web"
            checks = http.get("/v1/agent/checks").json()
            assert checks["service:web-sidecar-proxy:1"]["Name"] == "Connect Sidecar Listening"

            # Over the API (Consul's CamelCase body): the next free port.
            put = http.put("/v1/agent/service/register", json={
                "Name": "api", "Port": 9000, "Connect": {"SidecarService": {"Proxy": {
                    "Upstreams": [{"DestinationName": "web", "LocalBindPort": 9292}]}}}})
            assert put.status_code == 200, put.text
            api_side = http.get("/v1/agent/services").json()["api-sidecar-proxy"]
            assert api_side["Port"] == 21001 and api_side["Proxy"]["DestinationServiceID"] == "api"
            bad = http.put("/v1/agent/service/register", json={
                "Name": "x", "Connect": {"SidecarService": {"Proxy": {"Upstreams": [{"LocalBindPort": 1}]}}}})
            assert bad.status_code == 400 and "destination_name" in bad.text

            # Reload with the same file: ports stay. Then the block goes, and so does web's sidecar.
            agent.signal(signal.SIGHUP)
            wait_for(lambda: "reload complete" in agent.log(), 10, what="the reload in the log")
            assert http.get("/v1/agent/services").json()["web-sidecar-proxy"]["Port"] == 21000
            (config_dir / "web.hcl").write_text('service {\n  name = "web"\n  port = 8080\n}\n')
            agent.signal(signal.SIGHUP)
            wait_for(lambda: agent.log().count("reload complete") == 2, 10, what="the second reload")
            assert "web-sidecar-proxy" not in http.get("/v1/agent/services").json()
            assert http.get("/v1/catalog/service/web-sidecar-proxy").json() == []
            assert "api-sidecar-proxy" in http.get("/v1/agent/services").json()

            assert http.put("/v1/agent/service/deregister/api").status_code == 200
            assert "api-sidecar-proxy" not in http.get("/v1/agent/services").json()
    finally:
        agent.stop()
