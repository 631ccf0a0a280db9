"""One executor for what the gossip cores return, used by the trio runtime and by the simulator alike.

`Swim` and `Serf` return lists of output values (`gossip.outputs`) from every input; `GossipExecutor`
carries them out in order through a small `GossipIO` (send a packet, open a stream, persist the keyring,
publish an event, re-arm the timer). The runtime's I/O is sockets and trio tasks, the simulator's a seeded
virtual network; everything else, including the order of the steps of a join or a merge, lives here.
Pure: no trio, no sockets, no clock (`now` is passed in).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from . import messages as m
from .member import Member
from .membership import Swim, ip_text
from .outputs import (
    Address,
    Event,
    GossipSoon,
    KeyringChanged,
    MemberEvent,
    Output,
    PushPull,
    QueryResponse,
    Reply,
    SendPacket,
    StreamPing,
    UserEvent,
)
from .serf import Serf


class GossipIO(Protocol):
    """The I/O beneath the executor."""

    def send_packet(self, packet: SendPacket) -> None:
        """Send one UDP packet (the runtime adds CRC and encryption)."""

    def open_push_pull(self, addr: Address, join: bool) -> None:
        """Start a push-pull exchange with `addr`; its answer comes back through `GossipExecutor.merge`."""

    def open_stream_ping(self, ping: StreamPing) -> None:
        """Start a TCP ping; its outcome comes back through `GossipExecutor.stream_ping_result`."""

    def persist_keyring(self, keys: tuple[bytes, ...]) -> None:
        """Save the gossip keyring (primary first) where it survives a restart."""

    def publish(self, event: Event) -> None:
        """Hand a member event, user event or query response to the layer above."""

    def rearm(self) -> None:
        """The core's next deadline may have moved earlier: wake the timer."""


class GossipExecutor:
    """Carries out one node's gossip outputs, and runs the inputs that involve both cores in their order."""

    def __init__(self, swim: Swim, serf: Serf, io: GossipIO) -> None:
        self.swim, self.serf, self.io = swim, serf, io

    def carry_out(self, now: float, outs: Iterable[Output]) -> None:
        """Each output, in order."""
        for o in outs:
            if isinstance(o, SendPacket):
                self.io.send_packet(o)
            elif isinstance(o, Reply):
                # Straight to the asker, as memberlist's SendTo does: a lone user message, no CRC.
                message = bytes([m.MessageType.USER]) + o.message
                self.io.send_packet(SendPacket((ip_text(o.addr), o.port), [message]))
            elif isinstance(o, PushPull):
                self.io.open_push_pull(o.addr, o.join)
            elif isinstance(o, StreamPing):
                self.io.open_stream_ping(o)
            elif isinstance(o, GossipSoon):
                self.swim.gossip_soon(now)
                self.io.rearm()
            elif isinstance(o, KeyringChanged):
                self.io.persist_keyring(o.keys)
            elif isinstance(o, (MemberEvent, UserEvent, QueryResponse)):
                self.io.publish(o)

    # ------------------------------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """The node comes up (alive at incarnation 1)."""
        self.carry_out(now, self.swim.start(now))

    def tick(self, now: float) -> None:
        """Timers due at `now`: the core's, then Serf's reaping."""
        self.carry_out(now, self.swim.tick(now))
        self.carry_out(now, self.serf.reap(now))

    def receive(self, now: float, src: Address, message: bytes) -> None:
        """One single message from a packet; MessageError if malformed (then nothing changed)."""
        self.carry_out(now, self.swim.receive(now, src, message))

    def user_message(self, now: float, payload: bytes) -> None:
        """A user message that came over a stream (memberlist hands those to the delegate directly)."""
        self.carry_out(now, self.serf.notify_msg(now, payload))

    def merge(self, now: float, nodes: list[m.PushNodeState], user: bytes, join: bool) -> None:
        """A push-pull's other side: the core's member list, then Serf's state."""
        self.carry_out(now, self.swim.merge_remote_state(now, nodes))
        if user:
            self.carry_out(now, self.serf.merge_remote_state(now, user, join))

    def joined(self, now: float) -> None:
        """A join push-pull succeeded: announce our join intent, bring the next push-pull forward."""
        self.carry_out(now, self.serf.join_intent())
        self.swim.joined(now)

    def stream_ping_result(self, now: float, seq_no: int, ok: bool) -> None:
        """The outcome of a StreamPing."""
        self.carry_out(now, self.swim.stream_ping_result(now, seq_no, ok))

    def user_event(self, now: float, name: str, payload: bytes, coalesce: bool = True) -> int:
        """Fire a user event; its Lamport time."""
        ltime, outs = self.serf.user_event(name, payload, coalesce)
        self.carry_out(now, outs)
        return ltime

    def query(self, name: str, payload: bytes, timeout: float) -> tuple[int, list[Output]]:
        """Start a query; its id, and the outputs for the caller to carry out once it is ready for the answers
        (our own answer is among them)."""
        qid, outs = self.serf.query(name, payload, timeout)
        return qid, list(outs)

    def force_leave(self, now: float, node: str, prune: bool = False) -> bool:
        """Mark a failed member left (and forget it with `prune`); False if unknown."""
        ok, outs = self.serf.force_leave(node, prune)
        self.carry_out(now, outs)
        return ok

    def leave_intent(self, now: float) -> None:
        """Announce our graceful leave (Serf's part; the core's leave follows)."""
        self.carry_out(now, self.serf.leave_intent())

    def members(self) -> list[Member]:
        """Every member Serf knows, ourselves included, as typed values."""
        return self.serf.member_views()
