"""Serf's own messages, carried inside memberlist user messages (serf/messages.go), and node-meta tags.

Each message is one type byte and a msgpack map keyed by the Go field names, in go-msgpack's old-spec
form (strings and byte slices both raw), like `gossip.messages`. Serf declares no `omitempty`, so every
field is always written; on the way in a missing field takes its Go zero value, as go-msgpack does.
`time.Duration` travels as an int64 of nanoseconds. Key request/response and conflict response are not
gossiped on their own: they are the payloads of internal queries (`_serf_*`) and their responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from .member import MemberStatus as MemberStatus  # Serf's numbers, as a conflict response carries them
from .messages import MessageError, unpack_body


class SerfMessageType(IntEnum):
    """Serf's message type byte (messages.go)."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


class FilterType(IntEnum):
    """The first byte of an encoded query filter."""

    NODE = 0
    TAG = 1


QUERY_FLAG_ACK = 1  # the receiver should answer with an ack response straight away
QUERY_FLAG_NO_BROADCAST = 2  # the receiver should not re-gossip the query

TAG_MAGIC_BYTE = 255  # node meta starting with it is a msgpack tag map; otherwise it is a bare role string

INTERNAL_QUERY_PREFIX = "_serf_"
PING_QUERY = "_serf_ping"
CONFLICT_QUERY = "_serf_conflict"
INSTALL_KEY_QUERY = "_serf_install-key"
USE_KEY_QUERY = "_serf_use-key"
REMOVE_KEY_QUERY = "_serf_remove-key"
LIST_KEYS_QUERY = "_serf_list-keys"
MIN_ENCODED_KEY_LENGTH = 25  # Serf caps list-keys answers at QueryResponseSizeLimit // this many keys

# Field kinds. The unsigned ones carry their Go width so that a value Go would reject is rejected here too.
_U8, _U16, _U32, _U64, _I64 = "u8", "u16", "u32", "u64", "i64"
_STR, _BYTES, _BOOL = "str", "bytes", "bool"
_STR_LIST, _BYTES_LIST, _STR_MAP, _LTIME_MAP = "[]str", "[]bytes", "map[str]str", "map[str]u64"
_EVENTS, _EVENT_LIST = "[]*userEvents", "[]userEvent"
_UINT_BITS = {_U8: 8, _U16: 16, _U32: 32, _U64: 64}

GoFields = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One event as remembered in a push-pull's event buffer."""

    GO: ClassVar[GoFields] = (("name", "Name", _STR), ("payload", "Payload", _BYTES))
    name: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class UserEvents:
    """The events Serf saw at one event Lamport time."""

    GO: ClassVar[GoFields] = (("ltime", "LTime", _U64), ("events", "Events", _EVENT_LIST))
    ltime: int = 0
    events: tuple[UserEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaveMsg:
    """`node` intends to leave (sent before the memberlist leave); `prune` also forgets it."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.LEAVE
    GO: ClassVar[GoFields] = (("ltime", "LTime", _U64), ("node", "Node", _STR), ("prune", "Prune", _BOOL))
    ltime: int = 0
    node: str = ""
    prune: bool = False


@dataclass(frozen=True, slots=True)
class JoinMsg:
    """`node` joined at Lamport time `ltime`."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.JOIN
    GO: ClassVar[GoFields] = (("ltime", "LTime", _U64), ("node", "Node", _STR))
    ltime: int = 0
    node: str = ""


@dataclass(frozen=True, slots=True)
class PushPullMsg:
    """Serf's state in a memberlist push-pull: clocks, member status times, left members, recent events."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.PUSH_PULL
    GO: ClassVar[GoFields] = (
        ("ltime", "LTime", _U64),
        ("status_ltimes", "StatusLTimes", _LTIME_MAP),
        ("left_members", "LeftMembers", _STR_LIST),
        ("event_ltime", "EventLTime", _U64),
        ("events", "Events", _EVENTS),
        ("query_ltime", "QueryLTime", _U64),
    )
    ltime: int = 0
    status_ltimes: dict[str, int] = field(default_factory=dict)
    left_members: tuple[str, ...] = ()
    event_ltime: int = 0
    # Serf sends its whole ring buffer: empty slots travel as nil and stay None here.
    events: tuple[UserEvents | None, ...] = ()
    query_ltime: int = 0


@dataclass(frozen=True, slots=True)
class UserEventMsg:
    """A user event; `cc` ("can coalesce") lets receivers merge events of the same name."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.USER_EVENT
    GO: ClassVar[GoFields] = (
        ("ltime", "LTime", _U64),
        ("name", "Name", _STR),
        ("payload", "Payload", _BYTES),
        ("cc", "CC", _BOOL),
    )
    ltime: int = 0
    name: str = ""
    payload: bytes = b""
    cc: bool = False


@dataclass(frozen=True, slots=True)
class QueryMsg:
    """A query; answers go straight to `addr`:`port` (node `source_node`), within `timeout_ns`."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY
    GO: ClassVar[GoFields] = (
        ("ltime", "LTime", _U64),
        ("id", "ID", _U32),
        ("addr", "Addr", _BYTES),
        ("port", "Port", _U16),
        ("source_node", "SourceNode", _STR),
        ("filters", "Filters", _BYTES_LIST),
        ("flags", "Flags", _U32),
        ("relay_factor", "RelayFactor", _U8),
        ("timeout_ns", "Timeout", _I64),
        ("name", "Name", _STR),
        ("payload", "Payload", _BYTES),
    )
    ltime: int = 0
    id: int = 0
    addr: bytes = b""
    port: int = 0
    source_node: str = ""
    filters: tuple[bytes, ...] = ()
    flags: int = 0
    relay_factor: int = 0
    timeout_ns: int = 0
    name: str = ""
    payload: bytes = b""

    @property
    def ack(self) -> bool:
        """The sender asked for an ack response."""
        return bool(self.flags & QUERY_FLAG_ACK)

    @property
    def no_broadcast(self) -> bool:
        """The sender asked us not to re-gossip it."""
        return bool(self.flags & QUERY_FLAG_NO_BROADCAST)


@dataclass(frozen=True, slots=True)
class QueryResponseMsg:
    """An answer to query `id` at `ltime` from node `from_node`; with the ack flag, just an ack."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.QUERY_RESPONSE
    GO: ClassVar[GoFields] = (
        ("ltime", "LTime", _U64),
        ("id", "ID", _U32),
        ("from_node", "From", _STR),
        ("flags", "Flags", _U32),
        ("payload", "Payload", _BYTES),
    )
    ltime: int = 0
    id: int = 0
    from_node: str = ""
    flags: int = 0
    payload: bytes = b""

    @property
    def ack(self) -> bool:
        """This is an ack, not a response."""
        return bool(self.flags & QUERY_FLAG_ACK)


@dataclass(frozen=True, slots=True)
class Member:
    """Serf's view of a member, as a conflict response carries it."""

    GO: ClassVar[GoFields] = (
        ("name", "Name", _STR),
        ("addr", "Addr", _BYTES),
        ("port", "Port", _U16),
        ("tags", "Tags", _STR_MAP),
        ("status", "Status", _I64),
        ("protocol_min", "ProtocolMin", _U8),
        ("protocol_max", "ProtocolMax", _U8),
        ("protocol_cur", "ProtocolCur", _U8),
        ("delegate_min", "DelegateMin", _U8),
        ("delegate_max", "DelegateMax", _U8),
        ("delegate_cur", "DelegateCur", _U8),
    )
    name: str = ""
    addr: bytes = b""
    port: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    status: int = MemberStatus.NONE
    protocol_min: int = 0
    protocol_max: int = 0
    protocol_cur: int = 0
    delegate_min: int = 0
    delegate_max: int = 0
    delegate_cur: int = 0


@dataclass(frozen=True, slots=True)
class ConflictResponseMsg:
    """Answer to `_serf_conflict`: the member the responder knows under that name, or None (Go nil)."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.CONFLICT_RESPONSE
    member: Member | None = None


@dataclass(frozen=True, slots=True)
class KeyRequestMsg:
    """Payload of the keyring queries: the raw key (empty for list-keys)."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.KEY_REQUEST
    GO: ClassVar[GoFields] = (("key", "Key", _BYTES),)
    key: bytes = b""


@dataclass(frozen=True, slots=True)
class KeyResponseMsg:
    """One node's answer to a keyring query (Go's nodeKeyResponse); keys are base64 strings."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.KEY_RESPONSE
    GO: ClassVar[GoFields] = (
        ("result", "Result", _BOOL),
        ("message", "Message", _STR),
        ("keys", "Keys", _STR_LIST),
        ("primary_key", "PrimaryKey", _STR),
    )
    result: bool = False
    message: str = ""
    keys: tuple[str, ...] = ()
    primary_key: str = ""


@dataclass(frozen=True, slots=True)
class RelayMsg:
    """Ask the receiver to forward `message` (an encoded Serf message) as a user packet to the destination."""

    TYPE: ClassVar[SerfMessageType] = SerfMessageType.RELAY
    dest_addr: bytes
    dest_port: int
    dest_name: str
    message: bytes
    dest_zone: str = ""


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Only the named nodes process the query."""

    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TagFilter:
    """Only nodes whose tag `tag` matches the regular expression `expr` (anchored by the receiver) process it."""

    tag: str
    expr: str


SerfMessage = (
    LeaveMsg
    | JoinMsg
    | PushPullMsg
    | UserEventMsg
    | QueryMsg
    | QueryResponseMsg
    | ConflictResponseMsg
    | KeyRequestMsg
    | KeyResponseMsg
    | RelayMsg
)

_STRUCT_TYPES: dict[int, type[Any]] = {
    SerfMessageType.LEAVE: LeaveMsg,
    SerfMessageType.JOIN: JoinMsg,
    SerfMessageType.PUSH_PULL: PushPullMsg,
    SerfMessageType.USER_EVENT: UserEventMsg,
    SerfMessageType.QUERY: QueryMsg,
    SerfMessageType.QUERY_RESPONSE: QueryResponseMsg,
    SerfMessageType.KEY_REQUEST: KeyRequestMsg,
    SerfMessageType.KEY_RESPONSE: KeyResponseMsg,
}


# ------------------------------------------------------------------------------------------------ encoding


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=False)
    return packed


def _struct_map(obj: Any) -> dict[str, Any]:
    return {go: _wire_value(kind, getattr(obj, attr)) for attr, go, kind in obj.GO}


def _wire_value(kind: str, value: Any) -> Any:
    if kind == _EVENTS:
        return [None if item is None else _struct_map(item) for item in value]
    if kind == _EVENT_LIST:
        return [_struct_map(item) for item in value]
    if kind in (_STR_LIST, _BYTES_LIST):
        return list(value)
    if kind == _STR_MAP:
        return dict(sorted(value.items()))
    if kind == _LTIME_MAP:
        return dict(sorted(value.items()))
    return value


def encode(msg: SerfMessage) -> bytes:
    """One Serf message as Serf sends it inside a memberlist user message: type byte + msgpack body."""
    head = bytes([msg.TYPE])
    if isinstance(msg, ConflictResponseMsg):
        return head + _pack(None if msg.member is None else _struct_map(msg.member))
    if isinstance(msg, RelayMsg):
        header = {"DestAddr": {"IP": msg.dest_addr, "Port": msg.dest_port, "Zone": msg.dest_zone},
                  "DestName": msg.dest_name}
        return head + _pack(header) + msg.message
    return head + _pack(_struct_map(msg))


def encode_node_filter(nodes: list[str] | tuple[str, ...]) -> bytes:
    """A query filter naming the nodes that should process the query."""
    return bytes([FilterType.NODE]) + _pack(list(nodes))


def encode_tag_filter(tag: str, expr: str) -> bytes:
    """A query filter on one tag matching a regular expression."""
    return bytes([FilterType.TAG]) + _pack({"Tag": tag, "Expr": expr})


def encode_tags(tags: dict[str, str], *, legacy: bool = False) -> bytes:
    """Node meta for `tags`: magic byte + msgpack map; `legacy` (Serf protocol < 3) sends only the role."""
    if legacy:
        return tags.get("role", "").encode("utf-8")
    return bytes([TAG_MAGIC_BYTE]) + _pack(dict(sorted(tags.items())))


def key_request_payload(key: bytes) -> bytes:
    """The payload of `_serf_install-key`, `_serf_use-key`, `_serf_remove-key` (and, with b"", list-keys)."""
    return encode(KeyRequestMsg(key=key))


# ------------------------------------------------------------------------------------------------ decoding


def decode(data: bytes) -> SerfMessage:
    """Decode one Serf message (type byte + body); MessageError on anything malformed."""
    if not data:
        raise MessageError("empty Serf message")
    kind = data[0]
    if kind == SerfMessageType.RELAY:
        return _decode_relay(data)
    body = unpack_body(data[1:])
    if kind == SerfMessageType.CONFLICT_RESPONSE:
        return ConflictResponseMsg(member=None if body is None else _struct_from_map(Member, body))
    cls = _STRUCT_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"unknown Serf message type {kind}")
    result: SerfMessage = _struct_from_map(cls, body)
    return result


def decode_filter(data: bytes) -> NodeFilter | TagFilter:
    """Decode one query filter; MessageError when malformed or of an unknown type."""
    if not data:
        raise MessageError("empty query filter")
    body = unpack_body(data[1:])
    if data[0] == FilterType.NODE:
        return NodeFilter(nodes=tuple(_field("NodeFilter", "nodes", _STR_LIST, body)))
    if data[0] == FilterType.TAG:
        if not isinstance(body, dict):
            raise MessageError("TagFilter: expected a map")
        fields = _by_name(body)
        return TagFilter(tag=_field("TagFilter", "Tag", _STR, fields.get("Tag")),
                         expr=_field("TagFilter", "Expr", _STR, fields.get("Expr")))
    raise MessageError(f"unknown query filter type {data[0]}")


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from node meta: a msgpack map after the magic byte, else the legacy form {"role": meta}."""
    if not meta or meta[0] != TAG_MAGIC_BYTE:
        return {"role": meta.decode("utf-8", "replace")}
    tags: dict[str, str] = _field("tags", "Tags", _STR_MAP, unpack_body(meta[1:]))
    return tags


def _decode_relay(data: bytes) -> RelayMsg:
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data[1:])
    try:
        header = unpacker.unpack()
    except Exception as exc:  # msgpack raises a zoo of types (OutOfData, FormatError, ValueError...)
        raise MessageError(f"relay header: bad msgpack: {exc}") from exc
    inner = data[1 + unpacker.tell() :]
    if not isinstance(header, dict):
        raise MessageError("relay header: expected a map")
    fields = _by_name(header)
    dest = fields.get("DestAddr")
    dest_fields = _by_name(dest) if isinstance(dest, dict) else {}
    if dest is not None and not isinstance(dest, dict):
        raise MessageError("relay header: DestAddr must be a map")
    port = _field("relay", "Port", _I64, dest_fields.get("Port"))
    if not 0 <= port <= 0xFFFF:
        raise MessageError("relay header: port out of range")
    return RelayMsg(
        dest_addr=_field("relay", "IP", _BYTES, dest_fields.get("IP")),
        dest_port=port,
        dest_zone=_field("relay", "Zone", _STR, dest_fields.get("Zone")),
        dest_name=_field("relay", "DestName", _STR, fields.get("DestName")),
        message=bytes(inner),
    )


def _by_name(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)] = value
    return out


def _struct_from_map(cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise MessageError(f"{cls.__name__}: expected a map, got {type(raw).__name__}")
    fields = _by_name(raw)
    kwargs = {attr: _field(cls.__name__, go, kind, fields.get(go)) for attr, go, kind in cls.GO}
    return cls(**kwargs)


def _field(owner: str, name: str, kind: str, value: Any) -> Any:
    """Check one decoded value against its Go type; None (absent or nil) becomes the Go zero value."""
    bits = _UINT_BITS.get(kind)
    if bits is not None:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise MessageError(f"{owner}: field {name} must be a uint{bits}")
        return value
    if kind == _I64:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < 1 << 63:
            raise MessageError(f"{owner}: field {name} must be an int64")
        return value
    if kind == _BOOL:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise MessageError(f"{owner}: field {name} must be a bool")
        return value
    if kind == _STR:
        return _text(owner, name, value)
    if kind == _BYTES:
        return _raw(owner, name, value)
    return _container(owner, name, kind, value)


def _container(owner: str, name: str, kind: str, value: Any) -> Any:
    if kind in (_STR_MAP, _LTIME_MAP):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise MessageError(f"{owner}: field {name} must be a map")
        item_kind = _STR if kind == _STR_MAP else _U64
        return {_text(owner, name, k): _field(owner, name, item_kind, v) for k, v in value.items()}
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MessageError(f"{owner}: field {name} must be an array")
    if kind == _STR_LIST:
        return tuple(_text(owner, name, item) for item in value)
    if kind == _BYTES_LIST:
        return tuple(_raw(owner, name, item) for item in value)
    if kind == _EVENT_LIST:
        return tuple(_struct_from_map(UserEvent, item) for item in value)
    if kind == _EVENTS:
        return tuple(None if item is None else _struct_from_map(UserEvents, item) for item in value)
    raise AssertionError(f"unknown field kind {kind}")


def _raw(owner: str, name: str, value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if not isinstance(value, bytes):
        raise MessageError(f"{owner}: field {name} must be a byte string")
    return value


def _text(owner: str, name: str, value: Any) -> str:
    raw = _raw(owner, name, value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"{owner}: field {name} is not UTF-8") from exc
