"""`meshagent intention create|check|get|list|match|delete`: argument errors without an agent; Consul's outputs and
exit codes against a real `meshagent agent -dev` process."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from meshagent.cli.intention_cmd import created_at, describe
from meshagent.cli.main import cli

from tests.cli.conftest import closed_addr
from tests.support.agents import MESHAGENT, AgentProcess


def run(*args: str) -> Result:
    """The CLI in this process (its HTTP calls are real)."""
    return CliRunner().invoke(cli, list(args))




# ---------------------------------------------------------------------- without an agent


@pytest.mark.parametrize("args,code,expect", [
    (["create", "-allow", "-deny", "web", "db"], 1, "Only one of -allow or -deny may be specified."),
    (["create", "-meta", "novalue", "web", "db"], 1, "invalid -meta 'novalue': must be key=value"),
    (["create", "a/b/web", "db"], 1, "Invalid intention source: target can contain at most one '/'"),
    (["create", "web", "ns/"], 1, "Invalid intention destination: the service name is empty"),
    (["get", "a", "b", "c"], 1, "command requires exactly 1 or 2 arguments"),
    (["get"], 1, "command requires exactly 1 or 2 arguments"),
    (["delete"], 1, "command requires exactly 1 or 2 arguments"),
    (["match", "-source", "-destination", "web"], 1, "only one of -source or -destination may be specified"),
    (["check", "web"], 2, "Missing argument 'DST'"),
])
def test_argument_errors(args: list[str], code: int, expect: str) -> None:
    result = run("intention", *args, "-http-addr", closed_addr())
    assert result.exit_code == code and expect in result.stderr, result.output


def test_check_without_an_agent_exits_2_as_consul_does() -> None:
    result = run("intention", "check", "web", "db", "-http-addr", closed_addr())
    assert result.exit_code == 2 and result.stderr.startswith("Error checking the connection: cannot connect")


def test_one_line_forms() -> None:
    assert describe({"SourceName": "web", "SourceNS": "default", "DestinationName": "db", "Action": "allow"}) == \
        "web => db (allow)"
    assert describe({"SourceName": "*", "DestinationName": "db", "Action": "", "Permissions": [{}, {}]}) == \
        "* => db (2 permissions)"
    assert describe({"SourceName": "a", "SourceNS": "team", "DestinationName": "b", "Permissions": [{}]}) == \
        "team/a => b (1 permission)"
    when = datetime.datetime(2026, 12, 4, 23, 50, 21, tzinfo=datetime.UTC).astimezone()
    assert created_at("2026-12-04T23:50:21.123456789Z") == when.strftime("%A, %d-%b-%y %H:%M:%S %Z")
    assert created_at("not a time") == "not a time" and created_at(None) == ""


# ---------------------------------------------------------------------- against a real agent


@pytest.mark.slow
def test_create_list_get_match_check_delete(agent: AgentProcess) -> None:
    addr = ["-http-addr", agent.http_addr]
    empty = run("intention", "list", *addr)
    assert (empty.exit_code, empty.stderr) == (2, "There are no intentions.\n")
    created = run("intention", "create", *addr, "web", "db")
    assert (created.exit_code, created.stdout) == (0, "Created: web => db (allow)\n"), created.output
    wild = run("intention", "create", "-deny", "-meta", "team=payments", "-meta", "tier=1", "-description",
               "nobody else", *addr, "*", "db")
    assert (wild.exit_code, wild.stdout) == (0, "Created: * => db (deny)\n"), wild.output
    duplicate = run("intention", "create", *addr, "web", "db")
    assert duplicate.exit_code == 1
    assert duplicate.stderr.startswith('Error creating intention "web => db (allow)": Unexpected response code: 400')

    listing = run("intention", "list", *addr).stdout.splitlines()
    assert listing[0].split() == ["ID", "Source", "Action", "Destination", "Precedence"]
    rows = [line.split() for line in listing[1:]]
    assert [r[1:] for r in rows] == [["web", "allow", "db", "9"], ["*", "deny", "db", "8"]]  # evaluation order
    web_id, wild_id = rows[0][0], rows[1][0]

    got = run("intention", "get", *addr, "*", "db")
    assert got.exit_code == 0
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in got.stdout.splitlines()}
    assert fields["Source"] == "*" and fields["Destination"] == "db" and fields["Action"] == "deny"
    assert fields["ID"] == wild_id and fields["Description"] == "nobody else"
    assert fields["Meta[team]"] == "payments" and fields["Meta[tier]"] == "1" and "Created At" in fields
    assert run("intention", "get", *addr, web_id).stdout == run("intention", "get", *addr, "web", "db").stdout

    assert run("intention", "match", *addr, "db").stdout == "web => db (allow)\n* => db (deny)\n"
    assert run("intention", "match", "-source", *addr, "api").stdout == "* => db (deny)\n"

    for src, dst, verdict, code in (("web", "db", "Allowed", 0), ("api", "db", "Denied", 1),
                                    ("api", "cache", "Allowed", 0)):  # default policy allow
        result = run("intention", "check", *addr, src, dst)
        assert (result.exit_code, result.stdout) == (code, f"{verdict}\n"), (src, dst, result.output)

    replaced = run("intention", "create", "-replace", "-deny", *addr, "web", "db")
    assert (replaced.exit_code, replaced.stdout) == (0, "Created: web => db (deny)\n")
    assert run("intention", "check", *addr, "web", "db").exit_code == 1
    assert f"ID:           {web_id}" in run("intention", "get", *addr, "web", "db").stdout  # replaced in place

    assert run("intention", "delete", *addr, "web", "db").stdout == "Intention deleted.\n"
    assert run("intention", "delete", *addr, wild_id).stdout == "Intention deleted.\n"
    gone = run("intention", "get", *addr, wild_id)
    assert (gone.exit_code, gone.stderr) == (1, f"Intention with ID {wild_id!r} not found\n")
    missing = run("intention", "get", *addr, "web", "db")
    assert missing.exit_code == 1 and "404" in missing.stderr
    assert run("intention", "list", *addr).exit_code == 2


@pytest.mark.slow
def test_l7_intentions_are_shown_with_permissions_and_deny_at_l4(agent: AgentProcess, tmp_path: Path) -> None:
    addr = ["-http-addr", agent.http_addr]
    (tmp_path / "api.hcl").write_text('Kind = "service-defaults"\nName = "api"\nProtocol = "http"\n')
    (tmp_path / "ixn.hcl").write_text(
        'Kind = "service-intentions"\nName = "api"\nSources = [\n  {\n    Name = "web"\n    Permissions = [\n'
        '      { Action = "allow", HTTP = { PathPrefix = "/v1" } },\n    ]\n  },\n]\n')
    for name in ("api.hcl", "ixn.hcl"):
        assert run("config", "write", *addr, str(tmp_path / name)).exit_code == 0
    try:
        assert run("intention", "match", *addr, "api").stdout == "web => api (1 permission)\n"
        shown = run("intention", "get", *addr, "web", "api").stdout
        assert "Action:" not in shown and "Permissions:" in shown and '"PathPrefix": "/v1"' in shown
        denied = run("intention", "check", *addr, "web", "api")
        assert (denied.exit_code, denied.stdout) == (1, "Denied\n")  # L7 intentions deny at L4, as Consul's
    finally:
        run("config", "delete", *addr, "-kind", "service-intentions", "-name", "api")
        run("config", "delete", *addr, "-kind", "service-defaults", "-name", "api")


@pytest.mark.slow
def test_the_real_process_exit_codes_of_check(agent: AgentProcess) -> None:
    env = {"MESH_HTTP_ADDR": agent.http_addr, "PATH": "/usr/bin:/bin"}

    def meshagent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MESHAGENT, "intention", *args], capture_output=True, text=True, env=env, timeout=60)

    assert meshagent("create", "-deny", "proc-src", "proc-dst").returncode == 0
    try:
        denied = meshagent("check", "proc-src", "proc-dst")
        allowed = meshagent("check", "proc-other", "proc-dst")
        assert (denied.returncode, denied.stdout, allowed.returncode, allowed.stdout) == (1, "Denied\n", 0,
                                                                                        "Allowed\n")
        bad = meshagent("check", "a/b/c", "proc-dst")  # the agent refuses the name: an error, not a verdict
        assert bad.returncode == 2 and "Error checking the connection" in bad.stderr and bad.stdout == ""
    finally:
        assert meshagent("delete", "proc-src", "proc-dst").returncode == 0
