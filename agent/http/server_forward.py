"""A client agent's request to a server-only endpoint, executed by a server over RPC `http_forward` and relayed.

Client agents run no Raft: `/v1/status/leader|peers`, `/v1/operator/raft/*` and `/v1/snapshot` (as Consul's
clients forward them) are answered by a server, which runs its own handler on the request
(agent/server/acl_endpoints.py) with the client's token: the request's, else this agent's `default` token,
else none, which the server takes as anonymous (never its own default). ACLs are checked there, once.
`/v1/acl/*` takes the same way under its older method name (acl_forward.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from ..rpc.errors import ServerError
from ..rpc.framing import MAX_FRAME, MAX_SERVER_FRAME
from . import acl_gate
from .messages import Headers, Request, Response, simple_response

if TYPE_CHECKING:
    from .acl_api import RPCCaller
    from .api import API
    from .body import BodyStream
    from .query import Query

Endpoint = Callable[["API", Request, "Query", str], Awaitable[Response]]

METHOD = "http_forward"
MAX_BODY = 1024 * 1024  # a forwarded request body (the server's bound for every path but a snapshot restore)
# A snapshot restore's archive: what one :8300 frame to a server carries, less room for the envelope
# (agent/server/acl_endpoints.MAX_SNAPSHOT_BODY). Every archive a restore accepts is smaller.
MAX_SNAPSHOT_BODY = MAX_FRAME - 64 * 1024
MAX_ANSWER = MAX_SERVER_FRAME - 64 * 1024  # what a server's answer frame to us may carry, less the envelope
MAX_HEADERS = 16
# What a server's answer may set: Consul's query meta and the body's type; anything else is dropped.
RELAYED = frozenset({b"content-type", b"x-consul-index", b"x-consul-knownleader", b"x-consul-lastcontact",
                     b"x-consul-effective-consistency", b"x-consul-results-filtered-by-acls"})
# Parameters the client consumes itself: the token travels as its own field, the blocking wait happens here.
LOCAL_PARAMS = frozenset({"token", "index", "wait"})


def forward_args(request: Request, token: str, body: bytes | None = None) -> dict[str, Any]:
    """The RPC arguments for a request (token: the secret it acts as, "" for anonymous; body: when read from a
    stream, else the request's)."""
    query = request.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=100)
        query = urlencode([(k, v) for k, v in pairs if k not in LOCAL_PARAMS])
    return {"method": request.method, "path": request.path, "query": query,
            "body": request.body if body is None else body, "token": token}


def parse_answer(answer: Any, max_body: int = MAX_ANSWER, method: str = METHOD) -> Response:
    """A server's `[status, [[name, value]...], body]`, checked (a malformed one is a 500, not a crash)."""
    if not (isinstance(answer, list | tuple) and len(answer) == 3):
        raise ServerError(f"{method}: malformed answer from the server")
    status, raw_headers, body = answer
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ServerError(f"{method}: malformed status from the server")
    if not isinstance(body, bytes) or len(body) > max_body:
        raise ServerError(f"{method}: malformed body from the server")
    if not isinstance(raw_headers, list | tuple) or len(raw_headers) > MAX_HEADERS:
        raise ServerError(f"{method}: malformed headers from the server")
    headers: Headers = []
    for item in raw_headers:
        if not (isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
            raise ServerError(f"{method}: malformed header from the server")
        name, value = item[0].lower(), item[1]
        if name in RELAYED and len(value) <= 256 and b"\r" not in value and b"\n" not in value:
            headers.append((name, value))
    return status, headers, body


def server_caller(api: API) -> RPCCaller | None:
    """The RPC caller of a client agent; None on servers and -dev (which answer themselves)."""
    from .acl_api import server_caller as caller  # one definition of "a client agent"
    return caller(api)


async def read_body(stream: BodyStream, limit: int) -> bytes | Response:
    """A streamed request body gathered in memory, or a 413 once it passes `limit` (the rest is not read: the
    server closes the connection after answering)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            return simple_response(413, f"Request body too large to forward to a server: a client agent relays "
                                        f"at most {limit} bytes; send it to a server's HTTP API")
        chunks.append(chunk)
    return b"".join(chunks)


async def forward(api: API, caller: RPCCaller, request: Request, *, max_body: int = MAX_BODY) -> Response:
    """Execute the request on a server and answer with what it answered."""
    body: bytes | None = None
    if request.body_stream is not None:
        read = await read_body(request.body_stream, max_body)
        if not isinstance(read, bytes):
            return read
        body = read
    elif len(request.body) > max_body:
        return simple_response(413, f"Request body too large (limit {max_body} bytes)")
    token = acl_gate.write_token(request, api.agent.acl.tokens.default)
    return parse_answer(await caller.call(METHOD, forward_args(request, token, body)))


def on_a_server(fn: Endpoint) -> Endpoint:
    """Wrap a server-only endpoint: on a client agent, executed by a server and its answer relayed."""

    async def endpoint(api: API, request: Request, query: Query, arg: str) -> Response:
        caller = server_caller(api)
        if caller is None:
            return await fn(api, request, query, arg)
        return await forward(api, caller, request)

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint
