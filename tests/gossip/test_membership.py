"""The SWIM core by hand: piggybacking shares each packet between membership and user broadcasts."""

from __future__ import annotations

import random

from meshagent.gossip import messages as m
from meshagent.gossip.delegate import MemberInfo
from meshagent.gossip.membership import FRAMING_RESERVE, SendPacket, Swim
from meshagent.gossip.outputs import SerfOutput
from meshagent.gossip.tunables import GossipConfig


class UserQueue:
    """A delegate with one user message that it offers every time it is asked."""

    def __init__(self) -> None:
        self.offered = 0

    def node_meta(self, limit: int) -> bytes:
        return b""

    def notify_msg(self, now: float, payload: bytes) -> list[SerfOutput]:
        return []

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        self.offered += 1
        return [b"\x03user-event"] if limit >= 20 else []

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[SerfOutput]:
        return []

    def notify_join(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        return []

    def notify_leave(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        return []

    def notify_update(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        return []


def test_user_broadcasts_are_not_starved_by_a_storm_of_membership_changes() -> None:
    swim = Swim(GossipConfig(), "me", bytes([10, 0, 0, 1]), 8301, UserQueue(), random.Random(1))
    swim.start(0.0)
    # 300 members join at once: far more alive messages than one packet holds.
    for i in range(300):
        swim.receive(0.0, ("10.0.0.2", 8301), m.encode(m.Alive(1, f"node-{i:03}-" + "x" * 30,
                                                                bytes([10, 1, i // 250, i % 250]), 8301)))
    outs = [o for o in swim.tick(0.2) if isinstance(o, SendPacket)]
    assert outs, "a gossip round with pending broadcasts sends packets"
    for packet in outs:
        assert b"\x08\x03user-event" in packet.messages  # the user message rides in every packet
        assert any(x[0] == m.MessageType.ALIVE for x in packet.messages)  # and membership news still flows
        assert len(packet.payload()) <= 1400 - FRAMING_RESERVE  # on the wire (compressed when that fit more)
        assert packet.messages.count(b"\x08\x03user-event") == 1  # once per packet, not twice
