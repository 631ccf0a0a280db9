"""memberlist's gossip messages as dataclasses, and their single-message wire form.

One message on the wire is a type byte followed by a msgpack map keyed by the Go struct's field
names, encoded the way hashicorp/go-msgpack's default handle does it: the *old* msgpack spec, where
strings and byte slices are both "raw" (no bin type, no str8). `Vsn` is a Go `[]uint8`, so it too
travels as raw bytes. Framing around messages (compound, CRC, compression, encryption, TCP streams)
lives in `gossip.wire`; this module only knows one message at a time.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack


class MessageType(IntEnum):
    """memberlist's message type byte (net.go)."""

    PING = 0
    INDIRECT_PING = 1
    ACK_RESP = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK_RESP = 11
    HAS_CRC = 12
    ERR = 13


class NodeState(IntEnum):
    """A member's state as memberlist sends it in push-pull (state.go)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class MessageError(ValueError):
    """A message that cannot be decoded: wrong type byte, bad msgpack, missing or mistyped field."""


# Field kinds: how a Go field is typed and therefore how it is checked on the way in.
_UINT = "uint"  # a Go int used as a count or length: non-negative int64
_U16 = "u16"
_U32 = "u32"
_STR = "str"
_BYTES = "bytes"
_BOOL = "bool"

# Protocol/delegate versions we speak: pmin, pmax, pcur, dmin, dmax, dcur. memberlist protocol 2..5
# (we speak 4: nacks, TCP ping), Serf's delegate protocol 2..5 (we speak 5), as Serf 0.8 does.
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 4])


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe; `node` lets the target refuse a probe meant for a previous owner of its address."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("seq_no", "SeqNo", _U32, False),
        ("node", "Node", _STR, False),
        ("source_addr", "SourceAddr", _BYTES, True),
        ("source_port", "SourcePort", _U16, True),
        ("source_node", "SourceNode", _STR, True),
    )
    seq_no: int
    node: str
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask a member to probe `target`:`port` for us and relay the ack (and a nack if `nack`)."""

    TYPE: ClassVar[MessageType] = MessageType.INDIRECT_PING
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("seq_no", "SeqNo", _U32, False),
        ("target", "Target", _BYTES, False),
        ("port", "Port", _U16, False),
        ("node", "Node", _STR, False),
        ("nack", "Nack", _BOOL, False),
        ("source_addr", "SourceAddr", _BYTES, True),
        ("source_port", "SourcePort", _U16, True),
        ("source_node", "SourceNode", _STR, True),
    )
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class AckResp:
    """Answer to a ping; `payload` carries the ping delegate's data (Serf: network coordinates)."""

    TYPE: ClassVar[MessageType] = MessageType.ACK_RESP
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("seq_no", "SeqNo", _U32, False),
        ("payload", "Payload", _BYTES, False),
    )
    seq_no: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class NackResp:
    """An indirect prober saying "I asked, nobody answered": evidence that *we* are not the slow one."""

    TYPE: ClassVar[MessageType] = MessageType.NACK_RESP
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (("seq_no", "SeqNo", _U32, False),)
    seq_no: int


@dataclass(frozen=True, slots=True)
class ErrResp:
    """An error relayed over a TCP stream."""

    TYPE: ClassVar[MessageType] = MessageType.ERR
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (("error", "Error", _STR, False),)
    error: str


@dataclass(frozen=True, slots=True)
class Suspect:
    """Gossip: `from_node` suspects `node` at `incarnation`."""

    TYPE: ClassVar[MessageType] = MessageType.SUSPECT
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("incarnation", "Incarnation", _U32, False),
        ("node", "Node", _STR, False),
        ("from_node", "From", _STR, False),
    )
    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class Alive:
    """Gossip: `node` is alive at `incarnation` (also how a node announces its join, address and meta)."""

    TYPE: ClassVar[MessageType] = MessageType.ALIVE
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("incarnation", "Incarnation", _U32, False),
        ("node", "Node", _STR, False),
        ("addr", "Addr", _BYTES, False),
        ("port", "Port", _U16, False),
        ("meta", "Meta", _BYTES, False),
        ("vsn", "Vsn", _BYTES, False),
    )
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class Dead:
    """Gossip: `node` is dead; when `from_node == node` it is a graceful leave."""

    TYPE: ClassVar[MessageType] = MessageType.DEAD
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("incarnation", "Incarnation", _U32, False),
        ("node", "Node", _STR, False),
        ("from_node", "From", _STR, False),
    )
    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class PushPullHeader:
    """Start of a push-pull stream: how many node states and how many bytes of user state follow."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("nodes", "Nodes", _UINT, False),
        ("user_state_len", "UserStateLen", _UINT, False),
        ("join", "Join", _BOOL, False),
    )
    nodes: int
    user_state_len: int
    join: bool


@dataclass(frozen=True, slots=True)
class PushNodeState:
    """One member's full state inside a push-pull exchange (no type byte of its own)."""

    TYPE: ClassVar[MessageType] = MessageType.PUSH_PULL
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("name", "Name", _STR, False),
        ("addr", "Addr", _BYTES, False),
        ("port", "Port", _U16, False),
        ("meta", "Meta", _BYTES, False),
        ("incarnation", "Incarnation", _U32, False),
        ("state", "State", _UINT, False),
        ("vsn", "Vsn", _BYTES, False),
    )
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True, slots=True)
class UserMsgHeader:
    """Start of a user message sent over a TCP stream."""

    TYPE: ClassVar[MessageType] = MessageType.USER
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (("user_msg_len", "UserMsgLen", _UINT, False),)
    user_msg_len: int


@dataclass(frozen=True, slots=True)
class UserMsg:
    """A delegate (Serf) message: the type byte and then the delegate's own bytes, no msgpack wrapper."""

    TYPE: ClassVar[MessageType] = MessageType.USER
    GO: ClassVar[tuple[tuple[str, str, str, bool], ...]] = ()
    payload: bytes


Message = Ping | IndirectPing | AckResp | NackResp | ErrResp | Suspect | Alive | Dead | UserMsg

_PACKET_TYPES: dict[int, type[Any]] = {
    MessageType.PING: Ping,
    MessageType.INDIRECT_PING: IndirectPing,
    MessageType.ACK_RESP: AckResp,
    MessageType.NACK_RESP: NackResp,
    MessageType.ERR: ErrResp,
    MessageType.SUSPECT: Suspect,
    MessageType.ALIVE: Alive,
    MessageType.DEAD: Dead,
}

# Go's widths: a value the Go peer could not hold is a bad message here too (a uint32 incarnation of 2^64-1
# once crashed the agent that tried to refute it).
_UINT_MAX = {_UINT: (1 << 63) - 1, _U16: 0xFFFF, _U32: 0xFFFF_FFFF}


def to_map(msg: Any) -> dict[str, Any]:
    """The Go-named msgpack map for a message body (omitempty fields left out when empty)."""
    out: dict[str, Any] = {}
    for attr, go_name, _kind, omitempty in msg.GO:
        value = getattr(msg, attr)
        if omitempty and not value:
            continue
        out[go_name] = value
    return out


def pack_body(msg: Any) -> bytes:
    """msgpack of a message body in go-msgpack's old-spec form (bytes and str both as raw)."""
    packed: bytes = msgpack.packb(to_map(msg), use_bin_type=False)
    return packed


def encode(msg: Message) -> bytes:
    """One message as memberlist sends it: type byte + body (a user message: type byte + payload)."""
    if isinstance(msg, UserMsg):
        return bytes([MessageType.USER]) + msg.payload
    return bytes([msg.TYPE]) + pack_body(msg)


def from_map(cls: type[Any], raw: Any) -> Any:
    """Build `cls` from a decoded msgpack map (keys and raw strings as bytes), checking every field."""
    if not isinstance(raw, dict):
        raise MessageError(f"{cls.__name__}: expected a map, got {type(raw).__name__}")
    by_name: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        by_name[name] = value
    kwargs: dict[str, Any] = {}
    for attr, go_name, kind, _omitempty in cls.GO:
        if go_name not in by_name:
            # go-msgpack leaves zero values implied for missing keys; so do we, for fields with a default.
            if _has_default(cls, attr):
                continue
            raise MessageError(f"{cls.__name__}: field {go_name} missing")
        kwargs[attr] = _check(cls.__name__, go_name, kind, by_name[go_name])
    return cls(**kwargs)


def _has_default(cls: type[Any], attr: str) -> bool:
    for f in fields(cls):
        if f.name == attr:
            return f.default is not MISSING
    return False


def _check(owner: str, go_name: str, kind: str, value: Any) -> Any:
    top = _UINT_MAX.get(kind)
    if top is not None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise MessageError(f"{owner}: field {go_name} must be an unsigned integer up to {top}")
        return value
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise MessageError(f"{owner}: field {go_name} must be a bool")
        return value
    if value is None:  # go-msgpack writes a nil slice as nil
        return "" if kind == _STR else b""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise MessageError(f"{owner}: field {go_name} must be a string")
    if kind == _STR:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"{owner}: field {go_name} is not UTF-8") from exc
    return value


def unpack_body(data: bytes) -> Any:
    """Decode one msgpack object (raw strings stay bytes); trailing bytes are an error."""
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=False, max_bin_len=len(data), max_str_len=len(data))
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise MessageError(f"bad msgpack: {exc}") from exc


def decode(data: bytes) -> Message:
    """Decode one packet-level message (type byte + body); raise MessageError on anything malformed."""
    if not data:
        raise MessageError("empty message")
    kind = data[0]
    if kind == MessageType.USER:
        return UserMsg(payload=bytes(data[1:]))
    cls = _PACKET_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"unknown message type {kind}")
    result: Message = from_map(cls, unpack_body(data[1:]))
    return result
