"""`/v1/event/*`: fire a user event into the gossip pool, list the recent ones this agent saw."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .query import HTTPError, Query, bad_request
from .server import Request, Response

if TYPE_CHECKING:
    from .api import API


async def fire(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/event/fire/:name with the payload as body: the event record (ID, LTime, …)."""
    if not arg:
        raise bad_request("Missing name")
    for unsupported in ("node", "service", "tag"):
        if query.get(unsupported):
            raise HTTPError(400, f"?{unsupported} filters are not supported yet")
    try:
        record = api.agent.fire_event(arg, request.body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return api.json(record, query)


async def list_events(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/event/list[?name=]: the most recent user events this agent received, oldest first."""
    name = query.get("name")
    events = [e for e in api.agent.user_events if not name or e["Name"] == name]
    return api.json(events, query)
