"""Streamed responses (GET /v1/agent/monitor): an endpoint answers `(status, headers, StreamedBody(produce))` and
the server sends the head at once, then each piece `produce()` yields as an HTTP/1.1 chunk, flushed as it
comes, until the producer ends or the client hangs up; the connection closes after it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import trio

from .messages import Headers, Request, encode_head


class StreamedBody(bytes):
    """An empty body that carries a producer of chunks (bytes, so every layer that passes bodies passes it)."""

    produce: Callable[[], AsyncGenerator[bytes, None]]

    def __new__(cls, produce: Callable[[], AsyncGenerator[bytes, None]]) -> StreamedBody:
        body = super().__new__(cls, b"")
        body.produce = produce
        return body

    async def serve(self, stream: trio.abc.Stream, request: Request, status: int, headers: Headers,
                    write_timeout: float) -> None:
        """Send the head and every chunk (each within write_timeout), ending when the client hangs up."""
        # encode_head always writes a content-length; a chunked head is that head with it replaced.
        head = encode_head(status, headers, 0, close=True)
        head = head.replace(b"content-length: 0\r\n", b"transfer-encoding: chunked\r\n", 1)
        with trio.move_on_after(write_timeout):
            await stream.send_all(head)
        if request.method == "HEAD":
            return
        with request.hangup_ends_wait():  # a client gone while no line comes: the parking sweep ends it
            async with aclosing(self.produce()) as pieces:
                async for piece in pieces:
                    if not piece:
                        continue
                    with trio.move_on_after(write_timeout) as late:  # a client that stops reading is dropped
                        await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                    if late.cancelled_caught:
                        return
            with trio.move_on_after(write_timeout):
                await stream.send_all(b"0\r\n\r\n")
