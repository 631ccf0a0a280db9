"""memberlist's framing around single messages, for UDP packets and TCP streams (sans-IO).

What memberlist 0.2 (the one in Debian's serf) does, from its net.go, util.go and security.go:

UDP send (`rawSendMsgPacket`): one message, or a compound of several (type 7: count byte, big-endian u16
length per part, the parts); then, with compression on, the LZW compress message (type 9, msgpack
`{Algo: 0, Buf}`) but only if that is smaller; then a `hasCrc` header (type 12, big-endian CRC-32/IEEE
of everything after it) only when the recipient is a known node whose protocol max (Vsn[1]) is >= 5 (in
practice gossip and probes of suspects carry it; direct pings and acks do not, because memberlist looks
the node up by IP in a map keyed by name); then, with a keyring, AES-GCM sealing with the primary key,
encryption version 1 (0 only at protocol 1) and *no* additional data (outermost).
UDP receive (`ingestPacket`): open with any key (when that fails and verify-incoming is off, take the
packet as plaintext); strip and check the CRC if the first byte says so (only at this outermost level);
then unwrap compound and compress messages recursively, in whatever nesting they arrive. A compound
whose parts do not all fit yields the ones that do.

TCP stream (`rawSendMsgStream`/`readStream`): type byte + body; with compression on the whole thing is
wrapped in a compress message (always, not only when smaller); with a keyring it is then sealed as
`10 | u32 big-endian sealed length | sealed`, the additional data being those first 5 bytes. The reader
refuses plaintext when it has a keyring and verify-incoming is on, and sealed data when it has none.
Stream bodies: push-pull = header map, that many node-state maps, then `UserStateLen` raw bytes (Serf's
push-pull message); user message = header map then `UserMsgLen` raw bytes; ping, ack and error = one map.

Everything malformed raises WireError (and only that).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from . import lzw
from .keyring import DecryptError, Keyring
from .keyring import overhead as _seal_overhead
from .limits import PUSH_PULL_NODES_MAX
from .messages import (
    AckResp,
    ErrResp,
    MessageError,
    MessageType,
    Ping,
    PushNodeState,
    PushPullHeader,
    UserMsg,
    UserMsgHeader,
    from_map,
    pack_body,
    unpack_body,
)

UDP_BUFFER_SIZE = 1400  # memberlist's default UDPBufferSize: the packet size it aims for
MAX_PUSH_STATE_BYTES = 20 * 1024 * 1024  # memberlist's maxPushStateBytes
MAX_COMPOUND_PARTS = 255  # the count is one byte
# memberlist 0.2 computes the length table's size as count*2 in a uint8, so from 128 parts on it reads the
# parts from the wrong offset (checked against Debian's serf): what we build for peers stays below that.
SAFE_COMPOUND_PARTS = 127
COMPOUND_HEADER_OVERHEAD = 2  # type byte + count byte
COMPOUND_PART_OVERHEAD = 2  # each part's u16 length
CRC_OVERHEAD = 5  # hasCrc type byte + CRC-32
ENCRYPT_OVERHEAD = _seal_overhead(1)  # version + nonce + GCM tag
STREAM_ENCRYPT_HEADER = 5  # encrypt type byte + u32 length
LZW_ALGO = 0
MAX_PACKET_DECOMPRESSED = 1024 * 1024  # all decompression within one UDP packet together
MAX_NESTING = 8  # compound/compress wrappers inside each other; real senders use at most 2

_U32 = struct.Struct(">I")
_WRAPPERS = frozenset((MessageType.COMPOUND.value, MessageType.COMPRESS.value))
_SLACK = 64  # room over max_bytes for framing headers, so that a maximal payload still fits


class WireError(ValueError):
    """A packet or stream that cannot be unframed: truncated, bad CRC, undecryptable, bad compression, too big."""


# ------------------------------------------------------------------------------------------------ pieces


def make_compound(messages: Sequence[bytes]) -> bytes:
    """A compound message (type 7) holding `messages`: at most 255 parts, each 1 to 65535 bytes long."""
    if len(messages) > MAX_COMPOUND_PARTS:
        raise WireError(f"a compound message holds at most {MAX_COMPOUND_PARTS} parts, not {len(messages)}")
    for message in messages:
        if not 0 < len(message) <= 0xFFFF:
            # An empty part crashes a memberlist 0.2 receiver (it indexes the part's type byte unchecked).
            raise WireError(f"a compound part must be 1 to 65535 bytes, not {len(message)}")
    lengths = struct.pack(f">{len(messages)}H", *(len(m) for m in messages))
    return b"".join((bytes((MessageType.COMPOUND, len(messages))), lengths, *messages))


def split_compound(body: bytes | memoryview) -> tuple[list[memoryview], int]:
    """The parts of a compound body (after its type byte) and how many were cut off by truncation."""
    view = memoryview(body)
    if not view:
        raise WireError("compound message without a part count")
    count = view[0]
    if len(view) < 1 + 2 * count:
        raise WireError("compound message truncated in its length table")
    lengths = struct.unpack_from(f">{count}H", view, 1)
    offset = 1 + 2 * count
    parts: list[memoryview] = []
    for index, length in enumerate(lengths):
        if offset + length > len(view):
            return parts, count - index
        parts.append(view[offset : offset + length])
        offset += length
    return parts, 0


def compress_message(payload: bytes) -> bytes:
    """`payload` LZW-compressed and wrapped in a compress message (type 9)."""
    body: bytes = msgpack.packb({"Algo": LZW_ALGO, "Buf": lzw.compress(payload)}, use_bin_type=False)
    return bytes((MessageType.COMPRESS,)) + body


def decompress_message(body: bytes | memoryview, max_output: int = MAX_PUSH_STATE_BYTES) -> bytes:
    """The payload of a compress message body (after its type byte)."""
    try:
        raw = unpack_body(bytes(body))
    except MessageError as exc:
        raise WireError(f"compress message: {exc}") from exc
    return _decompress_map(raw, max_output)


def _decompress_map(raw: Any, max_output: int) -> bytes:
    if not isinstance(raw, dict):
        raise WireError("compress message is not a map")
    fields = {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
    algo = fields.get("Algo", 0)
    if algo != LZW_ALGO or isinstance(algo, bool):
        raise WireError(f"cannot decompress unknown algorithm {algo!r}")
    buf = fields.get("Buf") or b""
    if not isinstance(buf, bytes):
        raise WireError("compress message Buf is not a byte string")
    try:
        return lzw.decompress(buf, max_output)
    except ValueError as exc:
        raise WireError(f"compress message: {exc}") from exc


def add_crc(payload: bytes) -> bytes:
    """`payload` behind a hasCrc header (type 12 + big-endian CRC-32/IEEE of `payload`)."""
    return bytes((MessageType.HAS_CRC,)) + _U32.pack(zlib.crc32(payload)) + payload


def packet_overhead(*, keyring: Keyring | None = None, crc: bool = False) -> int:
    """Bytes that CRC and encryption add around a packet's payload."""
    return (CRC_OVERHEAD if crc else 0) + (ENCRYPT_OVERHEAD if keyring else 0)


# ------------------------------------------------------------------------------------------------ UDP


def pack_packet(
    messages: Sequence[bytes], *, keyring: Keyring | None = None, crc: bool = False, compress: bool = False
) -> bytes:
    """One UDP packet carrying `messages` (each type byte + body): compound if several (keep to
    SAFE_COMPOUND_PARTS for memberlist 0.2 peers), then compress (kept only if smaller), CRC (set `crc`
    when the peer's protocol max is >= 5), then sealing with the primary key when `keyring` is non-empty."""
    if not messages:
        raise WireError("a packet needs at least one message")
    payload = messages[0] if len(messages) == 1 else make_compound(messages)
    if compress:
        packed = compress_message(payload)
        if len(packed) < len(payload):
            payload = packed
    if crc:
        payload = add_crc(payload)
    if keyring:
        payload = keyring.encrypt(payload)
    return bytes(payload)


def unpack_packet(
    data: bytes,
    *,
    keyring: Keyring | None = None,
    verify_incoming: bool = True,
    max_decompressed: int = MAX_PACKET_DECOMPRESSED,
) -> list[bytes]:
    """The single messages in a received UDP packet (type byte + body each, still undecoded).

    A part that is not compound or compress comes back as it is (even empty, or of an unknown type):
    decoding it is `messages.decode`'s job, so one bad part need not spoil the others."""
    if not data:
        raise WireError("empty packet")
    if keyring:
        try:
            data = keyring.decrypt(data)
        except DecryptError as exc:
            if verify_incoming:
                raise WireError(f"decrypt packet failed: {exc}") from exc
    view = memoryview(data)
    if view and view[0] == MessageType.HAS_CRC:
        if len(view) < CRC_OVERHEAD:
            raise WireError("packet too short for its CRC")
        expected = _U32.unpack_from(view, 1)[0]
        view = view[CRC_OVERHEAD:]
        if zlib.crc32(view) != expected:
            raise WireError("packet CRC mismatch")
    if not view:
        raise WireError("empty packet")
    out: list[bytes] = []
    _flatten(view, out, 0, [max_decompressed])
    return out


def _flatten(view: memoryview, out: list[bytes], depth: int, budget: list[int]) -> None:
    if not view:
        out.append(b"")
        return
    kind = view[0]
    if kind not in _WRAPPERS:
        out.append(view.tobytes())
        return
    if depth >= MAX_NESTING:
        raise WireError(f"compound/compress messages nested deeper than {MAX_NESTING}")
    if kind == MessageType.COMPOUND:
        parts, _truncated = split_compound(view[1:])  # memberlist just logs the cut-off parts
        for part in parts:
            if part and part[0] not in _WRAPPERS:
                out.append(part.tobytes())  # the common case, without a call per part
            else:
                _flatten(part, out, depth + 1, budget)
        return
    payload = decompress_message(view[1:], budget[0])
    budget[0] -= len(payload)
    _flatten(memoryview(payload), out, depth + 1, budget)


def split_for_packets(
    messages: Sequence[bytes], budget: int = UDP_BUFFER_SIZE, *, max_parts: int = SAFE_COMPOUND_PARTS
) -> list[list[bytes]]:
    """Group `messages`, in order, so that each group's packet payload (bare message, or compound) fits
    `budget` bytes and holds at most `max_parts` messages; give each group to `pack_packet`. Take
    `packet_overhead()` off `budget` first. A message too big on its own gets a group of its own."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = COMPOUND_HEADER_OVERHEAD
    for message in messages:
        cost = COMPOUND_PART_OVERHEAD + len(message)
        if group and (size + cost > budget or len(group) >= max_parts):
            groups.append(group)
            group, size = [], COMPOUND_HEADER_OVERHEAD
        group.append(message)
        size += cost
    if group:
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------------------ TCP: send


def frame_stream(body: bytes, *, keyring: Keyring | None = None, compress: bool = False) -> bytes:
    """Wrap one stream message (type byte + body) as `rawSendMsgStream` does: compress, then seal."""
    if compress:
        body = compress_message(body)
    if not keyring:
        return body
    head = bytes((MessageType.ENCRYPT,)) + _U32.pack(len(body) + ENCRYPT_OVERHEAD)
    return head + keyring.encrypt(body, head)


def push_pull_stream(
    nodes: Sequence[PushNodeState],
    user_state: bytes,
    *,
    join: bool,
    keyring: Keyring | None = None,
    compress: bool = False,
) -> bytes:
    """Everything to write for our half of a push-pull (`sendLocalState`): header, node states, user state."""
    header = PushPullHeader(nodes=len(nodes), user_state_len=len(user_state), join=join)
    pieces = [bytes((MessageType.PUSH_PULL,)), pack_body(header)]
    pieces.extend(pack_body(node) for node in nodes)
    pieces.append(user_state)
    return frame_stream(b"".join(pieces), keyring=keyring, compress=compress)


def user_msg_stream(payload: bytes, *, keyring: Keyring | None = None, compress: bool = False) -> bytes:
    """A user message sent over a stream (`sendUserMsg`): header then the payload bytes."""
    body = bytes((MessageType.USER,)) + pack_body(UserMsgHeader(user_msg_len=len(payload))) + payload
    return frame_stream(body, keyring=keyring, compress=compress)


def ping_stream(ping: Ping, *, keyring: Keyring | None = None, compress: bool = False) -> bytes:
    """The TCP fallback ping; the peer answers on the same stream with an ack."""
    return frame_stream(bytes((MessageType.PING,)) + pack_body(ping), keyring=keyring, compress=compress)


def ack_stream(ack: AckResp, *, keyring: Keyring | None = None, compress: bool = False) -> bytes:
    """The answer to a stream ping."""
    return frame_stream(bytes((MessageType.ACK_RESP,)) + pack_body(ack), keyring=keyring, compress=compress)


def err_stream(error: str, *, keyring: Keyring | None = None, compress: bool = False) -> bytes:
    """An error answer on a stream (what memberlist sends when it cannot read what we sent)."""
    body = bytes((MessageType.ERR,)) + pack_body(ErrResp(error=error))
    return frame_stream(body, keyring=keyring, compress=compress)


# ------------------------------------------------------------------------------------------------ TCP: receive


@dataclass(frozen=True, slots=True)
class PushPull:
    """A received push-pull: the sender's node states and its delegate (Serf) state."""

    join: bool
    nodes: tuple[PushNodeState, ...]
    user_state: bytes


StreamMessage = PushPull | UserMsg | Ping | AckResp | ErrResp

_STREAM_MAPS: dict[int, type[Any]] = {
    MessageType.PING: Ping,
    MessageType.ACK_RESP: AckResp,
    MessageType.ERR: ErrResp,
}


class _Body:
    """Incremental parse of one stream body of a known type from a msgpack Unpacker."""

    def __init__(self, kind: int, max_bytes: int) -> None:
        if kind not in _STREAM_MAPS and kind not in (MessageType.PUSH_PULL, MessageType.USER):
            raise WireError(f"unexpected message type {kind} on a stream")
        self.kind = kind
        self.max_bytes = max_bytes
        self.header: PushPullHeader | UserMsgHeader | None = None
        self.nodes: list[PushNodeState] = []
        self.raw = bytearray()

    def step(self, unpacker: msgpack.Unpacker) -> StreamMessage | None:
        """Consume what the unpacker holds; the finished message, or None until more bytes arrive."""
        cls = _STREAM_MAPS.get(self.kind)
        if cls is not None:
            obj = _next_object(unpacker)
            return None if obj is _MISSING else _from_map(cls, obj)
        if self.header is None:
            obj = _next_object(unpacker)
            if obj is _MISSING:
                return None
            self.header = self._read_header(obj)
        if isinstance(self.header, PushPullHeader):
            return self._push_pull(unpacker, self.header)
        return self._user_msg(unpacker, self.header)

    def _read_header(self, obj: Any) -> PushPullHeader | UserMsgHeader:
        if self.kind == MessageType.PUSH_PULL:
            header: PushPullHeader = _from_map(PushPullHeader, obj)
            if header.nodes > self.max_bytes or header.user_state_len > self.max_bytes:
                raise WireError(f"push-pull header claims more than {self.max_bytes} bytes")
            if header.nodes > PUSH_PULL_NODES_MAX:
                raise WireError(f"push-pull header claims {header.nodes} node states (limit {PUSH_PULL_NODES_MAX})")
            return header
        user: UserMsgHeader = _from_map(UserMsgHeader, obj)
        if user.user_msg_len > self.max_bytes:
            raise WireError(f"user message of {user.user_msg_len} bytes is over the {self.max_bytes} limit")
        return user

    def _push_pull(self, unpacker: msgpack.Unpacker, header: PushPullHeader) -> PushPull | None:
        while len(self.nodes) < header.nodes:
            obj = _next_object(unpacker)
            if obj is _MISSING:
                return None
            self.nodes.append(_from_map(PushNodeState, obj))
        if not self._raw(unpacker, header.user_state_len):
            return None
        return PushPull(join=header.join, nodes=tuple(self.nodes), user_state=bytes(self.raw))

    def _user_msg(self, unpacker: msgpack.Unpacker, header: UserMsgHeader) -> UserMsg | None:
        if not self._raw(unpacker, header.user_msg_len):
            return None
        return UserMsg(payload=bytes(self.raw))

    def _raw(self, unpacker: msgpack.Unpacker, length: int) -> bool:
        if len(self.raw) < length:
            self.raw += unpacker.read_bytes(length - len(self.raw))
        return len(self.raw) >= length


_MISSING: Any = object()


def _next_object(unpacker: msgpack.Unpacker) -> Any:
    try:
        return unpacker.unpack()
    except msgpack.OutOfData:
        return _MISSING
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise WireError(f"bad msgpack on stream: {exc}") from exc


def _from_map(cls: type[Any], obj: Any) -> Any:
    try:
        return from_map(cls, obj)
    except MessageError as exc:
        raise WireError(str(exc)) from exc


def _unpacker(max_bytes: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max_bytes + _SLACK)


def _parse_whole(data: bytes, max_bytes: int) -> StreamMessage:
    """Parse a complete (decrypted or decompressed) stream body: type byte and the rest."""
    if not data:
        raise WireError("empty stream message")
    if len(data) > max_bytes + _SLACK:
        raise WireError(f"stream message is over the {max_bytes} byte limit")
    body = _Body(data[0], max_bytes)
    unpacker = _unpacker(max_bytes)
    unpacker.feed(data[1:])
    result = body.step(unpacker)
    if result is None:
        raise WireError("stream message is truncated")
    return result


class StreamReader:
    """Reads one memberlist stream message incrementally: `feed` bytes as they arrive until it returns
    the message. Bytes after the message are ignored, as memberlist does; after a WireError, drop it."""

    def __init__(
        self, *, keyring: Keyring | None = None, verify_incoming: bool = True, max_bytes: int = MAX_PUSH_STATE_BYTES
    ) -> None:
        """`max_bytes` bounds the whole stream (memberlist's maxPushStateBytes by default)."""
        self.keyring = keyring
        self.verify_incoming = verify_incoming
        self.max_bytes = max_bytes
        self.encrypted = False
        self.compressed = False
        self.result: StreamMessage | None = None
        self._total = 0
        self._head = bytearray()  # type byte, and for sealed streams the length and the sealed bytes
        self._sealed_len = -1
        self._unpacker: msgpack.Unpacker | None = None
        self._body: _Body | None = None

    def feed(self, data: bytes) -> StreamMessage | None:
        """Add received bytes; the message once complete (and on every later call), else None."""
        if self.result is not None:
            return self.result
        if not data:
            return None
        self._total += len(data)
        if self._total > self.max_bytes + STREAM_ENCRYPT_HEADER + _SLACK:
            raise WireError(f"stream is over the {self.max_bytes} byte limit")
        if self._unpacker is not None:
            self._feed_unpacker(data)
        else:
            self._head += data
            self._advance_head()
        if self._unpacker is not None and self.result is None:
            self._step_plain()
        return self.result

    def eof(self) -> StreamMessage:
        """The stream closed: the message, or WireError if it never completed."""
        if self.result is None:
            raise WireError("stream closed before a complete message" if self._total else "stream closed empty")
        return self.result

    def _advance_head(self) -> None:
        kind = self._head[0]
        if kind != MessageType.ENCRYPT:
            if self.keyring and self.verify_incoming:
                raise WireError("encryption is configured but the remote stream is not encrypted")
            rest = bytes(self._head[1:])
            self._head.clear()
            self._start_plain(kind)
            self._feed_unpacker(rest)
            return
        if not self.keyring:
            raise WireError("remote stream is encrypted and encryption is not configured")
        self.encrypted = True
        if self._sealed_len < 0:
            if len(self._head) < STREAM_ENCRYPT_HEADER:
                return
            self._sealed_len = _U32.unpack_from(self._head, 1)[0]
            if self._sealed_len > self.max_bytes:
                raise WireError(f"remote state of {self._sealed_len} bytes is larger than the limit")
        end = STREAM_ENCRYPT_HEADER + self._sealed_len
        if len(self._head) < end:
            return
        try:
            plain = self.keyring.decrypt(bytes(self._head[STREAM_ENCRYPT_HEADER:end]),
                                         bytes(self._head[:STREAM_ENCRYPT_HEADER]))
        except DecryptError as exc:
            raise WireError(f"decrypt stream failed: {exc}") from exc
        self._head.clear()
        self.result = self._parse_plain(plain)

    def _parse_plain(self, plain: bytes) -> StreamMessage:
        if plain and plain[0] == MessageType.COMPRESS:
            self.compressed = True
            return _parse_whole(decompress_message(memoryview(plain)[1:], self.max_bytes), self.max_bytes)
        return _parse_whole(plain, self.max_bytes)

    def _start_plain(self, kind: int) -> None:
        self._unpacker = _unpacker(self.max_bytes)
        if kind == MessageType.COMPRESS:
            self.compressed = True
        else:
            self._body = _Body(kind, self.max_bytes)

    def _feed_unpacker(self, data: bytes) -> None:
        assert self._unpacker is not None
        try:
            self._unpacker.feed(data)
        except Exception as exc:  # BufferFull
            raise WireError(f"stream is over the {self.max_bytes} byte limit") from exc

    def _step_plain(self) -> None:
        assert self._unpacker is not None
        if self._body is not None:
            self.result = self._body.step(self._unpacker)
            return
        wrapper = _next_object(self._unpacker)
        if wrapper is not _MISSING:
            self.result = _parse_whole(_decompress_map(wrapper, self.max_bytes), self.max_bytes)
