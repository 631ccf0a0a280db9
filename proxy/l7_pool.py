"""Keep-alive connection pools for the L7 handlers: idle upstream connections by key (an endpoint, or the
local application), each closed when its server closes it or it idles too long.

A pooled connection that its server closed between requests is the normal HTTP/1.1 race; the handlers
re-dial once for free when a reused connection dies before any response byte.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reactor import Reactor, Timer
    from .stream import Stream

IDLE_TIMEOUT_S = 60.0  # below common servers' keep-alive timeouts would be nicer; they close, we notice
MAX_IDLE_PER_KEY = 64
SWEEP_EVERY_S = 10.0


def _nothing(reason: str | None) -> None:
    return None


class UpConn:
    """One upstream connection: its stream, its pool key, and a release callback run once when it closes
    (a circuit-breaker slot). `on_close` is the current owner's close handler."""

    __slots__ = ("_idle_cbs", "generation", "idle_in", "idle_since", "key", "on_close", "pool", "release",
                 "requests", "stream")

    def __init__(self, stream: Stream, key: Hashable, release: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.key = key
        self.release = release
        self.requests = 0  # requests sent on it: >0 means reused
        self.generation = 0  # the UpstreamState.tls_generation it was dialled (and verified) under
        self.idle_since = 0.0
        self.idle_in: list[UpConn] | None = None  # the pool list holding it while idle
        self.pool: Pool | None = None
        self.on_close: Callable[[str | None], None] = _nothing
        stream.on_close = self._closed
        # Bound once: pooling the connection after every request would otherwise allocate three methods.
        self._idle_cbs = (self._idle_closed, self._idle_data, stream.close)

    def _closed(self, reason: str | None) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()
        self.on_close(reason)

    def close(self, reason: str | None = None) -> None:
        """Close the stream (the release runs)."""
        self.stream.close(reason)

    def _idle_closed(self, reason: str | None) -> None:
        idle, self.idle_in = self.idle_in, None
        if idle is not None and self.pool is not None:
            try:
                idle.remove(self)
                self.pool._count -= 1
            except ValueError:
                pass

    def _idle_data(self, data: bytes) -> None:
        self.close("unexpected-data")  # a server may not speak unasked: the connection is unusable


class Pool:
    """Idle connections by key, most recently used first."""

    def __init__(self, reactor: Reactor, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.reactor = reactor
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[Hashable, list[UpConn]] = {}
        self._count = 0
        self._sweeper: Timer | None = None
        self.on_idle: Callable[[UpConn], bool] | None = None  # offered first: True = it took the connection

    def __len__(self) -> int:
        return self._count

    def get(self, key: Hashable, generation: int = 0) -> UpConn | None:
        """An idle live connection for `key` verified under TLS generation `generation` or later, or None.
        Older ones (roots, leaf or the destination's SPIFFE IDs changed since) are closed, not reused."""
        conns = self._idle.get(key)
        if not conns:
            return None
        cutoff = self.reactor.now() - self.idle_timeout_s
        while conns:
            conn = conns.pop()
            self._count -= 1
            conn.idle_in = None
            if conn.stream.closed:
                continue
            if conn.idle_since < cutoff or conn.generation < generation:
                conn.on_close = _nothing
                conn.close()
                continue
            conn.on_close = _nothing
            return conn
        return None

    def put(self, conn: UpConn, generation: int = 0) -> None:
        """Keep `conn` for the next request on its key (or hand it to a waiter first); a full key, or a TLS
        generation older than `generation`, closes it."""
        stream = conn.stream
        if stream.closed:
            return
        if conn.generation < generation:
            conn.on_close = _nothing
            conn.close()  # its release frees the breaker slot; a waiter dials afresh
            return
        if self.on_idle is not None and self.on_idle(conn):
            return
        conns = self._idle.get(conn.key)
        if conns is None:  # not setdefault: its default list was allocated on every put
            conns = self._idle[conn.key] = []
        if len(conns) >= MAX_IDLE_PER_KEY:
            conn.on_close = _nothing
            conn.close()
            return
        conn.idle_since = self.reactor.now()
        conns.append(conn)
        self._count += 1
        conn.idle_in = conns
        conn.pool = self
        conn.on_close, stream.on_data, stream.on_eof = conn._idle_cbs
        stream.on_drain = None
        stream.resume_reading()  # notice the server's FIN while idle
        if self._sweeper is None:
            self._sweeper = self.reactor.call_later(SWEEP_EVERY_S, self._sweep)

    def take_any(self) -> UpConn | None:
        """The oldest idle connection of any key (to close it and free a connection slot), or None."""
        for conns in self._idle.values():
            if conns:
                conn = conns.pop(0)
                self._count -= 1
                conn.idle_in = None
                conn.on_close = _nothing
                return conn
        return None

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.reactor.now() - self.idle_timeout_s
        for key in list(self._idle):
            conns = self._idle[key]
            old = [c for c in conns if c.idle_since < cutoff or c.stream.closed]
            for conn in old:
                conns.remove(conn)
                self._count -= 1
                conn.idle_in = None
                conn.on_close = _nothing
                conn.close()
            if not conns:
                del self._idle[key]
        if self._count:
            self._sweeper = self.reactor.call_later(SWEEP_EVERY_S, self._sweep)

    def close(self) -> None:
        """Close every idle connection."""
        for conns in self._idle.values():
            for conn in conns:
                conn.on_close = _nothing
                conn.close()
        self._idle.clear()
        self._count = 0
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
