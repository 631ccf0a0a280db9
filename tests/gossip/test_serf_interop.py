"""A mixed cluster with Debian's `serf agent`: 3 meshagent + 3 serf, plaintext and with one -encrypt key.

Both sides must see all six alive, see each other's kill -9 as failed, and deliver each other's user
events; with encryption, a serf agent holding another key cannot join.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import free_loopback_host
from tests.support.serf_rpc import SERF, SerfAgent, SerfRPCError
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))
ALIVE, FAILED = 1, 4

pytestmark = pytest.mark.skipif(not os.path.exists(SERF), reason="Debian's serf is not installed (make system-deps)")


def _meshagent_view(agent: AgentProcess) -> dict[str, int]:
    try:
        return {m["Name"]: m["Status"] for m in httpx.get(f"{agent.http_addr}/v1/agent/members", timeout=2).json()}
    except (httpx.HTTPError, ValueError):
        return {}


def _serf_view(agent: SerfAgent) -> dict[str, str]:
    try:
        return agent.members()
    except (OSError, SerfRPCError):
        return {}


@pytest.fixture
def serfs(tmp_path: Path) -> Iterator[list[SerfAgent]]:
    started: list[SerfAgent] = []
    yield started
    for agent in started:
        agent.kill()


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_mixed_cluster_with_debian_serf(tmp_path: Path, serfs: list[SerfAgent],
                                        agent_factory: Callable[..., AgentProcess], encrypted: bool) -> None:
    key = base64.b64encode(os.urandom(32)).decode() if encrypted else None
    for i in range(3):
        host = free_loopback_host((8301, 7373, 8500, 8600, 8300))
        agent = SerfAgent(f"serf-{i}", f"{host}:8301", f"{host}:7373", tmp_path, encrypt=key,
                          tags={"role": "serf"})
        serfs.append(agent)  # killed at teardown even if start fails
        agent.start()
    first = serfs[0].bind.split(":")[0]
    for agent in serfs[1:]:
        client = agent.rpc_client()
        assert client.join([serfs[0].bind]) == 1
        client.close()

    config = tmp_path / "watch.json"
    config.write_text(json.dumps({"watches": [{"type": "event", "name": "deploy",
                                               "args": ["/bin/sh", "-c", f"cat >> {tmp_path}/events-$$.json"]}]}))
    extra = ["-retry-join", first, "-config-file", str(config)] + (["-encrypt", key] if key else [])
    ours = [agent_factory(*extra, node=f"mesh-{i}") for i in range(3)]
    everyone = {f"serf-{i}" for i in range(3)} | {f"mesh-{i}" for i in range(3)}
    wait_for(lambda: all(_meshagent_view(a) == dict.fromkeys(everyone, ALIVE) for a in ours)
             and all(_serf_view(s) == dict.fromkeys(everyone, "alive") for s in serfs), 30,
             what="all six alive on every side")

    # A serf user event reaches every meshagent's handler.
    client = serfs[1].rpc_client()
    client.event("deploy", b"v1")
    client.close()

    def handled() -> list[dict[str, object]]:
        return [e for f in tmp_path.glob("events-*.json") for line in f.read_text().splitlines() if line
                for e in json.loads(line)]

    wait_for(lambda: len([e for e in handled() if e["Payload"] == base64.b64encode(b"v1").decode()]) == 3, 15,
             what="the serf event at every meshagent handler")

    # A meshagent user event reaches serf.
    stream = serfs[2].rpc_client()
    stream.stream_user_events()
    fired = subprocess.run([MESHAGENT, "event", "-http-addr", ours[0].http_addr, "release", "v2"],
                           capture_output=True, text=True, timeout=30)
    assert fired.returncode == 0 and fired.stdout.startswith("Event ID: "), fired.stderr
    seen = None
    for _ in range(50):
        record = stream.next_event(0.2)
        if record and record.get("Name") == "release":
            seen = record
            break
    stream.close()
    assert seen is not None and seen["Payload"] == b"v2"

    if encrypted:
        host = free_loopback_host((8301, 7373, 8500, 8600, 8300))
        stranger = SerfAgent("stranger", f"{host}:8301", f"{host}:7373", tmp_path,
                             encrypt=base64.b64encode(os.urandom(32)).decode())
        serfs.append(stranger)
        stranger.start()
        client = stranger.rpc_client()
        with pytest.raises(SerfRPCError):
            client.join([f"{ours[0].host}:8301"])
        client.close()
        assert "stranger" not in _meshagent_view(ours[1])

    # kill -9 on each side is seen as a failure on the other.
    ours[2].kill()
    wait_for(lambda: all(_serf_view(s).get("mesh-2") == "failed" for s in serfs[:3]), 30,
             what="serf agents to mark mesh-2 failed")
    serfs[2].kill()
    wait_for(lambda: all(_meshagent_view(a).get("serf-2") == FAILED for a in ours[:2]), 30,
             what="meshagents to mark serf-2 failed")
