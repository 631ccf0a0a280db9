"""The :8300 framing: length-prefixed msgpack frames over TCP or TLS, and how a connection is opened.

Frames: 4-byte big-endian length, then a msgpack array:
  ["raft", from_id, from_address, message]  one-way Raft message (see meshagent.raft.messages)
  ["req", id, method, args]             an RPC call; answered on the same connection by
  ["resp", id, error_or_nil, result]    (error: [code, message], see errors.py)
  ["sub", node_name]                    a client agent subscribes to the catalog feed (see feed.py)

A connection's first byte says what it is: 0x16 a TLS handshake, 0x07 then TLS the auto_encrypt channel
(only the signing call), anything else plaintext frames (a frame's length is at most 64 MiB, so its first
byte is at most 0x04).
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

import msgpack
import trio

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS

# The largest frame a server reads. The largest legitimate ones are Raft appends (up to
# max_entries_per_append commands, KV values <= 512 KiB each, usually far smaller), snapshot chunks
# (256 KiB) and a snapshot restore travelling as one command; 64 MiB let 5 half-sent frames cost 317 MB.
MAX_FRAME = 16 * 1024 * 1024
# What a client reads from a server (answers, the catalog feed's whole-catalog snapshot): the server is
# the one we chose and (with TLS) verified, so its frames may be bigger.
MAX_SERVER_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
BOOTSTRAP_BYTE = b"\x07"  # agent/tls/policy.BOOTSTRAP_BYTE (not imported: that module loads ssl)
TLS_BYTE = 0x16


def pack_frame(payload: Any) -> bytes:
    """One frame."""
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded frames; raises ValueError on a malformed or oversized one."""

    def __init__(self, max_frame: int = MAX_SERVER_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (at most max_frame + 4 plus one read)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[Any]:
        """Frames completed by `data`."""
        self._buf += data
        buf = self._buf
        frames = []
        pos, end = 0, len(buf)
        # One cut at the end, not one per frame: a 256 KiB read can hold thousands of small frames.
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > self.max_frame:
                raise ValueError(f"frame of {size} bytes exceeds {self.max_frame}")
            if end - pos < 4 + size:
                break
            try:
                frames.append(msgpack.unpackb(buf[pos + 4:pos + 4 + size], raw=False))
            except Exception as exc:  # msgpack raises several types for garbage
                raise ValueError(f"undecodable frame: {exc}") from exc
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames


def split_address(address: str, default_port: int = 8300) -> tuple[str, int]:
    """"host:port" (or "host") into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    try:
        return host, int(port)
    except ValueError as exc:
        raise ValueError(f"bad address {address!r}") from exc


Connection = tuple[trio.abc.Stream, trio.socket.SocketType]  # the stream to use and the TCP socket under it


async def open_stream(address: str, tls: RPCTLS | None, *, bootstrap: bool = False,
                      handshake_timeout: float = 10.0) -> Connection:
    """Connect to a server's :8300, with TLS when the policy says so (`bootstrap`: the auto_encrypt channel).
    Raises OSError, or trio.BrokenResourceError when the TLS handshake fails."""
    host, port = split_address(address)
    tcp = await trio.open_tcp_stream(host, port)
    sock = tcp.socket
    try:
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Raft latency is round trips
        if tls is None or not (tls.sends_tls or bootstrap):
            return tcp, sock
        if tls.auto_encrypt_pending and not bootstrap:
            raise OSError("waiting for this agent's auto_encrypt certificate")
        if bootstrap:
            await tcp.send_all(BOOTSTRAP_BYTE)
        from ..tls.stream import TLSStream  # loads ssl: only for agents with TLS on

        ctx = tls.bootstrap_client_context() if bootstrap else tls.client_context()
        stream = TLSStream(tcp, ctx, server_side=False, server_hostname=tls.server_hostname)
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
        return stream, sock
    except BaseException:
        sock.close()
        raise



CONNECT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)
