"""The in-memory harness for driving `Swim` cores by hand: a recording delegate, a tiny wire that carries
SendPackets at once, and a few helpers (a converged cluster, one probe round). Shared by the gossip tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshagent.gossip import messages as m
from meshagent.gossip.delegate import MemberInfo
from meshagent.gossip.membership import Output, SendPacket, Swim
from meshagent.gossip.messages import NodeState
from meshagent.gossip.outputs import SerfOutput
from meshagent.gossip.tunables import GossipConfig

CFG = GossipConfig()
PORT = 8301


@dataclass
class Rec:
    """A delegate that records every notification (kind, member name, state)."""

    meta: bytes = b""
    events: list[tuple[str, str, NodeState]] = field(default_factory=list)
    user: list[bytes] = field(default_factory=list)

    def node_meta(self, limit: int) -> bytes:
        return self.meta

    def notify_msg(self, now: float, payload: bytes) -> list[SerfOutput]:
        self.user.append(payload)
        return []

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return []

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[SerfOutput]:
        return []

    def notify_join(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        self.events.append(("join", member.name, member.state))
        return []

    def notify_leave(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        self.events.append(("leave", member.name, member.state))
        return []

    def notify_update(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        self.events.append(("update", member.name, member.state))
        return []

    def about(self, name: str) -> list[tuple[str, NodeState]]:
        return [(kind, state) for kind, who, state in self.events if who == name]


class Net:
    """Swim objects by address; carries SendPackets at once (in order) unless the destination is cut off."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, int], Swim] = {}
        self.down: set[str] = set()
        self.sent: list[tuple[str, str, m.Message]] = []  # (from, to, message) for every delivered message
        self.other: list[Output] = []  # PushPull / StreamPing outputs, for the test to inspect

    def add(self, name: str, last: int, now: float = 0.0, meta: bytes = b"") -> tuple[Swim, Rec]:
        rec = Rec(meta)
        swim = Swim(CFG, name, bytes([10, 0, 0, last]), PORT, rec, random.Random(last))
        swim.start(now)
        self.nodes[(f"10.0.0.{last}", PORT)] = swim
        return swim, rec

    def addr(self, swim: Swim) -> tuple[str, int]:
        return next(a for a, s in self.nodes.items() if s is swim)

    def run(self, now: float, src: Swim, outs: list[Output]) -> None:
        """Deliver `outs` from `src` and everything they provoke, breadth first."""
        pending = [(src, o) for o in outs]
        while pending:
            sender, o = pending.pop(0)
            if not isinstance(o, SendPacket):
                self.other.append(o)
                continue
            dst = self.nodes.get(o.addr)
            if dst is None or dst.name in self.down or sender.name in self.down:
                continue
            for raw in o.messages:
                self.sent.append((sender.name, dst.name, m.decode(raw)))
                pending.extend((dst, x) for x in dst.receive(now, self.addr(sender), raw))

    def push_pull(self, now: float, a: Swim, b: Swim, join: bool) -> None:
        """The TCP exchange the runtime performs for a PushPull output, done in place."""
        mine, theirs = a.local_push_pull_state(), b.local_push_pull_state()
        self.run(now, b, b.merge_remote_state(now, mine))
        self.run(now, a, a.merge_remote_state(now, theirs))

    def tick(self, now: float, *swims: Swim) -> None:
        for swim in swims or tuple(self.nodes.values()):
            if swim.name not in self.down:
                self.run(now, swim, swim.tick(now))


def cluster(n: int) -> tuple[Net, list[Swim], list[Rec]]:
    """n nodes that all joined node 0 and exchanged full state: everyone alive everywhere."""
    net = Net()
    pairs = [net.add(f"n{i}", i + 1) for i in range(n)]
    swims, recs = [p[0] for p in pairs], [p[1] for p in pairs]
    for s in swims[1:]:
        net.push_pull(0.0, s, swims[0], True)
    for s in swims[1:]:
        net.push_pull(0.0, s, swims[0], False)
    for s in swims:
        assert {x.name: x.state for x in s.member_list()} == {x.name: NodeState.ALIVE for x in swims}
    return net, swims, recs


def state(viewer: Swim, name: str) -> NodeState | None:
    mem = viewer.members.get(name)
    return mem.state if mem else None


def probe_round(net: Net, swim: Swim, now: float) -> tuple[str, int]:
    """Let `swim` start its next probe at `now`; return (target name, sequence number)."""
    outs = swim.tick(now)
    pings = [(o, m.decode(o.messages[0])) for o in outs if isinstance(o, SendPacket)
             and m.decode(o.messages[0]).TYPE == m.MessageType.PING]
    assert len(pings) == 1, outs
    ping = pings[0][1]
    assert isinstance(ping, m.Ping)
    return ping.node, ping.seq_no
