"""The server port (:8300): length-prefixed msgpack frames over TCP, for Raft messages and RPC calls.

Frames: 4-byte big-endian length, then a msgpack array:
  ["raft", from_id, from_address, message]  one-way Raft message (see meshagent.raft.messages)
  ["req", id, method, args]             an RPC call; answered on the same connection by
  ["resp", id, error_or_nil, result]
  ["sub", node_name]                    a client agent subscribes to the catalog feed (see feed.py)
Each server keeps one outgoing connection per peer for Raft messages (pipelined, never waiting for
answers); answers to Raft messages travel on the peer's own connection back to us.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ...raft.messages import Message, decode_message, encode_message
from .errors import ServerError, error_from_text

if TYPE_CHECKING:
    from .feed import CatalogFeed

log = logging.getLogger("meshagent.server.transport")

MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")

RaftHandler = Callable[[str, str, Message], None]
RPCHandler = Callable[[str, Any], Awaitable[Any]]
Reply = Callable[[Any, "str | None", Any], None]  # (request id, error, result)
ApplyHandler = Callable[[bytes, Reply, Any], bool]


def pack_frame(payload: Any) -> bytes:
    """One frame."""
    body = msgpack.packb(payload, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into decoded frames; raises ValueError on a malformed one."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Frames completed by `data`."""
        self._buf += data
        buf = self._buf
        frames = []
        pos, end = 0, len(buf)
        # One cut at the end, not one per frame: a 256 KiB read can hold thousands of small frames.
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
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


class PeerLink:
    """The outgoing connection to one peer: a queue drained by one task that reconnects as needed."""

    def __init__(self, address: str, my_id: str, my_address: str) -> None:
        self.address = address
        self._my_id = my_id
        self._my_address = my_address
        self._send, self._recv = trio.open_memory_channel[bytes](8192)
        self.dropped = 0

    def send(self, msg: Message) -> None:
        """Queue a Raft message; dropped (Raft retries) when the queue is full."""
        try:
            self._send.send_nowait(pack_frame(["raft", self._my_id, self._my_address, encode_message(msg)]))
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self) -> None:
        """Deliver queued frames forever; on errors wait a little and reconnect."""
        host, port = split_address(self.address)
        backoff = 0.05
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await self._discard_for(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                async with stream:
                    stream.socket.setsockopt(6, 1, 1)  # TCP_NODELAY: Raft latency is round trips
                    while True:
                        frame = await self._recv.receive()
                        chunks = [frame]
                        while len(chunks) < 256:  # coalesce what is queued into one write
                            try:
                                chunks.append(self._recv.receive_nowait())
                            except trio.WouldBlock:
                                break
                        await stream.send_all(b"".join(chunks))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep(backoff)

    async def _discard_for(self, seconds: float) -> None:
        # While the peer is unreachable, stale messages are worthless: drop them instead of replaying.
        with trio.move_on_after(seconds):
            while True:
                await self._recv.receive()


def split_address(address: str, default_port: int = 8300) -> tuple[str, int]:
    """"host:port" (or "host") into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    try:
        return host, int(port)
    except ValueError as exc:
        raise ValueError(f"bad address {address!r}") from exc


class RPCClient:
    """Pipelined RPC calls to one server over a single connection."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._stream: trio.SocketStream | None = None
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._lock = trio.Lock()
        self._reader_running = False

    async def call(self, nursery: trio.Nursery, method: str, args: Any, timeout: float = 10.0) -> Any:
        """Call `method`; raises ServerError for a remote error or an unreachable server."""
        rid: int | None = None
        sent = False
        slot: tuple[trio.Event, list[Any]] = (trio.Event(), [])
        with trio.move_on_after(timeout) as scope:
            async with self._lock:
                if self._stream is None:
                    host, port = split_address(self.address)
                    try:
                        self._stream = await trio.open_tcp_stream(host, port)
                    except OSError as exc:
                        raise ServerError(f"cannot reach server {self.address}: {exc}") from exc
                    self._stream.socket.setsockopt(6, 1, 1)
                    nursery.start_soon(self._read_loop, self._stream)
                self._next_id += 1
                rid = self._next_id
                self._pending[rid] = slot
                try:
                    await self._stream.send_all(pack_frame(["req", rid, method, args]))
                    sent = True
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._pending.pop(rid, None)
                    self._reset()
                    raise ServerError(f"lost connection to server {self.address}") from exc
                finally:
                    if not sent:
                        self._reset()  # cancelled halfway through a frame: the stream is unusable
            await slot[0].wait()
        if scope.cancelled_caught:
            if rid is None:
                raise ServerError(f"cannot reach server {self.address}: no connection within {timeout:.0f}s")
            self._pending.pop(rid, None)
            raise ServerError(f"server {self.address} did not answer {method} within {timeout:.0f}s")
        error, result = slot[1]
        if error is not None:
            raise error_from_text(str(error))
        return result

    def _reset(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.socket.close()
        for event, box in self._pending.values():
            box[:] = [f"lost connection to server {self.address}", None]
            event.set()
        self._pending.clear()

    async def _read_loop(self, stream: trio.SocketStream) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                for frame in reader.feed(data):
                    if isinstance(frame, list) and len(frame) == 4 and frame[0] == "resp":
                        slot = self._pending.pop(frame[1], None)
                        if slot is not None:
                            slot[1][:] = [frame[2], frame[3]]
                            slot[0].set()
        except (OSError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self._stream is stream:
            self._reset()


class _Conn:
    """One accepted connection's outgoing side: answers are queued and written by one task, in batches."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.wake = trio.Event()
        self.aborted = False

    def reply(self, rid: Any, error: str | None, result: Any) -> None:
        """Queue the answer to request `rid`."""
        self.send_frame(pack_frame(["resp", rid, error, result]))

    def send_frame(self, frame: bytes) -> None:
        """Queue an encoded frame."""
        self.out.append(frame)
        self.out_bytes += len(frame)
        self.wake.set()

    def backlog(self) -> int:
        """Bytes queued and not yet written."""
        return self.out_bytes

    def abort(self) -> None:
        """Close the connection from the writing side (a subscriber too far behind)."""
        self.aborted = True
        self.wake.set()

    async def write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if self.aborted:
                raise trio.BrokenResourceError("connection aborted by the server")
            chunks, self.out, self.out_bytes = self.out, [], 0
            await self.stream.send_all(b"".join(chunks))


class ServerListener:
    """Accepts peers' connections on :8300 and routes their frames.

    `on_apply`, when set, takes "apply" calls without a task each: it gets the command bytes, the
    connection's answer callback and the request id, and returns False when it cannot take the call
    (the general path then does).
    """

    def __init__(self, host: str, port: int, on_raft: RaftHandler, on_rpc: RPCHandler,
                 on_apply: ApplyHandler | None = None, feed: CatalogFeed | None = None) -> None:
        self.host, self.port = host, port
        self._on_raft = on_raft
        self._on_rpc = on_rpc
        self._on_apply = on_apply
        self.feed = feed
        self.bad_frames = 0
        self.bound_port = port

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.bound_port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        reader = FrameReader()
        conn = _Conn(stream)
        try:
            stream.socket.setsockopt(6, 1, 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write_loop)
                while True:
                    data = await stream.receive_some(262144)
                    if not data:
                        break
                    for frame in reader.feed(data):
                        self._route(frame, conn, nursery)
                nursery.cancel_scope.cancel()
        # The nursery raises what its tasks raise as an ExceptionGroup: match inside it (a plain except never
        # matched, and a peer's reset connection took the whole server down).
        except* ValueError as group:
            self.bad_frames += 1
            log.debug("dropping connection with a bad frame: %s", group.exceptions[0])
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if self.feed is not None:
                self.feed.unsubscribe(conn)
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    def _route(self, frame: Any, conn: _Conn, nursery: trio.Nursery) -> None:
        if not isinstance(frame, list) or not frame:
            raise ValueError("a frame must be a non-empty array")
        if frame[0] == "raft" and len(frame) == 4 and isinstance(frame[1], str) and isinstance(frame[2], str):
            self._on_raft(frame[1], frame[2], decode_message(frame[3]))
        elif frame[0] == "req" and len(frame) == 4 and isinstance(frame[2], str):
            rid, method, args = frame[1], frame[2], frame[3]
            if method == "apply" and isinstance(args, bytes) and self._on_apply is not None:
                if self._on_apply(args, conn.reply, rid):
                    return
            nursery.start_soon(self._answer, rid, method, args, conn)
        elif frame[0] == "sub" and len(frame) == 2 and isinstance(frame[1], str) and self.feed is not None:
            self.feed.subscribe(conn, frame[1])
        else:
            raise ValueError(f"unknown frame kind {frame[0]!r}")

    async def _answer(self, rid: Any, method: str, args: Any, conn: _Conn) -> None:
        try:
            result, error = await self._on_rpc(method, args), None
        except ServerError as exc:
            result, error = None, str(exc)
        except Exception as exc:  # an RPC bug must not kill the connection or the server
            log.exception("RPC %s failed", method)
            result, error = None, f"internal error: {exc}"
        conn.reply(rid, error, result)
