"""A streamed request body (PUT /v1/snapshot): read from the socket chunk by chunk as the handler asks, with its
size limit and a deadline that grows with the bytes received."""

from __future__ import annotations

import h11
import trio

from .messages import Response, simple_response

# A streamed body may take longer than the server's read timeout, as long as it keeps coming at this rate
# on average.
MIN_UPLOAD_RATE = 1024 * 1024
RECV_SIZE = 65536


class EarlyResponse(Exception):
    """A request rejected before its body was read."""

    def __init__(self, response: Response) -> None:
        super().__init__(response[0])
        self.response = response


class BodyError(EarlyResponse):
    """A streamed body that broke off: too large, too slow or cut; the server answers it and closes."""


class BodyStream:
    """A request body read from the socket as the handler asks for it: `async for chunk in stream`.

    Memory stays at one socket read however large the body; the size limit, and a deadline that grows
    with the bytes received (so a large upload at a fair rate is never cut, a trickle is), apply as it
    arrives. Raises BodyError, which the server answers (413, 408 or 400) before closing.
    """

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream, limit: int, read_timeout: float,
                 length: int | None) -> None:
        self._conn = conn
        self._stream = stream
        self.limit = limit
        self.length = length  # the Content-Length, or None for a chunked body
        self.received = 0
        self.finished = False
        self._start = trio.current_time()
        self._read_timeout = read_timeout

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while not self.finished:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                deadline = self._start + self._read_timeout + self.received / MIN_UPLOAD_RATE
                with trio.move_on_at(deadline):
                    self._conn.receive_data(await self._stream.receive_some(RECV_SIZE))
                    continue
                raise BodyError(simple_response(408, "Request body timed out"))
            if type(event) is h11.EndOfMessage:
                self.finished = True
            elif isinstance(event, h11.Data):
                self.received += len(event.data)
                if self.received > self.limit:
                    raise BodyError(simple_response(413, f"Request body too large, max size: {self.limit} bytes"))
                return bytes(event.data)
            else:  # ConnectionClosed mid-body
                raise BodyError(simple_response(400, "Bad request: the body ended early"))
        raise StopAsyncIteration
