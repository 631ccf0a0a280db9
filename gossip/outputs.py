"""What the gossip cores hand back from each input: values, carried out by `gossip.executor`.

The SWIM core returns `SwimOutput`s (send a packet, open a push-pull, ping over TCP); Serf, its delegate,
returns `SerfOutput`s (a query reply to send, news to gossip soon, a keyring to persist, events to publish).
`Swim` passes its delegate's outputs on with its own, so one list per input carries everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .member import Member

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send these single messages to `addr` in one UDP packet (compound if several).

    `compressed`, when set, is what goes on the wire instead: one compress message (type 9) holding the
    compound of `messages`, which would not fit the packet uncompressed."""

    addr: Address
    messages: list[bytes]
    crc: bool = False
    compressed: bytes | None = None

    def payload(self) -> bytes:
        """The packet before CRC and encryption: the compressed form, the lone message, or a compound."""
        if self.compressed is not None:
            return self.compressed
        return self.messages[0] if len(self.messages) == 1 else wire.make_compound(self.messages)


Send = SendPacket


@dataclass(frozen=True, slots=True)
class PushPull:
    """Open a TCP push-pull exchange with `addr` (local state from `local_push_pull_state`)."""

    addr: Address
    join: bool


@dataclass(frozen=True, slots=True)
class StreamPing:
    """Ping `addr` over TCP; report with `stream_ping_result(seq_no, ok)`."""

    addr: Address
    ping: bytes
    seq_no: int


@dataclass(frozen=True, slots=True)
class Reply:
    """Send `message` (an encoded Serf message) straight to addr:port as a lone memberlist user message."""

    addr: bytes
    port: int
    message: bytes


@dataclass(frozen=True, slots=True)
class GossipSoon:
    """Serf queued news for gossip: run the next gossip round now (`Swim.gossip_soon`) and re-arm the timer."""


@dataclass(frozen=True, slots=True)
class KeyringChanged:
    """A key query changed the gossip keyring: persist it. `keys` is the new keyring, primary first."""

    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """member-join, member-leave, member-failed, member-update, member-reap."""

    kind: str
    member: Member


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A user event delivered here (once per Lamport time, name and payload)."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """An answer to one of our queries (`id`), from `from_node`; each responder's first answer only."""

    id: int
    from_node: str
    payload: bytes


SwimOutput = SendPacket | PushPull | StreamPing
Event = MemberEvent | UserEvent | QueryResponse  # what the executor publishes to the layer above
SerfOutput = Reply | GossipSoon | KeyringChanged | Event
Output = SwimOutput | SerfOutput
