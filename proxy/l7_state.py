"""The state of one L7 downstream connection and its request in flight, and how a request ends: retries and
their backoff, timeouts, our own answers, a response relayed in full (the upstream connection pooled or
closed), the next request, an upgrade to a byte pipe. l7_session.Session adds the relay itself."""

from __future__ import annotations

import random
from collections.abc import Hashable

from .http1 import CLOSE, LENGTH, Body, Head, HeadReader
from .l4 import Pipe
from .l7_common import DRAIN_MAX, Route, Sweeper, reply
from .l7_pool import UpConn
from .reactor import Reactor, Timer
from .resilience import retry_backoff
from .stream import Stream

_rng = random.Random()


class SessionState:
    """Per-connection state and the endings of a request."""

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
        self.timer: Timer | None = None  # the request timer: armed at most once per connection at a time
        self.deadline = 0.0  # the current request's timeout deadline; 0 = none
        self.retry_timer: Timer | None = None
        self.rx = self.tx = 0
        self.continued = False  # a 100 Continue went downstream for the current request
        self.interim = 0  # interim (1xx) heads read for the current request
        self.swept = -1  # bytes moved (rx + tx) at the last sweep, and since when they have not changed
        self.quiet_since = 0.0
        self.flags = ""  # access-log markers of the current request ("UF", "UO", "DENY", "UT", ...)
        self.since = reactor.now()  # idle since, or the current head's first byte
        Sweeper.of(reactor).sessions.add(self)

    def _parse(self, data: bytes) -> None:
        """Read a request head from `data` (the relay's job)."""
        raise NotImplementedError

    def attached(self, conn: UpConn, reused: bool) -> None:
        """The route's connection for the current request (the relay's job)."""
        raise NotImplementedError

    def attach_failed(self, reason: str, key: Hashable = None, refusal: bytes | None = None) -> None:
        """No connection for the current request (the relay's job)."""
        raise NotImplementedError

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
        if not self.busy or not self.deadline:
            return
        now = self.reactor.now()
        if now < self.deadline:  # armed for an earlier request: wait for what is left of this one's
            self.timer = self.reactor.call_later(self.deadline - now, self._timed_out)
            return
        self.deadline = 0.0
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
        # The request timer stays armed (cancelling and re-creating it per request costs more than a
        # wake-up per timeout period); with no deadline it does nothing. _drop_timer really stops it.
        self.deadline = 0.0
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None

    # ------------------------------------------------------------------ endings

    def _drop_timer(self) -> None:
        """Stop the request timer (the connection is closing or no longer HTTP)."""
        self.deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

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
        body = self.req_body
        # The rest of the body is read and dropped only when it is short and counted, not parsed: a chunked or
        # long one closes the connection after a bounded linger (finding 14: a denied body cost CPU unbounded).
        drain = body.done or (body.kind == LENGTH and body.remaining <= DRAIN_MAX
                                 and not (req is not None and req.expect_continue))
        if req is None or not req.keep_alive or not drain:
            if not close:
                answer = answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
            close = True
        self._write_down(answer)
        self._drop_conn()
        if close:
            self._end(code)
            self.busy = False
            if body.done:
                self._close_after_answer()
            else:
                self.pending = b""
                self.down.linger_close()
            return
        self.discard = True
        if self.req_body.done:
            self._next()
        else:
            self.down.resume_reading()

    def _stalled(self, code: int, why: bytes) -> None:
        """No byte moved for too long (the sweep): answer `code` and close, or just close once answering."""
        if self.conn is not None and self.resp is None:
            self.route.attempt_done(self, self.key, self.reactor.now() - self.t_attempt, None)
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        self._drop_conn()
        self.route.cancel_acquire(self)
        self._finish_retry()
        self.deadline = 0.0
        if self.sent_down:
            self.code = self.code or code
            self.down.close(why.decode())
            return
        self._refuse(reply(code, why + b"\n", close=True), code)

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
        self.deadline = 0.0  # _cancel_timers inlined
        if self.retry_timer is not None:
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
        now = self.reactor.now()  # one clock read for _end and the idle clock
        if self.busy:
            self.route.end(self, self.code, now - self.t0)
            self.admitted = False
        self.busy = False
        self.discard = False
        self.req = None
        self.resp = None
        self.buf = []
        self.since = now
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
        self._drop_timer()
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
        Sweeper.of(self.reactor).sessions.discard(self)  # the pipe has no idle timeout of ours

        def done(rx: int, tx: int) -> None:
            conn._closed(None)  # free the connection slot
            self.route.closed(self, self.rx + rx, self.tx + tx)

        Pipe(self.down, up, done).start()


def _nothing(reason: str | None) -> None:
    return None


def _discard(data: bytes) -> None:
    return None
