"""`meshagent acl …` end to end against a real `meshagent agent -dev` with ACLs on, default deny (127.0.43.2+):
the CLI in process and the installed command. Slow: an agent process (~2 s to start) shared by the module."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from meshagent.cli.main import cli

from tests.support.agents import MESHAGENT, AgentProcess
from tests.support.cli_env import ENV_CLEAR
from tests.support.ports import free_host_in

pytestmark = [pytest.mark.slow]

MANAGEMENT = "3f0b7a52-9a2c-4c1e-8f6d-2a4b6c8d0e1f"


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """`meshagent agent -dev` on a free 127.0.43.N (N >= 2) with ACLs on, default deny, a known management token."""
    host = free_host_in("127.0.43", 2, 39)
    workdir = tmp_path_factory.mktemp("acl-agent")
    (workdir / "acl.hcl").write_text('acl {\n  enabled = true\n  default_policy = "deny"\n'
                                     f'  tokens {{ initial_management = "{MANAGEMENT}" }}\n}}\n')
    proc = AgentProcess(host=host, workdir=workdir, args=["-dev", "-client", host, "-bind", host, "-node", "acl-cli",
                                                          "-config-file", str(workdir / "acl.hcl")]).start()
    try:
        yield proc
    finally:
        proc.stop()


def real(agent: AgentProcess, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """The CLI in this process against the real agent."""
    return CliRunner().invoke(cli, [*args, "-http-addr", agent.http_addr], env={**ENV_CLEAR, **(env or {})})


def test_end_to_end_against_an_agent_with_acls(acl_agent: AgentProcess, tmp_path: Path) -> None:
    # tokens { initial_management } was the bootstrap (as in Consul): refused with the reset index.
    again = real(acl_agent, "acl", "bootstrap")
    assert again.exit_code == 1 and "ACL bootstrap no longer allowed (reset index: " in again.stderr
    root = MANAGEMENT
    assert root not in again.output

    rules = tmp_path / "app.hcl"
    rules.write_text('key_prefix "app/" { policy = "write" }\n')
    as_root = {"CONSUL_HTTP_TOKEN": root}
    made = real(acl_agent, "acl", "policy", "create", "-name", "app", "-rules", f"@{rules}", env=as_root)
    assert made.exit_code == 0 and 'Rules:\nkey_prefix "app/"' in made.output, made.output
    created = real(acl_agent, "acl", "token", "create", "-policy-name", "app", "-description", "app",
                   "-format", "json", env=as_root)
    assert created.exit_code == 0, created.output
    app = json.loads(created.output)
    assert app["Policies"][0]["Name"] == "app" and app["Description"] == "app"
    token_file = tmp_path / "app.token"
    token_file.write_text(app["SecretID"] + "\n")

    # The token file from the environment: app/ is writable, the rest is not; -token beats the env file.
    as_app = {"CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert real(acl_agent, "kv", "put", "app/x", "1", env=as_app).exit_code == 0
    denied = real(acl_agent, "kv", "put", "secret/x", "1", env=as_app)
    assert denied.exit_code == 1 and "lacks permission 'key:write' on \"secret/x\"" in denied.stderr
    assert app["SecretID"] not in denied.output
    assert real(acl_agent, "kv", "put", "secret/x", "1").exit_code == 1  # anonymous under default deny
    assert real(acl_agent, "kv", "put", "secret/x", "1", "-token", MANAGEMENT, env=as_app).exit_code == 0
    me = real(acl_agent, "acl", "token", "read", "-self", "-token-file", str(token_file))
    assert me.exit_code == 0 and f"AccessorID:       {app['AccessorID']}" in me.output
    refused = real(acl_agent, "acl", "set-agent-token", "agent", root, env=as_app)
    assert refused.exit_code == 1 and "Permission denied" in refused.stderr and root not in refused.output
    assert real(acl_agent, "acl", "set-agent-token", "agent", root, env=as_root).output == \
        'ACL token "agent" set successfully\n'

    # Update by prefix, list, role, delete: the deleted token stops working at once (-dev: one agent).
    short = app["AccessorID"][:8]
    updated = real(acl_agent, "acl", "token", "update", "-id", short, "-description", "renamed", env=as_root)
    assert updated.exit_code == 0 and "Description:      renamed" in updated.output and " - app" in updated.output
    copy = json.loads(real(acl_agent, "acl", "token", "clone", "-id", short, "-description", "copy", "-format", "json",
                           env=as_root).output)
    assert copy["AccessorID"] != app["AccessorID"] and [p["Name"] for p in copy["Policies"]] == ["app"]
    listed = real(acl_agent, "acl", "token", "list", "-format", "json", env=as_root)
    assert app["AccessorID"] in {t["AccessorID"] for t in json.loads(listed.output)}
    role = real(acl_agent, "acl", "role", "create", "-name", "ops", "-policy-name", "app",
                "-service-identity", "web", env=as_root)
    assert role.exit_code == 0 and "Service Identities:\n   web (Datacenters: all)" in role.output, role.output
    assert "deleted successfully" in real(acl_agent, "acl", "role", "delete", "-name", "ops", env=as_root).output
    gone = real(acl_agent, "acl", "token", "delete", "-id", short, env=as_root)
    assert gone.output == f'Token "{app["AccessorID"]}" deleted successfully\n'
    after = real(acl_agent, "kv", "put", "app/y", "1", env=as_app)
    assert after.exit_code == 1 and "ACL not found" in after.stderr
    assert "deleted successfully" in real(acl_agent, "acl", "policy", "delete", "-name", "app", env=as_root).output


def test_the_installed_command_reads_consul_http_token_file(acl_agent: AgentProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "mgmt"
    token_file.write_text(MANAGEMENT)
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEAR}
    out = subprocess.run([MESHAGENT, "acl", "policy", "list", "-http-addr", acl_agent.http_addr], text=True,
                         capture_output=True, env={**env, "CONSUL_HTTP_TOKEN_FILE": str(token_file)}, timeout=30)
    assert out.returncode == 0 and "global-management:\n   ID:           00000000-0000-0000-0000-000000000001" in \
        out.stdout, out.stderr
    anonymous = subprocess.run([MESHAGENT, "acl", "policy", "list", "-http-addr", acl_agent.http_addr], text=True,
                               capture_output=True, env=env, timeout=30)
    assert anonymous.returncode == 1 and "lacks permission 'acl:read'" in anonymous.stderr
