"""A small HTTP/1.1 server on trio + h11: keep-alive, pipelining, body/header limits, timeouts.

The handler is any `async (Request) -> Response` callable. The server never lets a handler error or a
malformed request reach the accept loop: protocol errors get a one-line 4xx, handler crashes a 500
with a fixed body (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any
from urllib.parse import unquote

import h11
import trio

from .body import RECV_SIZE, BodyError, BodyStream, EarlyResponse
from .messages import Handler, Request, Response, encode_head, simple_response
from .parking import Parking
from .streaming import StreamedBody

log = logging.getLogger("meshagent.http")

MAX_BODY = 512 * 1024  # Consul's kv_max_value_size: the largest body an endpoint accepts by default
# Endpoints whose bodies are whole archives, not values: a snapshot holds the entire catalog.
SNAPSHOT_MAX_BODY = 1024 * 1024 * 1024
BODY_LIMITS = {"/v1/snapshot": SNAPSHOT_MAX_BODY}
# Requests whose body the handler reads itself, chunk by chunk (request.body_stream), instead of the
# server gathering it in memory first.
STREAMED_BODIES = frozenset({("PUT", "/v1/snapshot")})
MAX_HEADER_BYTES = 16 * 1024
READ_TIMEOUT = 30.0  # a whole request (head and body) must arrive within this, once it has started
IDLE_TIMEOUT = 120.0  # keep-alive connections with no request in flight are closed after this
WRITE_TIMEOUT = 30.0
MAX_CONNS_PER_CLIENT = 200  # Consul's limits.http_max_conns_per_client
HANGUP_CHECK_INTERVAL = 1.0  # how often parked blocking queries are checked for a departed client


def _clean_reason(text: str) -> str:
    """A protocol error message safe to echo: one printable line, bounded."""
    line = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return line[:160]


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INF = float("inf")
_SMALL_BODY = 16384  # below this, one buffer; above, scatter/gather instead of copying the body


def _keep_alive(event: h11.Request) -> bool:
    """HTTP/1.1 without `Connection: close` stays open (HTTP/1.0 keep-alive is not worth supporting)."""
    if event.http_version != b"1.1":
        return False
    for name, value in event.headers:
        if name == b"connection" and b"close" in value.lower():
            return False
    return True


_HEAD_END = re.compile(rb"\n\r?\n")
_CONTENT_LENGTH_LINE = re.compile(rb"^content-length[ \t]*:([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def _prefix(chunks: list[bytes], size: int) -> bytes:
    """The first `size` bytes of the chunks joined (pipelined requests may follow the head: never copy them all)."""
    out = b""
    for chunk in chunks:
        out += chunk[: size - len(out)]
        if len(out) >= size:
            break
    return out


def _repeated_content_length(raw: bytes) -> bool:
    """Whether a request head (at the start of raw) carries Content-Length twice or as a list ("5, 5")."""
    end = _HEAD_END.search(raw)
    values = _CONTENT_LENGTH_LINE.findall(raw[: end.start() if end else len(raw)])
    return len(values) > 1 or any(b"," in v for v in values)


class HTTPServer:
    """Serves `handler` on host:port. `await nursery.start(server.run)` returns the bound port.

    h11 parses requests (one fresh h11.Connection per request, fed the previous one's trailing bytes,
    which is what makes pipelining safe); responses are formatted here, because h11's per-header
    validation of our own headers cost more than the rest of a cached API answer.
    """

    def __init__(self, handler: Handler, host: str, port: int, *, max_body: int = MAX_BODY,
                 max_header_bytes: int = MAX_HEADER_BYTES, read_timeout: float = READ_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_conns_per_client: int = MAX_CONNS_PER_CLIENT,
                 hangup_check_interval: float = HANGUP_CHECK_INTERVAL) -> None:
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
        self.parking = Parking()
        self.hangup_check_interval = hangup_check_interval

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
            nursery.start_soon(self._sweep_parked)
            task_status.started(port)

    async def _sweep_parked(self) -> None:
        while True:
            await trio.sleep(self.hangup_check_interval)
            if self.parking:
                self.parking.sweep()

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
                await self._final(stream, simple_response(
                    429, "Your IP is issuing too many concurrent connections, please rate limit your calls"))
                return
            await self._serve(stream, remote)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
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

    async def _write(self, stream: trio.SocketStream, head: bytes, body: bytes) -> None:
        if len(body) < _SMALL_BODY:
            await stream.send_all(head + body if body else head)
            return
        # One writev for head and a large body: no 100 KB copy per response.
        sent = await stream.socket.sendmsg([head, body])
        if sent < len(head):
            await stream.send_all(memoryview(head)[sent:])
            await stream.send_all(body)
        elif sent < len(head) + len(body):
            await stream.send_all(memoryview(body)[sent - len(head):])

    async def _final(self, stream: trio.SocketStream, response: Response) -> None:
        """Answer and close: half-close, then drain what the client is still sending (for a while), so
        that it reads our error instead of a connection reset."""
        status, headers, body = response
        with trio.move_on_after(self.write_timeout):
            await stream.send_all(encode_head(status, headers, len(body), close=True) + body)
            await stream.send_eof()
            with trio.move_on_after(1.0):
                drained = 0
                while drained < 4 * self.max_body:
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        break
                    drained += len(data)

    async def _serve(self, stream: trio.SocketStream, remote: str) -> None:
        pending, eof = b"", False
        # One cancel scope per connection whose deadline moves with the phase (idle, reading, handler,
        # writing): entering a scope per phase per request cost more than the API itself.
        with trio.CancelScope() as scope:
            while True:
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
                if pending:
                    conn.receive_data(pending)
                if eof:
                    conn.receive_data(b"")
                now = trio.current_time()
                scope.deadline = now + (self.read_timeout if pending else self.idle_timeout)
                try:
                    result = await self._read_request(conn, stream, scope, remote, pending)
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                    reason = "request header fields too large" if status == 431 else _clean_reason(str(exc))
                    scope.deadline = _INF
                    await self._final(stream, simple_response(status, f"Bad request: {reason}"))
                    return
                except EarlyResponse as early:  # 413: the body was not read, so the connection ends
                    scope.deadline = _INF
                    await self._final(stream, early.response)
                    return
                if result is None:
                    return
                request, keep_alive = result
                request.sock = stream.socket
                request.parking = self.parking
                scope.deadline = _INF  # a blocking query may legitimately take minutes
                try:
                    status, headers, body = await self.handler(request)
                except BodyError as broken:
                    await self._final(stream, broken.response)
                    return
                except Exception:
                    log.exception("HTTP handler failed for %s %s", request.method, request.path)
                    status, headers, body = simple_response(500, "Internal error")
                self.requests_served += 1
                if request.body_stream is not None and not request.body_stream.finished:
                    # The handler answered without reading all of the body: it cannot be skipped to
                    # the next request, so this answer ends the connection.
                    await self._final(stream, (status, headers, body))
                    return
                if type(body) is StreamedBody:  # /v1/agent/monitor: chunks until either side ends it
                    await body.serve(stream, request, status, headers, self.write_timeout)
                    return
                scope.deadline = trio.current_time() + self.write_timeout
                head = encode_head(status, headers, len(body), close=not keep_alive)
                await self._write(stream, head, b"" if request.method == "HEAD" else body)
                if not keep_alive:
                    return
                pending, eof = conn.trailing_data

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(RECV_SIZE))  # b"" marks EOF for h11

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream, scope: trio.CancelScope,
                            remote: str, pending: bytes) -> tuple[Request, bool] | None:
        """The next request and whether to keep the connection, or None when the peer closed.
        Raises h11.RemoteProtocolError for malformed requests, EarlyResponse for oversized ones."""
        raw = [pending] if pending else []  # the bytes the head came in, for checks h11 does not make
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECV_SIZE)
            # Once a request has begun, all of it must arrive within read_timeout (slow drips included).
            scope.deadline = trio.current_time() + self.read_timeout
            while True:
                conn.receive_data(data)  # b"" marks EOF for h11
                raw.append(data)
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                data = await stream.receive_some(RECV_SIZE)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("unexpected event", 400)
        head = event
        if event.http_version not in (b"1.1", b"1.0"):
            raise EarlyResponse(simple_response(505, "HTTP Version Not Supported"))
        raw_path, _, query = event.target.partition(b"?")
        try:
            path = unquote(raw_path.decode("ascii"), errors="strict")
            query_text = query.decode("ascii")
        except UnicodeDecodeError:
            raise h11.RemoteProtocolError("request target is not valid ASCII/UTF-8", 400) from None
        method = event.method.decode("ascii", "replace")
        max_body = BODY_LIMITS.get(path, self.max_body)
        # h11 enforces max_incomplete_event_size only while a head is incomplete; a big head that
        # arrives in one read must be measured here.
        head_size = len(event.target) + 16
        content_length: int | None = None
        chunked = False
        for key, value in event.headers:
            head_size += len(key) + len(value) + 4
            if key == b"content-length":
                content_length = int(value)  # h11 has checked it is digits, and that duplicates agree
            elif key == b"transfer-encoding":
                chunked = True
        if head_size > self.max_header_bytes:
            raise h11.RemoteProtocolError("request header fields too large", 431)
        if content_length is not None:
            # Two framings are how a request is smuggled past a proxy that picks the other one: RFC 9112
            # section 6.3 says reject and close. h11 merges equal duplicate lengths, so look at the raw head.
            if chunked:
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", 400)
            if _repeated_content_length(_prefix(raw, self.max_header_bytes + 4)):
                raise h11.RemoteProtocolError("more than one Content-Length", 400)
            if content_length > max_body:
                raise EarlyResponse(simple_response(413, f"Request body too large, max size: {max_body} bytes"))
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(_CONTINUE)
        if (method, path) in STREAMED_BODIES:
            body_stream = BodyStream(conn, stream, max_body, self.read_timeout, content_length)
            request = Request(method, path, query_text, head.headers, b"", remote)
            request.body_stream = body_stream
            return request, _keep_alive(head)
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(conn, stream)
            if type(event) is h11.EndOfMessage:
                break
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise EarlyResponse(simple_response(
                        413, f"Request body too large, max size: {max_body} bytes"))
                chunks.append(event.data)
            else:
                return None  # ConnectionClosed mid-body
        if not chunks:
            body = b""
        else:
            body = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)  # h11 hands out bytearrays
        return Request(method, path, query_text, head.headers, body, remote), _keep_alive(head)
