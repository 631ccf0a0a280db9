"""A lost AppendEntries whose tracking a heartbeat's answer overtook is sent again without a new proposal.

Found by the simulator (seed 826 once steps batched proposals as the runtime does): an idle cluster held an
uncommitted entry forever, every follower having it or not, because the leader's heartbeats, anchored at
the follower's match index, kept succeeding.
"""

from __future__ import annotations

import random

from meshagent.raft.config import RaftConfig
from meshagent.raft.entry import Membership, Server
from meshagent.raft.executor import EXECUTOR, drive
from meshagent.raft.messages import AppendRequest, Message
from meshagent.raft.node import LEADER, Output, RaftNode

from tests.support.raft_instant_io import InstantIO

MEMBERSHIP = Membership((Server("s1", "127.0.0.1:8300"), Server("s2", "127.0.0.2:8300")))
CONFIG = RaftConfig(election_timeout=0.15, heartbeat_interval=0.03, leader_lease_timeout=0.1, inflight_timeout=0.1)


class Wire:
    """Two nodes, instant durable storage, a message queue the test delivers from (or drops)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.nodes = {sid: RaftNode(sid, CONFIG, random.Random(i), 0.0) for i, sid in enumerate(("s1", "s2"))}
        self.queue: list[tuple[str, str, Message]] = []

    def run(self, sid: str, outs: list[Output]) -> None:
        io = InstantIO(lambda: self.now, lambda s: self.queue.append((sid, s.to, s.msg)))
        drive(EXECUTOR.execute(self.nodes[sid], outs, io))

    def deliver_all(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.pop(0)
            self.run(dst, self.nodes[dst].receive(self.now, src, msg))

    def tick_until(self, t: float) -> None:
        while self.now < t:
            self.now = min(t, min(n.next_deadline() for n in self.nodes.values()))
            for sid, n in self.nodes.items():
                self.run(sid, n.tick(self.now))
            self.deliver_all()


def test_a_lost_append_overtaken_by_a_heartbeat_answer_is_sent_again() -> None:
    wire = Wire()
    for sid, n in wire.nodes.items():
        wire.run(sid, n.bootstrap(MEMBERSHIP))
    wire.tick_until(1.0)
    leader = wire.nodes["s1"] if wire.nodes["s1"].role == LEADER else wire.nodes["s2"]
    assert leader.role == LEADER
    index, outs = leader.propose(wire.now, b"first")
    wire.run(leader.id, outs)
    wire.deliver_all()
    assert leader.commit_index == index  # replicating (pipelined) to the follower
    lost_index, outs = leader.propose(wire.now, b"lost")
    wire.run(leader.id, outs)
    dropped = [m for m in wire.queue if isinstance(m[2], AppendRequest) and m[2].entries]
    assert dropped, "the new entry was not sent"
    wire.queue = [m for m in wire.queue if m not in dropped]  # the network loses it
    # Heartbeats (anchored at what the follower acknowledged) keep succeeding; no new proposal comes.
    wire.tick_until(wire.now + 10 * CONFIG.heartbeat_interval)
    assert leader.role == LEADER
    assert leader.commit_index >= lost_index, "the lost entry was never sent again"
