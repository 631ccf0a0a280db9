"""Read safety of the Raft core, driven by hand: a deposed leader's lease and ReadIndex never serve stale data.

The simulator checks linearizability over random runs; these pin down the two read paths at the exact
moments that matter (the partition, the new leader's first commit), so a weakened lease or a ReadIndex
that skips its quorum round fails here deterministically.
"""

from __future__ import annotations

import random

from meshagent.raft.config import RaftConfig
from meshagent.raft.entry import Membership, Server
from meshagent.raft.executor import EXECUTOR, drive
from meshagent.raft.node import LEADER, Output, RaftNode, ReadFailed, ReadReady, Send
from meshagent.raft.ready import Notice

from tests.support.raft_instant_io import InstantIO

IDS = ("a", "b", "c")
STEP = 0.01


class Net:
    """Three cores, storage taken as durable at once, messages delivered in order unless a node is cut off."""

    def __init__(self, seed: int = 7) -> None:
        self.config = RaftConfig()
        self.now = 0.0
        self.nodes = {i: RaftNode(i, self.config, random.Random(seed + n), self.now) for n, i in enumerate(IDS)}
        self.cut: set[str] = set()
        self.queue: list[tuple[str, Send]] = []
        self.reads: dict[object, Output] = {}
        membership = Membership(tuple(Server(i, f"{i}:8300", True) for i in IDS))
        for node in self.nodes.values():
            self.handle(node, node.bootstrap(membership))

    def handle(self, node: RaftNode, outs: list[Output]) -> None:
        """Carry the outputs out through the runtime's executor; storage is durable at once, nothing applies."""
        io = InstantIO(lambda: self.now, lambda s: self.queue.append((node.id, s)), self._record_read)
        drive(EXECUTOR.execute(node, outs, io))

    def _record_read(self, notice: Notice) -> None:
        if isinstance(notice, ReadReady | ReadFailed):
            self.reads[notice.ctx] = notice

    def step(self) -> None:
        """Deliver what is queued, then advance the clock one step and tick everyone."""
        while self.queue:
            batch, self.queue = self.queue, []
            for src, send in batch:
                if src in self.cut or send.to in self.cut:
                    continue
                node = self.nodes[send.to]
                self.handle(node, node.receive(self.now, src, send.msg))
        self.now += STEP
        for node in self.nodes.values():
            self.handle(node, node.tick(self.now))

    def run_until(self, cond, limit: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        end = self.now + limit
        while not cond():
            assert self.now < end, "condition not reached in virtual time"
            self.step()

    def leaders(self) -> list[RaftNode]:
        return [n for n in self.nodes.values() if n.role == LEADER]


def _elect(net: Net) -> RaftNode:
    net.run_until(lambda: len(net.leaders()) == 1 and all(n.leader_id for n in net.nodes.values()))
    leader = net.leaders()[0]
    _, outs = leader.propose_batch(net.now, [b"w1"])
    net.handle(leader, outs)
    net.run_until(lambda: all(n.commit_index == leader.last_index for n in net.nodes.values()))
    return leader


def test_lease_read_on_a_connected_leader_needs_no_round_trip() -> None:
    net = Net()
    leader = _elect(net)
    net.run_until(lambda: leader.lease_read_index(net.now) is not None, 2)
    assert leader.lease_read_index(net.now) == leader.commit_index


def test_a_cut_off_leaders_lease_ends_before_any_new_leader_commits() -> None:
    for seed in range(20):
        net = Net(seed)
        old = _elect(net)
        net.cut = {old.id}
        cut_at = last_lease = net.now
        while True:
            net.step()
            if old.lease_read_index(net.now) is not None:
                last_lease = net.now
            new = [n for n in net.leaders() if n.id != old.id]
            if new and new[0].term_at(new[0].commit_index) == new[0].term:
                break  # the new leader has committed in its own term: writes may now land there
            assert net.now < 30, "no new leader"
        assert old.lease_read_index(net.now) is None, f"seed {seed}: stale lease on the deposed leader"
        assert last_lease < net.now - STEP, f"seed {seed}: lease held up to the new leader's first commit"
        # The lease counts from the send time of the last acknowledged message, so it ends at most
        # leader_lease_timeout after the cut.
        assert last_lease <= cut_at + net.config.leader_lease_timeout, f"seed {seed}"


def test_read_index_waits_for_a_quorum_round_and_a_cut_off_leader_never_confirms() -> None:
    net = Net()
    leader = _elect(net)
    net.handle(leader, leader.read_index(net.now, "r1"))
    assert "r1" not in net.reads  # not served from local state: a quorum must answer a later message
    net.run_until(lambda: "r1" in net.reads, 2)
    ready = net.reads["r1"]
    assert isinstance(ready, ReadReady) and ready.index == leader.commit_index

    net.cut = {leader.id}
    net.handle(leader, leader.read_index(net.now, "r2"))
    net.run_until(lambda: any(n.role == LEADER and n.id != leader.id for n in net.nodes.values()), 30)
    # Whatever the deposed leader says about r2, it must not be "ready".
    net.run_until(lambda: leader.role != LEADER, 10)
    net.step()
    assert not isinstance(net.reads.get("r2"), ReadReady)
