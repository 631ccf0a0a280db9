"""The seam between the SWIM core (`gossip.membership`) and the layer above it (`gossip.serf`).

Both sides are pure: the core calls these methods synchronously while it handles an input; the layer above
queues its broadcasts (handed out through `get_broadcasts`) and returns its other outputs (events, replies),
which the core passes on after its own.
Mirrors memberlist's Delegate and EventDelegate, with the clock passed in instead of read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .messages import NodeState
from .outputs import SerfOutput


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What the core knows about one member, as shown to the layer above."""

    name: str
    addr: bytes  # 4 (IPv4) or 16 (IPv6) raw bytes, as on the wire
    port: int
    meta: bytes
    incarnation: int
    state: NodeState
    vsn: bytes


class Delegate(Protocol):
    """What the SWIM core asks of the layer above (memberlist's Delegate + EventDelegate)."""

    def node_meta(self, limit: int) -> bytes:
        """Our node's metadata (Serf: encoded tags), at most `limit` bytes."""

    def notify_msg(self, now: float, payload: bytes) -> list[SerfOutput]:
        """A user message arrived (gossip or stream); `payload` is without memberlist's type byte."""

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """User messages to piggyback, each costing `overhead` extra bytes, `limit` bytes in all."""

    def local_state(self, join: bool) -> bytes:
        """Our user state for a push-pull exchange."""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[SerfOutput]:
        """The peer's user state from a push-pull exchange."""

    def notify_join(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        """A member became alive (new, or back from dead/left)."""

    def notify_leave(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        """A member became dead or left (`member.state` says which)."""

    def notify_update(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        """A live member changed its address or meta."""
