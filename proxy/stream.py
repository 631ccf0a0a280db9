"""Stream: one non-blocking socket on the reactor, plain or TLS (ssl.MemoryBIO + SSLObject), with plaintext
callbacks, a write buffer and backpressure (dialing and accepting one: proxy/dial.py).

Reads are 64 KiB and bounded per wake-up (READS_PER_WAKE) so a fast peer cannot starve the others; the
reactor is level-triggered, so what is left is read on the next turn.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .reactor import Reactor, Timer
from .tls import peer_spiffe_id

READ_SIZE = 65536
READS_PER_WAKE = 4
MAX_WRITE_BUFFER = 64 * 1024 * 1024  # a peer that never reads: pipes pause far below this, L7 may not
MAX_HANDSHAKE_BUFFER = 256 * 1024  # ciphertext a peer may queue before its handshake completes
HANDSHAKE_TIMEOUT_S = 10.0
LINGER_S = 2.0  # linger_close: how long the peer's remaining bytes are read and dropped
MAX_SESSION_LOOKS = 3  # reads after a handshake that look for a TLS 1.3 session ticket
HS_LOG_INTERVAL_S = 10.0  # at most one handshake-error line per worker this often: a flood is no log flood

log = logging.getLogger(__name__)
_hs_log = [float("-inf"), 0.0]  # when the last handshake-error line was written, failures not written since

_RESET = (ConnectionError, OSError)


def _ignore_eof() -> None:
    return None


class Stream:
    """One connection: `on_data(bytes)` plaintext in, `write()` out, `on_eof`, `on_close(reason)`."""

    def __init__(self, reactor: Reactor, sock: socket.socket, tls: ssl.SSLObject | None = None,
                 incoming: ssl.MemoryBIO | None = None, outgoing: ssl.MemoryBIO | None = None) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self._tls: ssl.SSLObject | None = None
        self._raw: Any = None  # the SSLObject's C object (its methods without the ssl.py wrapper's frame)
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        if tls is not None:
            self.attach_tls(tls, incoming, outgoing)
        self._wbuf = bytearray()
        self._writing = False
        self._reading = False
        self._paused = True  # not reading until the owner is ready (resume_reading / handshake done)
        self._held = False  # pause_reading() was called: _start() leaves the stream paused
        self._shut_wanted = False
        self._nowrite = False  # closed or _shut_wanted: write() drops data (one flag for the hot path)
        self._shut_done = False
        self._eof_received = False
        self._timer: Timer | None = None
        self.closed = False
        self.close_reason: str | None = None
        self.on_data: Callable[[bytes], None] = self._discard
        self.on_eof: Callable[[], None] = self._close_clean
        self.on_close: Callable[[str | None], None] = _ignore_reason
        self.on_drain: Callable[[], None] | None = None
        self.peer_spiffe_id: str | None = None
        self.session_reused = False
        self.on_session: Callable[[ssl.SSLSession], None] | None = None  # first resumable session seen
        self._hs_fail: Callable[[str], None] | None = None  # set while a handshake is in progress
        self._session_looks = 0
        self.received = 0  # bytes from the socket (ciphertext for TLS)
        self.sent = 0

    # ------------------------------------------------------------------ defaults

    def _discard(self, data: bytes) -> None:
        return None

    def _close_clean(self) -> None:
        self.close()

    def attach_tls(self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO | None,
                   outgoing: ssl.MemoryBIO | None) -> None:
        """Make this a TLS stream over `tls` and its two BIOs (before the handshake)."""
        self._tls, self._in, self._out = tls, incoming, outgoing
        # Reads and writes go straight to the C object: ssl.SSLObject.read/write/pending are one-line
        # Python wrappers, a frame each, several times per request.
        self._raw = getattr(tls, "_sslobj", tls)

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The SSLObject of a TLS stream."""
        return self._tls

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        """Stop delivering `on_data` until `resume_reading()` (the kernel buffers, then the peer waits)."""
        self._paused = True
        self._held = True
        if self._reading:
            self._reading = False
            self.reactor.remove_reader(self.fd)

    def _start(self) -> None:
        """After on_ready: start reading unless the owner paused the stream inside on_ready."""
        if not self._held and not self.closed:
            self.resume_reading()

    def resume_reading(self) -> None:
        """Deliver `on_data` again (plaintext already decrypted and buffered comes first)."""
        if self.closed or not self._paused:
            return
        self._paused = False
        if self._eof_received:
            return
        self._reading = True
        self.reactor.add_reader(self.fd, self._on_readable)
        if self._tls is not None and ((self._in is not None and self._in.pending) or self._tls.pending()):
            self.reactor.call_soon(self._drain_tls_soon)

    def _drain_tls_soon(self) -> None:
        if not self.closed and not self._paused:
            self._drain_tls(False)

    def _on_readable(self) -> None:
        sock = self.sock
        inc = self._in  # None for a plain stream
        for _ in range(READS_PER_WAKE):
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except _RESET:
                self.close("reset")
                return
            n = len(data)
            self.received += n
            if inc is None:
                if not n:
                    self._got_eof()
                    return
                self.on_data(data)
            else:
                if n:
                    inc.write(data)
                # A FIN is not fed to OpenSSL: it marks an EOF without close_notify as a fatal error and
                # then refuses our writes, but a half-closed peer still reads what we send back.
                self._drain_tls(not n)
            if n < READ_SIZE or self._paused or self.closed or self._eof_received:
                return  # a short read: the socket is very likely empty, spare the EAGAIN syscall

    def _drain_tls(self, eof: bool) -> None:
        raw, inc = self._raw, self._in
        assert inc is not None
        while not self._paused and not self.closed:
            ended: str | None = None
            try:
                data: bytes = raw.read(READ_SIZE)
            except ssl.SSLWantReadError:
                data = b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify: the peer ended its side
                data, ended = b"", "eof"
            except ssl.SSLError:
                data, ended = b"", "tls-error"
            else:
                if not data:  # the C read returns b"" on SSL_ERROR_ZERO_RETURN: a close_notify, no FIN yet
                    ended = "eof"
            size = len(data)
            if size and size < READ_SIZE and (inc.pending or raw.pending()):
                # Records carry at most 16 KiB: gather up to READ_SIZE of plaintext for one on_data, so the
                # far side sends one 64 KiB write instead of four (bulk transfers are syscall-bound). A
                # request's single record skips this (no list, no extra read).
                data, ended = self._gather(raw, inc, data)
                size = len(data)
            if size:
                self.on_data(data)
            if ended is not None:
                if not self.closed:
                    if ended == "eof":
                        self._flush_tls()
                        self._got_eof()
                    else:
                        self.close(ended)
                return
            if size < READ_SIZE:
                break
        if self.on_session is not None and not self.closed:
            self._offer_session()
        if self._out is not None and self._out.pending:
            self._flush_tls()  # post-handshake messages (key updates)
        if eof and not self.closed and not self._paused:
            self._got_eof()

    def _gather(self, raw: Any, inc: ssl.MemoryBIO, first: bytes) -> tuple[bytes, str | None]:
        """`first` and the records after it, up to READ_SIZE; and "eof"/"tls-error" if one ended the stream."""
        chunks = [first]
        size = len(first)
        ended: str | None = None
        while size < READ_SIZE:
            try:
                chunk: bytes = raw.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = "eof"
                break
            except ssl.SSLError:
                ended = "tls-error"
                break
            if not chunk:  # close_notify (SSL_ERROR_ZERO_RETURN comes back as b"")
                ended = "eof"
                break
            chunks.append(chunk)
            size += len(chunk)
            if not inc.pending and not raw.pending():
                break  # all consumed: spare the SSLWantReadError the next read would raise
        return b"".join(chunks), ended

    def _offer_session(self) -> None:
        # Reading .session copies the whole session (~0.3 ms): a few looks, then give up on a server that
        # sends no ticket rather than pay that on every read of the connection.
        assert self._tls is not None
        self._session_looks += 1
        session = self._tls.session
        if session is not None and session.has_ticket and self.on_session is not None:
            cb, self.on_session = self.on_session, None
            cb(session)
        elif self._session_looks >= MAX_SESSION_LOOKS:
            self.on_session = None

    def _got_eof(self) -> None:
        if self._eof_received:
            return
        self._eof_received = True
        if self._reading:
            self._reading = False
            self.reactor.remove_reader(self.fd)
        self.on_eof()
        if self._shut_done and not self.closed:
            self.close()

    # ------------------------------------------------------------------ writing

    def buffered(self) -> int:
        """Bytes accepted by write() and not yet handed to the kernel."""
        return len(self._wbuf)

    def write(self, data: bytes) -> None:
        """Queue `data` (encrypted for TLS) and send what the kernel takes now; dropped after close."""
        if self._nowrite:  # closed, or shutdown_write() called
            return
        out = self._out
        if out is not None:
            try:
                self._raw.write(data)
            except ssl.SSLError:
                self.close("tls-error")
                return
            data = out.read()
        if self._wbuf:
            self._wbuf += data
            if len(self._wbuf) > MAX_WRITE_BUFFER:
                self.close("write-buffer-overflow")
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except _RESET:
            self.close("reset")
            return
        self.sent += n
        if n < len(data):
            self._wbuf += memoryview(data)[n:]
            self._want_write()

    def _flush_tls(self) -> None:
        assert self._out is not None
        data = self._out.read()
        if data:
            self._wbuf += data
            self._on_writable()

    def _want_write(self) -> None:
        if not self._writing and not self.closed:
            self._writing = True
            self.reactor.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        wbuf = self._wbuf
        sock = self.sock
        while wbuf:
            try:
                n = sock.send(wbuf)
            except (BlockingIOError, InterruptedError):
                self._want_write()
                return
            except _RESET:
                self.close("reset")
                return
            self.sent += n
            del wbuf[:n]
        if self._writing:
            self._writing = False
            self.reactor.remove_writer(self.fd)
        if self._shut_wanted and not self._shut_done:
            self._do_shutdown()
            return
        if self.on_drain is not None and not self.closed:
            self.on_drain()

    def linger_close(self, timeout_s: float = LINGER_S) -> None:
        """Close after an answer without resetting it away: send what is buffered, end our side, then read
        and discard until the peer ends its side or `timeout_s` passes. (Closing with the peer's bytes unread
        makes the kernel send RST, and a client still sending - a 10 MB header answered 431 - loses the
        answer it has not read yet.)"""
        if self.closed:
            return
        self.on_data = self._discard
        self.on_eof = self._close_clean
        self.on_drain = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.reactor.call_later(timeout_s, self._close_clean)
        self.shutdown_write()
        self._held = False
        self.resume_reading()

    def shutdown_write(self) -> None:
        """End our side once the buffer drains (TCP FIN; the peer's next read ends cleanly)."""
        if self.closed or self._shut_wanted:
            return
        self._shut_wanted = True
        self._nowrite = True
        if not self._wbuf:
            self._do_shutdown()

    def _do_shutdown(self) -> None:
        # No close_notify on a half-close: SSLObject.unwrap() discards application data the peer may still
        # send, and TLS 1.3 half-close would need it. Our own reader takes a plain FIN on TLS as the end.
        self._shut_done = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close("reset")
            return
        if self._eof_received:
            self.close()

    # ------------------------------------------------------------------ closing

    def close(self, reason: str | None = None) -> None:
        """Close at once (buffered bytes are dropped); `on_close(reason)` runs once."""
        if self.closed:
            return
        self.closed = True
        self._nowrite = True
        self.close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Both, whatever the flags say: a registration left behind (a dial's connect wait) would outlive the
        # fd number and reach the next socket given it. Each is a dict pop when not registered.
        reactor = self.reactor
        reactor.remove_reader(self.fd)
        reactor.remove_writer(self.fd)
        self._reading = self._writing = False
        self._wbuf = bytearray()
        try:
            self.sock.close()
        except OSError:
            pass
        # A closed stream may stay referenced a while (a handler, a pool); its TLS state and buffers need not.
        self._tls = self._raw = self._in = self._out = None
        cb, self.on_close = self.on_close, _ignore_reason
        self.on_data = self._discard
        self.on_drain = None
        fail, self._hs_fail = self._hs_fail, None
        if fail is not None:  # closed mid-handshake, from anywhere (a failed send, a cancel, an eviction)
            fail(reason or "closed")
        cb(reason)

    # ------------------------------------------------------------------ handshake (TLS)

    def _handshake(self, timeout_s: float, on_done: Callable[[], None], on_fail: Callable[[str], None],
                   ) -> None:
        """Drive the TLS handshake; `on_done()` when it completes, `on_fail(reason)` (stream closed)."""
        self._hs_done = on_done
        self._hs_fail = on_fail
        self._timer = self.reactor.call_later(timeout_s, self._hs_timeout)
        self.reactor.add_reader(self.fd, self._hs_step)
        self._reading = True
        self._hs_step(first=True)

    def _hs_timeout(self) -> None:
        self._timer = None
        self._hs_failed("tls-handshake-timeout")

    def _hs_failed(self, reason: str) -> None:
        self.close(reason)  # close() reports it to the handshake's on_fail

    def _hs_step(self, first: bool = False) -> None:
        tls, inc = self._tls, self._in
        assert tls is not None and inc is not None
        if not first:
            for _ in range(READS_PER_WAKE):
                try:
                    data = self.sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except _RESET:
                    self._hs_failed("reset")
                    return
                self.received += len(data)
                if not data:
                    if not self.received:  # a TCP probe (health check, port scan): no TLS was attempted
                        self._hs_failed("closed-before-hello")
                        return
                    inc.write_eof()
                    break
                inc.write(data)
                if inc.pending > MAX_HANDSHAKE_BUFFER:
                    self._hs_failed("tls-handshake-oversize")
                    return
                if len(data) < READ_SIZE:
                    break
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            if inc.eof and not self.closed:
                self._hs_failed("tls-handshake")
            return
        except (ssl.SSLError, ValueError, OSError) as exc:
            if not self.closed:
                _log_handshake_error(self, tls, exc)
                assert self._out is not None
                try:  # the alert, so the peer learns why; best effort, the reason stays the handshake's
                    self.sock.send(self._out.read())
                except OSError:
                    pass
                self._hs_failed("tls-handshake")
            return
        self._flush_tls()
        if self.closed:  # the flight could not be sent: close() has reported it
            return
        self._hs_fail = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reactor.remove_reader(self.fd)
        self._reading = False
        self._paused = True
        self.peer_spiffe_id = peer_spiffe_id(tls)
        self.session_reused = tls.session_reused
        self._hs_done()


def _ignore_reason(reason: str | None) -> None:
    return None


def _log_handshake_error(stream: Stream, tls: ssl.SSLObject, exc: Exception) -> None:
    """OpenSSL's own reason for a failed handshake (the metric's reason is only "tls-handshake"), at most one
    line per HS_LOG_INTERVAL_S, with how many were not written since the last one."""
    now = stream.reactor.now()
    if now - _hs_log[0] < HS_LOG_INTERVAL_S:
        _hs_log[1] += 1
        return
    skipped = int(_hs_log[1])
    _hs_log[0], _hs_log[1] = now, 0.0
    try:
        addr = stream.sock.getpeername()
        peer = f"{addr[0]}:{addr[1]}"
    except (OSError, TypeError, IndexError):
        peer = "?"
    verify = getattr(exc, "verify_message", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    log.warning("TLS handshake with %s failed (%s side): %s%s%s", peer, "server" if tls.server_side else "client",
                reason, f": {verify}" if verify else "", f" ({skipped} more not logged)" if skipped else "")


class Cancel:
    """A pending dial; `cancel()` (or calling it) abandons it and closes its socket."""

    __slots__ = ("_stream", "_timer", "done")

    def __init__(self) -> None:
        self._stream: Stream | None = None
        self._timer: Timer | None = None
        self.done = False

    def cancel(self) -> None:
        """Abandon the dial: no callback will run."""
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._stream is not None:
            self._stream.close("cancelled")

    __call__ = cancel


def __getattr__(name: str) -> object:
    """`connect`, `accept_tls` and `plain` live in proxy/dial.py; `stream.connect` (the interface's name) keeps
    working. Lazy: dial.py imports this module."""
    if name in ("connect", "accept_tls", "plain"):
        from . import dial
        return getattr(dial, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
