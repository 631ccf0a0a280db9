"""HTTP messages as the server and the handlers exchange them: Request, Response (status, headers, body), the
Handler type, a one-line text response, and a response head's encoding."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio.socket import SocketType

    from .body import BodyStream
    from .parking import Parking

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]


@dataclass(slots=True)
class Request:
    """One parsed request. `path` is percent-decoded; `query` is the raw query string."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[bytes, bytes]]  # names in lower case
    body: bytes
    remote: str = ""
    sock: SocketType | None = None  # the connection's socket, set by the server
    # Set by the server: `with request.parking.watch(request.sock):` ends a long wait on hang-up.
    parking: Parking | None = None
    # For STREAMED_BODIES: the body, still on the socket (`body` is then empty).
    body_stream: BodyStream | None = None
    # Set by API.identity: the request's resolved ACL identity (an agent/acl/identity.ACLIdentity), once.
    acl: Any = None
    # Set by an endpoint that left out what the token may not read: X-Consul-Results-Filtered-By-ACLs.
    acl_filtered: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @contextmanager
    def hangup_ends_wait(self) -> Iterator[None]:
        """Within it, a client that hangs up ends a blocking wait at once (as API.block does)."""
        if self.parking is not None and self.sock is not None:
            with self.parking.watch(self.sock):
                yield
        else:
            yield


Handler = Callable[[Request], Awaitable[Response]]


class _Date:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            # RFC 7231's IMF-fixdate. LC_TIME is never set in the agent, so %a and %b are English (the C
            # locale); email.utils.formatdate would pull in the whole email package for this one line.
            self._value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return self._value


_DATE = _Date()


def simple_response(status: int, text: str, extra: Headers | None = None) -> Response:
    """A text/plain response with a one-line body."""
    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if extra:
        headers.extend(extra)
    return status, headers, (text + "\n").encode()


_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}

def encode_head(status: int, headers: Headers, length: int, close: bool) -> bytes:
    """Status line and headers; header values come from our code, but a stray CR/LF is dropped anyway."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        if b"\n" in value or b"\r" in value:
            continue
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"date: %s\r\ncontent-length: %d\r\n" % (_DATE.get(), length))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
