"""memberlist's framing around single messages: compound, CRC, LZW compression, AES-GCM, TCP streams.

What memberlist (0.2, as in Debian's serf) does, read from its net.go and security.go:

* UDP send: message (or compound of messages) → optional compress → `hasCrc` header when the peer speaks
  protocol ≥ 5 → AES-GCM (no additional data) when encryption is on. Receive undoes it in reverse order.
* TCP stream (push-pull, user messages, TCP ping): type byte + payload, optionally wrapped in a compress
  message, then optionally in `encryptMsg | u32 length | AES-GCM(payload, aad = those first 5 bytes)`.
* AES-GCM payload: version byte (1 = no padding; 0 = PKCS#7 padded, still accepted), 12-byte nonce,
  ciphertext + tag. Every installed key is tried on the way in.

We never compress what we send (memberlist accepts plain messages), but we read compressed ones: serf
compresses by default. Every malformed input raises FramingError and nothing else.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .messages import MessageType

MAX_PACKET = 65536
MAX_STREAM_STATE = 20 * 1024 * 1024  # memberlist's maxPushStateBytes
MAX_DECOMPRESSED = 20 * 1024 * 1024
COMPOUND_MAX_PARTS = 255
_NONCE = 12
_TAG = 16
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class FramingError(ValueError):
    """A packet or stream that cannot be unframed (truncated, bad CRC, undecryptable, bad compression)."""


# ------------------------------------------------------------------------------------------------ compound


def pack_compound(parts: Sequence[bytes]) -> bytes:
    """One compound message: type byte, part count, big-endian u16 lengths, the parts."""
    if len(parts) > COMPOUND_MAX_PARTS:
        raise ValueError("a compound message holds at most 255 parts")
    head = bytes([MessageType.COMPOUND, len(parts)]) + b"".join(_U16.pack(len(p)) for p in parts)
    return head + b"".join(parts)


def unpack_compound(body: bytes) -> list[bytes]:
    """The parts of a compound body (after its type byte); a truncated tail is dropped, as memberlist does."""
    if not body:
        raise FramingError("compound message without a part count")
    count = body[0]
    if len(body) < 1 + 2 * count:
        raise FramingError("compound message with a truncated length table")
    lengths = [_U16.unpack_from(body, 1 + 2 * i)[0] for i in range(count)]
    parts, pos = [], 1 + 2 * count
    for length in lengths:
        if pos + length > len(body):
            break
        parts.append(body[pos:pos + length])
        pos += length
    return parts


def overhead(parts: int) -> int:
    """Bytes a compound of `parts` messages adds around them."""
    return 2 + 2 * parts


# ------------------------------------------------------------------------------------------------ crc


def add_crc(payload: bytes) -> bytes:
    """Prefix the hasCrc header (CRC-32/IEEE of the payload)."""
    return bytes([MessageType.HAS_CRC]) + _U32.pack(zlib.crc32(payload)) + payload


def strip_crc(data: bytes) -> bytes:
    """Check and remove a hasCrc header; data without one is returned unchanged."""
    if not data or data[0] != MessageType.HAS_CRC:
        return data
    if len(data) < 5:
        raise FramingError("truncated CRC header")
    if _U32.unpack_from(data, 1)[0] != zlib.crc32(data[5:]):
        raise FramingError("CRC mismatch")
    return data[5:]


# ------------------------------------------------------------------------------------------------ lzw


def lzw_decompress(data: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Go's compress/lzw, LSB first, 8-bit literals: the only algorithm memberlist's compress uses."""
    clear, eof = 256, 257
    prefix = [0] * 4096
    suffix = [0] * 4096
    width, hi, overflow, last = 9, eof, 512, -1
    out = bytearray()
    bits = nbits = 0
    pos = 0
    stack = bytearray()
    while True:
        while nbits < width:
            if pos >= len(data):
                raise FramingError("lzw: unexpected end of data")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        nbits -= width
        if code < clear:
            out.append(code)
            if last != -1:
                suffix[hi], prefix[hi] = code, last
        elif code == clear:
            width, hi, overflow, last = 9, eof, 512, -1
            continue
        elif code == eof:
            return bytes(out)
        elif code <= hi:
            c = code
            if code == hi:
                if last == -1:
                    raise FramingError("lzw: invalid code")
                c = last
            stack.clear()
            while c >= clear:
                stack.append(suffix[c])
                c = prefix[c]
            stack.append(c)
            first = c
            stack.reverse()
            if code == hi:
                stack.append(first)
            out += stack
            if last != -1:
                suffix[hi], prefix[hi] = first, last
        else:
            raise FramingError("lzw: invalid code")
        if len(out) > limit:
            raise FramingError("lzw: decompressed data too large")
        last, hi = code, hi + 1
        if hi >= overflow:
            if width == 12:
                last, hi = -1, hi - 1
            else:
                width += 1
                overflow <<= 1


def decompress_message(body: bytes) -> bytes:
    """The inner bytes of a compress message body ({Algo, Buf} after the type byte)."""
    try:
        raw = msgpack.unpackb(body, raw=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types on garbage
        raise FramingError(f"bad compress message: {exc}") from exc
    if not isinstance(raw, dict) or raw.get(b"Algo") != 0 or not isinstance(raw.get(b"Buf"), bytes):
        raise FramingError("compress message with an unknown algorithm or no buffer")
    return lzw_decompress(raw[b"Buf"])


# ------------------------------------------------------------------------------------------------ crypto


def encrypt(key: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    """memberlist's encryption version 1: version byte, random nonce, AES-GCM ciphertext and tag."""
    nonce = os.urandom(_NONCE)
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(keys: Sequence[bytes], data: bytes, aad: bytes | None = None) -> bytes:
    """Try every key; raise FramingError when none opens the payload."""
    if not data:
        raise FramingError("cannot decrypt an empty payload")
    version = data[0]
    if version > 1:
        raise FramingError(f"unsupported encryption version {version}")
    if len(data) < 1 + _NONCE + _TAG:
        raise FramingError("payload too small to decrypt")
    nonce, sealed = data[1:1 + _NONCE], data[1 + _NONCE:]
    for key in keys:
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            continue
        if version == 0:  # PKCS#7 padding, from memberlist protocol 1
            if not plain or plain[-1] == 0 or plain[-1] > 16:
                raise FramingError("bad padding")
            plain = plain[:-plain[-1]]
        return plain
    raise FramingError("no installed key could decrypt the message")


# ------------------------------------------------------------------------------------------------ packets


def pack_packet(payload: bytes, *, crc: bool, keys: Sequence[bytes] = (), encrypt_out: bool = True) -> bytes:
    """Frame one UDP payload (a message or a compound) for sending."""
    if crc:
        payload = add_crc(payload)
    if keys and encrypt_out:
        payload = encrypt(keys[0], payload)
    return payload


def unpack_packet(data: bytes, *, keys: Sequence[bytes] = (), verify_incoming: bool = True) -> list[bytes]:
    """The single messages in one UDP packet (each a type byte + body), in order."""
    if len(data) > MAX_PACKET:
        raise FramingError("packet too large")
    if keys:
        try:
            data = decrypt(keys, data)
        except FramingError:
            if verify_incoming:
                raise
    data = strip_crc(data)
    return flatten(data)


def flatten(data: bytes, depth: int = 0) -> list[bytes]:
    """Expand compound and compress wrappers into the single messages inside."""
    if not data:
        raise FramingError("empty message")
    if depth > 4:
        raise FramingError("wrappers nested too deep")
    kind = data[0]
    if kind == MessageType.COMPOUND:
        return [m for part in unpack_compound(data[1:]) for m in flatten(part, depth + 1)]
    if kind == MessageType.COMPRESS:
        return flatten(decompress_message(data[1:]), depth + 1)
    if kind == MessageType.HAS_CRC:
        return flatten(strip_crc(data), depth + 1)
    return [data]


# ------------------------------------------------------------------------------------------------ streams


def pack_stream(payload: bytes, *, keys: Sequence[bytes] = (), encrypt_out: bool = True) -> bytes:
    """Frame a TCP stream payload (type byte + body) for sending."""
    if not (keys and encrypt_out):
        return payload
    sealed_len = 1 + _NONCE + len(payload) + _TAG
    head = bytes([MessageType.ENCRYPT]) + _U32.pack(sealed_len)
    return head + encrypt(keys[0], payload, head)


def stream_payload_size(head: bytes) -> int:
    """From the first 5 bytes of an encrypted stream: how many more bytes to read."""
    size: int = _U32.unpack_from(head, 1)[0]
    if size > MAX_STREAM_STATE:
        raise FramingError(f"remote state of {size} bytes is larger than the limit")
    return size


def open_stream(head: bytes, sealed: bytes, keys: Sequence[bytes]) -> bytes:
    """Decrypt an encrypted stream given its 5-byte head and the sealed payload."""
    return decrypt(keys, sealed, head)


def unwrap_stream(payload: bytes) -> bytes:
    """Remove a compress wrapper from a (decrypted) stream payload."""
    if payload and payload[0] == MessageType.COMPRESS:
        return decompress_message(payload[1:])
    return payload
