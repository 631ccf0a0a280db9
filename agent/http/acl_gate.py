"""Where the HTTP API meets ACLs: the request's token, Consul's filtered-results header, list filtering.

Endpoints call `api.identity(request)` (resolved once per request, lazily: endpoints that need no ACL never
resolve) and `require(identity, identity.authorizer.<permission>(name))` from agent/acl/identity.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import parse_qs

from .messages import Request

T = TypeVar("T")

FILTERED_HEADER = (b"x-consul-results-filtered-by-acls", b"true")
MAX_TOKEN_LEN = 256


def request_token(request: Request) -> str:
    """The token a request presents, in Consul's order: `?token=`, `X-Consul-Token`, `Authorization: Bearer`.
    "" when none (the agent's default token, else anonymous). Over-long values are cut (they resolve to
    nothing: "ACL not found"), never echoed."""
    if "token=" in request.query:
        values = parse_qs(request.query, keep_blank_values=True, max_num_fields=100).get("token")
        if values and values[0]:
            return values[0][: MAX_TOKEN_LEN + 1]
    header = request.header(b"x-consul-token")
    if header:
        return header.decode("latin-1").strip()[: MAX_TOKEN_LEN + 1]
    auth = request.header(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip()[: MAX_TOKEN_LEN + 1]
    return ""


def keep_allowed(items: Iterable[T], allowed: Callable[[T], bool]) -> tuple[list[T], bool]:
    """The items `allowed` lets through, and whether any was left out (then set FILTERED_HEADER)."""
    kept: list[T] = []
    dropped = False
    for item in items:
        if allowed(item):
            kept.append(item)
        else:
            dropped = True
    return kept, dropped


def write_token(request: Request, default_secret: str) -> str:
    """The secret a write acts as on its way to the servers (which re-check it): the request's token, else
    the agent's `default` token (`api.agent.acl.tokens.default`), else "" (anonymous)."""
    return request_token(request) or default_secret
