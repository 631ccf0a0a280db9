"""The shared executor's order (raft/ready.py, raft/executor.py) and the trio I/O beneath it (agent/server/raft_io.py).

The trio tests run a real RaftNode over a real on-disk LogStore and check, at the moment each message
leaves, what the disk already holds: an acknowledgement or a vote only after its fsync, a leader's
heartbeat before the fsync of the entry proposed in the same step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import trio
import trio.testing
from meshagent.agent.server.raft_io import RaftIO
from meshagent.raft.config import RaftConfig
from meshagent.raft.entry import CONFIG, Entry, Membership, Server
from meshagent.raft.executor import EXECUTOR, drive
from meshagent.raft.messages import AppendRequest, AppendResponse, Message, VoteResponse
from meshagent.raft.node import (
    LEADER,
    AppendLog,
    Apply,
    InstallSnapshot,
    Output,
    PersistState,
    RaftNode,
    RoleChange,
    Send,
    encode_membership,
)
from meshagent.raft.ready import Notice, Ready, Storage
from meshagent.raft.storage import LogStore, MemorySnapshotStore

MEMBERSHIP = Membership((Server("s1", "127.0.0.1:8300"), Server("s2", "127.0.0.2:8300")))
ENTRY = Entry(1, 1, CONFIG, encode_membership(MEMBERSHIP))


def test_ready_sorts_a_step_and_lets_only_a_leaders_appends_go_early() -> None:
    ack = Send("s1", AppendResponse(1, True, 1, 1))
    change = RoleChange("follower", 1, "s1")
    outs: list[Output] = [change, ack, PersistState(1, None), AppendLog((ENTRY,)), Apply((ENTRY,))]
    follower = Ready.of(outs, leader=False)
    assert follower == Ready((), (PersistState(1, None), AppendLog((ENTRY,))), (ack,), (Apply((ENTRY,)),), (change,))
    leader = Ready.of([AppendLog((ENTRY,)), ack], leader=True)
    assert leader.early_sends == (ack,) and leader.sends == ()
    # A new term or vote in the same step: nothing leaves before the fsync, even for a leader.
    assert Ready.of([PersistState(2, "s1"), ack], leader=True).early_sends == ()
    assert not Ready.of([], leader=True)


class Recorder:
    """A ReadyIO that records the order of calls (and never suspends, as the simulator's)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def now(self) -> float:
        return 0.0

    async def persist(self, storage: Sequence[Storage]) -> None:
        self.calls.append("persist")

    def send(self, sends: Sequence[Send]) -> None:
        self.calls.append("send")

    def apply(self, out: Apply) -> None:
        self.calls.append("apply")

    def install_snapshot(self, out: InstallSnapshot) -> None:
        self.calls.append("install")

    def publish(self, out: Notice) -> None:
        self.calls.append("publish")

    def round_done(self) -> None:
        self.calls.append("done")


def test_the_executor_follows_the_ready_order() -> None:
    io = Recorder()
    ready = Ready((Send("s2", AppendResponse(1, True, 0, 1)),), (PersistState(1, None),),
                  (Send("s3", AppendResponse(1, True, 0, 2)),), (Apply(()),), (RoleChange("leader", 1, "s1"),))
    drive(EXECUTOR.carry_out(ready, io))
    assert io.calls == ["send", "persist", "send", "apply", "publish"]


def _config() -> RaftConfig:
    return RaftConfig(election_timeout=0.15, heartbeat_interval=0.03, leader_lease_timeout=0.1)


class Effects:
    """The driver's side (RaftEffects): records what comes back."""

    def __init__(self) -> None:
        self.handled: list[Output] = []
        self.rounds = 0

    def handle(self, out: Output) -> None:
        self.handled.append(out)

    def after_round(self) -> None:
        self.rounds += 1

    async def idle(self) -> None:
        pass


def _io(tmp_path: Path, sent: list[tuple[str, Message, int, int]]) -> RaftIO:
    store = LogStore.open(tmp_path)

    def send(to: str, msg: Message) -> None:
        sent.append((to, msg, store.last_index, store.term))  # what is durable when the message leaves

    return RaftIO(store, MemorySnapshotStore(), send)


def test_a_follower_acknowledges_only_what_is_on_disk(tmp_path: Path) -> None:
    sent: list[tuple[str, Message, int, int]] = []
    io, effects = _io(tmp_path, sent), Effects()

    async def main() -> None:
        node = RaftNode("s2", _config(), random.Random(1), trio.current_time())
        outs = node.receive(trio.current_time(), "s1", AppendRequest(1, "s1", 0, 0, (ENTRY,), 0, 1))
        await io.carry_out(node, outs, effects)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(to, msg) for to, msg, _, _ in sent] == [("s1", AppendResponse(1, True, 1, 1))]
    assert sent[0][2:] == (1, 1), "the acknowledgement left before the entry and the term were durable"
    assert io.fsyncs == 1
    assert RoleChange("follower", 1, "s1") in effects.handled


def test_a_leader_sends_before_its_own_fsync_but_votes_wait_for_theirs(tmp_path: Path) -> None:
    sent: list[tuple[str, Message, int, int]] = []
    io, effects = _io(tmp_path, sent), Effects()

    async def main() -> None:
        clock_now = trio.current_time
        node = RaftNode("s1", _config(), random.Random(1), clock_now())
        await io.carry_out(node, node.bootstrap(MEMBERSHIP), effects)
        await trio.sleep_until(node.next_deadline())
        await io.carry_out(node, node.tick(clock_now()), effects)  # pre-vote round (nothing durable)
        outs = node.receive(clock_now(), "s2", VoteResponse(node.term + 1, True, pre_vote=True))
        await io.carry_out(node, outs, effects)  # a real campaign: the vote request after term+vote fsync
        request = sent[-1]
        assert request[3] == node.term == 2, "the vote request left before the new term was durable"
        await io.carry_out(node, node.receive(clock_now(), "s2", VoteResponse(node.term, True)), effects)
        assert node.role == LEADER
        # One step: a proposal and the heartbeat that falls due with it. The heartbeat leaves first.
        await trio.sleep_until(node.next_deadline())
        sent.clear()
        fsyncs = io.fsyncs
        index, outs = node.propose(clock_now(), b"cmd")
        await io.carry_out(node, outs + node.tick(clock_now()), effects)
        assert sent and sent[0][2] < index, "the leader waited for its own fsync before sending"
        assert io.log_store.last_index == index and io.fsyncs == fsyncs + 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
