"""examples/traffic/ is a walk-through that works: every entry file is accepted by `meshagent config write` on a
real `-dev` agent (127.0.33.N), as HCL and as the same entry in JSON, in the README's order; every service file
by `meshagent services register`; the README names only files that exist; a bad entry file and a bad service
file are refused naming the file and the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from meshagent.agent.config.connect_settings import strip_markers
from meshagent.agent.config.syntax import load_hcl
from meshagent.cli.main import cli

from tests.support.agents import AgentProcess, scratch_dir
from tests.support.ports import ports_free

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traffic"
ENTRIES = ["web-defaults.hcl", "admin-defaults.hcl", "web-resolver.hcl", "web-splitter.hcl", "web-router.hcl"]
SERVICES = ["web-v1.hcl", "web-v2.hcl", "admin.hcl", "frontend.hcl"]
HOSTS = [f"127.0.33.{n}" for n in range(40, 70)]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    host = next(h for h in HOSTS if ports_free(h))
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "examples"],
                        workdir=scratch_dir()).start()
    try:
        yield proc
    finally:
        proc.stop()


def run(agent: AgentProcess, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-http-addr", agent.http_addr])


def _entry(name: str) -> dict[str, Any]:
    entry: dict[str, Any] = strip_markers(load_hcl((EXAMPLES / name).read_text()))
    return entry


def _stored(agent: AgentProcess, kind: str, name: str) -> dict[str, Any]:
    resp = httpx.get(f"{agent.http_addr}/v1/config/{kind}/{name}", timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return {k: v for k, v in body.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}


def test_the_directory_holds_what_the_readme_walks_through() -> None:
    assert {p.name for p in EXAMPLES.iterdir()} == {*ENTRIES, *SERVICES, "README.md"}
    readme = (EXAMPLES / "README.md").read_text()
    named = set(re.findall(r"[\w-]+\.hcl", readme))
    assert named == {*ENTRIES, *SERVICES}, named ^ {*ENTRIES, *SERVICES}
    # the entries are written in an order the agent accepts (a splitter's subsets need the resolver first)
    order = [readme.index(f"config write {name}") for name in ENTRIES]
    assert order == sorted(order)


def test_every_entry_file_is_accepted_as_hcl_and_as_json(agent: AgentProcess, tmp_path: Path) -> None:
    for name in ENTRIES:
        entry = _entry(name)
        result = run(agent, "config", "write", str(EXAMPLES / name))
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert result.stdout.strip() == f"Config entry written: {entry['Kind']}/{entry['Name']}"
        from_hcl = _stored(agent, entry["Kind"], entry["Name"])
        as_json = tmp_path / name.replace(".hcl", ".json")
        as_json.write_text(json.dumps(entry, indent=2))
        result = run(agent, "config", "write", str(as_json))
        assert result.exit_code == 0, f"{as_json.name}: {result.output}"
        assert _stored(agent, entry["Kind"], entry["Name"]) == from_hcl
    splitter = _stored(agent, "service-splitter", "web")
    assert [(s["Weight"], s["ServiceSubset"]) for s in splitter["Splits"]] == [(90, "v1"), (10, "v2")]
    router = _stored(agent, "service-router", "web")
    assert router["Routes"][0]["Destination"] == {"Service": "admin", "PrefixRewrite": "/"}
    resolver = _stored(agent, "service-resolver", "web")
    assert resolver["Subsets"]["v2"]["Filter"] == "Service.Meta.version == v2"
    assert resolver["Failover"]["v2"]["ServiceSubset"] == "v1"


def test_every_service_file_registers(agent: AgentProcess) -> None:
    result = run(agent, "services", "register", *(str(EXAMPLES / name) for name in SERVICES))
    try:
        assert result.exit_code == 0, result.output
        services = httpx.get(f"{agent.http_addr}/v1/agent/services", timeout=10).json()
        assert {"web-v1", "web-v2", "admin", "frontend", "web-v1-sidecar-proxy", "web-v2-sidecar-proxy",
                "admin-sidecar-proxy", "frontend-sidecar-proxy"} <= set(services)
        assert services["web-v2-sidecar-proxy"]["Meta"] == {"version": "v2"}  # what the subset filter reads
        [up] = services["frontend-sidecar-proxy"]["Proxy"]["Upstreams"]
        assert (up["DestinationName"], up["LocalBindPort"]) == ("web", 9191)
    finally:  # the frontend's sidecar binds 127.0.0.1:9191: not held longer than this test
        for sid in ("web-v1", "web-v2", "admin", "frontend"):
            httpx.put(f"{agent.http_addr}/v1/agent/service/deregister/{sid}", timeout=10)


def test_a_bad_entry_file_is_refused_naming_file_and_field(agent: AgentProcess, tmp_path: Path) -> None:
    text = (EXAMPLES / "web-splitter.hcl").read_text().replace("Weight = 10,", "Weight = 20,")
    assert text != (EXAMPLES / "web-splitter.hcl").read_text()
    bad = tmp_path / "web-splitter.hcl"
    bad.write_text(text)
    result = run(agent, "config", "write", str(bad))
    assert result.exit_code == 1
    assert "Error writing config entry service-splitter/web: Unexpected response code: 400" in result.stderr
    assert re.search(rf"{re.escape(str(bad))}:\d+: field Splits", result.stderr), result.stderr


def test_a_bad_service_file_is_refused_naming_file_and_field(agent: AgentProcess, tmp_path: Path) -> None:
    bad = tmp_path / "web-v2.hcl"
    bad.write_text((EXAMPLES / "web-v2.hcl").read_text().replace("port  = 8082", 'port  = "eighty"'))
    result = run(agent, "services", "register", str(bad))
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "port" in result.stderr, result.stderr
    services = httpx.get(f"{agent.http_addr}/v1/agent/services", timeout=10).json()
    assert "web-v2" not in services


SPELLINGS = {  # Consul's documented spellings beyond the examples': snake_case HCL, fractional weights, JSON
    "res.hcl": '''kind = "service-resolver"
name = "web"
default_subset = "v1"
connect_timeout = "15s"
subsets = {
  v1 = { filter = "Service.Meta.version == v1", only_passing = true }
  v2 = { filter = "Service.Tags contains canary" }
}
failover = { "*" = { service_subset = "v1" } }
load_balancer = {
  policy = "ring_hash"
  hash_policies = [{ field = "header", field_value = "x-user" }, { source_ip = true }]
}
''',
    "spl.json": '{"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 99.5, "ServiceSubset": "v1"},'
                ' {"Weight": 0.5, "ServiceSubset": "v2"}]}',
    "rt.hcl": '''kind = "service-router"
name = "web"
routes = [
  {
    match = { http = { path_prefix = "/admin", methods = ["GET"] } }
    destination = { service = "admin", prefix_rewrite = "/", num_retries = 3, retry_on_status_codes = [503] }
  },
  {
    match = { http = { header = [{ name = "x-debug", regex = "1|yes", invert = true }],
                       query_param = [{ name = "canary", present = true }] } }
    destination = { service_subset = "v2", request_timeout = "2s" }
  },
]
''',
}


def test_consuls_other_spellings_are_accepted(agent: AgentProcess, tmp_path: Path) -> None:
    for name in ("web-defaults.hcl", "admin-defaults.hcl"):
        assert run(agent, "config", "write", str(EXAMPLES / name)).exit_code == 0
    for name, text in SPELLINGS.items():
        (tmp_path / name).write_text(text)
        result = run(agent, "config", "write", str(tmp_path / name))
        assert result.exit_code == 0, f"{name}: {result.output}"
    router = _stored(agent, "service-router", "web")  # stored canonical CamelCase, whatever the spelling
    assert router["Routes"][1]["Match"]["HTTP"]["QueryParam"] == [{"Name": "canary", "Present": True}]
    assert router["Routes"][0]["Destination"]["RetryOnStatusCodes"] == [503]
    assert _stored(agent, "service-resolver", "web")["Subsets"]["v1"]["OnlyPassing"] is True
