"""No setting is silently ignored: `validate` and the agent refuse not-yet-supported and unknown keys,
naming file, line and key; values that ask for what the agent already does pass silently."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from meshagent.agent.config.loader import load_config, validate_paths

from tests.support.agents import MESHAGENT
from tests.support.ports import free_hosts

# A misspelled key would leave ACLs off: refused (issue 15 made `enabled = true` itself work).
ACL = 'acl {\n  enable         = true\n  default_policy = "deny"\n}\n'


def validate(*paths: Path) -> tuple[int, str]:
    """`meshagent validate` as a process: its exit code and everything it printed."""
    result = subprocess.run([MESHAGENT, "validate", *map(str, paths)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_validate_refuses_acl_naming_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "acl.hcl"
    path.write_text('datacenter = "dc1"\n' + ACL)
    code, out = validate(path)
    assert code == 1
    assert f"Error: {path}:3: acl.enable: unknown field (enabled, default_policy" in out
    assert "Configuration is valid" not in out


def test_validate_refuses_unknown_keys_in_hcl_and_json(tmp_path: Path) -> None:
    hcl = tmp_path / "a.hcl"
    hcl.write_text('node_name = "n1"\n\nverify_everything = true\n')
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"datacenter": "dc1", "ports": {"http": 8500, "htps": 1}}, indent=2))
    code, out = validate(hcl, js)
    assert code == 1
    assert f"Error: {hcl}:3: verify_everything: unknown configuration key" in out
    assert f"Error: {js}:5: ports.htps: unknown port" in out


@pytest.mark.parametrize("text,line,key,reason", [
    ("ports {\n  https = 8501\n}\n", 2, "ports.https", "does not exist yet"),
    ("dns_config {\n  use_cache = true\n}\n", 2, "dns_config.use_cache", "no agent cache"),
    ("dns_config {\n  allow_stale = false\n}\n", 2, "dns_config.allow_stale", "only `true`"),
    ('telemetry {\n  statsd_address = "x:1"\n}\n', 2, "telemetry.statsd_address", "no sink"),
    ('watches = [{ type = "key", key = "a", handler_type = "http" }]\n', 1, "watches[0].handler_type",
     "not supported"),
    ("disable_update_check = false\n", 1, "disable_update_check", "never checks"),
])
def test_not_yet_supported_settings_are_errors(tmp_path: Path, text: str, line: int, key: str, reason: str) -> None:
    path = tmp_path / "x.hcl"
    path.write_text(text)
    errors, _ = validate_paths([str(path)])
    assert [(e.path, e.line, e.field) for e in errors] == [(str(path), line, key)]
    assert reason in errors[0].reason


def test_values_the_agent_already_honours_pass_silently(tmp_path: Path) -> None:
    (tmp_path / "a.hcl").write_text('''
acl { enabled = false }
ui_config { enabled = false }
disable_update_check = true
disable_remote_exec  = true
ports { grpc = -1 }
dns_config { use_cache = false }
service {
  name      = "web"
  namespace = "default"
}
''')
    (tmp_path / "b.json").write_text('{"ui": false, "enable_debug": false, "ports": {"https": -1}}')
    config = load_config([], [str(tmp_path)], {})
    assert config.warnings == [] and [s.name for s in config.services] == ["web"]


def _free_host() -> str:
    return free_hosts(1, 110, 129)[0]  # this suite's 127.0.0.N range


def test_agent_with_a_misspelled_acl_key_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "acl.hcl").write_text('acl {\n  enabeld = true\n}\n')
    host = _free_host()
    result = subprocess.run([MESHAGENT, "agent", "-dev", "-bind", host, "-client", host, "-config-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{tmp_path / 'acl.hcl'}:2: acl.enabeld: unknown field" in result.stderr
    assert "Starting meshagent agent" not in result.stdout  # refused before anything started
