"""The server port (:8300): length-prefixed msgpack frames over TCP or TLS, for Raft messages and RPC calls.

Frames: 4-byte big-endian length, then a msgpack array:
  ["raft", from_id, from_address, message]  one-way Raft message (see meshagent.raft.messages)
  ["req", id, method, args]             an RPC call; answered on the same connection by
  ["resp", id, error_or_nil, result]
  ["sub", node_name]                    a client agent subscribes to the catalog feed (see feed.py)
Each server keeps one outgoing connection per peer for Raft messages (pipelined, never waiting for
answers); answers to Raft messages travel on the peer's own connection back to us.

A connection's first byte says what it is: 0x16 a TLS handshake, 0x07 then TLS the auto_encrypt channel
(only the signing call), anything else plaintext frames (a frame's length is at most 64 MiB, so its first
byte is at most 0x04). Who may connect and send what is agent/tls/policy.py's RPCTLS; without one, :8300 is open.
Every connection is bounded: handshake and idle timeouts, a deadline for a half-sent frame, a frame size
cap, a cap on calls in progress and on unread answers, and a cap on connections per peer address.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ...raft.messages import Message, decode_message, encode_message
from .errors import ServerError, error_from_text

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS, Role
    from .feed import CatalogFeed

log = logging.getLogger("meshagent.server.transport")

# The largest frame a server reads. The largest legitimate ones are Raft appends (up to
# max_entries_per_append commands, KV values <= 512 KiB each, usually far smaller), snapshot chunks
# (256 KiB) and a snapshot restore travelling as one command; 64 MiB let 5 half-sent frames cost 317 MB.
MAX_FRAME = 16 * 1024 * 1024
# What a client reads from a server (answers, the catalog feed's whole-catalog snapshot): the server is
# the one we chose and (with TLS) verified, so its frames may be bigger.
MAX_SERVER_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
_BOOTSTRAP_BYTE = b"\x07"  # agent/tls/policy.BOOTSTRAP_BYTE (not imported: that module loads ssl)
_TLS_BYTE = 0x16
TRUST_RECHECK = 5.0  # seconds: a quiet connection's key is checked again this often (after keyring -remove)

RaftHandler = Callable[[str, str, Message], None]
RPCHandler = Callable[[str, Any], Awaitable[Any]]
Reply = Callable[[Any, "str | None", Any], None]  # (request id, error, result)
ApplyHandler = Callable[[bytes, Reply, Any], bool]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one peer can make a server hold (time and memory)."""

    max_frame: int = MAX_FRAME
    handshake_timeout: float = 10.0  # first byte + TLS handshake
    frame_deadline: float = 30.0  # a started frame must be complete within this (16 MiB at >= 0.5 MiB/s)
    idle_timeout: float = 600.0  # no frame at all (feed subscribers and verified servers excepted)
    max_conns_per_ip: int = 100  # Consul's limits.rpc_max_conns_per_client
    max_inflight: int = 1024  # calls in progress per connection; beyond it we stop reading (backpressure)
    max_backlog: int = 64 * 1024 * 1024  # answers queued but not read by the peer


def pack_frame(payload: Any) -> bytes:
    """One frame."""
    body = msgpack.packb(payload, use_bin_type=True)
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
            await tcp.send_all(_BOOTSTRAP_BYTE)
        from ..tls.stream import TLSStream  # loads ssl: only for agents with TLS on

        ctx = tls.bootstrap_client_context() if bootstrap else tls.client_context()
        stream = TLSStream(tcp, ctx, server_side=False, server_hostname=tls.server_hostname)
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
        return stream, sock
    except BaseException:
        sock.close()
        raise


_CONNECT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


class PeerLink:
    """The outgoing connection to one peer: a queue drained by one task that reconnects as needed."""

    def __init__(self, address: str, my_id: str, my_address: str, tls: RPCTLS | None = None) -> None:
        self.address = address
        self._my_id = my_id
        self._my_address = my_address
        self._tls = tls
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
        backoff = 0.05
        while True:
            try:
                stream, _ = await open_stream(self.address, self._tls)
            except _CONNECT_ERRORS as exc:
                log.debug("raft link to %s: %s", self.address, exc)
                await self._discard_for(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                async with stream:
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


class RPCClient:
    """Pipelined RPC calls to one server over a single connection (`bootstrap`: the auto_encrypt channel)."""

    def __init__(self, address: str, tls: RPCTLS | None = None, *, bootstrap: bool = False) -> None:
        self.address = address
        self._tls = tls
        self._bootstrap = bootstrap
        self._stream: trio.abc.Stream | None = None
        self._sock: trio.socket.SocketType | None = None
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
                    try:
                        self._stream, self._sock = await open_stream(self.address, self._tls,
                                                                     bootstrap=self._bootstrap)
                    except _CONNECT_ERRORS as exc:
                        raise ServerError(f"cannot reach server {self.address}: "
                                          f"{exc.__cause__ or exc or type(exc).__name__}") from exc
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

    def close(self) -> None:
        """Drop the connection (calls in progress fail)."""
        self._reset()

    def _reset(self) -> None:
        self._stream = None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for event, box in self._pending.values():
            box[:] = [f"lost connection to server {self.address}", None]
            event.set()
        self._pending.clear()

    async def _read_loop(self, stream: trio.abc.Stream) -> None:
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

    def __init__(self, stream: trio.abc.Stream, role: Role, peercert: dict[str, Any] | None,
                 max_backlog: int) -> None:
        self.stream = stream
        self.role = role
        self.peercert = peercert
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.wake = trio.Event()
        self.aborted = False
        self.subscribed = False
        self.inflight = 0
        self.calls_done = trio.Event()
        self._max_backlog = max_backlog

    def reply(self, rid: Any, error: str | None, result: Any) -> None:
        """Queue the answer to request `rid`."""
        if not self.subscribed and self.out_bytes > self._max_backlog:
            self.abort()  # a peer that sends calls and never reads the answers
            return
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


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


class ServerListener:
    """Accepts peers' connections on :8300, authenticates them (with `tls`) and routes their frames.

    `on_apply`, when set, takes "apply" calls without a task each: it gets the command bytes, the
    connection's answer callback and the request id, and returns False when it cannot take the call
    (the general path then does).
    """

    PLAINTEXT_WARN_EVERY = 60.0  # seconds between warnings about accepted plaintext connections

    def __init__(self, host: str, port: int, on_raft: RaftHandler, on_rpc: RPCHandler,
                 on_apply: ApplyHandler | None = None, feed: CatalogFeed | None = None,
                 tls: RPCTLS | None = None, limits: Limits | None = None) -> None:
        self.host, self.port = host, port
        self._on_raft = on_raft
        self._on_rpc = on_rpc
        self._on_apply = on_apply
        self.feed = feed
        self.tls = tls
        self.limits = limits or Limits()
        self.bad_frames = 0  # connections dropped for a malformed, oversized, late or refused frame
        self.refused = 0  # connections refused: plaintext where TLS is required, a failed handshake, the cap
        self.denied = 0  # calls or frames a peer's role does not allow
        self.bound_port = port
        self._per_ip: dict[str, int] = {}
        self._warned_at = float("-inf")
        self.handler_errors = 0  # connections ended by an unexpected exception (logged at most once a minute)
        self._error_logged_at = float("-inf")
        self._unwarned = 0

    @property
    def plaintext_open(self) -> bool:
        """Whether plaintext connections are served on a non-loopback address (warned about)."""
        return (self.tls is None or self.tls.accepts_plaintext) and not _is_loopback(self.host)

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        if self.plaintext_open:
            log.warning("server port %s:%d accepts plaintext, unauthenticated connections: anyone who can reach "
                        "it can write to the catalog and the Raft log. Set a gossip key (-encrypt) or tls "
                        "{ defaults { verify_incoming } } (docs/security.md)", self.host, self.bound_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.bound_port)

    def _warn_plaintext(self, ip: str) -> None:
        now = trio.current_time()
        if now - self._warned_at < self.PLAINTEXT_WARN_EVERY:
            self._unwarned += 1
            return
        more = f" (and {self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning("server port: accepted a plaintext, unauthenticated connection from %s%s", ip, more)
        self._warned_at, self._unwarned = now, 0

    async def _serve(self, tcp: trio.SocketStream) -> None:
        try:
            ip = str(tcp.socket.getpeername()[0])
        except OSError:
            await tcp.aclose()
            return
        if self._per_ip.get(ip, 0) >= self.limits.max_conns_per_ip:
            self.refused += 1
            self.bad_frames += 1
            log.debug("server port: %s has %d connections already; refusing another", ip, self._per_ip[ip])
            await _close(tcp)
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            accepted = await self._accept(tcp, ip)
            if accepted is not None:
                await self._session(*accepted)
        except Exception:  # a bug met by one connection ends that connection, never the listener
            self.handler_errors += 1
            now = trio.current_time()
            if now - self._error_logged_at >= self.PLAINTEXT_WARN_EVERY:
                self._error_logged_at = now
                log.exception("server port: connection from %s failed (%d so far)", ip, self.handler_errors)
        finally:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
            await _close(tcp)

    async def _accept(self, tcp: trio.SocketStream, ip: str) -> tuple[trio.abc.Stream, Role,
                                                                     dict[str, Any] | None] | None:
        """The connection's stream and the role its peer proved, or None when it is refused."""
        tls = self.tls
        with trio.move_on_after(self.limits.handshake_timeout) as scope:
            try:
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                first = await tcp.socket.recv(1, socket.MSG_PEEK)
                if not first:
                    return None
                if tls is not None and tls.accepts_tls and first[0] in (_TLS_BYTE, _BOOTSTRAP_BYTE[0]):
                    bootstrap = first[0] != _TLS_BYTE
                    if bootstrap:
                        await tcp.socket.recv(1)
                    from ..tls.stream import TLSStream

                    ctx = tls.bootstrap_server_context() if bootstrap else tls.server_context()
                    stream = TLSStream(tcp, ctx, server_side=True)
                    await stream.do_handshake()
                    if bootstrap:
                        return stream, "bootstrap", None
                    peercert = stream.getpeercert()
                    return stream, tls.role_of(peercert), peercert
                if tls is None or tls.accepts_plaintext:
                    if not _is_loopback(ip) or not _is_loopback(self.host):
                        self._warn_plaintext(ip)
                    return tcp, "anonymous", None
                log.debug("server port: refusing a plaintext connection from %s (TLS is required)", ip)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("server port: handshake with %s failed: %s", ip, exc.__cause__ or exc)
        if scope.cancelled_caught:
            log.debug("server port: %s did not complete its handshake in time", ip)
        self.refused += 1
        return None

    async def _session(self, stream: trio.abc.Stream, role: Role, peercert: dict[str, Any] | None) -> None:
        limits = self.limits
        # A verified server may send frames as big as a client accepts from it (Raft appends, restores);
        # everyone else, the open plaintext port included, the ordinary cap.
        reader = FrameReader(max(MAX_SERVER_FRAME, limits.max_frame) if role == "server" else limits.max_frame)
        conn = _Conn(stream, role, peercert, limits.max_backlog)
        trust = self.tls.keyring_state if self.tls is not None else None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write_loop)
                frame_started: float | None = None
                while True:
                    now = trio.current_time()
                    if frame_started is not None:
                        deadline = frame_started + limits.frame_deadline
                    elif conn.subscribed or conn.role == "server":
                        # A subscriber only listens; a verified server's Raft link to a follower may be quiet
                        # between elections. Neither idles out, but both must still hold a trusted key.
                        deadline = now + TRUST_RECHECK
                    else:
                        deadline = now + limits.idle_timeout
                    data: bytes | bytearray | None = None
                    with trio.move_on_at(deadline):
                        data = await stream.receive_some(262144)
                    if self.tls is not None and self.tls.keyring_state != trust:
                        trust = self.tls.keyring_state
                        if not self._still_trusted(conn):
                            log.info("server port: closing a connection whose gossip key was removed")
                            break
                    if data is None:
                        if frame_started is not None:
                            raise ValueError(f"a frame was not completed within {limits.frame_deadline:.0f}s")
                        if conn.subscribed or conn.role == "server":
                            continue
                        break  # idle: the peer reconnects when it needs us again
                    if not data:
                        break
                    frames = reader.feed(data)
                    for frame in frames:
                        self._route(frame, conn, nursery)
                    if not reader.pending:
                        frame_started = None
                    elif frames or frame_started is None:
                        frame_started = trio.current_time()
                    while conn.inflight >= limits.max_inflight:  # backpressure: stop reading for now
                        await conn.calls_done.wait()
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
            await _close(stream)

    def _still_trusted(self, conn: _Conn) -> bool:
        """After a keyring change: a peer whose certificate came from a removed key's CA is cut off."""
        if conn.peercert is None or self.tls is None:
            return True
        issuer = {k: v for rdn in conn.peercert.get("issuer", ()) for k, v in rdn}
        return self.tls.trusts_issuer(str(issuer.get("commonName", "")))

    def _route(self, frame: Any, conn: _Conn, nursery: trio.Nursery) -> None:
        if not isinstance(frame, list) or not frame:
            raise ValueError("a frame must be a non-empty array")
        role = conn.role
        if frame[0] == "raft" and len(frame) == 4 and isinstance(frame[1], str) and isinstance(frame[2], str):
            if role not in ("server", "anonymous"):
                self.denied += 1
                raise ValueError(f"a {role} may not send Raft messages")
            self._on_raft(frame[1], frame[2], decode_message(frame[3]))
        elif frame[0] == "req" and len(frame) == 4 and isinstance(frame[2], str):
            rid, method, args = frame[1], frame[2], frame[3]
            if not self._allowed(role, method):
                self.denied += 1
                conn.reply(rid, f"permission denied: a {role} connection may not call {method}", None)
                return
            if method == "apply" and isinstance(args, bytes) and self._on_apply is not None:
                if self._on_apply(args, conn.reply, rid):
                    return
            conn.inflight += 1
            nursery.start_soon(self._answer, rid, method, args, conn)
        elif frame[0] == "sub" and len(frame) == 2 and isinstance(frame[1], str) and self.feed is not None:
            if role == "bootstrap":
                self.denied += 1
                raise ValueError("the auto_encrypt channel may not subscribe")
            conn.subscribed = True
            self.feed.subscribe(conn, frame[1])
        else:
            raise ValueError(f"unknown frame kind {frame[0]!r}")

    @staticmethod
    def _allowed(role: Role, method: str) -> bool:
        from ..tls.policy import CLIENT_METHODS, SIGN_METHOD  # only reached with TLS on: ssl is loaded anyway

        if role in ("server", "anonymous"):
            return True
        if role == "client":
            return method in CLIENT_METHODS
        return method == SIGN_METHOD

    async def _answer(self, rid: Any, method: str, args: Any, conn: _Conn) -> None:
        try:
            if method == "auto_encrypt.sign" and self.tls is not None:
                result, error = self.tls.sign(args), None
            else:
                result, error = await self._on_rpc(method, args), None
        except ServerError as exc:
            result, error = None, str(exc)
        except (PermissionError, ValueError) as exc:
            result, error = None, f"permission denied: {exc}" if isinstance(exc, PermissionError) else str(exc)
        except Exception as exc:  # an RPC bug must not kill the connection or the server
            log.exception("RPC %s failed", method)
            result, error = None, f"internal error: {exc}"
        finally:
            conn.inflight -= 1
            conn.calls_done.set()
            conn.calls_done = trio.Event()
        conn.reply(rid, error, result)


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
