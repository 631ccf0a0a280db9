"""Where the HTTP API meets ACLs: the request's token, Consul's filtered-results header, list filtering.

Endpoints call `api.identity(request)` (resolved once per request, lazily: endpoints that need no ACL never
resolve) and `require(identity, identity.authorizer.<permission>(name))` from agent/acl/identity.py, or
`require_acl` here; list builds filter with `Visibility` and `acl_keep`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs
from weakref import WeakKeyDictionary

from ..acl.identity import require
from .messages import Request

if TYPE_CHECKING:
    from ..acl.authorizer import Authorizer, Decision
    from ..acl.identity import ACLIdentity
    from .api import API

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


def acl_identity(api: API, request: Request) -> ACLIdentity | None:
    """The request's identity when ACLs are on, resolved now (an unknown token is refused before any
    blocking wait); None with ACLs off: nothing to check or filter, the hot path stays as it was."""
    if not api.agent.acl.enabled:
        return None
    return api.identity(request)


# Per Authorizer (the resolver keeps one per token until the ACL state moves; weak: a dropped one goes):
# node:read and service:read answers by name. A decision costs ~3 us, so a 5,000-node list would spend
# 15 ms per build on them; remembered, a rebuild at a new index costs a dict lookup per row.
_MEMO: WeakKeyDictionary[Authorizer, tuple[dict[str, bool], dict[str, bool]]] = WeakKeyDictionary()
_MEMO_NAMES = 16384  # per authorizer; past it the memo starts again (names are catalog rows: bounded anyway)
_MEMO_AUTHORIZERS = 256  # tokens remembered at once; past it every memo starts again


class Visibility:
    """node:read and service:read answers for list builds, memoised per name and Authorizer."""

    __slots__ = ("_authz", "_nodes", "_services")

    def __init__(self, identity: ACLIdentity) -> None:
        self._authz = authz = identity.authorizer
        memo = _MEMO.get(authz)
        if memo is None or len(memo[0]) + len(memo[1]) > _MEMO_NAMES:
            if memo is None and len(_MEMO) >= _MEMO_AUTHORIZERS:
                _MEMO.clear()
            memo = _MEMO[authz] = ({}, {})
        self._nodes, self._services = memo

    def node(self, name: str) -> bool:
        """node:read on `name`."""
        ok = self._nodes.get(name)
        if ok is None:
            ok = self._nodes[name] = self._authz.node_read(name).allowed
        return ok

    def service(self, name: str) -> bool:
        """service:read on `name`; "" (a node-level check) needs none, as in Consul."""
        if not name:
            return True
        ok = self._services.get(name)
        if ok is None:
            ok = self._services[name] = self._authz.service_read(name).allowed
        return ok

    def row(self, node: str, service: str) -> bool:
        """Both: a service instance or a check is seen only with read on its node and its service."""
        return self.service(service) and self.node(node)  # service first: a list repeats one service


def acl_keep(request: Request, identity: ACLIdentity | None, items: list[Any],
             allowed: Callable[[Any], bool]) -> list[Any]:
    """`items` the identity may see (all with ACLs off); marks the request filtered when any was dropped."""
    if identity is None:
        return items
    kept, dropped = keep_allowed(items, allowed)
    if dropped:
        request.acl_filtered = True
    return kept


def require_acl(api: API, request: Request, decide: Callable[[Authorizer], Decision]) -> None:
    """Raise ACLNotFound/ACLDenied unless the request's token is allowed what `decide` picks from its
    authorizer; nothing to check with ACLs off."""
    identity = acl_identity(api, request)
    if identity is not None:
        require(identity, decide(identity.authorizer))
