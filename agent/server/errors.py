"""Errors a server operation reports to the HTTP API and RPC callers."""

from __future__ import annotations


class ServerError(Exception):
    """A server-side operation failed; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class NoLeader(ServerError):
    """No leader was known within rpc_hold_timeout."""

    def __init__(self, message: str = "No cluster leader") -> None:
        super().__init__(message, 500)


REJECTED = "rejected: "  # prefix of a command the catalog refused: the request's fault, not the cluster's


def error_from_text(text: str) -> ServerError:
    """A ServerError for an error string that crossed Raft or the RPC: 400 for a refused command."""
    return ServerError(text, 400 if text.startswith(REJECTED) else 500)
