"""GET /v1/agent/monitor?loglevel=&logjson: the agent's log lines as they are written, streamed (chunked, one
flush per line) until the client hangs up. More verbose than the agent's own level if asked; a client that
reads too slowly loses lines (counted, and told in a line) rather than holding the agent's memory. agent:read."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from ..logs import FANOUT, parse_level
from .acl_gate import require_acl
from .messages import Request, Response
from .query import Query, bad_request
from .streaming import StreamedBody

if TYPE_CHECKING:
    from .api import API

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_JSON_LINES = (b"content-type", b"application/x-ndjson")


async def monitor(api: API, request: Request, query: Query, arg: str) -> Response:
    """Stream log lines at `loglevel` (Consul's names, any case; default info), as JSON with `logjson`."""
    require_acl(api, request, lambda a: a.agent_read(api.agent.node_name))
    name = query.get("loglevel", "info") or "info"
    try:
        level = parse_level(name[:20])
    except ValueError as exc:
        raise bad_request(f"Unknown log level: {name[:20]!r} ({exc})") from None
    as_json = query.flag("logjson")

    async def lines() -> AsyncGenerator[bytes, None]:
        with FANOUT.subscribe(level, as_json) as subscriber:
            async for line in subscriber.lines():
                yield line.encode("utf-8", "replace") + b"\n"

    return 200, [_JSON_LINES if as_json else _TEXT], StreamedBody(lines)
