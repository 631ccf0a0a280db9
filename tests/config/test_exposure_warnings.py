"""Warnings for settings that open the agent to its network: validate prints them, the agent logs them at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from meshagent.agent.config.exposure import is_loopback
from meshagent.agent.config.loader import load_config, validate_paths

from tests.support.agents import MESHAGENT, AgentProcess
from tests.support.ports import free_hosts
from tests.support.wait import wait_for

KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def fields_warned(flags: dict[str, object]) -> list[str]:
    return [w.split(": ")[1] for w in load_config([], [], flags).warnings]


def test_client_addr_off_loopback_warns() -> None:
    assert fields_warned({"client_addr": "0.0.0.0"}) == ["client_addr"]
    warning = load_config([], [], {"client_addr": "10.1.2.3 127.0.0.1"}).warnings[0]
    assert warning.startswith("<flags>: client_addr: 10.1.2.3 127.0.0.1 is not a loopback address")
    assert "the HTTP API (:8500) and DNS (:8600) can be reached by anyone on the network" in warning
    assert fields_warned({"client_addr": "127.0.0.9 ::1"}) == []


def test_enable_script_checks_warns_as_consul_does(tmp_path: Path) -> None:
    (tmp_path / "a.hcl").write_text('node_name = "n"\nenable_script_checks = true\n')
    _, warnings = validate_paths([str(tmp_path / "a.hcl")])
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 'a.hcl'}:2: enable_script_checks: using enable-script-checks "
                                  "without ACLs is dangerous")
    assert fields_warned({"enable_local_script_checks": True}) == []


@pytest.mark.parametrize("flags,warned", [
    ({"server": True}, ["bind_addr"]),  # the default bind is 0.0.0.0
    ({"server": True, "bind_addr": "192.0.2.7"}, ["bind_addr"]),
    ({"server": True, "encrypt": KEY}, []),
    ({"server": True, "bind_addr": "127.0.0.5"}, []),
    ({"server": False}, []),  # a client's gossip is the TLS/encrypt helper's business, not :8300
])
def test_a_server_bound_off_loopback_without_encrypt_warns(flags: dict[str, object], warned: list[str]) -> None:
    assert fields_warned(flags) == warned


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1 127.9.9.9") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("{{ GetPrivateIP }}")
    assert not is_loopback("")


def test_validate_prints_warnings_and_still_passes(tmp_path: Path) -> None:
    (tmp_path / "a.hcl").write_text('client_addr = "0.0.0.0"\n')
    result = subprocess.run([MESHAGENT, "validate", str(tmp_path / "a.hcl")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Configuration is valid!" in result.stdout
    assert f"Warning: {tmp_path / 'a.hcl'}:1: client_addr: 0.0.0.0 is not a loopback address" in result.stderr


def test_the_agent_logs_the_warnings_at_start(tmp_path: Path) -> None:
    [host] = free_hosts(1, 129, 110)  # this suite's range, from the top
    agent = AgentProcess(host=host, args=["-dev", "-bind", host, "-client", host, "-enable-script-checks"],
                         workdir=tmp_path)
    try:
        agent.start()
        wait_for(lambda: "using enable-script-checks without ACLs is dangerous" in agent.log(), 10,
                 what="the script-checks warning in the agent's log")
    finally:
        agent.stop()
