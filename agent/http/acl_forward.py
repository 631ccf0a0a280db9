"""A client agent's `/v1/acl/*` request, executed by a server over RPC `acl_http` and relayed.

The client's replica holds no secrets (and so could show no SecretID), so the server runs its own acl_api
handler on the request (agent/server/acl_endpoints.py). Blocking reads wait here on the replica's `acl`
index first and then ask once: an RPC call lasts seconds, a blocking wait minutes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from ..rpc.errors import ServerError
from . import acl_gate
from .messages import Headers, Request, Response, simple_response
from .query import Query

if TYPE_CHECKING:
    from .acl_api import RPCCaller
    from .api import API

METHOD = "acl_http"
SELF_PATH = "/v1/acl/token/self"
MAX_BODY = 1024 * 1024  # the RPC's bound on a forwarded request body
MAX_ANSWER = 16 * 1024 * 1024 - 64 * 1024  # an answer must fit one RPC frame
MAX_HEADERS = 16
# What a server's answer may set: Consul's query meta and the body's type; anything else is dropped.
RELAYED = frozenset({b"content-type", b"x-consul-index", b"x-consul-knownleader", b"x-consul-lastcontact",
                     b"x-consul-effective-consistency", b"x-consul-results-filtered-by-acls"})
# Parameters the client consumes itself: the token travels as its own field, the blocking wait happens here.
_LOCAL_PARAMS = frozenset({"token", "index", "wait"})


def forward_args(request: Request, token: str) -> dict[str, Any]:
    """The `acl_http` RPC arguments for a request (token: the secret it acts as, "" for anonymous)."""
    query = request.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=100)
        query = urlencode([(k, v) for k, v in pairs if k not in _LOCAL_PARAMS])
    return {"method": request.method, "path": request.path, "query": query, "body": request.body,
            "token": token}


def parse_answer(answer: Any) -> Response:
    """A server's `[status, [[name, value]...], body]`, checked (a malformed one is a 500, not a crash)."""
    if not (isinstance(answer, list | tuple) and len(answer) == 3):
        raise ServerError("acl_http: malformed answer from the server")
    status, raw_headers, body = answer
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ServerError("acl_http: malformed status from the server")
    if not isinstance(body, bytes) or len(body) > MAX_ANSWER:
        raise ServerError("acl_http: malformed body from the server")
    if not isinstance(raw_headers, list | tuple) or len(raw_headers) > MAX_HEADERS:
        raise ServerError("acl_http: malformed headers from the server")
    headers: Headers = []
    for item in raw_headers:
        if not (isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
            raise ServerError("acl_http: malformed header from the server")
        name, value = item[0].lower(), item[1]
        if name in RELAYED and len(value) <= 256 and b"\r" not in value and b"\n" not in value:
            headers.append((name, value))
    return status, headers, body


async def forward(api: API, caller: RPCCaller, request: Request, query: Query) -> Response:
    """Execute the request on a server and answer with what it answered."""
    if len(request.body) > MAX_BODY:
        return simple_response(413, f"Request body too large (limit {MAX_BODY} bytes)")
    if query.index > 0:
        await api.block(["acl"], query, request)  # on the replica: its acl index moves with the servers'
    token = acl_gate.write_token(request, api.agent.acl.tokens.default)
    status, headers, body = parse_answer(await caller.call(METHOD, forward_args(request, token)))
    if status == 200 and request.path == SELF_PATH and token and not acl_gate.request_token(request):
        # The server saw this agent's default token as presented: its secret is not shown here either.
        try:
            data = json.loads(body)
        except ValueError:
            return status, headers, body
        if isinstance(data, dict) and "SecretID" in data:
            data["SecretID"] = "<hidden>"
            body = api.json(data, query)[2]
    return status, headers, body
