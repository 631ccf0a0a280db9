"""RPC `http_forward` (and its older name `acl_http`): a client agent's request to a server-only endpoint, run
by this server through its own HTTP API.

Client replicas hold no secrets and client agents run no Raft, so for `/v1/acl/*`, `/v1/status/*`,
`/v1/operator/raft|autopilot/*` and `/v1/snapshot` a client sends the whole request (method, path, query,
body, token) and relays the answer. `acl_http` takes only `/v1/acl/` paths (issue 15's method, kept for
clients that still send it); `http_forward` takes the paths of FORWARDED. Arguments are checked strictly:
only those paths, bounded sizes (a snapshot restore's body up to what one :8300 frame carries), the token
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
from ..rpc.framing import MAX_FRAME, MAX_SERVER_FRAME

PREFIX = "/v1/acl/"
ACL_PATHS = (PREFIX,)
# What `http_forward` runs: a path ending in "/" is a prefix, any other is exact. Nothing that a client's own
# catalog replica answers: those stay local (and blocking) on the client.
FORWARDED = (PREFIX, "/v1/status/leader", "/v1/status/peers", "/v1/operator/raft/", "/v1/operator/autopilot/",
             "/v1/snapshot")
SNAPSHOT_PATH = "/v1/snapshot"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
ARGS = frozenset({"method", "path", "query", "body", "token"})
MAX_PATH = 1024
MAX_QUERY = 4096
MAX_BODY = 1024 * 1024
# A snapshot restore's archive: what a client's frame to us may carry (MAX_FRAME), less room for the envelope.
# Every archive a restore accepts fits: its state is at most MAX_FRAME - 1 MiB (operator_api.MAX_RESTORE_STATE).
MAX_SNAPSHOT_BODY = MAX_FRAME - 64 * 1024
MAX_TOKEN = MAX_SECRET_LEN  # the old name, kept for importers
REFUSED_PARAMS = frozenset({"token", "index", "wait"})  # the token has its own field; no blocking
MAX_ANSWER = 16 * 1024 * 1024 - 64 * 1024  # acl_http's bound (issue 15's clients read no more)
# http_forward's: what a client reads from a server (MAX_SERVER_FRAME), less room for the envelope.
MAX_FORWARD_ANSWER = MAX_SERVER_FRAME - 64 * 1024


def allowed(path: str, paths: tuple[str, ...] = FORWARDED) -> bool:
    """Whether `path` is one of `paths` (an entry ending in "/" is a prefix)."""
    return any(path.startswith(p) if p.endswith("/") else path == p for p in paths)


class AclHttpEndpoint:
    """The `acl_http` (`call`) and `http_forward` (`forward`) handlers; `api` is this server's HTTP API (set by
    the agent once it exists)."""

    def __init__(self, api: Handler | None = None) -> None:
        self.api = api

    async def call(self, args: Any) -> list[Any]:
        """`acl_http`: run one forwarded `/v1/acl/` request; Rejected for malformed arguments."""
        return await self._run(parse_args(args), MAX_ANSWER, "acl_http", "ACL")

    async def forward(self, args: Any) -> list[Any]:
        """`http_forward`: run one forwarded request to a FORWARDED path; Rejected for malformed arguments."""
        return await self._run(parse_args(args, FORWARDED, "http_forward"), MAX_FORWARD_ANSWER, "http_forward",
                               "The")

    async def _run(self, request: Request, max_answer: int, name: str, what: str) -> list[Any]:
        if self.api is None:
            raise Rejected(f"{name}: this server's HTTP API is not running")
        status, headers, body = await self.api(request)
        if len(body) > max_answer:
            status, headers, body = 500, [(b"content-type", b"text/plain; charset=utf-8")], \
                f"{what} answer too large to forward to a client agent; ask a server\n".encode()
        return [status, [[name, value] for name, value in headers], body]


HttpForwardEndpoint = AclHttpEndpoint  # the name for what it has become


def parse_args(args: Any, paths: tuple[str, ...] = ACL_PATHS, name: str = "acl_http") -> Request:
    """The Request for `acl_http` (or, with `paths`/`name`, `http_forward`) arguments; Rejected naming the
    field that is wrong."""
    if not isinstance(args, dict) or set(args) != ARGS:
        raise Rejected(f"{name} needs exactly the fields {sorted(ARGS)}")
    method, path, query, body, token = (args[k] for k in ("method", "path", "query", "body", "token"))
    if not isinstance(method, str) or method not in METHODS:
        raise Rejected(f"{name}: method must be one of GET, HEAD, PUT, POST, DELETE")
    if not isinstance(path, str) or not allowed(path, paths) or len(path) > MAX_PATH:
        raise Rejected(f"{name}: path must be one of {', '.join(paths)} (at most {MAX_PATH} characters; "
                       f"ending in / : under it)")
    if ".." in path or any(c < " " or c == "\x7f" or c in "?#" for c in path):
        raise Rejected(f"{name}: path has characters no forwarded route uses")
    if not isinstance(query, str) or len(query) > MAX_QUERY or any(c < " " or c == "\x7f" for c in query):
        raise Rejected(f"{name}: query must be a string of at most {MAX_QUERY} printable characters")
    try:
        names = {k for k, _ in parse_qsl(query, keep_blank_values=True, max_num_fields=100)}
    except ValueError:
        raise Rejected(f"{name}: query has more than 100 parameters") from None
    if "token" in names:
        raise Rejected(f"{name}: the token travels in its own field, not in the query")
    if names & REFUSED_PARAMS:
        raise Rejected(f"{name}: blocking parameters (index, wait) are not forwarded; ask a server's API")
    max_body = MAX_SNAPSHOT_BODY if path == SNAPSHOT_PATH and method == "PUT" else MAX_BODY
    if not isinstance(body, bytes) or len(body) > max_body:
        raise Rejected(f"{name}: body must be bytes (at most {max_body})")
    if not isinstance(token, str) or len(token) > MAX_SECRET_LEN or any(c < " " or c == "\x7f" for c in token):
        raise Rejected(f"{name}: token must be a string of at most {MAX_SECRET_LEN} printable characters")
    # No token: the anonymous one. This server's API would otherwise lend its own `default` token to the caller.
    headers = [(b"x-consul-token", (token or ANONYMOUS_SECRET_ID).encode())]
    return Request(method=method, path=path, query=query, headers=headers, body=body, remote="rpc")
