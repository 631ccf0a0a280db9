"""Rotating the gossip key on a live cluster (3 meshagent + 1 Debian serf) with `meshagent keyring`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import free_loopback_host
from tests.support.serf_rpc import SERF, SerfAgent
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))

pytestmark = pytest.mark.skipif(not os.path.exists(SERF), reason="Debian's serf is not installed (make system-deps)")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHAGENT, *args], capture_output=True, text=True, timeout=60)


def _alive(agent: AgentProcess) -> set[str]:
    try:
        members = httpx.get(f"{agent.http_addr}/v1/agent/members", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {m["Name"] for m in members if m["Status"] == 1}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[AgentProcess], SerfAgent, str]]:
    key = base64.b64encode(os.urandom(32)).decode()
    agents: list[AgentProcess] = []
    serf: SerfAgent | None = None
    try:
        first_host = free_loopback_host()
        for i in range(3):
            host = first_host if i == 0 else free_loopback_host()
            agent = AgentProcess(host=host, workdir=tmp_path, args=[
                "-data-dir", str(tmp_path / f"k{i}"), "-node", f"k{i}", "-bind", host, "-client", host,
                "-encrypt", key, "-retry-join", first_host])
            agents.append(agent)
            agent.start()
        host = free_loopback_host((8301, 7373, 8500, 8600, 8300))
        # serf keeps key changes only with a keyring file, which then holds the key (not -encrypt).
        (tmp_path / "serf.keyring").write_text(json.dumps([key]))
        serf = SerfAgent("serf-k", f"{host}:8301", f"{host}:7373", tmp_path,
                         extra=["-keyring-file", str(tmp_path / "serf.keyring")])
        serf.start()
        client = serf.rpc_client()
        client.join([f"{first_host}:8301"])
        client.close()
        everyone = {"k0", "k1", "k2", "serf-k"}
        wait_for(lambda: all(_alive(a) == everyone for a in agents), 30, what="all four alive")
        yield agents, serf, key
    finally:
        for agent in agents:
            agent.stop()
        if serf is not None:
            serf.kill()


@pytest.mark.slow
def test_install_use_remove_across_meshagent_and_serf(cluster: tuple[list[AgentProcess], SerfAgent, str],
                                                      tmp_path: Path) -> None:
    agents, serf, old = cluster
    new = _cli("keygen").stdout.strip()
    addr = ["-http-addr", agents[1].http_addr]

    listed = _cli("keyring", "-list", *addr)
    assert listed.returncode == 0, listed.stderr
    assert f"  {old} [4/4]" in listed.stdout.splitlines()

    for flag, key in (("-install", new), ("-use", new), ("-remove", old)):
        result = _cli("keyring", flag, key, *addr)
        assert result.returncode == 0, f"{flag}: {result.stderr}"
    listed = _cli("keyring", "-list", *addr)
    assert f"  {new} [4/4]" in listed.stdout.splitlines() and old not in listed.stdout

    # Everyone still talks (with the new key only), serf included, and the keyring is on disk.
    wait_for(lambda: all(_alive(a) == {"k0", "k1", "k2", "serf-k"} for a in agents), 15, what="all four alive")
    assert json.loads((tmp_path / "k0" / "serf" / "local.keyring").read_text()) == [new]
    assert json.loads((tmp_path / "serf.keyring").read_text()) == [new]  # serf applied our queries too
    assert set(serf.members()) == {"k0", "k1", "k2", "serf-k"}

    # Removing the primary key is refused, with the reason.
    refused = _cli("keyring", "-remove", new, *addr)
    assert refused.returncode == 1 and "primary" in refused.stderr.lower(), refused.stderr

    # A restarted agent reads its keyring file (the old -encrypt flag is ignored) and rejoins.
    agents[2].stop()
    agents[2].start()
    wait_for(lambda: _alive(agents[2]) == {"k0", "k1", "k2", "serf-k"}, 40, what="k2 back with the new key")


def test_keyring_needs_exactly_one_operation() -> None:
    result = _cli("keyring", "-http-addr", "127.0.0.1:1")
    assert result.returncode == 1
    assert "Exactly one of -list, -install, -use, or -remove" in result.stderr
