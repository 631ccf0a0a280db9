"""Autopilot on real processes: a replacement joins as a non-voter, the dead server goes, then promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.netns import Hosts
from tests.support.raft_cluster import Cluster
from tests.support.wait import wait_for


def _servers(agent: AgentProcess) -> dict[str, bool]:
    """Node name -> voter, from the agent's view of the Raft configuration."""
    try:
        config: dict[str, Any] = httpx.get(f"{agent.http_addr}/v1/operator/raft/configuration",
                                           params={"stale": ""}, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {s["Node"]: s["Voter"] for s in config.get("Servers", [])}


@pytest.mark.slow
def test_replacement_joins_as_nonvoter_dead_server_is_removed_and_replacement_promoted(
        tmp_path: Path, hosts: Hosts) -> None:
    cluster = Cluster(tmp_path, 3, hosts)
    try:
        leader = cluster.wait_one_leader()
        assert httpx.put(f"{leader.http_addr}/v1/kv/before", content=b"kept", timeout=10).json() is True
        # The leader dies for good: the survivors must elect one of themselves, then take the replacement.
        dead = next(i for i, (_, a) in enumerate(cluster.members) if a is leader)
        survivors = [a for i, (_, a) in enumerate(cluster.members) if i != dead]
        leader.kill()
        cluster.members.append(cluster.members.pop(dead))  # the survivors first, as the joins below expect

        host = hosts.add()
        joins = [a for h, _ in cluster.members[:2] for a in ("-retry-join", h.address)]
        replacement = AgentProcess(host=host.address, workdir=tmp_path, prefix=host.prefix, args=[
            "-server", "-bootstrap-expect", "3", "-data-dir", str(tmp_path / "s3"), "-node", "s3",
            "-bind", host.address, "-client", host.address, *joins])
        cluster.members.append((host, replacement))  # stopped with the cluster
        replacement.start(wait=False)
        replacement.wait_ready(30)

        seen_as_nonvoter = []

        def joined_as_nonvoter() -> bool:
            view = _servers(survivors[0])
            if view.get("s3") is False:
                seen_as_nonvoter.append(view)
            return bool(seen_as_nonvoter)

        # server_stabilization_time is 10 s, so the non-voter phase is long enough to be seen.
        wait_for(joined_as_nonvoter, 20, what="s3 in the configuration as a non-voter")
        want = {f"s{i}": True for i in range(3) if i != dead} | {"s3": True}
        wait_for(lambda: _servers(survivors[0]) == want, 60, what=f"s{dead} removed and s3 promoted to voter")
        # The replacement holds the data and every server agrees on the configuration.
        r = httpx.get(f"{replacement.http_addr}/v1/kv/before", params={"raw": "", "stale": ""}, timeout=5)
        assert r.content == b"kept"
        wait_for(lambda: all(_servers(a) == want for a in [*survivors, replacement]), 20,
                 what="every server to see the same configuration")
    finally:
        cluster.stop()
