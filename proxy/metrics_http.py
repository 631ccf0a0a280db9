"""The per-proxy Prometheus listener (`metrics_bind`): GET /metrics -> text format 0.0.4, nothing else.

Two tiny HTTP/1.0-style responders around one pure `respond`: `serve_trio` for the supervisor (in the
agent), `ReactorMetricsServer` for a static worker (no trio there). One request per connection, head
bounded and timed out: a scraper is the only expected client, anything else gets a short error.

Binds are often 0.0.0.0, so any peer may connect (red-team findings 11, 12). At most MAX_CLIENTS
connections are held: a newcomer beyond that evicts the oldest client still sending its head (then the
oldest still being answered), never the other way round, so idle connections cannot lock a scraper out and
cannot pin descriptors. Out of descriptors, accepting pauses for ACCEPT_BACKOFF_S instead of spinning.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

MAX_HEAD = 8192
HEAD_TIMEOUT_S = 5.0  # for the head; the reactor's whole connection, the trio side's send, likewise
MAX_CLIENTS = 64
ACCEPTS_PER_WAKE = 16  # below MAX_CLIENTS: a burst of newcomers cannot evict a scraper before its head is read
ACCEPT_BACKOFF_S = 0.5  # out of descriptors: the listener stays readable, so stop accepting for a moment
CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("meshagent.proxy.metrics_http")


def head_complete(buf: bytes) -> bool:
    """Whether `buf` holds a whole request head."""
    return b"\r\n\r\n" in buf or b"\n\n" in buf


def route(head: bytes) -> tuple[int, str]:
    """(status, reason) for a request head: 200 for GET/HEAD /metrics, else an error."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, "Bad Request"
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return 405, "Method Not Allowed"
    if target != b"/metrics":
        return 404, "Not Found"
    return 200, "OK"


def response(status: int, reason: str, body: bytes, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    ctype = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head if head_only else head + body


def respond(head: bytes, render: Callable[[], str]) -> bytes:
    """The response bytes for one request head; `render` is called only for a good request."""
    status, reason = route(head)
    if status != 200:
        return response(status, reason, f"{reason}\n".encode())
    return response(200, "OK", render().encode(), head_only=head.startswith(b"HEAD "))


def parse_bind(bind: str) -> tuple[str, int]:
    """("host", port) of "host:port" (ValueError naming the problem)."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"metrics_bind {bind!r:.80} is not host:port")
    return host.strip("[]"), int(port_text)


# ---------------------------------------------------------------------- trio (the supervisor)


class _TrioClient:
    """One accepted connection: its cancel scope (eviction) and what it is doing."""

    __slots__ = ("phase", "scope")

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        self.phase = "head"  # "head" (reading), "render" (never cancelled but at shutdown), "send"


def _evictable(phases: list[tuple[int, str]]) -> int | None:
    """The key of the client to close for a newcomer: the oldest reading its head, else the oldest being
    sent its answer, else None (every one is being rendered: the newcomer is refused)."""
    for wanted in ("head", "send"):
        for key, phase in phases:
            if phase == wanted:
                return key
    return None


async def serve_trio(bind: str, render: Callable[[], Awaitable[str]], task_status: Any = None) -> None:
    """Serve GET /metrics on `bind` until cancelled; `task_status.started((host, port))` once listening."""
    import trio  # only the supervisor side: the worker must not pay for trio

    host, port = parse_bind(bind)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[:2]
    clients: dict[int, _TrioClient] = {}  # insertion order is accept order: the first is the oldest
    ids = itertools.count()

    async def handle(stream: trio.SocketStream, key: int, client: _TrioClient) -> None:
        try:
            async with stream:
                with client.scope:
                    await _answer(stream, client)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away: its problem, not ours
        except Exception:  # a bug answering one scrape must not take the supervisor down
            log.exception("metrics listener %s: answering a request failed", bind)
        finally:
            clients.pop(key, None)

    async def _answer(stream: trio.SocketStream, client: _TrioClient) -> None:
        buf = b""
        with trio.move_on_after(HEAD_TIMEOUT_S):
            while not head_complete(buf) and len(buf) < MAX_HEAD:
                chunk = await stream.receive_some(MAX_HEAD)
                if not chunk:
                    return
                buf += chunk
        if not head_complete(buf):
            return
        status, reason = route(buf)
        if status == 200:
            # Not evicted while rendering: a cancelled render could cut a control frame to a worker.
            client.phase = "render"
            text = await render()
            data = response(200, "OK", text.encode(), head_only=buf.startswith(b"HEAD "))
        else:
            data = response(status, reason, f"{reason}\n".encode())
        client.phase = "send"
        with trio.move_on_after(HEAD_TIMEOUT_S):
            await stream.send_all(data)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        failing = False
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and friends: the listener stays ready, so pause, never spin
                if not failing:
                    log.warning("metrics listener %s: accept failed: %s; retrying every %.1f s", bind, exc,
                                ACCEPT_BACKOFF_S)
                    failing = True
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            failing = False
            if len(clients) >= MAX_CLIENTS:
                victim = _evictable([(k, c.phase) for k, c in clients.items()])
                if victim is None:
                    await stream.aclose()
                    continue
                clients.pop(victim).scope.cancel()  # its handler closes the socket at its next checkpoint
            key, client = next(ids), _TrioClient(trio.CancelScope())
            clients[key] = client
            nursery.start_soon(handle, stream, key, client)

    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery)
            if task_status is not None:
                task_status.started(bound)
    finally:
        for listener in listeners:
            listener.socket.close()


# ---------------------------------------------------------------------- reactor (a static worker)


class _Timer(Protocol):
    def cancel(self) -> None: ...


class _Reactor(Protocol):
    def add_reader(self, fd: int, cb: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_writer(self, fd: int, cb: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> None: ...
    def call_later(self, delay: float, cb: Callable[[], None]) -> Any: ...


class ReactorMetricsServer:
    """GET /metrics on the worker's own reactor (static mode): non-blocking accept, read, write, close."""

    def __init__(self, reactor: _Reactor, bind: str, render: Callable[[], str]) -> None:
        host, port = parse_bind(bind)
        self._reactor = reactor
        self._render = render
        self._clients: dict[int, _Client] = {}
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._closed = False
        self._failing = False
        self._resume_timer: _Timer | None = None
        reactor.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CAPACITY_ERRNOS:
                    self._back_off(exc)
                return  # ECONNABORTED and the like: that one connection is gone
            self._failing = False
            if len(self._clients) >= MAX_CLIENTS:
                victim = _evictable([(fd, "send" if c.out else "head") for fd, c in self._clients.items()])
                if victim is not None:
                    self._clients[victim].close()
            conn.setblocking(False)
            self._clients[conn.fileno()] = _Client(self, conn)

    def _back_off(self, exc: OSError) -> None:
        """Out of descriptors: the listener stays readable, so stop watching it for ACCEPT_BACKOFF_S."""
        if not self._failing:  # once per episode, not twice a second
            log.warning("metrics listener %s:%d: accept failed: %s; retrying every %.1f s", *self.address, exc,
                        ACCEPT_BACKOFF_S)
            self._failing = True
        self._reactor.remove_reader(self.sock.fileno())
        self._resume_timer = self._reactor.call_later(ACCEPT_BACKOFF_S, self._resume)

    def _resume(self) -> None:
        self._resume_timer = None
        if not self._closed:
            self._reactor.add_reader(self.sock.fileno(), self._accept)

    def _done(self, client: _Client) -> None:
        self._clients.pop(client.fd, None)

    def close(self) -> None:
        """Stop listening and drop every client."""
        if self._closed:
            return
        self._closed = True
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._reactor.remove_reader(self.sock.fileno())
        self.sock.close()
        for client in list(self._clients.values()):
            client.close()


class _Client:
    def __init__(self, server: ReactorMetricsServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.fd = conn.fileno()
        self.buf = b""
        self.out = b""
        self.reactor = server._reactor
        self.timer: _Timer = self.reactor.call_later(HEAD_TIMEOUT_S, self.close)
        self.reactor.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            chunk = self.conn.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.buf += chunk
        if not chunk or len(self.buf) > MAX_HEAD:
            self.close()
            return
        if head_complete(self.buf):
            self.reactor.remove_reader(self.fd)
            self.out = respond(self.buf, self.server._render)
            self.reactor.add_writer(self.fd, self._write)

    def _write(self) -> None:
        try:
            n = self.conn.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        if not self.out:
            self.close()

    def close(self) -> None:
        if self.fd < 0:
            return
        self.timer.cancel()
        self.reactor.remove_reader(self.fd)
        self.reactor.remove_writer(self.fd)
        self.conn.close()
        self.server._done(self)
        self.fd = -1
