"""Gossip on real processes: 10 agents converge, a kill -9 is seen as failed, a leave as left."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))
ALIVE, LEFT, FAILED = 1, 3, 4


def _view(agent: AgentProcess) -> dict[str, int]:
    try:
        members = httpx.get(f"{agent.http_addr}/v1/agent/members", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {m["Name"]: m["Status"] for m in members}


@pytest.mark.slow
def test_ten_agents_converge_a_killed_one_fails_and_a_leaver_leaves(
        agent_factory: Callable[..., AgentProcess]) -> None:
    first = agent_factory(node="g0")
    agents = [first] + [agent_factory("-retry-join", first.host, node=f"g{i}") for i in range(1, 10)]
    names = {f"g{i}" for i in range(10)}
    wait_for(lambda: all(_view(a) == dict.fromkeys(names, ALIVE) for a in agents), 30,
             what="all ten agents to see all ten alive")

    table = subprocess.run([MESHAGENT, "members", "-http-addr", agents[3].http_addr], capture_output=True,
                           text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["Node", "Address", "Status", "Type"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(names)
    assert all(line.split()[2] == "alive" for line in lines[1:])

    victim, leaver = agents[9], agents[8]
    victim.kill()
    rest = agents[:8]
    wait_for(lambda: all(_view(a).get("g9") == FAILED for a in rest), 30, what="every agent to mark g9 failed")

    result = subprocess.run([MESHAGENT, "leave", "-http-addr", leaver.http_addr], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: all(_view(a).get("g8") == LEFT for a in rest), 30, what="every agent to show g8 left")
    assert all(_view(a).get("g9") == FAILED for a in rest)  # the failure is not mistaken for a leave
