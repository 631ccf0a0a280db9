"""`-format json` on every command that prints data, tables for people otherwise, `meshagent info`'s sections,
CONSUL_HTTP_ADDR, and the agent's output frictions (health Interval/Timeout, the banner before the logs) against
one real `-dev` agent on 127.0.56.N. The commands run in-process (click's runner) over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from meshagent.cli.main import cli
from meshagent.cli.output import table_lines

from tests.support.agents import AgentProcess, scratch_dir
from tests.support.ports import free_host_in
from tests.support.wait import wait_for

SERVICE = """
service {
  name = "web"
  port = 80
  tags = ["blue"]
  check {
    id       = "web-tcp"
    tcp      = "%s:9"
    interval = "10s"
    timeout  = "1500ms"
  }
}
"""


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """A -dev agent of this module's own with one service, a KV key and an intention."""
    host = free_host_in("127.0.56", 1, 19)
    workdir = scratch_dir()
    (workdir / "web.hcl").write_text(SERVICE % host)
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "fmt-node",
                                         "-config-file", str(workdir / "web.hcl")], workdir=workdir).start()
    try:
        httpx.put(f"{proc.http_addr}/v1/kv/app/color", content=b"blue", timeout=10).raise_for_status()
        httpx.post(f"{proc.http_addr}/v1/connect/intentions", timeout=10,
                   json={"SourceName": "web", "DestinationName": "db", "Action": "allow"}).raise_for_status()
        wait_for(lambda: "web" in httpx.get(f"{proc.http_addr}/v1/catalog/services", timeout=5).json(), 20,
                 what="the service in the catalog")
        yield proc
    finally:
        proc.stop()


def run(agent: AgentProcess, *args: str, env: dict[str, str] | None = None) -> Result:
    """One CLI command against the agent (MESH_HTTP_ADDR unless `env` says otherwise)."""
    return CliRunner().invoke(cli, list(args), env=env if env is not None else {"MESH_HTTP_ADDR": agent.http_addr,
                                                                                "CONSUL_HTTP_ADDR": None},
                              catch_exceptions=False)


def as_json(agent: AgentProcess, *args: str) -> Any:
    result = run(agent, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_on_every_data_command(agent: AgentProcess) -> None:
    assert as_json(agent, "version", "-format", "json")["Revision"]
    assert as_json(agent, "catalog", "services", "-format=json")["web"] == ["blue"]
    assert [n["Node"] for n in as_json(agent, "catalog", "nodes", "-format", "json")] == ["fmt-node"]
    assert [m["Name"] for m in as_json(agent, "members", "-format", "json")] == ["fmt-node"]
    peers = as_json(agent, "operator", "raft", "list-peers", "-format", "json")
    assert [s["Node"] for s in peers["Servers"]] == ["fmt-node"] and peers["Servers"][0]["Leader"] is True
    entry = as_json(agent, "kv", "get", "-format", "json", "app/color")
    assert entry["Key"] == "app/color" and entry["Value"] == "Ymx1ZQ=="
    assert [e["Key"] for e in as_json(agent, "kv", "get", "-recurse", "-format", "json", "app")] == ["app/color"]
    assert as_json(agent, "kv", "get", "-keys", "-format", "json", "app/") == ["app/color"]
    assert as_json(agent, "kv", "get", "-recurse", "-format", "json", "nothing-here/") == []
    listed = as_json(agent, "intention", "list", "-format", "json")
    assert [(i["SourceName"], i["DestinationName"]) for i in listed] == [("web", "db")]
    assert as_json(agent, "intention", "get", "-format", "json", "web", "db")["Action"] == "allow"
    assert [i["SourceName"] for i in as_json(agent, "intention", "match", "-format", "json", "db")] == ["web"]
    entries = as_json(agent, "config", "list", "-kind", "service-intentions", "-format", "json")
    assert [e["Name"] for e in entries] == ["db"]
    assert as_json(agent, "config", "read", "-kind", "service-intentions", "-name", "db", "-format", "json")["Name"] \
        == "db"
    sections = as_json(agent, "info", "-format", "json")
    assert sections["agent"]["node_name"] == "fmt-node" and sections["build"]["revision"]


def test_tables_for_people(agent: AgentProcess) -> None:
    result = run(agent, "catalog", "nodes")
    assert result.output.split("\n")[0].split() == ["Node", "ID", "Address", "DC"]
    assert "fmt-node" in result.output
    peers = run(agent, "operator", "raft", "list-peers", "-format", "pretty").output.splitlines()
    assert peers[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
    assert peers[1].split()[0] == "fmt-node" and peers[1].split()[3] == "leader"
    assert run(agent, "kv", "get", "app/color").output == "blue\n"


def test_unknown_format_is_a_usage_error(agent: AgentProcess) -> None:
    result = run(agent, "catalog", "services", "-format", "yaml")
    assert result.exit_code == 2
    assert "'yaml' is not one of table (or pretty), json" in result.output


def test_info_prints_consul_sections_without_python_reprs(agent: AgentProcess) -> None:
    result = run(agent, "info")
    assert result.exit_code == 0, result.output
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in result.output.splitlines():
        if not line.startswith("\t"):
            current = line.rstrip(":")
            sections[current] = {}
        else:
            key, _, value = line.strip("\t").partition(" = ")
            sections[current][key] = value
    assert {"agent", "build", "consul", "raft", "serf_lan"} <= set(sections)
    assert sections["build"]["revision"] and sections["build"]["version"]
    assert sections["agent"]["server"] == "true" and sections["agent"]["services"] == "1"
    assert sections["consul"]["leader"] == "true"
    assert sections["raft"]["latest_configuration"].startswith("[{Suffrage:Voter ID:")
    assert not any("{'" in v or "['" in v or v in ("True", "False", "None")
                   for section in sections.values() for v in section.values())


def test_consul_http_addr_is_an_alias(agent: AgentProcess) -> None:
    result = run(agent, "members", "-format", "json", env={"MESH_HTTP_ADDR": None, "CONSUL_HTTP_ADDR": agent.http_addr})
    assert result.exit_code == 0, result.output
    assert [m["Name"] for m in json.loads(result.output)] == ["fmt-node"]


def test_health_shows_interval_and_timeout(agent: AgentProcess) -> None:
    base = agent.http_addr
    local = httpx.get(f"{base}/v1/agent/checks", timeout=5).json()["web-tcp"]
    assert (local["Interval"], local["Timeout"]) == ("10s", "1.5s")

    def catalog_check() -> dict[str, Any] | None:
        found = [c for c in httpx.get(f"{base}/v1/health/checks/web", timeout=5).json() if c["CheckID"] == "web-tcp"]
        return found[0] if found and found[0]["Interval"] else None

    check = wait_for(catalog_check, 20, what="the check's interval in the catalog")
    assert (check["Interval"], check["Timeout"]) == ("10s", "1.5s")
    entry = httpx.get(f"{base}/v1/health/service/web", timeout=5).json()[0]
    tcp = next(c for c in entry["Checks"] if c["CheckID"] == "web-tcp")
    serf = next(c for c in entry["Checks"] if c["CheckID"] == "serfHealth")
    assert (tcp["Interval"], tcp["Timeout"], serf["Interval"]) == ("10s", "1.5s", "")


def test_banner_comes_before_the_logs(agent: AgentProcess) -> None:
    lines = agent.log().splitlines()
    banner = lines.index("==> Starting meshagent agent...")
    first_log = next(i for i, line in enumerate(lines) if "[INFO]" in line)
    assert banner < first_log
    assert lines.index("==> Log data will now stream in as it occurs:") < first_log


def test_table_cells_lose_control_characters() -> None:
    lines = table_lines(["Node", "Tags"], [["evil\x1b[2J", "a\nb"], ["ok", ""]])
    assert lines == ["Node      Tags", "evil [2J  a b", "ok"]
