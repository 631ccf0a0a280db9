"""Whatever the leader commits fits the frames it replicates in, on a plaintext cluster too (issue 11).

:8300 reads at most 16 MiB per frame from a peer it cannot verify. Before appends were bounded by bytes, a
follower that came back behind a burst of large writes was sent them in one append larger than that: it
dropped the connection every time and never caught up.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import msgpack
from meshagent.agent.catalog.commands import kv_set

from tests.raft.test_batching import _answers, _frames
from tests.support.agents import AgentProcess
from tests.support.loopback_range import LoopbackRange
from tests.support.raft_cluster import Cluster
from tests.support.wait import wait_for


def _keys(agent: AgentProcess) -> int:
    keys = httpx.get(f"{agent.http_addr}/v1/kv/big/?keys&stale", timeout=5)
    return len(keys.json()) if keys.status_code == 200 else 0


def test_a_follower_behind_a_burst_of_large_writes_catches_up_and_an_oversized_command_is_refused(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, LoopbackRange(235, 249))  # type: ignore[arg-type]
    try:
        leader = cluster.wait_one_leader()
        lagging = next(agent for _, agent in cluster.members if agent is not leader)
        lagging.stop()  # it misses the burst; the other follower makes the quorum
        value = b"v" * (480 * 1024)
        # 48 x 480 KiB = 22.5 MiB, all of which the follower must fetch when it comes back.
        commands = [msgpack.packb(kv_set(f"big/{i:02}", value), use_bin_type=True) for i in range(48)]
        huge = msgpack.packb(kv_set("big/huge", b"h" * (5 * 1024 * 1024)), use_bin_type=True)
        with socket.create_connection((leader.host, 8300), timeout=30) as sock:
            sock.sendall(_frames([*commands, huge]))
            answers = _answers(sock, len(commands) + 1)
        assert all(answers[rid] == (None, True) for rid in range(1, 49)), answers
        error, _ = answers[49]
        assert isinstance(error, str) and "exceeds" in error, error
        lagging.start()
        for _, agent in cluster.members:
            wait_for(lambda agent=agent: _keys(agent) == 48, 30, what=f"all 48 large values on {agent.host}")
    finally:
        cluster.stop()
