"""One downstream HTTP/1.1 connection of an L7 handler: request heads parsed, each request handed to its
`Route` (inbound: authorize, the local application; outbound: breakers, balancer, endpoints), the head and
body relayed to the upstream connection the route attaches, the response relayed back. Retries, the free
re-dial of a stale pooled connection and failures are decided here; how a request ends (answers, retry
timers, timeouts, pooling, the next request) is l7_state.SessionState; the route decides what a failure
means.

Bodies stream through: a request body is also kept (for a retry) while it stays under KEEP_MAX, and a
response is written downstream as it arrives once no retry can follow.
"""

from __future__ import annotations

from collections.abc import Hashable

from .http1 import Head, HTTPError, body_of
from .l7_common import KEEP_MAX, LOCAL_FAILURE, MAX_INTERIM, PAUSE_AT, Route, Sweeper, reply
from .l7_pool import UpConn
from .l7_state import SessionState, _nothing
from .reactor import Reactor
from .stream import Stream

__all__ = ["LOCAL_FAILURE", "Route", "Session", "reply"]


class Session(SessionState):
    """One downstream connection: requests read and relayed, responses relayed back."""

    def __init__(self, reactor: Reactor, route: Route, down: Stream) -> None:
        super().__init__(reactor, route, down)
        down.on_data = self._down_data
        down.on_eof = self._down_eof
        down.on_close = self._down_closed
        down.on_drain = self._down_drained
        # Bound once: attaching an upstream connection per request would otherwise allocate four methods.
        self._up_cbs = (self._up_closed, self._up_data, self._up_eof, self._up_drained)

    # ------------------------------------------------------------------ downstream

    def _down_data(self, data: bytes) -> None:
        self.rx += len(data)
        if not self.busy:
            reader = self.reader
            fresh = not reader.pending
            try:  # _parse inlined: one call less per request
                head, rest = reader.feed(data)
            except HTTPError as exc:
                self._local(exc.status, exc.reason.encode(), close=True)
                return
            if head is not None:
                self._start(head, rest)
            elif fresh and reader.pending:  # a head begins: the slow-head clock starts now
                self.since = self.reactor.now()
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
        self.req_body = body_of(head.body, head.length)
        self.sent_down = self.got_up = self.up_dirty = self.discard = self.in_retry = self.admitted = False
        self.continued = False
        self.interim = 0
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
        timeout_s = self.route.timeout_s
        self.deadline = 0.0
        if timeout_s > 0:
            # One request timer per connection, not per request: a timer left armed by an earlier request
            # fires no later than this deadline and re-arms for what is left (see _timed_out).
            self.deadline = deadline = self.t0 + timeout_s
            timer = self.timer
            if timer is None or timer.cancelled or timer.when > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer = self.reactor.call_later(timeout_s, self._timed_out)
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
        Sweeper.of(self.reactor).sessions.discard(self)
        self._cancel_timers()
        self._drop_timer()
        if self.busy:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                conn.on_close = _nothing
                conn.close("client-gone")
            self.route.cancel_acquire(self)
            self._finish_retry()
            self._end(self.code or 499)
            # This close may run inside the relay of the response (a write to a client that reset): the
            # request is over here, so the relay's own ending must not count it again (finding F2).
            self.busy = False
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
        up = conn.stream
        conn.on_close, up.on_data, up.on_eof, up.on_drain = self._up_cbs
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
            if head.status < 200 and head.status != 101:  # interim: relay one 100 Continue, wait for more
                # At most one relayed and MAX_INTERIM read per request (finding 10: a flood of them to a client
                # that does not read grew the worker without bound); other 1xx are dropped, as Envoy does.
                self.interim += 1
                if self.interim > MAX_INTERIM:
                    self._bad_gateway("too many interim responses")
                    return
                if head.status == 100 and req.version == 11 and not self.continued:
                    self.continued = True
                    self._write_down(head.raw)
                if not data:
                    return
                continue
            if head.status == 101 and not req.upgrade:  # only a websocket upgrade may switch (finding 6)
                self._bad_gateway("protocol switch the request did not ask for")
                return
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
        if self.in_retry:
            self._finish_retry()
        retries = self.route.retries
        if not self.sent_down and retries.num_retries and (
                status in retries.retry_on_status_codes
                or (status == 503 and retries.retry_on_connect_failure and head.get(LOCAL_FAILURE) == b"1")):
            if self._may_retry(True):
                return True
        self.resp = head
        self.code = status
        self.resp_body = body = body_of(head.body, head.length, 502)
        if status == 101:
            self._write_down(head.raw)
            self._tunnel(rest)
            return True
        if body.done:
            self._write_down(head.raw)
            self.up_dirty = bool(rest)
            self._complete()
            return True
        if not rest:
            self._write_down(head.raw)
            return False
        # The head and the body bytes that came with it go down in one write: one TLS record and one send
        # instead of two (sends dominate a small request's cost on both sides).
        try:
            end = body.feed(rest)
        except HTTPError:
            self._write_down(head.raw)
            self._abort(502, "bad response framing")
            return True
        if end < len(rest):
            self.up_dirty = True
            rest = rest[:end]
        self._write_down(head.raw + rest)
        if body.done:
            self._complete()
        elif self.down.buffered() > PAUSE_AT and self.conn is not None:
            self.conn.stream.pause_reading()
        return True

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
