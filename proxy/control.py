"""The control protocol between the supervisor and its workers: 4-byte big-endian length + a msgpack map.

Supervisor -> worker: {"t": "snapshot", "s": <ProxySnapshot wire>}, {"t": "metrics"}, {"t": "stop"}.
Worker -> supervisor: {"t": "ready"}, {"t": "applied", "version": N, "errors": [str]}, {"t": "metrics", "m": ...}.
Both sides treat the other's bytes as hostile: a bad frame raises ControlError and the channel is closed.
`FrameDecoder` is pure; `ReactorChannel` is the worker's non-blocking end, driven by its epoll reactor.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

MAX_FRAME = 16 * 1024 * 1024
READ_SIZE = 256 * 1024
_LEN = struct.Struct(">I")
MESSAGE_TYPES = frozenset({"snapshot", "metrics", "stop", "ready", "applied"})

log = logging.getLogger("meshagent.proxy.control")
Message = dict[str, Any]


class ControlError(Exception):
    """A frame or message that breaks the protocol; the message says what. `messages`: the good messages
    decoded from the same bytes before the bad frame (deliver them, then close)."""

    def __init__(self, reason: str, messages: list[Message] | None = None) -> None:
        super().__init__(reason)
        self.messages: list[Message] = messages or []


def encode(message: Message) -> bytes:
    """One frame carrying `message` (ControlError if it is over MAX_FRAME)."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ControlError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """The message of one frame's body: a map with a known string "t"."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ControlError(f"undecodable frame: {type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(message, dict):
        raise ControlError(f"frame is a {type(message).__name__}, not a map")
    kind = message.get("t")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ControlError(f"unknown message type {kind!r:.40}")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes as they come, get the complete messages back."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Message]:
        """Append `data`; return every message now complete (ControlError on a bad frame)."""
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > self._max:
                buf.clear()
                raise ControlError(f"frame of {size} bytes announced, over the {self._max}-byte limit", out)
            if len(buf) - pos - 4 < size:
                break
            try:
                out.append(decode_body(bytes(buf[pos + 4:pos + 4 + size])))
            except ControlError as exc:
                buf.clear()
                raise ControlError(str(exc), out) from None
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out

    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)


class _Reactor(Protocol):
    def add_reader(self, fd: int, cb: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_writer(self, fd: int, cb: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> None: ...


class ReactorChannel:
    """The worker's end of the control socket on its reactor: messages in through `on_message`, `send` out
    (buffered, never blocks), `on_close(reason)` once when the peer is gone or broke the protocol."""

    def __init__(self, reactor: _Reactor, sock: socket.socket, on_message: Callable[[Message], None],
                 on_close: Callable[[str], None]) -> None:
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._writing = False
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        reactor.add_reader(self._fd, self._readable)

    def send(self, message: Message) -> None:
        """Queue `message`; written as soon as the socket takes it."""
        if self.closed:
            return
        self._out += encode(message)
        if not self._writing:
            self._writable()

    def close(self, reason: str) -> None:
        """Stop reading and writing, close the socket, tell `on_close` (once)."""
        if self.closed:
            return
        self.closed = True
        self._reactor.remove_reader(self._fd)
        if self._writing:
            self._reactor.remove_writer(self._fd)
            self._writing = False
        self._sock.close()
        self.on_close(reason)

    def _readable(self) -> None:
        while not self.closed:
            try:
                data = self._sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close(f"control socket error: {errno.errorcode.get(exc.errno or 0, exc)}")
                return
            if not data:
                self.close("control channel closed by the supervisor")
                return
            error: ControlError | None = None
            try:
                messages = self._decoder.feed(data)
            except ControlError as exc:
                messages, error = exc.messages, exc
            for message in messages:
                if self.closed:
                    return
                self.on_message(message)
            if error is not None and not self.closed:
                log.error("bad control frame, closing the channel: %s", error)
                self.close(f"bad control frame: {error}")
                return

    def _writable(self) -> None:
        while self._out and not self.closed:
            try:
                n = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"control socket error: {errno.errorcode.get(exc.errno or 0, exc)}")
                return
            del self._out[:n]
        if self.closed:
            return
        if self._out and not self._writing:
            self._reactor.add_writer(self._fd, self._writable)
            self._writing = True
        elif not self._out and self._writing:
            self._reactor.remove_writer(self._fd)
            self._writing = False
