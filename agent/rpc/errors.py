"""Errors of server operations, as exception types that cross :8300 as a code, never as text to match.

On the wire an error is `[code, message]` (RateLimited adds its wait hint: `[code, message, seconds]`);
`decode_error` gives back the same type. The HTTP API answers
with the exception's `status`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServerError(Exception):
    """A server-side operation failed; `status` is the HTTP status to answer with."""

    code: ClassVar[str] = "Error"
    default_status: ClassVar[int] = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = self.default_status if status is None else status


class NotLeader(ServerError):
    """This server does not lead (any more): the caller may retry with the leader."""

    code = "NotLeader"


class NoLeader(ServerError):
    """No leader was known within rpc_hold_timeout."""

    code = "NoLeader"

    def __init__(self, message: str = "No cluster leader", status: int | None = None) -> None:
        super().__init__(message, status)


class Rejected(ServerError):
    """The request itself is at fault (the catalog refused the command, bad arguments): retrying won't help."""

    code = "Rejected"
    default_status = 400


class Unreachable(ServerError):
    """The server could not be reached, the connection was lost or the call timed out (transport)."""

    code = "Unreachable"


class Unanswered(Unreachable):
    """The call was sent but no answer came (connection lost, timeout): it may have taken effect."""

    code = "Unanswered"


class PermissionDenied(ServerError):
    """The connection's role may not make this call."""

    code = "PermissionDenied"


class ACLDenied(ServerError):
    """An ACL token lacks a permission (Consul's 403 `Permission denied: token with AccessorID ...`)."""

    code = "ACLDenied"
    default_status = 403


class ACLNotFound(ServerError):
    """The presented ACL token does not exist (or expired): Consul's 403 `ACL not found`."""

    code = "ACLNotFound"
    default_status = 403

    def __init__(self, message: str = "ACL not found", status: int | None = None) -> None:
        super().__init__(message, status)


class RateLimited(ServerError):
    """The server refuses the call for now; the caller may retry after `retry_after` seconds (a hint)."""

    code = "RateLimited"
    default_status = 429
    MAX_RETRY_AFTER = 60.0

    def __init__(self, message: str, status: int | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


_BY_CODE: dict[str, type[ServerError]] = {
    c.code: c for c in (ServerError, NotLeader, NoLeader, Rejected, Unreachable, Unanswered, PermissionDenied,
              ACLDenied, ACLNotFound, RateLimited)}
MAX_MESSAGE = 4096  # a peer's error text is bounded before it is kept or logged


def encode_error(exc: ServerError) -> list[str | float]:
    """The wire form of an error: [code, message], and RateLimited's wait hint third."""
    if isinstance(exc, RateLimited):
        return [exc.code, str(exc), float(exc.retry_after)]
    return [exc.code, str(exc)]


def decode_error(wire: Any) -> ServerError:
    """The exception for an error from the wire (an unknown or malformed code: a plain ServerError)."""
    if isinstance(wire, list | tuple) and len(wire) == 3 and wire[0] == RateLimited.code:
        hint = wire[2] if isinstance(wire[2], int | float) and not isinstance(wire[2], bool) else 0.0
        hint = min(max(float(hint), 0.0), RateLimited.MAX_RETRY_AFTER) if hint == hint else 0.0  # NaN: 0
        return RateLimited(str(wire[1])[:MAX_MESSAGE], retry_after=hint)
    if isinstance(wire, list | tuple) and len(wire) == 2 and isinstance(wire[0], str):
        return _BY_CODE.get(wire[0], ServerError)(str(wire[1])[:MAX_MESSAGE])
    return ServerError(str(wire)[:MAX_MESSAGE])
