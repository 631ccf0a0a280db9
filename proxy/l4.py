"""L4 proxying: byte pipes between two streams with backpressure and half-close, inbound (mTLS from the mesh,
authorized per connection, to the local application) and outbound (plain from the application, mTLS to an
upstream endpoint picked by the balancer, retried on connect failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .access_log import AccessLogger, logger_for
from .reactor import Timer
from .stream import Cancel, Stream

if TYPE_CHECKING:
    from .dataplane import DataPlane, UpstreamState
    from .snapshot import Endpoint

# Access log flags (Envoy's short response flags): no healthy upstream, upstream connect failure, breaker
# overflow, denied by an intention.
NO_HEALTHY, CONNECT_FAILURE, OVERFLOW, DENIED = "UH", "UF", "UO", "DENY"


def _access_logger(dp: DataPlane) -> AccessLogger | None:
    """This connection's access logger, None when access logs are off (one attribute test per connection)."""
    snap = dp.snapshot
    if snap is None or not snap.access_log.enabled:
        return None
    return logger_for(snap.access_log)


class _ConnLog:
    """One L4 connection's access-log entry, written when it ends (only made when access logs are on)."""

    __slots__ = ("destination", "direction", "logger", "now", "source", "start", "t0", "upstream_host")

    def __init__(self, logger: AccessLogger, dp: DataPlane, direction: str, source: str,
                 destination: str) -> None:
        self.logger = logger
        self.now = dp.reactor.now
        self.start, self.t0 = time.time(), self.now()
        self.direction, self.source, self.destination = direction, source, destination
        self.upstream_host = ""

    def write(self, received: int = 0, sent: int = 0, flags: str = "") -> None:
        """The entry: bytes from and to the connecting side, and the flags of how it ended."""
        self.logger.log(start=self.start, duration_s=self.now() - self.t0, source=self.source,
                        destination=self.destination, bytes_received=received, bytes_sent=sent,
                        upstream_host=self.upstream_host, flags=flags, direction=self.direction)

PAUSE_AT = 256 * 1024  # destination buffer above which the source is paused
BYTES_FLUSH = 1 << 20  # report byte counts to metrics at least every MiB per direction, not per chunk
IDLE_TIMEOUT_S = 3600.0  # Envoy's tcp_proxy idle_timeout: a pipe with no byte either way this long is closed
IDLE_CHECK_S = 300.0  # how often a pipe looks (so it closes between 60 and 65 minutes of silence)


class Pipe:
    """Copy bytes both ways between `down` (the side that connected to us) and `up`; EOF on one side shuts
    the other's write side; `on_done(received, sent)` once both are closed (bytes from/to `down`)."""

    __slots__ = (
        "_closed",
        "_idle_s",
        "_last_total",
        "_reported_rx",
        "_reported_tx",
        "_timer",
        "down",
        "on_done",
        "received",
        "report",
        "sent",
        "up",
    )

    def __init__(self, down: Stream, up: Stream, on_done: Callable[[int, int], None],
                 report: Callable[[int, int], None] | None = None) -> None:
        self.down = down
        self.up = up
        self.on_done = on_done
        self.report = report  # (received, sent) deltas, at most every BYTES_FLUSH
        self.received = 0
        self.sent = 0
        self._reported_rx = 0
        self._reported_tx = 0
        self._closed = 0
        self._idle_s = 0.0
        self._last_total = 0
        self._timer: Timer | None = None
        down.on_data = self._from_down
        up.on_data = self._from_up
        down.on_eof = up.shutdown_write
        up.on_eof = down.shutdown_write
        down.on_drain = self._down_drained
        up.on_drain = self._up_drained
        down.on_close = self._down_closed
        up.on_close = self._up_closed

    def start(self) -> None:
        """Read from both sides (each was paused while the other was being set up)."""
        self.down.resume_reading()
        self.up.resume_reading()
        self._timer = self.down.reactor.call_later(IDLE_CHECK_S, self._check_idle)

    def _check_idle(self) -> None:
        # A coarse periodic look at the byte counts, not a timestamp per chunk: the hot path pays nothing.
        total = self.received + self.sent
        if total != self._last_total:
            self._last_total = total
            self._idle_s = 0.0
        else:
            self._idle_s += IDLE_CHECK_S
            if self._idle_s >= IDLE_TIMEOUT_S:
                self._timer = None
                self.down.close("idle-timeout")
                self.up.close("idle-timeout")
                return
        self._timer = self.down.reactor.call_later(IDLE_CHECK_S, self._check_idle)

    def _from_down(self, data: bytes) -> None:
        up = self.up
        up.write(data)
        self.received += len(data)
        if len(up._wbuf) > PAUSE_AT:  # buffered(), inlined: this runs per chunk
            self.down.pause_reading()
        if self.report is not None and self.received - self._reported_rx >= BYTES_FLUSH:
            self._flush()

    def _from_up(self, data: bytes) -> None:
        down = self.down
        down.write(data)
        self.sent += len(data)
        if len(down._wbuf) > PAUSE_AT:
            self.up.pause_reading()
        if self.report is not None and self.sent - self._reported_tx >= BYTES_FLUSH:
            self._flush()

    def _up_drained(self) -> None:
        self.down.resume_reading()

    def _down_drained(self) -> None:
        self.up.resume_reading()

    # An error on one side resets the other. A clean close means that side saw both EOFs, so the other has
    # been told to shut its write side and closes by itself once its buffer drains: closing it here would
    # drop those bytes.
    def _down_closed(self, reason: str | None) -> None:
        if reason is not None:
            self.up.close(reason)
        self._one_closed()

    def _up_closed(self, reason: str | None) -> None:
        if reason is not None:
            self.down.close(reason)
        self._one_closed()

    def _flush(self) -> None:
        rx, tx = self.received - self._reported_rx, self.sent - self._reported_tx
        self._reported_rx, self._reported_tx = self.received, self.sent
        if self.report is not None and (rx or tx):
            self.report(rx, tx)

    def _one_closed(self) -> None:
        self._closed += 1
        if self._closed == 2:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush()
            self.on_done(self.received, self.sent)


def inbound(dp: DataPlane, stream: Stream) -> None:
    """A verified mTLS connection on the public listener: authorize its source (L4), then pipe it to the
    local application; a denied one is closed right after the handshake."""
    metrics = dp.metrics
    source = dp.authorizer.source_of(stream.peer_spiffe_id)
    logger = _access_logger(dp)
    entry = None
    if logger is not None:
        snap = dp.snapshot
        assert snap is not None
        entry = _ConnLog(logger, dp, "inbound", source or "", snap.service)
        entry.upstream_host = f"{snap.local_service_address}:{snap.local_service_port}"
    if source is None:  # a certificate of our CA without a service identity of this trust domain
        metrics.denial("", "l4")
        stream.close("denied")
        if entry is not None:
            entry.write(flags=DENIED)
        return
    verdict = dp.authorizer.l4(source)
    if not verdict.allowed:
        metrics.denial(verdict.rule, "l4")
        stream.close("denied")
        if entry is not None:
            entry.write(flags=DENIED)
        return
    breakers = dp.local_breakers
    if not breakers.acquire_connection():  # Envoy's local_app cluster: 1024 connections by default
        metrics.breaker_trip("", "max_connections")
        stream.close("breaker-max-connections")
        if entry is not None:
            entry.write(flags=OVERFLOW)
        return
    stream.pause_reading()  # nothing is read until the local application is connected
    caller = metrics.source_label(source)  # inbound series name the caller (bounded)
    metrics.connection_opened("inbound", caller)
    dial: list[Cancel] = []

    def report(rx: int, tx: int) -> None:
        metrics.bytes("inbound", caller, rx, tx)

    def done(rx: int, tx: int) -> None:
        breakers.release_connection()
        metrics.connection_closed("inbound", caller)
        if entry is not None:
            entry.write(rx, tx)

    def ready(local: Stream) -> None:
        local.pause_reading()
        if stream.closed:  # (client_gone has released)
            local.close()
            return
        Pipe(stream, local, done, report).start()

    entry_gone: list[bool] = []  # the entry is written once: by `failed`, else by `client_gone`

    def failed(reason: str) -> None:
        if entry is not None:
            entry.write(flags=CONNECT_FAILURE)
            entry_gone.append(True)
        stream.close(reason)

    def client_gone(reason: str | None) -> None:  # before the pipe: the client left or the dial failed
        if dial:
            dial[0].cancel()
        breakers.release_connection()
        metrics.connection_closed("inbound", caller)
        if entry is not None and not entry_gone:
            entry.write()

    stream.on_close = client_gone
    dial.append(dp.connect_local(ready, failed))


class OutboundL4:
    """One application connection on an upstream listener: an endpoint from the balancer, an mTLS dial
    (another endpoint on connect failure, up to the retry policy), then a pipe."""

    def __init__(self, dp: DataPlane, upstream: UpstreamState, stream: Stream) -> None:
        self.dp = dp
        self.us = upstream
        self.name = upstream.config.destination_name
        self.stream = stream
        self.tried: list[Endpoint] = []
        self.ep: Endpoint | None = None
        self.t0 = 0.0
        self.dial: Cancel | None = None
        self.retrying = False
        self.budgeted = False
        self.log: _ConnLog | None = None
        logger = _access_logger(dp)
        if logger is not None:
            snap = dp.snapshot
            assert snap is not None
            self.log = _ConnLog(logger, dp, "outbound", snap.service, self.name)

    def start(self) -> None:
        """Take a connection slot (or refuse at once), then dial."""
        us, metrics = self.us, self.dp.metrics
        if not us.breakers.acquire_connection():
            metrics.breaker_trip(self.name, "max_connections")
            self.stream.close("breaker-max-connections")
            if self.log is not None:
                self.log.write(flags=OVERFLOW)
            return
        metrics.connection_opened("outbound", self.name)
        self.stream.pause_reading()
        self.stream.on_close = self._client_gone
        us.budget.request_started()
        self.budgeted = True
        self._dial()

    def _attempts(self) -> int:
        # A connection is only ever retried on connect failure (nothing was sent yet): NumRetries of them,
        # at least one, when RetryOnConnectFailure; none otherwise.
        retries = self.us.config.retries
        return 1 + max(retries.num_retries, 1) if retries.retry_on_connect_failure else 1

    def _dial(self) -> None:
        ep = self.us.balancer.pick(None, self.tried)
        if ep is None:
            # (after failed attempts, no other endpoint to try: that is still a connect failure)
            self._give_up("no-healthy-endpoints", CONNECT_FAILURE if self.tried else NO_HEALTHY)
            return
        self.ep = ep
        if self.log is not None:
            self.log.upstream_host = f"{ep.address}:{ep.port}"
        self.tried.append(ep)
        self.us.balancer.started(ep)
        self.t0 = self.dp.reactor.now()
        self.dial = self.us.connect(ep, self._ready, self._failed)

    def _failed(self, reason: str) -> None:
        self.dial = None
        ep = self.ep
        assert ep is not None
        now = self.dp.reactor.now()
        self.us.balancer.finished(ep, now - self.t0, False, now)
        self.us.record(ep, False)
        if self.retrying:
            self.us.budget.retry_finished()
            self.retrying = False
        if len(self.tried) < self._attempts() and not self.stream.closed:
            if self.us.budget.try_retry():
                self.retrying = True
                self.dp.metrics.retry(self.name)
                self._dial()
                return
            self.dp.metrics.retry_overflow(self.name)
        self._give_up(reason, CONNECT_FAILURE)

    def _ready(self, up: Stream) -> None:
        self.dial = None
        up.pause_reading()
        self._end_dial_phase()
        ep = self.ep
        assert ep is not None
        self.us.record(ep, True)
        if self.stream.closed:
            up.close()
            return
        connected = self.dp.reactor.now()
        latency = connected - self.t0
        metrics = self.dp.metrics
        name = self.name

        def report(rx: int, tx: int) -> None:
            metrics.bytes("outbound", name, tx, rx)  # received from the upstream, sent to it

        def done(rx: int, tx: int) -> None:
            now = self.dp.reactor.now()
            self.us.balancer.finished(ep, latency, True, now)
            self._release()
            if self.log is not None:
                self.log.write(rx, tx)

        Pipe(self.stream, up, done, report).start()

    def _end_dial_phase(self) -> None:
        if self.retrying:
            self.us.budget.retry_finished()
            self.retrying = False
        if self.budgeted:
            self.budgeted = False
            self.us.budget.request_finished()

    def _give_up(self, reason: str, flags: str) -> None:
        self._end_dial_phase()
        stream = self.stream
        stream.on_close = lambda _reason: None
        stream.close(reason)
        self._release()
        if self.log is not None:
            self.log.write(flags=flags)

    def _client_gone(self, reason: str | None) -> None:
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
            if self.ep is not None:
                now = self.dp.reactor.now()
                self.us.balancer.finished(self.ep, now - self.t0, True, now)
        self._end_dial_phase()
        self._release()
        if self.log is not None:
            self.log.write()

    def _release(self) -> None:
        self.us.breakers.release_connection()
        self.dp.metrics.connection_closed("outbound", self.name)
