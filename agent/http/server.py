"""A small HTTP/1.1 server on trio + h11: keep-alive, pipelining, body/header limits, timeouts.

The handler is any `async (Request) -> Response` callable. The server never lets a handler error or a
malformed request reach the accept loop: protocol errors get a one-line 4xx, handler crashes a 500
with a fixed body (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from typing import Any
from urllib.parse import unquote

import h11
import trio

log = logging.getLogger("meshagent.http")

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]

MAX_BODY = 512 * 1024  # Consul's kv_max_value_size: the largest body any endpoint accepts
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT = 30.0  # a whole request (head and body) must arrive within this, once it has started
IDLE_TIMEOUT = 120.0  # keep-alive connections with no request in flight are closed after this
WRITE_TIMEOUT = 30.0
MAX_CONNS_PER_CLIENT = 200  # Consul's limits.http_max_conns_per_client
_RECV_SIZE = 65536


@dataclass(slots=True)
class Request:
    """One parsed request. `path` is percent-decoded; `query` is the raw query string."""

    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    remote: str = ""

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


Handler = Callable[[Request], Awaitable[Response]]


class _Date:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE = _Date()


def _clean_reason(text: str) -> str:
    """A protocol error message safe to echo: one printable line, bounded."""
    line = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return line[:160]


def simple_response(status: int, text: str, extra: Headers | None = None) -> Response:
    """A text/plain response with a one-line body."""
    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if extra:
        headers.extend(extra)
    return status, headers, (text + "\n").encode()


class _Closed(Exception):
    """The peer went away or timed out; drop the connection silently."""


class HTTPServer:
    """Serves `handler` on host:port. `await nursery.start(server.run)` returns the bound port."""

    def __init__(self, handler: Handler, host: str, port: int, *, max_body: int = MAX_BODY,
                 max_header_bytes: int = MAX_HEADER_BYTES, read_timeout: float = READ_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_conns_per_client: int = MAX_CONNS_PER_CLIENT) -> None:
        self.handler = handler
        # Consul's client_addr may list several addresses separated by spaces.
        self.hosts = host.split() or ["127.0.0.1"]
        self.port = port
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_conns_per_client = max_conns_per_client
        self.bound_port: int | None = None
        self.requests_served = 0
        self.connections = 0
        self._per_client: dict[str, int] = {}

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every host, report the bound port via task_status, serve until cancelled."""
        listeners: list[trio.SocketListener] = []
        port = self.port
        for host in self.hosts:
            # With port 0 the first host picks a free port and the others share it.
            listeners.extend(await trio.open_tcp_listeners(port, host=host))
            if port == 0:
                port = listeners[0].socket.getsockname()[1]
        self.bound_port = port
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.serve_listeners, self._serve_connection, listeners,
                                       handler_nursery=nursery))
            task_status.started(port)

    # ------------------------------------------------------------------ connections

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            remote = stream.socket.getpeername()[0]
        except OSError:
            remote = ""
        count = self._per_client.get(remote, 0)
        self._per_client[remote] = count + 1
        self.connections += 1
        try:
            if count >= self.max_conns_per_client:
                await self._refuse(stream)
                return
            await self._serve(stream, remote)
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception:  # never let one connection take down the accept loop
            log.exception("HTTP connection from %s failed", remote)
        finally:
            self.connections -= 1
            left = self._per_client[remote] - 1
            if left:
                self._per_client[remote] = left
            else:
                del self._per_client[remote]
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _refuse(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        status, headers, body = simple_response(
            429, "Your IP is issuing too many concurrent connections, please rate limit your calls")
        data = self._encode(conn, status, [*headers, (b"connection", b"close")], body, head=False)
        with trio.move_on_after(self.write_timeout):
            await stream.send_all(data)

    def _encode(self, conn: h11.Connection, status: int, headers: Headers, body: bytes, head: bool) -> bytes:
        headers.append((b"date", _DATE.get()))
        headers.append((b"content-length", str(len(body)).encode()))
        parts = [conn.send(h11.Response(status_code=status, headers=headers))]
        if body and not head:
            parts.append(conn.send(h11.Data(data=body)))
        parts.append(conn.send(h11.EndOfMessage()))
        return b"".join(p for p in parts if p)

    async def _receive(self, conn: h11.Connection, stream: trio.SocketStream, deadline: float) -> None:
        with trio.move_on_at(deadline):
            data = await stream.receive_some(_RECV_SIZE)
            conn.receive_data(data)  # b"" marks EOF for h11
            return
        raise _Closed("read timeout")

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream, deadline: float) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive(conn, stream, deadline)

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.move_on_after(self.write_timeout):
            await stream.send_all(data)
            return
        raise _Closed("write timeout")

    async def _serve(self, stream: trio.SocketStream, remote: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        while True:
            try:
                request = await self._read_request(conn, stream, remote)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                    reason = "request header fields too large" if status == 431 else _clean_reason(str(exc))
                    s, h, b = simple_response(status, f"Bad request: {reason}", [(b"connection", b"close")])
                    await self._send(stream, self._encode(conn, s, h, b, head=False))
                return
            if request is None:
                return
            if isinstance(request, tuple):  # an early error response (413); the body was not read
                s, h, b = request
                h.append((b"connection", b"close"))
                await self._send(stream, self._encode(conn, s, h, b, head=False))
                return
            try:
                status, headers, body = await self.handler(request)
            except Exception:
                log.exception("HTTP handler failed for %s %s", request.method, request.path)
                status, headers, body = simple_response(500, "Internal error")
            self.requests_served += 1
            await self._send(stream, self._encode(conn, status, list(headers), body,
                                                  head=request.method == "HEAD"))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # h11 decided the connection must close (Connection: close, HTTP/1.0, ...)
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream,
                            remote: str) -> Request | Response | None:
        """The next request, an early error response, or None when the peer closed the connection."""
        # Waiting for a new request is the idle timeout; once bytes arrive the whole request must
        # arrive within read_timeout, which a per-read timeout would not enforce against slow drips.
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.move_on_after(self.idle_timeout) as idle:
                data = await stream.receive_some(_RECV_SIZE)
            if idle.cancelled_caught:
                return None
            conn.receive_data(data)
        deadline = trio.current_time() + self.read_timeout
        if event is h11.NEED_DATA:
            event = await self._next_event(conn, stream, deadline)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("unexpected event", 400)
        target = event.target
        raw_path, _, query = target.partition(b"?")
        try:
            path = unquote(raw_path.decode("ascii"), errors="strict")
            query_text = query.decode("ascii")
        except UnicodeDecodeError:
            raise h11.RemoteProtocolError("request target is not valid ASCII/UTF-8", 400) from None
        method = event.method.decode("ascii", "replace")
        headers = [(k, v) for k, v in event.headers]
        for key, value in headers:
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False  # h11 already rejected non-numeric lengths
                if too_big:
                    return simple_response(413, f"Request body too large, max size: {self.max_body} bytes")
        if conn.they_are_waiting_for_100_continue:
            await self._send(stream, conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(conn, stream, deadline)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    return simple_response(413, f"Request body too large, max size: {self.max_body} bytes")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None  # ConnectionClosed mid-body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Request(method, path, query_text, headers, body, remote)
