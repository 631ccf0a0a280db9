"""What the L7 session and its routes share: limits, our own small replies, the Route protocol a Session
drives, and the sweep that closes slow-head and idle downstream connections."""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .http1 import LazyHeaders
from .reactor import Reactor, Timer
from .snapshot import Retries

if TYPE_CHECKING:
    from .http1 import Head
    from .l7_pool import UpConn
    from .l7_state import SessionState

KEEP_MAX = 64 * 1024  # request bytes kept for a retry; beyond this the request is not retried
PAUSE_AT = 256 * 1024  # a destination buffer above this pauses the source
BYTES_FLUSH = 1 << 20
LOCAL_FAILURE = b"x-meshagent-local-connect-failure"
HEAD_TIMEOUT_S = 30.0  # a request head must be complete this long after its first byte (slowloris)
IDLE_TIMEOUT_S = 300.0  # a downstream keep-alive connection with no request in flight
SWEEP_EVERY_S = 5.0
BODY_IDLE_TIMEOUT_S = 30.0  # a request body with no byte for this long: 408 and close (finding 7)
STREAM_IDLE_TIMEOUT_S = 300.0  # a request in flight with no byte either way (Envoy's stream_idle_timeout)
DRAIN_MAX = 1 << 20  # a refused request's Content-Length body is read and dropped up to this; beyond, close
MAX_INTERIM = 8  # interim (1xx) heads read per request before the upstream is a bad gateway

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


class WatchedHeaders(LazyHeaders):
    """A request's fields that note whether the authorizer read them (if not, its verdict depends only on
    the source, the method and the target, and may be remembered for them)."""

    __slots__ = ("used",)

    def __init__(self, head: Head) -> None:
        super().__init__(head)
        self.used = False

    def __len__(self) -> int:
        self.used = True
        return len(self.head.headers)

    def __getitem__(self, i: Any) -> Any:
        self.used = True
        return self.head.headers[i]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self.used = True
        return iter(self.head.headers)


class Route(Protocol):
    """What a session asks of its side of the proxy."""

    direction: str  # "inbound" | "outbound"
    label: str  # the metrics label of the destination ("" inbound)
    retries: Retries
    timeout_s: float  # per request, 0 = none

    def begin(self, s: SessionState, head: Head) -> bytes | None:
        """Admit a request: None to go on, or a complete local reply (denied, breaker open)."""

    def acquire(self, s: SessionState) -> None:
        """Get an upstream connection: later (or at once) `s.attached(conn, reused)` or `s.attach_failed`."""

    def cancel_acquire(self, s: SessionState) -> None:
        """The session no longer wants a connection (dial, wait or attempt): abandon it without a verdict."""

    def attempt_done(self, s: SessionState, key: Hashable, latency_s: float, ok: bool | None) -> None:
        """The attempt on `key` ended (ok: not 5xx, no gateway failure; None: abandoned, no verdict); a second
        call for the same attempt is ignored."""

    def try_retry(self) -> bool:
        """Whether the retry budget allows one more retry now (counted by the route)."""

    def retry_finished(self) -> None:
        """A retry allowed by try_retry ended."""

    def give_back(self, conn: UpConn) -> None:
        """A connection that can carry another request."""

    def end(self, s: SessionState, code: int, duration_s: float) -> None:
        """The request is over (answered, failed or abandoned); `s.admitted` says whether begin() let it in."""

    def failure_reply(self, reason: str) -> bytes:
        """The local answer when no upstream could be reached."""

    def closed(self, s: SessionState, received: int, sent: int) -> None:
        """The downstream connection closed; byte counts not yet reported."""


class Sweeper:
    """Closes downstream connections that sit on a partial head too long or idle too long, with one timer
    per reactor rather than one per request."""

    _by_reactor: weakref.WeakKeyDictionary[Reactor, Sweeper] = weakref.WeakKeyDictionary()

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.sessions: set[SessionState] = set()
        self.timer: Timer | None = None

    @classmethod
    def of(cls, reactor: Reactor) -> Sweeper:
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
        for s in list(self.sessions):
            if s.busy:
                # Byte counts compared between sweeps: the relay pays nothing per read for these timeouts.
                moved = s.rx + s.tx
                if moved != s.swept:
                    s.swept = moved
                    s.quiet_since = now
                elif not s.req_body.done and now - s.quiet_since > BODY_IDLE_TIMEOUT_S:
                    s._stalled(408, b"request body timeout")
                elif now - s.quiet_since > STREAM_IDLE_TIMEOUT_S:
                    s._stalled(504, b"stream idle timeout")
            elif s.reader.pending and now - s.since > HEAD_TIMEOUT_S:
                s._local(408, b"request head timeout", close=True)
                s.down.close("head-timeout")
            elif not s.reader.pending and now - s.since > IDLE_TIMEOUT_S:
                s.down.close("idle-timeout")
        if self.sessions:
            self.timer = self.reactor.call_later(SWEEP_EVERY_S, self.sweep)
