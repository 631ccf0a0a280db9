"""`acl { ... }` (issue 15): HCL and JSON into AgentConfig.acl, Consul's older names, errors naming file, line
and field, secrets never shown; and a -dev agent with ACLs on (127.0.38.N) that writes the builtins."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from meshagent.agent.config.acl_settings import redacted
from meshagent.agent.config.loader import ConfigErrors, load_config
from meshagent.agent.config.types import ACLConfig

from tests.support.agents import AgentProcess
from tests.support.config_files import errors_of, write
from tests.support.ports import ports_free
from tests.support.wait import wait_for

MGMT = "4a1f3c1e-1111-4222-8333-444455556666"
AGENT = "agent-secret-0001"
RECOVERY = "recovery-secret-0001"

HCL = f'''
acl {{
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "async-cache"
  token_ttl                = "10s"
  policy_ttl               = "1m"
  role_ttl                 = "90s"
  enable_token_persistence = true
  enable_key_list_policy   = true
  tokens {{
    initial_management = "{MGMT}"
    default            = "anonymous"
    agent              = "{AGENT}"
    agent_recovery     = "{RECOVERY}"
  }}
}}
'''
JSON = {"acl": {"enabled": True, "default_policy": "deny", "down_policy": "async-cache", "token_ttl": "10s",
                "policy_ttl": "1m", "role_ttl": "90s", "enable_token_persistence": True,
                "enable_key_list_policy": True,
                "tokens": {"master": MGMT, "default": "anonymous", "agent": AGENT, "agent_master": RECOVERY}}}


def test_defaults_are_consuls() -> None:
    config = load_config([], [], {})
    assert config.acl == ACLConfig() and not config.acl.enabled
    assert (config.acl.default_policy, config.acl.down_policy, config.acl.token_ttl) == ("allow", "extend-cache", 30.0)


def test_hcl_and_json_with_consuls_older_token_names_give_the_same_settings(tmp_path: Path) -> None:
    from_hcl = load_config([write(tmp_path / "a.hcl", HCL)], [], {})
    from_json = load_config([write(tmp_path / "b.json", json.dumps(JSON, indent=2))], [], {})
    for config in (from_hcl, from_json):
        acl = config.acl
        assert acl.enabled and acl.default_policy == "deny" == config.acl_default_policy
        assert (acl.down_policy, acl.token_ttl, acl.policy_ttl, acl.role_ttl) == ("async-cache", 10.0, 60.0, 90.0)
        assert acl.enable_token_persistence and acl.enable_key_list_policy
        t = acl.tokens
        assert (t.initial_management, t.default, t.agent, t.agent_recovery) == (MGMT, "anonymous", AGENT, RECOVERY)
        assert config.warnings == []


def test_files_merge_key_by_key_and_legacy_top_level_keys_map(tmp_path: Path) -> None:
    first = write(tmp_path / "1.hcl",
                  'acl {\n  enabled = true\n  tokens {\n    agent = "a1"\n    default = "d1"\n  }\n}\n')
    second = write(tmp_path / "2.json", json.dumps({"acl": {"tokens": {"agent": "a2"}}, "acl_down_policy": "deny",
                                                    "acl_ttl": "5s", "acl_default_policy": "deny",
                                                    "acl_agent_master_token": "r2"}))
    config = load_config([first, second], [], {})
    t = config.acl.tokens
    assert config.acl.enabled and (t.agent, t.default, t.agent_recovery) == ("a2", "d1", "r2")
    assert (config.acl.down_policy, config.acl.token_ttl, config.acl.default_policy) == ("deny", 5.0, "deny")
    assert config.acl_default_policy == "deny"  # the intentions' default follows acl.default_policy


@pytest.mark.parametrize("text,line,field,reason", [
    ('acl {\n  default_policy = "block"\n}\n', 2, "acl.default_policy", '"allow" or "deny"'),
    ('acl {\n  down_policy = "cache"\n}\n', 2, "acl.down_policy", '"extend-cache" or "async-cache" or "allow"'),
    ('acl {\n  token_ttl = "0s"\n}\n', 2, "acl.token_ttl", "more than 0s"),
    ('acl {\n  role_ttl = "25h"\n}\n', 2, "acl.role_ttl", "at most 24h"),
    ('acl {\n  policy_ttl = 30\n}\n', 2, "acl.policy_ttl", "needs a unit"),
    ('acl {\n  enabled = "yes"\n}\n', 2, "acl.enabled", "true or false"),
    ('acl {\n  enable = true\n}\n', 2, "acl.enable", "unknown field"),
    ('acl {\n  tokens {\n    agent = 5\n  }\n}\n', 3, "acl.tokens.agent", "must be a string"),
    ('acl {\n  tokens {\n    dns = "x"\n  }\n}\n', 3, "acl.tokens.dns", "unknown token"),
    ('acl {\n  tokens {\n    master = "a"\n    initial_management = "b"\n  }\n}\n', 4,
     "acl.tokens.initial_management", "given twice"),
    ('acl {\n  tokens {\n    initial_management = "anonymous"\n  }\n}\n', 3, "acl.tokens.initial_management",
     "anonymous"),
    ('acl {\n  tokens = "x"\n}\n', 2, "acl.tokens", "block/object"),
    ('acl = "deny"\n', 1, "acl", "block/object"),
    ('acl_datacenter = "dc1"\n', 1, "acl_datacenter", "acl { enabled = true }"),
    ('acl_token = 7\n', 1, "acl_token", "must be a string"),
])
def test_each_invalid_value_names_file_line_and_field(tmp_path: Path, text: str, line: int, field: str,
                                                       reason: str) -> None:
    path = write(tmp_path / "acl.hcl", text)
    found = errors_of(path)
    assert [(p, n, f) for p, n, f, _ in found] == [(path, line, field)], found
    assert reason in found[0][3]


def test_secrets_are_never_shown_in_errors_or_warnings(tmp_path: Path) -> None:
    long_secret = "s3cr3t" * 50
    bad = write(tmp_path / "bad.hcl", f'acl {{\n  tokens {{\n    agent = "{long_secret}"\n'
                                      '    default = " spaced-s3cr3t "\n  }\n}\n')
    found = errors_of(bad)
    assert [f for _, _, f, _ in found] == ["acl.tokens.agent", "acl.tokens.default"]
    assert all("s3cr3t" not in r and "not shown" in r for *_, r in found)
    with pytest.raises(ConfigErrors) as exc:
        load_config([bad], [], {})
    assert "s3cr3t" not in str(exc.value)
    warned = write(tmp_path / "warn.hcl", 'acl {\n  tokens {\n    initial_management = "guessable-s3cr3t"\n'
                                          '    replication = "repl-s3cr3t"\n  }\n}\n')
    config = load_config([warned], [], {})
    assert len(config.warnings) == 2 and not any("s3cr3t" in w for w in config.warnings)
    assert "not a UUID" in config.warnings[0] and "not used" in config.warnings[1]
    # Review F21: the warning says why: the digest reaches every client agent (and never shows the secret).
    assert "SHA-256 is sent to every client agent" in config.warnings[0]
    assert "guessable-s3cr3t" not in " ".join(config.warnings)
    assert config.acl.tokens.initial_management == "guessable-s3cr3t"
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in json.dumps(redacted(config.acl))
    assert redacted(config.acl)["ACLTokens"] == {"ACLDefaultToken": "", "ACLAgentToken": "",
                                                 "ACLAgentRecoveryToken": "", "ACLInitialManagementToken": "hidden"}


def test_exposure_warnings_follow_the_acl_settings(tmp_path: Path) -> None:
    def warnings(acl: str) -> list[str]:
        path = write(tmp_path / "w.hcl", f'client_addr = "0.0.0.0"\nenable_script_checks = true\n{acl}')
        return load_config([path], [], {}).warnings

    off = warnings("")
    assert len(off) == 2 and "ACLs are off" in off[0] and "without ACLs is dangerous" in off[1]
    allow = warnings("acl {\n  enabled = true\n}\n")
    assert len(allow) == 1 and "ACLs default to allow" in allow[0]  # script checks: ACLs on, as Consul
    deny = warnings('acl {\n  enabled = true\n  default_policy = "deny"\n}\n')
    assert len(deny) == 1 and deny[0].endswith("can be reached by anyone on the network")


def test_hostile_shapes_are_errors_not_crashes(tmp_path: Path) -> None:
    for text in ('{"acl": []}', '{"acl": [[1]]}', '{"acl": {"tokens": []}}', '{"acl": {"tokens": {"agent": null}}}',
                 '{"acl": {"tokens": {"agent": ["a"]}}}', '{"acl": {"token_ttl": {"a": 1}}}',
                 '{"acl": {"enabled": null}}', '{"acl": {"tokens": {"default": "a\\u0000b"}}}',
                 '{"acl_master_token": {"x": 1}}', '{"acl": {"down_policy": 1e999}}'):
        path = write(tmp_path / "h.json", text)
        assert errors_of(path), text


def _host() -> str:
    for n in range(1, 60):  # this suite's 127.0.38.N
        if ports_free(f"127.0.38.{n}"):
            return f"127.0.38.{n}"
    raise RuntimeError("no free address in 127.0.38.1-59")


@pytest.mark.slow
def test_dev_agent_with_default_deny_writes_the_builtins_and_the_management_token(tmp_path: Path) -> None:
    (tmp_path / "acl.hcl").write_text(f'acl {{\n  enabled = true\n  default_policy = "deny"\n'
                                      f'  tokens {{\n    initial_management = "{MGMT}"\n  }}\n}}\n')
    host = _host()
    agent = AgentProcess(host=host, args=["-dev", "-bind", host, "-client", host, "-node", "acl-dev",
                                          "-config-dir", str(tmp_path)], workdir=tmp_path)
    try:
        agent.start(timeout=20)
        base, mgmt = agent.http_addr, {"X-Consul-Token": MGMT}

        def token_self() -> httpx.Response | None:
            got = httpx.get(f"{base}/v1/acl/token/self", headers=mgmt, timeout=2)
            return got if got.status_code == 200 else None

        me = wait_for(token_self, 5, what="the management token to resolve", report=agent.log).json()
        assert [p["Name"] for p in me["Policies"]] == ["global-management"]
        policies = httpx.get(f"{base}/v1/acl/policies", headers=mgmt, timeout=2).json()
        assert [p["ID"] for p in policies] == ["00000000-0000-0000-0000-000000000001"]
        anonymous = httpx.get(f"{base}/v1/acl/token/00000000-0000-0000-0000-000000000002", headers=mgmt, timeout=2)
        assert anonymous.status_code == 200 and anonymous.json().get("Policies", []) == []
        assert httpx.get(f"{base}/v1/agent/self", timeout=2).status_code == 403  # anonymous under default deny
        self_ = httpx.get(f"{base}/v1/agent/self", headers=mgmt, timeout=2)
        assert self_.status_code == 200 and MGMT not in self_.text
        assert httpx.get(f"{base}/v1/agent/self", headers={"X-Consul-Token": "nope"}, timeout=2).status_code == 403
        # A reload picks up the agent's own tokens (Consul's): an agent_recovery token works without a restart.
        recovery = {"X-Consul-Token": RECOVERY}
        assert httpx.get(f"{base}/v1/agent/self", headers=recovery, timeout=2).status_code == 403
        (tmp_path / "recovery.hcl").write_text(f'acl {{\n  tokens {{\n    agent_recovery = "{RECOVERY}"\n  }}\n}}\n')
        agent.signal(signal.SIGHUP)
        wait_for(lambda: httpx.get(f"{base}/v1/agent/self", headers=recovery, timeout=2).status_code == 200, 5,
                 what="the reloaded agent_recovery token to work", report=agent.log)
    finally:
        agent.stop()
    assert MGMT not in agent.log()
