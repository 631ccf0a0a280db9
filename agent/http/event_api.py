"""`/v1/event/*`: fire a user event into the gossip pool, list the recent ones this agent saw."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..acl.identity import require
from .acl_gate import FILTERED_HEADER, acl_identity, acl_keep
from .messages import Request, Response
from .query import HTTPError, Query, bad_request
from .render import event_json

if TYPE_CHECKING:
    from ..acl.authorizer import Authorizer
    from ..user_events import UserEventRecord
    from .api import API


async def fire(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/event/fire/:name with the payload as body: the event record (ID, LTime, …)."""
    if not arg:
        raise bad_request("Missing name")
    for unsupported in ("node", "service", "tag"):
        if query.get(unsupported):
            raise HTTPError(400, f"?{unsupported} filters are not supported yet")
    identity = acl_identity(api, request)
    if identity is not None:
        require(identity, identity.authorizer.event_write(arg))
    try:
        record = api.agent.fire_event(arg, request.body)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return api.json(event_json(record), query)


def uuid_to_uint64(event_id: str) -> int:
    """Consul's X-Consul-Index for an event list: the last event's ID, its two 64-bit halves XORed."""
    digits = event_id.replace("-", "")
    return int(digits[:16], 16) ^ int(digits[16:32], 16)


def _readable(authz: Authorizer) -> Callable[[UserEventRecord], bool]:
    """Whether an event is visible: event:read on its name."""
    return lambda event: authz.event_read(event.name).allowed


async def list_events(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/event/list[?name=]: the most recent user events this agent received, oldest first.

    A blocking query as in Consul: with ?index= equal to the current index, the answer waits for a new
    event (or ?wait, plus Consul's up to 1/16 jitter)."""
    name = query.get("name")
    identity = acl_identity(api, request)
    deadline = trio.current_time() + query.wait + random.uniform(0, query.wait / 16)
    while True:
        arrived = api.agent.events.arrived
        events = [e for e in api.agent.events.recent if not name or e.name == name]
        if identity is not None:
            # Filtered before the index is taken, as Consul does: a watch does not wake for events it
            # may not see.
            request.acl_filtered = False
            events = acl_keep(request, identity, events, _readable(identity.authorizer))
        # No events: index 1, not 0, so that a watch loop blocks instead of spinning (Consul does the same).
        index = uuid_to_uint64(events[-1].id) if events else 1
        if query.index == 0 or index != query.index or trio.current_time() >= deadline:
            break
        with trio.move_on_at(deadline):
            await arrived.wait()
        if identity is not None:
            identity = api.recheck(request)  # filter with the token's rights after the wait (403 if revoked)
    headers: list[tuple[bytes, bytes]] = [(b"x-consul-index", b"%d" % index)]
    if request.acl_filtered:
        headers.append(FILTERED_HEADER)
    return api.json([event_json(e) for e in events], query, extra=headers)
