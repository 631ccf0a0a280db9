"""ServerListener: the server port (:8300) accepts peers' connections, authenticates them and routes frames.

Raft messages go to the driver, calls to the RPC endpoint table, feed subscriptions to the catalog feed (the
framing is agent/rpc/framing.py). Answers to Raft messages travel on the peer's own connection back to us.
Who may connect and send what is agent/tls/policy.py's RPCTLS; without one, :8300 is open.
Every connection is bounded: handshake and idle timeouts, a deadline for a half-sent frame, a frame size
cap, a cap on calls in progress and on unread answers, and a cap on connections per peer address.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ...raft.messages import Message, decode_message
from ..rpc.errors import PermissionDenied, Rejected, ServerError, encode_error
from ..rpc.framing import BOOTSTRAP_BYTE, MAX_FRAME, MAX_SERVER_FRAME, TLS_BYTE, FrameReader, pack_frame

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS, Role
    from .feed import CatalogFeed

log = logging.getLogger("meshagent.server.transport")

TRUST_RECHECK = 5.0  # seconds: a quiet connection's key is checked again this often (after keyring -remove)

RaftHandler = Callable[[str, str, Message], None]
RPCHandler = Callable[[str, Any], Awaitable[Any]]
Reply = Callable[[Any, "ServerError | None", Any], None]  # (request id, error, result)
ApplyHandler = Callable[[Any, Reply, Any], bool]


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

    def reply(self, rid: Any, error: ServerError | None, result: Any) -> None:
        """Queue the answer to request `rid`."""
        if not self.subscribed and self.out_bytes > self._max_backlog:
            self.abort()  # a peer that sends calls and never reads the answers
            return
        self.send_frame(pack_frame(["resp", rid, None if error is None else encode_error(error), result]))

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

    `on_apply`, when set, takes "apply" calls without a task each: it gets the call's arguments (command
    bytes, or {command, token}), the connection's answer callback and the request id, and returns False
    when it cannot take the call (the general path then does).
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
                if tls is not None and tls.accepts_tls and first[0] in (TLS_BYTE, BOOTSTRAP_BYTE[0]):
                    bootstrap = first[0] != TLS_BYTE
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
                conn.reply(rid, PermissionDenied(f"permission denied: a {role} connection may not call {method}"), None)
                return
            if method == "apply" and isinstance(args, bytes | dict) and self._on_apply is not None:
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
            result, error = None, exc
        except PermissionError as exc:
            result, error = None, PermissionDenied(f"permission denied: {exc}")
        except ValueError as exc:
            result, error = None, Rejected(str(exc))
        except Exception as exc:  # an RPC bug must not kill the connection or the server
            log.exception("RPC %s failed", method)
            result, error = None, ServerError(f"internal error: {exc}")
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
