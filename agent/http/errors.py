"""The one table from exceptions to HTTP answers: every error an endpoint lets through becomes a one-line
response here (or a bare 500 from the server when it is none of these)."""

from __future__ import annotations

from ..config.errors import ConfigErrors
from ..local_state import LocalStateError
from ..rpc.errors import ServerError
from .filter import FilterError
from .messages import Response, simple_response
from .query import HTTPError


def config_errors_text(exc: ConfigErrors) -> str:
    """Every reason of a ConfigErrors on one line."""
    if exc.errors:
        return "; ".join(str(e) for e in exc.errors)
    return str(exc)


def _one_line(text: str) -> str:
    return text.replace("\n", "; ")


def error_response(exc: Exception) -> Response | None:
    """The answer for an endpoint's exception, or None when it is a bug (logged, answered with a bare 500)."""
    if isinstance(exc, HTTPError):
        return exc.response()
    if isinstance(exc, FilterError):
        return simple_response(400, f"Failed to create boolean expression evaluator: {exc}")
    if isinstance(exc, ServerError):  # NotLeader, NoLeader, Rejected, ...: each carries its status
        return simple_response(exc.status, _one_line(str(exc)))
    if isinstance(exc, RecursionError):
        # Hostile nesting (a JSON body of 100,000 '[') that got past every explicit bound: the
        # request's fault, answered without a traceback.
        return simple_response(400, "Request is nested too deeply")
    if isinstance(exc, LocalStateError):
        return simple_response(exc.status, _one_line(str(exc)))
    if isinstance(exc, ConfigErrors):
        return simple_response(400, _one_line(config_errors_text(exc)))
    return None
