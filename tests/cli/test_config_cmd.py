"""`meshagent config write|read|list|delete`: file and argument errors without an agent; round trips, CAS and the
agent's refusals against a real `meshagent agent -dev` process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from meshagent.cli.main import cli

from tests.cli.conftest import closed_addr
from tests.support.agents import MESHAGENT, AgentProcess


def run(*args: str, stdin: str | None = None) -> Result:
    """The CLI in this process (its HTTP calls are real); exit code, stdout and stderr apart."""
    return CliRunner().invoke(cli, list(args), input=stdin)




# ---------------------------------------------------------------------- without an agent


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    result = run("config", "write", "-http-addr", closed_addr(), str(tmp_path / "nope.hcl"))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Failed to load data: {tmp_path / 'nope.hcl'}: No such file or directory"


@pytest.mark.parametrize("name,text,expect", [
    ("bad.hcl", 'Kind = "service-defaults"\nName = "web"\nProtocol = \n', "bad.hcl:3: invalid HCL"),
    ("bad.json", '{\n  "Kind": "service-defaults",\n  "Name": "web",,\n}\n', "bad.json:3: invalid JSON"),
    ("block.hcl", 'Kind = "service-router"\nName = "web"\nRoutes = [\n  {\n    Match { HTTP { PathPrefix = "/" } }\n'
     '  }\n]\n', "write `Match = { HTTP = { ... } }`"),
    ("empty.hcl", "\n\n", "empty.hcl is empty"),
    ("nokind.hcl", 'Name = "web"\n', "Payload does not contain a kind/Kind key at the top level"),
    ("intkind.json", '{"Kind": 5, "Name": "web"}', "Kind value in payload is not a string"),
    ("noname.hcl", 'kind = "service-defaults"\n', "Name is required"),
    ("list.json", '[{"Kind": "service-defaults", "Name": "web"}]', "the top level must be an object"),
    ("binary.hcl", "Kind = \"\xff\"", "not UTF-8"),
])
def test_file_problems_are_named_before_anything_is_sent(tmp_path: Path, name: str, text: str, expect: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    result = run("config", "write", "-http-addr", closed_addr(), str(path))  # never reached: the file fails first
    assert result.exit_code == 1, result.output
    assert expect in result.stderr and "cannot connect" not in result.stderr, result.stderr


def test_a_file_larger_than_the_bound_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text('{"Kind": "service-defaults", "Name": "' + "x" * (1024 * 1024) + '"}')
    result = run("config", "write", "-http-addr", closed_addr(), str(path))
    assert result.exit_code == 1 and "larger than 1024 KiB" in result.stderr


@pytest.mark.parametrize("args,expect", [
    (["read", "-name", "web"], "Must specify the -kind parameter"),
    (["read", "-kind", "service-defaults"], "Must specify the -name parameter"),
    (["list"], "Must specify the -kind parameter"),
    (["delete", "-kind", "service-defaults"], "Must specify the -name parameter"),
    (["delete", "-kind", "service-defaults", "-name", "web", "-modify-index", "3"],
     "-modify-index is used only with -cas"),
])
def test_missing_or_inconsistent_flags(args: list[str], expect: str) -> None:
    result = run("config", *args, "-http-addr", closed_addr())
    assert result.exit_code == 1 and expect in result.stderr, result.output


def test_no_agent_is_one_clear_line() -> None:
    addr = closed_addr()
    result = run("config", "list", "-kind", "service-defaults", "-http-addr", addr)
    assert result.exit_code == 1
    assert result.stderr.strip() == (f'Error listing config entries for kind "service-defaults": cannot connect to '
                                     f"the agent at {addr} (connection refused). Is the agent running?")


# ---------------------------------------------------------------------- against a real agent

ENTRIES = {
    "service-defaults": 'Kind = "service-defaults"\nName = "web"\nProtocol = "http"\n',
    "proxy-defaults": 'Kind = "proxy-defaults"\nName = "global"\nConfig {\n  protocol = "http"\n}\n',
    "service-resolver": ('Kind = "service-resolver"\nName = "web"\nDefaultSubset = "v1"\nSubsets = {\n'
                         '  v1 = { Filter = "Service.Meta.version == v1" }\n'
                         '  v2 = { Filter = "Service.Meta.version == v2" }\n}\n'),
    "service-splitter": ('Kind = "service-splitter"\nName = "web"\nSplits = [\n'
                         '  { Weight = 90, ServiceSubset = "v1" },\n  { Weight = 10, ServiceSubset = "v2" },\n]\n'),
    "service-router": ('Kind = "service-router"\nName = "web"\nRoutes = [\n  {\n'
                       '    Match = { HTTP = { PathPrefix = "/admin" } }\n'
                       '    Destination = { Service = "admin" }\n  },\n]\n'),
    "service-intentions": ('Kind = "service-intentions"\nName = "db"\nSources = [\n'
                           '  { Name = "web", Action = "allow" },\n  { Name = "*", Action = "deny" },\n]\n'),
}


@pytest.mark.slow
def test_every_kind_round_trips_through_write_read_list_delete(agent: AgentProcess, tmp_path: Path) -> None:
    addr = agent.http_addr
    for kind, text in ENTRIES.items():  # in this order: the router and splitter need protocol http first
        path = tmp_path / f"{kind}.hcl"
        path.write_text(text)
        result = run("config", "write", "-http-addr", addr, str(path))
        name = "global" if kind == "proxy-defaults" else "db" if kind == "service-intentions" else "web"
        assert (result.exit_code, result.stdout) == (0, f"Config entry written: {kind}/{name}\n"), result.output
        read = run("config", "read", "-kind", kind, "-name", name, "-http-addr", addr)
        assert read.exit_code == 0, read.output
        entry = json.loads(read.stdout)
        assert (entry["Kind"], entry["Name"]) == (kind, name) and entry["ModifyIndex"] >= entry["CreateIndex"] > 0
        assert run("config", "list", "-kind", kind, "-http-addr", addr).stdout == f"{name}\n"
    web = json.loads(run("config", "read", "-kind", "service-router", "-name", "web", "-http-addr", addr).stdout)
    assert web["Routes"][0]["Match"]["HTTP"]["PathPrefix"] == "/admin"
    for kind in reversed(ENTRIES):
        name = "global" if kind == "proxy-defaults" else "db" if kind == "service-intentions" else "web"
        result = run("config", "delete", "-kind", kind, "-name", name, "-http-addr", addr)
        assert (result.exit_code, result.stdout) == (0, f"Config entry deleted: {kind}/{name}\n"), result.output
        assert run("config", "list", "-kind", kind, "-http-addr", addr).stdout == ""


@pytest.mark.slow
def test_check_and_set_on_write_and_delete(agent: AgentProcess, tmp_path: Path) -> None:
    addr = agent.http_addr
    path = tmp_path / "api.json"
    path.write_text(json.dumps({"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"}))
    assert run("config", "write", "-cas", "-modify-index", "0", "-http-addr", addr, str(path)).exit_code == 0
    again = run("config", "write", "-cas", "-modify-index", "0", "-http-addr", addr, str(path))  # exists now
    assert (again.exit_code, again.stderr) == (1, "Config entry not updated: service-defaults/api\n")
    index = json.loads(run("config", "read", "-kind", "service-defaults", "-name", "api", "-http-addr",
                           addr).stdout)["ModifyIndex"]
    stale = run("config", "delete", "-kind", "service-defaults", "-name", "api", "-cas", "-modify-index",
                str(index + 100), "-http-addr", addr)
    assert (stale.exit_code, stale.stderr) == (1, "Config entry not deleted: service-defaults/api\n")
    path.write_text(json.dumps({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}))
    assert run("config", "write", "-cas", "-modify-index", str(index), "-http-addr", addr, str(path)).exit_code == 0
    entry = json.loads(run("config", "read", "-kind", "service-defaults", "-name", "api", "-http-addr", addr).stdout)
    assert entry["Protocol"] == "http" and entry["ModifyIndex"] > index
    done = run("config", "delete", "-kind", "service-defaults", "-name", "api", "-cas", "-modify-index",
               str(entry["ModifyIndex"]), "-http-addr", addr)
    assert (done.exit_code, done.stdout) == (0, "Config entry deleted: service-defaults/api\n")


@pytest.mark.slow
def test_the_agents_refusals_are_shown_with_the_field(agent: AgentProcess, tmp_path: Path) -> None:
    addr = agent.http_addr
    bad = tmp_path / "bad.hcl"
    bad.write_text('Kind = "service-defaults"\nName = "web"\nProtocol = 5\n')
    result = run("config", "write", "-http-addr", addr, str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error writing config entry service-defaults/web: Unexpected response code: 400 (")
    assert "field Protocol" in result.stderr
    assert result.stderr.endswith(f"\n{bad}:3: field Protocol\n")  # the agent names the field, the file the line
    router = tmp_path / "router.hcl"  # service "tcp-only" has no protocol: a router on it is refused
    router.write_text('Kind = "service-router"\nName = "tcp-only"\nRoutes = [\n  { Destination = { Service = "x" } '
                      '},\n]\n')
    result = run("config", "write", "-http-addr", addr, str(router))
    assert result.exit_code == 1 and "400" in result.stderr and "http" in result.stderr, result.stderr
    missing = run("config", "read", "-kind", "service-defaults", "-name", "nope", "-http-addr", addr)
    assert missing.exit_code == 1
    assert missing.stderr.startswith('Error reading config entry "service-defaults" / "nope": Unexpected response '
                                     "code: 404")
    unknown = run("config", "list", "-kind", "bogus-kind", "-http-addr", addr)
    assert unknown.exit_code == 1 and "400" in unknown.stderr and "bogus-kind" in unknown.stderr


@pytest.mark.slow
def test_the_real_process_reads_stdin_and_takes_the_address_from_the_environment(agent: AgentProcess) -> None:
    env = {"MESH_HTTP_ADDR": agent.http_addr, "PATH": "/usr/bin:/bin"}
    text = json.dumps({"kind": "service-defaults", "name": "stdin-svc", "protocol": "http2"})
    written = subprocess.run([MESHAGENT, "config", "write", "-"], input=text, capture_output=True, text=True,
                             env=env, timeout=60)
    assert (written.returncode, written.stdout) == (0, "Config entry written: service-defaults/stdin-svc\n"), written
    read = subprocess.run([MESHAGENT, "config", "read", "-kind", "service-defaults", "-name", "stdin-svc"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert read.returncode == 0 and json.loads(read.stdout)["Protocol"] == "http2"
    gone = subprocess.run([MESHAGENT, "config", "delete", "-kind", "service-defaults", "-name", "stdin-svc"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert gone.returncode == 0
    missing = subprocess.run([MESHAGENT, "config", "read", "-kind", "service-defaults", "-name", "stdin-svc"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 1 and "404" in missing.stderr and missing.stdout == ""
