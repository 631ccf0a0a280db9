"""One downstream HTTP/1.1 connection of an L7 handler: request heads parsed, each request handed to its
`Route` (inbound: authorize, the local application; outbound: breakers, balancer, endpoints), the head and
body relayed to the upstream connection the route attaches, the response relayed back, then the next
request. Retries, the free re-dial of a stale pooled connection and request timeouts live here; the route
decides what a failure means.

Bodies stream through: a request body is also kept (for a retry) while it stays under KEEP_MAX, and a
response is written downstream as it arrives once no retry can follow.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Hashable
from typing import Protocol

from .http1 import CLOSE, Body, Head, HeadReader, HTTPError
from .l4 import Pipe
from .l7_pool import UpConn
from .reactor import Reactor, Timer
from .resilience import retry_backoff
from .snapshot import Retries
from .stream import Stream

KEEP_MAX = 64 * 1024  # request bytes kept for a retry; beyond this the request is not retried
PAUSE_AT = 256 * 1024  # a destination buffer above this pauses the source
BYTES_FLUSH = 1 << 20
LOCAL_FAILURE = b"x-meshagent-local-connect-failure"
HEAD_TIMEOUT_S = 30.0  # a request head must be complete this long after its first byte (slowloris)
IDLE_TIMEOUT_S = 300.0  # a downstream keep-alive connection with no request in flight
SWEEP_EVERY_S = 5.0

_rng = random.Random()
_REASONS = {400: b"Bad Request", 403: b"Forbidden", 405: b"Method Not Allowed", 408: b"Request Timeout", 431:
            b"Request Header Fields Too Large", 501: b"Not Implemented", 502: b"Bad Gateway",
            503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


def reply(status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = (), close: bool = False) -> bytes:
    """A complete small response of our own."""
    head = [b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            % (status, _REASONS.get(status, b"Error"), len(body))]
    head.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


class Route(Protocol):
    """What a Session asks of its side of the proxy."""

    direction: str  # "inbound" | "outbound"
    label: str  # the metrics label of the destination ("" inbound)
    retries: Retries
    timeout_s: float  # per request, 0 = none

    def begin(self, s: Session, head: Head) -> bytes | None:
        """Admit a request: None to go on, or a complete local reply (denied, breaker open)."""

    def acquire(self, s: Session) -> None:
        """Get an upstream connection: later (or at once) `s.attached(conn, reused)` or `s.attach_failed`."""

    def cancel_acquire(self, s: Session) -> None:
        """The session no longer wants a connection (dial, wait or attempt): abandon it without a verdict."""

    def attempt_done(self, s: Session, key: Hashable, latency_s: float, ok: bool | None) -> None:
        """The attempt on `key` ended (ok: not 5xx, no gateway failure; None: abandoned, no verdict); a second
        call for the same attempt is ignored."""

    def try_retry(self) -> bool:
        """Whether the retry budget allows one more retry now (counted by the route)."""

    def retry_finished(self) -> None:
        """A retry allowed by try_retry ended."""

    def give_back(self, conn: UpConn) -> None:
        """A connection that can carry another request."""

    def end(self, s: Session, code: int, duration_s: float) -> None:
        """The request is over (answered, failed or abandoned); `s.admitted` says whether begin() let it in."""

    def failure_reply(self, reason: str) -> bytes:
        """The local answer when no upstream could be reached."""

    def closed(self, s: Session, received: int, sent: int) -> None:
        """The downstream connection closed; byte counts not yet reported."""


class Session:
    """The state of one downstream connection and of its one request in flight."""

    def __init__(self, reactor: Reactor, route: Route, down: Stream) -> None:
        self.reactor = reactor
        self.route = route
        self.down = down
        self.reader = HeadReader()
        self.rreader = HeadReader(response=True)
        self.req: Head | None = None
        self.req_body = Body(0)
        self.resp: Head | None = None
        self.resp_body = Body(0)
        self.conn: UpConn | None = None
        self.key: Hashable = None
        self.tried: list[Hashable] = []
        self.buf: list[bytes] = []
        self.buf_size = 0
        self.retryable = True
        self.pending = b""  # pipelined bytes after the current request
        self.busy = False
        self.admitted = False  # route.begin() accepted the current request (it holds the route's slots)
        self.discard = False  # skipping a refused request's body
        self.sent_down = False  # a response byte went downstream: no retry, no local reply
        self.got_up = False  # a response byte came from the current upstream connection
        self.up_dirty = False  # the upstream sent more than its response: not reusable
        self.free_redial = True
        self.in_retry = False
        self.client_eof = False
        self.attempt = 0
        self.t0 = self.t_attempt = 0.0
        self.code = 0
        self.timer: Timer | None = None
        self.retry_timer: Timer | None = None
        self.rx = self.tx = 0
        self.flags = ""  # access-log markers of the current request ("UF", "UO", "DENY", "UT", ...)
        self.since = reactor.now()  # idle since, or the current head's first byte
        _Sweeper.of(reactor).sessions.add(self)
        down.on_data = self._down_data
        down.on_eof = self._down_eof
        down.on_close = self._down_closed
        down.on_drain = self._down_drained

    # ------------------------------------------------------------------ downstream

    def _down_data(self, data: bytes) -> None:
        self.rx += len(data)
        if not self.busy:
            if not self.reader.pending:
                self.since = self.reactor.now()
            self._parse(data)
        elif self.req_body.done:
            self.pending += data
            self.down.pause_reading()
        else:
            self._req_body(data)

    def _parse(self, data: bytes) -> None:
        try:
            head, rest = self.reader.feed(data)
        except HTTPError as exc:
            self._local(exc.status, exc.reason.encode(), close=True)
            return
        if head is not None:
            self._start(head, rest)

    def _start(self, head: Head, rest: bytes) -> None:
        self.busy = True
        self.req = head
        self.t0 = self.reactor.now()
        self.req_body = Body(head.body, head.length)
        self.sent_down = self.got_up = self.up_dirty = self.discard = self.in_retry = self.admitted = False
        self.free_redial = True
        self.attempt = 0
        self.tried = []
        self.code = 0
        self.key = None
        self.flags = ""
        refusal = reply(405, b"CONNECT is not proxied\n", close=True) if head.method == b"CONNECT" else None
        if refusal is None:
            refusal = self.route.begin(self, head)
        if refusal is not None:
            self.discard = True
            if rest and self._take_body(rest) is None:
                return
            self._refuse(refusal, int(refusal[9:12]))
            return
        self.admitted = True
        self.buf = [head.raw]
        self.buf_size = len(head.raw)
        self.retryable = True
        if rest:
            chunk = self._take_body(rest)
            if chunk is None:
                return
            self._forward(chunk)
        if self.route.timeout_s > 0:
            self.timer = self.reactor.call_later(self.route.timeout_s, self._timed_out)
        self.route.acquire(self)

    def _take_body(self, data: bytes) -> bytes | None:
        """The part of `data` that belongs to the request body (what follows is kept for the next request);
        None when the framing is broken (answered and closed)."""
        body = self.req_body
        if body.done:
            self.pending += data
            self.down.pause_reading()
            return b""
        try:
            end = body.feed(data)
        except HTTPError as exc:
            self._abort(400, exc.reason)
            return None
        if end == len(data):
            return data
        self.pending += data[end:]
        self.down.pause_reading()
        return data[:end]

    def _req_body(self, data: bytes) -> None:
        chunk = self._take_body(data)
        if chunk is None:
            return
        if not self.discard:
            self._forward(chunk)
        elif self.req_body.done:
            self._next()

    def _forward(self, chunk: bytes) -> None:
        if not chunk:
            return
        conn = self.conn
        if self.retryable:
            self.buf.append(chunk)
            self.buf_size += len(chunk)
            if self.buf_size > KEEP_MAX:
                self.retryable = False
                if conn is not None:
                    self.buf = []
        elif conn is None:
            self.buf.append(chunk)
            self.buf_size += len(chunk)
        if conn is None:
            if self.buf_size >= KEEP_MAX:
                self.down.pause_reading()  # until a connection takes what is buffered
            return
        up = conn.stream
        up.write(chunk)
        if up.buffered() > PAUSE_AT:
            self.down.pause_reading()

    def _down_eof(self) -> None:
        self.client_eof = True
        if not self.busy or not self.req_body.done:
            self.down.close()  # between requests, or a request cut short: nothing more to do
        # else: answer the request in flight, then close (see _finish)

    def _down_drained(self) -> None:
        if self.conn is not None:
            self.conn.stream.resume_reading()

    def _down_closed(self, reason: str | None) -> None:
        _Sweeper.of(self.reactor).sessions.discard(self)
        self._cancel_timers()
        if self.busy:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                conn.on_close = _nothing
                conn.close("client-gone")
            self.route.cancel_acquire(self)
            self._finish_retry()
            self._end(self.code or 499)
        self.route.closed(self, self.rx, self.tx)

    # ------------------------------------------------------------------ upstream

    def attached(self, conn: UpConn, reused: bool) -> None:
        """The route's connection for the current request (its key: the endpoint it reaches)."""
        if not self.busy or self.down.closed:
            self.route.give_back(conn)
            return
        self.conn = conn
        self.key = conn.key
        self.got_up = self.up_dirty = False
        self.t_attempt = self.reactor.now()
        conn.requests += 1
        conn.on_close = self._up_closed
        up = conn.stream
        up.on_data = self._up_data
        up.on_eof = self._up_eof
        up.on_drain = self._up_drained
        self.rreader.reset()
        self.resp = None
        if self.buf:
            up.write(b"".join(self.buf) if len(self.buf) > 1 else self.buf[0])
        if not self.retryable:
            self.buf = []
        up.resume_reading()
        if not self.pending and up.buffered() <= PAUSE_AT:
            self.down.resume_reading()

    def attach_failed(self, reason: str, key: Hashable = None, refusal: bytes | None = None) -> None:
        """No connection: `key` is the endpoint that failed (a gateway failure), `refusal` a reply that ends
        the request at once (breaker open, no endpoint)."""
        if not self.busy or self.down.closed:
            return
        now = self.reactor.now()
        if refusal is not None:
            self._finish_retry()
            self._cancel_timers()
            self._refuse(refusal, int(refusal[9:12]))
            return
        if key is not None:
            self.route.attempt_done(self, key, now - self.t_attempt, False)
        self._finish_retry()
        if self._may_retry(self.route.retries.retry_on_connect_failure):
            return
        self._cancel_timers()
        self.flags = "URX" if self.attempt else "UF"
        self._refuse(self.route.failure_reply(reason), 503)

    def _up_data(self, data: bytes) -> None:
        self.got_up = True
        while self.resp is None:  # a loop, not recursion: a server may send many interim heads at once
            req = self.req
            assert req is not None
            try:
                head, data = self.rreader.feed(data, req.method)
            except HTTPError as exc:
                self._bad_gateway(exc.reason)
                return
            if head is None:
                return
            if head.status < 200 and head.status != 101:  # interim (100 Continue): relay, wait for more
                if req.version == 11:  # an HTTP/1.0 client does not expect them
                    self._write_down(head.raw)
                if not data:
                    return
                continue
            if self._response_head(head, data):
                return
        if not data:
            return
        body = self.resp_body
        if body.done:
            self.up_dirty = True
            return
        try:
            end = body.feed(data)
        except HTTPError:
            self._abort(502, "bad response framing")
            return
        if end < len(data):
            self.up_dirty = True
            data = data[:end]
        self._write_down(data)
        if body.done:
            self._complete()
        elif self.down.buffered() > PAUSE_AT and self.conn is not None:
            self.conn.stream.pause_reading()

    def _response_head(self, head: Head, rest: bytes) -> bool:
        """A final response head: retry, tunnel or relay. True when the session is done with this data."""
        key = self.key
        status = head.status
        self.route.attempt_done(self, key, self.reactor.now() - self.t_attempt, status < 500)
        self._finish_retry()
        retries = self.route.retries
        if not self.sent_down and retries.num_retries and (
                status in retries.retry_on_status_codes
                or (status == 503 and retries.retry_on_connect_failure and head.get(LOCAL_FAILURE) == b"1")):
            if self._may_retry(True):
                return True
        self.resp = head
        self.code = status
        self.resp_body = Body(head.body, head.length, 502)
        self._write_down(head.raw)
        if status == 101:
            self._tunnel(rest)
            return True
        if self.resp_body.done:
            self.up_dirty = bool(rest)
            self._complete()
            return True
        return False

    def _up_eof(self) -> None:
        if self.resp is not None and self.resp_body.eof():
            self._complete()
            return
        self._up_lost("eof")

    def _up_closed(self, reason: str | None) -> None:
        if self.busy:
            self._up_lost(reason or "closed")
        else:
            self.conn = None

    def _up_lost(self, reason: str) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.on_close = _nothing
            conn.close(reason)
        if self.resp is not None or self.sent_down:
            self._abort(502, "upstream closed mid-response")
            return
        if self.got_up:
            self._bad_gateway("upstream closed mid-head")
            return
        reused = conn is not None and conn.requests > 1
        if reused and self.free_redial and self.retryable:
            self.free_redial = False  # the server closed an idle pooled connection: not a retry
            self.route.attempt_done(self, self.key, self.reactor.now() - self.t_attempt, None)
            self.route.acquire(self)
            return
        self.attach_failed("upstream-reset", self.key)

    def _up_drained(self) -> None:
        if not self.pending and self.busy and not self.req_body.done:
            self.down.resume_reading()

    # ------------------------------------------------------------------ retries, timeouts

    def _may_retry(self, allowed: bool) -> bool:
        if not (allowed and self.retryable and self.attempt < self.route.retries.num_retries
                and not self.sent_down and not self.down.closed):
            return False
        if not self.route.try_retry():
            return False
        self._drop_conn()
        self.attempt += 1
        self.in_retry = True
        r = self.route.retries
        delay = retry_backoff(self.attempt, r.base_interval_ms, r.max_interval_ms, _rng)
        self.retry_timer = self.reactor.call_later(delay, self._retry)
        return True

    def _retry(self) -> None:
        self.retry_timer = None
        if self.busy and not self.down.closed:
            self.route.acquire(self)

    def _finish_retry(self) -> None:
        if self.in_retry:
            self.in_retry = False
            self.route.retry_finished()

    def _timed_out(self) -> None:
        self.timer = None
        if not self.busy:
            return
        if self.conn is not None and self.resp is None:
            self.route.attempt_done(self, self.key, self.reactor.now() - self.t_attempt, False)
        if self.sent_down:
            self._abort(504, "request timeout")
            return
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        self._drop_conn()
        self.route.cancel_acquire(self)
        self._finish_retry()
        self.flags = "UT"
        self._refuse(reply(504, b"upstream request timeout\n"), 504)

    def _cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None

    # ------------------------------------------------------------------ endings

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.on_close = _nothing
            conn.close()

    def _write_down(self, data: bytes) -> None:
        self.sent_down = True
        self.tx += len(data)
        self.down.write(data)

    def _refuse(self, answer: bytes, code: int) -> None:
        """Answer the current request ourselves; its body (if any) is read and dropped, then the next one."""
        self.code = code
        req = self.req
        close = answer.find(b"connection: close", 0, answer.find(b"\r\n\r\n")) >= 0
        if req is None or not req.keep_alive or (req.expect_continue and not self.req_body.done):
            if not close:
                answer = answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
            close = True
        self._write_down(answer)
        self._drop_conn()
        if close:
            self._end(code)
            self.busy = False
            self._close_after_answer()
            return
        self.discard = True
        if self.req_body.done:
            self._next()
        else:
            self.down.resume_reading()

    def _local(self, status: int, why: bytes, close: bool) -> None:
        """A reply to bytes that never made a request (a malformed head)."""
        self.busy = True
        self.req = None
        self.t0 = self.reactor.now()
        self._refuse(reply(status, why + b"\n", close=close), status)

    def _bad_gateway(self, why: str) -> None:
        if self.key is not None:
            self.route.attempt_done(self, self.key, self.reactor.now() - self.t_attempt, False)
        self._drop_conn()
        self._cancel_timers()
        self._finish_retry()
        self._refuse(reply(502, why.encode() + b"\n"), 502)

    def _abort(self, code: int, why: str) -> None:
        """Something broke mid-message: a reply if nothing was sent yet, else cut both connections."""
        self._drop_conn()
        self._cancel_timers()
        if not self.sent_down and not self.down.closed:
            self._refuse(reply(code, why.encode() + b"\n", close=True), code)
            return
        self.code = self.code or code
        self.down.close(why)

    def _complete(self) -> None:
        """The response is relayed in full: pool the upstream connection if it may carry another request."""
        self._cancel_timers()
        req, resp = self.req, self.resp
        assert req is not None and resp is not None
        conn, self.conn = self.conn, None
        done = self.req_body.done
        if conn is not None:
            conn.on_close = _nothing
            if resp.keep_alive and req.keep_alive and done and not self.up_dirty:
                self.route.give_back(conn)
            else:
                conn.close()
        if not (req.keep_alive and resp.keep_alive and resp.body != CLOSE and done) or self.client_eof:
            self._end(self.code)
            self.busy = False
            self._close_after_answer()
            return
        self._next()

    def _close_after_answer(self) -> None:
        """End our side once the answer is out; the client's FIN (read and dropped until then) closes."""
        down = self.down
        down.on_data = _discard
        self.pending = b""
        down.shutdown_write()
        down.resume_reading()

    def _next(self) -> None:
        """Ready for the next request on the downstream connection."""
        self._end(self.code)
        self.busy = False
        self.discard = False
        self.req = None
        self.resp = None
        self.buf = []
        self.since = self.reactor.now()
        if self.client_eof:
            self.down.shutdown_write()
            return
        if self.pending:
            self.reactor.call_soon(self._resume_pending)  # not recursively: a pipelined burst stays flat
        else:
            self.down.resume_reading()

    def _resume_pending(self) -> None:
        if self.busy or self.down.closed:
            return
        data, self.pending = self.pending, b""
        self._parse(data)
        if not self.busy and not self.down.closed:
            self.down.resume_reading()

    def _end(self, code: int) -> None:
        if self.busy:
            self.route.end(self, code, self.reactor.now() - self.t0)
            self.admitted = False

    def _tunnel(self, rest: bytes) -> None:
        """101 Switching Protocols: the two connections become a byte pipe."""
        conn, self.conn = self.conn, None
        self._cancel_timers()
        self._end(101)
        self.busy = False
        if conn is None:
            self.down.close()
            return
        conn.on_close = _nothing
        up = conn.stream
        if rest:
            self._write_down(rest)
        if self.pending:
            up.write(self.pending)
            self.pending = b""
        _Sweeper.of(self.reactor).sessions.discard(self)  # the pipe has no idle timeout of ours

        def done(rx: int, tx: int) -> None:
            conn._closed(None)  # free the connection slot
            self.route.closed(self, self.rx + rx, self.tx + tx)

        Pipe(self.down, up, done).start()


class _Sweeper:
    """Closes downstream connections that sit on a partial head too long or idle too long, with one timer
    per reactor rather than one per request."""

    _by_reactor: weakref.WeakKeyDictionary[Reactor, _Sweeper] = weakref.WeakKeyDictionary()

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.sessions: set[Session] = set()
        self.timer: Timer | None = None

    @classmethod
    def of(cls, reactor: Reactor) -> _Sweeper:
        """The reactor's sweeper, its timer running."""
        found = cls._by_reactor.get(reactor)
        if found is None:
            found = cls._by_reactor[reactor] = cls(reactor)
        if found.timer is None:
            found.timer = reactor.call_later(SWEEP_EVERY_S, found.sweep)
        return found

    def sweep(self) -> None:
        """Close what overstayed; run again while there are sessions."""
        self.timer = None
        now = self.reactor.now()
        for s in [s for s in self.sessions if not s.busy]:
            if s.reader.pending and now - s.since > HEAD_TIMEOUT_S:
                s._local(408, b"request head timeout", close=True)
                s.down.close("head-timeout")
            elif not s.reader.pending and now - s.since > IDLE_TIMEOUT_S:
                s.down.close("idle-timeout")
        if self.sessions:
            self.timer = self.reactor.call_later(SWEEP_EVERY_S, self.sweep)


def _nothing(reason: str | None) -> None:
    return None


def _discard(data: bytes) -> None:
    return None
