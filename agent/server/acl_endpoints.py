"""RPC `acl_http`: a client agent's `/v1/acl/*` request, run by this server through its own HTTP API.

Client replicas hold no secrets, so a client sends the whole request (method, path, query, body, token)
and relays the answer. Arguments are checked strictly: only paths under /v1/acl/, bounded sizes, the token
as its own field (never taken from the query), no blocking parameters (a client never sends them: they
would park a server handler for max_query_time), and no token means the anonymous token, never this server's
`default` one (ACLResolver.resolve_rpc's rule). The answer is `[status, [[name, value]...], body]`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from ..acl.secrets import ANONYMOUS_SECRET_ID, MAX_SECRET_LEN
from ..http.messages import Handler, Request
from ..rpc.errors import Rejected

PREFIX = "/v1/acl/"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
ARGS = frozenset({"method", "path", "query", "body", "token"})
MAX_PATH = 1024
MAX_QUERY = 4096
MAX_BODY = 1024 * 1024
MAX_TOKEN = MAX_SECRET_LEN  # the old name, kept for importers
REFUSED_PARAMS = frozenset({"token", "index", "wait"})  # the token has its own field; no blocking
MAX_ANSWER = 16 * 1024 * 1024 - 64 * 1024  # the client's frame bound, less room for the envelope


class AclHttpEndpoint:
    """The `acl_http` handler; `api` is this server's HTTP API (set by the agent once it exists)."""

    def __init__(self, api: Handler | None = None) -> None:
        self.api = api

    async def call(self, args: Any) -> list[Any]:
        """Run one forwarded request; Rejected for malformed arguments."""
        if self.api is None:
            raise Rejected("acl_http: this server's HTTP API is not running")
        request = parse_args(args)
        status, headers, body = await self.api(request)
        if len(body) > MAX_ANSWER:
            status, headers, body = 500, [(b"content-type", b"text/plain; charset=utf-8")], \
                b"ACL answer too large to forward to a client agent; ask a server\n"
        return [status, [[name, value] for name, value in headers], body]


def parse_args(args: Any) -> Request:
    """The Request for `acl_http` arguments; Rejected naming the field that is wrong."""
    if not isinstance(args, dict) or set(args) != ARGS:
        raise Rejected(f"acl_http needs exactly the fields {sorted(ARGS)}")
    method, path, query, body, token = (args[k] for k in ("method", "path", "query", "body", "token"))
    if not isinstance(method, str) or method not in METHODS:
        raise Rejected("acl_http: method must be one of GET, HEAD, PUT, POST, DELETE")
    if not isinstance(path, str) or not path.startswith(PREFIX) or len(path) > MAX_PATH:
        raise Rejected(f"acl_http: path must be under {PREFIX} (at most {MAX_PATH} characters)")
    if ".." in path or any(c < " " or c == "\x7f" or c in "?#" for c in path):
        raise Rejected("acl_http: path has characters no ACL route uses")
    if not isinstance(query, str) or len(query) > MAX_QUERY or any(c < " " or c == "\x7f" for c in query):
        raise Rejected(f"acl_http: query must be a string of at most {MAX_QUERY} printable characters")
    try:
        names = {k for k, _ in parse_qsl(query, keep_blank_values=True, max_num_fields=100)}
    except ValueError:
        raise Rejected("acl_http: query has more than 100 parameters") from None
    if "token" in names:
        raise Rejected("acl_http: the token travels in its own field, not in the query")
    if names & REFUSED_PARAMS:
        raise Rejected("acl_http: blocking parameters (index, wait) are not forwarded; ask a server's API")
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise Rejected(f"acl_http: body must be bytes (at most {MAX_BODY})")
    if not isinstance(token, str) or len(token) > MAX_SECRET_LEN or any(c < " " or c == "\x7f" for c in token):
        raise Rejected(f"acl_http: token must be a string of at most {MAX_SECRET_LEN} printable characters")
    # No token: the anonymous one. This server's API would otherwise lend its own `default` token to the caller.
    headers = [(b"x-consul-token", (token or ANONYMOUS_SECRET_ID).encode())]
    return Request(method=method, path=path, query=query, headers=headers, body=body, remote="rpc")
