"""Gossip settings of the agent on real processes: -retry-max gives up, coalesced events reach handlers once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import free_loopback_host
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


def test_retry_max_exhausted_exits_with_an_error(tmp_path: Path) -> None:
    host, nobody = free_loopback_host(), free_loopback_host()
    result = subprocess.run([MESHAGENT, "agent", "-dev", "-bind", host, "-client", host, "-retry-join", nobody,
                             "-retry-max", "2", "-retry-interval", "100ms"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "max join retry exhausted" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_retry_interval_is_a_clear_error() -> None:
    result = subprocess.run([MESHAGENT, "agent", "-dev", "-retry-interval", "soon"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "-retry-interval" in result.stderr and "Traceback" not in result.stderr


def test_coalesced_events_reach_the_handler_once_per_name(tmp_path: Path,
                                                          agent_factory: Callable[..., AgentProcess]) -> None:
    out = tmp_path / "events.jsonl"
    config = tmp_path / "watch.json"
    handler = ["/bin/sh", "-c", f"cat >> {out}; echo >> {out}"]
    config.write_text(json.dumps({"watches": [{"type": "event", "args": handler}]}))
    agent = agent_factory("-config-file", str(config))
    for i in range(5):
        r = httpx.put(f"{agent.http_addr}/v1/event/fire/deploy", content=f"v{i}".encode(), timeout=5)
        assert r.status_code == 200

    def runs() -> list[list[dict[str, str]]]:
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []

    wait_for(lambda: runs(), 10, what="the handler to run")
    assert len(httpx.get(f"{agent.http_addr}/v1/event/list", timeout=5).json()) == 5  # all five were received
    with pytest.raises(AssertionError):  # and no second run follows within the coalescing window
        wait_for(lambda: len(runs()) > 1, 4, what="a second handler run")
    assert [[e["Payload"] for e in run] for run in runs()] == [["djQ="]]  # only the latest "deploy", v4
