"""Dialing and accepting Streams: `connect` (plain or mTLS, with the server's SPIFFE ID checked and TLS
session resumption), `accept_tls` (terminate mTLS on an accepted socket), `plain`.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable

from .reactor import Reactor
from .stream import HANDSHAKE_TIMEOUT_S, Cancel, Stream

log = logging.getLogger(__name__)


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def connect(reactor: Reactor, address: str, port: int, timeout_s: float, tls: ssl.SSLContext | None,
            on_ready: Callable[[Stream], None], on_fail: Callable[[str], None], *,
            expected_spiffe_ids: tuple[str, ...] = (), session: ssl.SSLSession | None = None,
            on_session: Callable[[ssl.SSLSession], None] | None = None) -> Cancel:
    """Dial `address:port` (TLS with `tls`, checking the server's URI SAN is one of `expected_spiffe_ids`
    when given); exactly one of `on_ready(stream)` / `on_fail(reason)` runs, unless cancelled. The stream
    reads once on_ready returns unless on_ready paused it; `on_session` gets the first resumable session."""
    pending = Cancel()
    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # out of descriptors: fail the dial on the next turn, as any other failure
        def no_socket() -> None:
            if not pending.done:
                _finish(pending)
                on_fail("connect-error")

        reactor.call_soon(no_socket)
        return pending
    sock.setblocking(False)
    _nodelay(sock)
    try:
        err = sock.connect_ex((address, port))
    except (OSError, OverflowError):  # a bad address from the snapshot fails the dial, not the loop
        err = errno.EADDRNOTAVAIL
    stream = Stream(reactor, sock)
    pending._stream = stream
    deadline = reactor.now() + timeout_s

    def fail(reason: str) -> None:
        if pending.done:
            return
        _finish(pending)
        stream.close(reason)
        on_fail(reason)

    def timed_out() -> None:
        pending._timer = None
        fail("connect-timeout")

    def connected() -> None:
        stream._writing = False
        reactor.remove_writer(stream.fd)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            fail("connect-refused" if code == errno.ECONNREFUSED else "connect-error")
            return
        try:
            sock.getpeername()
        except OSError:  # a stale event for an earlier socket with this fd number: still connecting
            _wait_writable()
            return
        if tls is None:
            _finish(pending)
            _ready(reactor, stream, on_ready)
            return
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            obj = tls.wrap_bio(inc, out, server_side=False, session=session)
        except (ssl.SSLError, ValueError):  # e.g. a session of an older context
            obj = tls.wrap_bio(inc, out, server_side=False)
        stream.attach_tls(obj, inc, out)
        remaining = max(0.001, deadline - reactor.now())
        if pending._timer is not None:
            pending._timer.cancel()
            pending._timer = None
        stream._handshake(remaining, handshaken, lambda reason: fail("tls-handshake")
                          if reason.startswith("tls-handshake") else fail(reason))

    def handshaken() -> None:
        if expected_spiffe_ids and stream.peer_spiffe_id not in expected_spiffe_ids:
            fail("spiffe-mismatch")
            return
        _finish(pending)
        if on_session is not None:
            stream.on_session = on_session
            stream._offer_session()  # TLS 1.2: now; TLS 1.3: the ticket comes with the first data
        _ready(reactor, stream, on_ready)

    def _wait_writable() -> None:
        # Marked as the stream's writer, so Stream.close() (a cancel, a timeout) removes the registration.
        stream._writing = True
        reactor.add_writer(stream.fd, connected)

    if err not in (0, errno.EINPROGRESS):
        reactor.call_soon(lambda: fail("connect-refused" if err == errno.ECONNREFUSED else "connect-error"))
        return pending
    pending._timer = reactor.call_later(timeout_s, timed_out)
    _wait_writable()
    return pending


def _ready(reactor: Reactor, stream: Stream, on_ready: Callable[[Stream], None]) -> None:
    """Hand a connected stream to its owner, then start reading; an owner that raises leaves no half-set-up
    connection: the stream is closed ("internal-error", its on_close runs) and the error counted once."""
    try:
        on_ready(stream)
    except Exception:
        reactor.errors += 1
        log.exception("on_ready for fd %d failed", stream.fd)
        stream.close("internal-error")
        return
    stream._start()


def _finish(pending: Cancel) -> None:
    pending.done = True
    if pending._timer is not None:
        pending._timer.cancel()
        pending._timer = None


def accept_tls(reactor: Reactor, sock: socket.socket, ctx: ssl.SSLContext, on_ready: Callable[[Stream], None],
               on_fail: Callable[[str], None], timeout_s: float = HANDSHAKE_TIMEOUT_S) -> Stream:
    """Terminate TLS on an accepted socket; `on_ready(stream)` after a verified handshake (reading starts
    when it returns unless it paused the stream), else `on_fail(reason)` with the socket closed."""
    sock.setblocking(False)
    _nodelay(sock)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    stream = Stream(reactor, sock, ctx.wrap_bio(inc, out, server_side=True), inc, out)
    def ready() -> None:
        _ready(reactor, stream, on_ready)

    stream._handshake(timeout_s, ready, on_fail)
    return stream


def plain(reactor: Reactor, sock: socket.socket) -> Stream:
    """A paused Stream over an accepted plain socket (the owner sets callbacks, then resumes it)."""
    sock.setblocking(False)
    _nodelay(sock)
    return Stream(reactor, sock)
