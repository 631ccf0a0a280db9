"""A client agent's `/v1/acl/*` request, executed by a server over RPC `acl_http` and relayed.

The client's replica holds no secrets (and so could show no SecretID), so the server runs its own acl_api
handler on the request (agent/server/acl_endpoints.py). Blocking reads wait here on the replica's `acl`
index first and then ask once: an RPC call lasts seconds, a blocking wait minutes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import acl_gate, server_forward
from .messages import Request, Response, simple_response
from .query import Query
from .server_forward import MAX_HEADERS, RELAYED, forward_args

if TYPE_CHECKING:
    from .acl_api import RPCCaller
    from .api import API

__all__ = ["MAX_HEADERS", "RELAYED", "forward", "forward_args", "parse_answer"]

METHOD = "acl_http"  # server_forward's http_forward under its issue-15 name: servers of either age take it
SELF_PATH = "/v1/acl/token/self"
MAX_BODY = 1024 * 1024  # the RPC's bound on a forwarded request body
MAX_ANSWER = 16 * 1024 * 1024 - 64 * 1024  # an answer must fit one RPC frame


def parse_answer(answer: Any) -> Response:
    """A server's `[status, [[name, value]...], body]`, checked (a malformed one is a 500, not a crash)."""
    return server_forward.parse_answer(answer, MAX_ANSWER, METHOD)


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
