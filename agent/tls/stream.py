"""TLSStream: TLS over a trio stream with `ssl.SSLObject` and memory BIOs, draining every record per wake-up.

trio.SSLStream returns one TLS record (at most 16 KiB) per receive_some, so a 256 KiB batch of Raft appends
or pipelined calls took 16 trips through trio; this one decrypts all that arrived in one go (the
ARCHITECTURE notes measured the same for the proxy). It also sends the alert of a failed handshake, so a
refused peer (openssl s_client) is told why.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

RECEIVE_SIZE = 262144


class TLSStream(trio.abc.Stream):
    """One TLS connection; receive_some and send_all may run in two tasks at once (one each)."""

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.transport_stream = transport
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._send_lock = trio.Lock()  # outgoing bytes leave in the order the SSL object made them
        self._recv_lock = trio.StrictFIFOLock()
        self._eof = False  # the socket reached EOF
        self._closed = False  # the TLS session ended (close_notify or EOF)

    def getpeercert(self) -> dict[str, Any] | None:
        """The verified peer certificate (None or {} without one)."""
        return self._ssl.getpeercert()

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._out.read()
            if data:
                try:
                    await self.transport_stream.send_all(data)
                except (OSError, trio.ClosedResourceError) as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc

    async def _fill(self) -> None:
        """Read more ciphertext from the socket (EOF marks the BIO)."""
        try:
            data = await self.transport_stream.receive_some(RECEIVE_SIZE)
        except (OSError, trio.ClosedResourceError) as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
            self._eof = True

    async def do_handshake(self) -> None:
        """Complete the handshake; trio.BrokenResourceError (from ssl.SSLError) when it fails."""
        while True:
            try:
                self._ssl.do_handshake()
                await self._flush()
                return
            except ssl.SSLWantReadError:
                await self._flush()
                if self._eof:
                    raise trio.BrokenResourceError("peer closed during the TLS handshake") from None
                await self._fill()
            except ssl.SSLError as exc:
                try:
                    await self._flush()  # the alert says why, when OpenSSL wrote one
                except trio.BrokenResourceError:
                    pass
                raise trio.BrokenResourceError(str(exc)) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Everything decrypted so far, up to max_bytes (b"" once the peer has closed)."""
        limit = max_bytes or RECEIVE_SIZE
        async with self._recv_lock:
            while True:
                chunks: list[bytes] = []
                size = 0
                try:
                    while size < limit:
                        chunk = self._ssl.read(limit - size)
                        if not chunk:
                            self._closed = True  # close_notify
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self._closed = True
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                if self._out.pending:
                    with trio.CancelScope(shield=True):  # half a record sent would break the stream
                        await self._flush()  # TLS 1.3 tickets, key updates, alerts
                if chunks:
                    return b"".join(chunks)
                if self._closed or self._eof:
                    return b""
                await self._fill()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send `data` (the SSL object takes it whole: memory BIOs never block)."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        """As the transport's."""
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:  # pragma: no cover - not used on :8300
        """TLS has no half-close."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the socket (no close_notify: the frames carry their own lengths)."""
        await self.transport_stream.aclose()
