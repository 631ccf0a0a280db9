"""A real -dev agent picks sidecar ports from `ports { sidecar_min_port, sidecar_max_port }`, and the
sidecar's "Connect Sidecar Aliasing" check follows its parent's health into /v1/health/connect."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for

ALIAS = "service:web-sidecar-proxy:2"
@pytest.mark.slow
def test_a_real_agent_picks_sidecar_ports_from_its_range_and_mirrors_the_parent(tmp_path: Path) -> None:
    host = "127.0.26.240"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "agent.hcl").write_text("ports {\n  sidecar_min_port = 23000\n  sidecar_max_port = 23010\n}\n")
    (conf / "web.hcl").write_text('service {\n  name = "web"\n  port = 8080\n  check {\n    id = "web-ttl"\n'
                                  '    ttl = "60s"\n  }\n  connect { sidecar_service {} }\n}\n')
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "ports-agent",
                                          "-config-dir", str(conf)], workdir=tmp_path).start()
    try:
        with httpx.Client(base_url=agent.http_addr, timeout=10) as http:
            services = http.get("/v1/agent/services").json()
            assert services["web-sidecar-proxy"]["Port"] == 23000, agent.log()
            assert "Connect" not in services["web"]
            check = http.get("/v1/agent/checks").json()[ALIAS]
            assert (check["Type"], check["Status"], check["Name"]) == ("alias", "critical",
                                                                      "Connect Sidecar Aliasing web")
            assert http.put("/v1/agent/check/pass/web-ttl").status_code == 200
            wait_for(lambda: http.get("/v1/agent/checks").json()[ALIAS]["Status"] == "passing", 10,
                     what="the alias check passing", report=agent.log)
            # and the sidecar is a passing instance of web's mesh in the catalog: within its listening check's
            # 10 s interval (its first run may come before the worker listens)
            wait_for(lambda: [e["Service"]["ID"] for e in http.get("/v1/health/connect/web?passing").json()]
                     == ["web-sidecar-proxy"], 30, what="the sidecar passing in /v1/health/connect", report=agent.log)
    finally:
        agent.stop()
