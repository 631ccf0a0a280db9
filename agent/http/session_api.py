"""`/v1/session/*`: create, destroy, info, node, list (blocking, X-Consul-Index always), renew, in Consul's shapes.

Writes go through the store (Raft on servers, a server on client agents) as S1's `session` commands; reads
answer from this agent's catalog. `renew` restarts the session's TTL timer on the leader, through the agent's
Renewer (`API.sessions`: the session runner on servers and -dev, the `session_renew` RPC on client agents).
ACLs: session:write on the session's node for create, destroy and renew; reads keep the sessions whose node the
token has session:read on (X-Consul-Results-Filtered-By-ACLs when some were left out).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from ..acl.identity import ALLOW_ALL, require
from ..acl.secrets import new_id
from ..catalog import CommandError, commands
from ..catalog.session_state import (
    MAX_CHECKS,
    MAX_LOCK_DELAY,
    MAX_NAME,
    MAX_TTL_TEXT,
    SERF_CHECK,
    Session,
    SessionError,
    node_watch_key,
    parse_session,
    session_watch_key,
    ttl_seconds,
)
from ..catalog.session_state import WATCH_KEY as SESSIONS_KEY
from .acl_gate import acl_identity, acl_keep, write_token
from .config_api import body_json
from .messages import Request, Response
from .query import HTTPError, Query, bad_request, parse_duration

if TYPE_CHECKING:
    from .api import API, Endpoint

MAX_SESSION_ID = 64  # a UUID is 36 characters
_LOCK_DELAY_SECONDS_BELOW = 1000  # Consul: a bare LockDelay number under 1000 is seconds, else nanoseconds
_NS = 1_000_000_000


class Renewer(Protocol):
    """Who restarts a session's TTL timer: the leader's session runner, or a server reached over RPC."""

    async def renew(self, session_id: str, token: str | None = None) -> Session | None: ...


def session_json(row: Session) -> dict[str, Any]:
    """One session as Consul renders it (LockDelay in nanoseconds; Checks: every bound check, the old field)."""
    return {
        "ID": row.id,
        "Name": row.name,
        "Node": row.node,
        "LockDelay": round(row.lock_delay * _NS),
        "Behavior": row.behavior,
        "TTL": row.ttl,
        "NodeChecks": list(row.node_checks),
        "ServiceChecks": [dict(c) for c in row.service_checks] or None,
        "Checks": row.check_ids(),
        "CreateIndex": row.create_index,
        "ModifyIndex": row.modify_index,
    }


# ---------------------------------------------------------------------------------------------- parsing

def _fold(value: dict[Any, Any]) -> dict[str, Any]:
    """Field names matched case-insensitively, as Go's encoding/json does (py-consul sends "ttl", "lockdelay")."""
    return {str(k).lower(): v for k, v in value.items()}


def _string(body: dict[str, Any], field: str, name: str, limit: int = MAX_NAME) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"Request decode failed: {name} must be a string")
    if len(value) > limit:
        raise bad_request(f"Request decode failed: {name} is longer than {limit} characters")
    return value


def _id_list(body: dict[str, Any], field: str, name: str) -> list[str] | None:
    """A list of check IDs (None when absent; JSON null is an empty list, as Go decodes it)."""
    if field not in body:
        return None
    value = body[field]
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CHECKS:
        raise bad_request(f"Request decode failed: {name} must be a list of at most {MAX_CHECKS} check IDs")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME for v in value):
        raise bad_request(f"Request decode failed: {name} entries must be check IDs (non-empty strings)")
    return list(value)


def _service_checks(body: dict[str, Any]) -> list[dict[str, str]]:
    value = body.get("servicechecks")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CHECKS:
        raise bad_request(f"Request decode failed: ServiceChecks must be a list of at most {MAX_CHECKS} entries")
    out: list[dict[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_request('Request decode failed: ServiceChecks entries must be objects {"ID", "Namespace"}')
        folded = _fold(item)
        cid = _string(folded, "id", "ServiceChecks ID")
        if not cid:
            raise bad_request("Request decode failed: ServiceChecks entries need an ID")
        out.append({"ID": cid, "Namespace": _string(folded, "namespace", "ServiceChecks Namespace") or ""})
    return out


def _lock_delay(body: dict[str, Any]) -> float:
    """LockDelay: a duration string ("15s"), or a number (Consul: under 1000 seconds, else nanoseconds)."""
    value = body.get("lockdelay")
    if value is None:
        return 15.0
    if isinstance(value, str):
        try:
            seconds = parse_duration(value[:MAX_TTL_TEXT])
        except ValueError:
            raise bad_request(f"Request decode failed: LockDelay {value[:MAX_TTL_TEXT]!r} is not a duration "
                              f"(e.g. \"15s\")") from None
    elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e30:
        seconds = float(value) if abs(value) < _LOCK_DELAY_SECONDS_BELOW else float(value) / _NS
    else:
        raise bad_request("Request decode failed: LockDelay must be a duration string or a number")
    if not 0.0 <= seconds <= MAX_LOCK_DELAY:
        raise bad_request(f"LockDelay must be between 0s and {MAX_LOCK_DELAY:g}s")
    return seconds


def _node_checks(body: dict[str, Any]) -> list[str]:
    """NodeChecks (default ["serfHealth"]) with the deprecated Checks folded in as Consul's
    fixupEmptySessionChecks does: Checks [] means no checks; Checks other than the default add to NodeChecks."""
    node_checks = _id_list(body, "nodechecks", "NodeChecks")
    checks = _id_list(body, "checks", "Checks")
    merged = [SERF_CHECK] if node_checks is None else node_checks
    if checks is None or checks == [SERF_CHECK]:
        return merged
    if not checks:
        return []
    if not merged:
        return merged
    merged = list(dict.fromkeys([*merged, *checks]))
    if len(merged) > MAX_CHECKS:
        raise bad_request(f"Request decode failed: at most {MAX_CHECKS} node checks")
    return merged


def parse_create(raw: Any, default_node: str) -> dict[str, Any]:
    """A create body as a session command's row (a new ID; this agent's node unless Node is given); 400 naming
    the field at fault."""
    if not isinstance(raw, dict):
        raise bad_request("Request decode failed: the body must be a JSON object")
    body = _fold(raw)
    ttl = _string(body, "ttl", "TTL", MAX_TTL_TEXT) or ""
    try:
        ttl_seconds(ttl)
    except SessionError as exc:
        raise bad_request(str(exc)) from None
    behavior = _string(body, "behavior", "Behavior") or "release"
    if behavior not in ("release", "delete"):
        raise bad_request(f"Invalid Behavior setting '{behavior}'")
    row = {"id": new_id(), "name": _string(body, "name", "Name") or "",
           "node": _string(body, "node", "Node") or default_node, "node_checks": _node_checks(body),
           "service_checks": _service_checks(body), "lock_delay": _lock_delay(body), "behavior": behavior,
           "ttl": ttl}
    try:
        parse_session(row)  # the FSM's own checks, answered here as a 400 before any write
    except SessionError as exc:
        raise bad_request(str(exc)) from None
    return row


def _session_id(arg: str) -> str:
    if not arg:
        raise bad_request("Missing session")
    if len(arg) > MAX_SESSION_ID or "/" in arg:
        raise bad_request(f"Invalid session ID (at most {MAX_SESSION_ID} characters, no '/')")
    return arg


async def _apply(api: API, command: dict[str, Any], token: str | None) -> Any:
    try:
        return await api.agent.store.apply(command, token=token)
    except CommandError as exc:  # -dev applies here; servers answer Rejected (400) for the same refusals
        raise bad_request(str(exc)) from None


def _write_token(api: API, request: Request, node: str | None) -> str | None:
    """Check session:write on `node` (skipped for an unknown session: the servers decide) and return the secret
    the write carries; None with ACLs off."""
    identity = acl_identity(api, request)
    if identity is None:
        return None
    if node is not None:
        require(identity, identity.authorizer.session_write(node))
    return write_token(request, api.agent.acl.tokens.default)


# ---------------------------------------------------------------------------------------------- endpoints

async def create(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/session/create → {"ID": …}."""
    row = parse_create(body_json(request), api.agent.node_name)
    token = _write_token(api, request, row["node"])
    session_id = await _apply(api, commands.session_create(row), token)
    return api.json({"ID": session_id if isinstance(session_id, str) else row["id"]}, query)


async def destroy(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/session/destroy/:id → true (also for a session that is already gone)."""
    session_id = _session_id(arg)
    row = api.agent.store.catalog.sessions.get(session_id)
    token = _write_token(api, request, row.node if row is not None else None)
    await _apply(api, commands.session_destroy(session_id, time.time()), token)
    return api.json(True, query)


async def renew(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/session/renew/:id → [session], restarting its TTL timer at the leader; 404 once it is gone."""
    session_id = _session_id(arg)
    row = api.agent.store.catalog.sessions.get(session_id)
    token = _write_token(api, request, row.node if row is not None else None)
    renewer: Renewer | None = api.sessions
    renewed = await renewer.renew(session_id, token) if renewer is not None else row
    if renewed is None:
        raise HTTPError(404, f"Session id '{session_id}' not found")
    return api.json([session_json(renewed)], query)


def _visible(api: API, request: Request, rows: list[Session]) -> list[dict[str, Any]]:
    identity = acl_identity(api, request)
    authz = (identity or ALLOW_ALL).authorizer
    kept = acl_keep(request, identity, rows, lambda s: authz.session_read(s.node).allowed)
    return [session_json(s) for s in kept]


async def info(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/session/info/:id → [session] or [] (blocking)."""
    session_id = _session_id(arg)
    acl_identity(api, request)  # an unknown token is refused before any wait

    def build() -> list[dict[str, Any]]:
        row = api.agent.store.catalog.sessions.get(session_id)
        return _visible(api, request, [row] if row is not None else [])

    return await api.read(request, query, [session_watch_key(session_id)], build)


async def node(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/session/node/:node → the node's sessions (blocking)."""
    if not arg:
        raise bad_request("Missing node name")
    if len(arg) > MAX_NAME:
        raise bad_request(f"Invalid node name (at most {MAX_NAME} characters)")
    acl_identity(api, request)
    return await api.read(request, query, [node_watch_key(arg)],
                          lambda: _visible(api, request, api.agent.store.catalog.sessions.for_node(arg)))


async def list_sessions(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/session/list → every session (blocking)."""
    acl_identity(api, request)
    return await api.read(request, query, [SESSIONS_KEY],
                          lambda: _visible(api, request, api.agent.store.catalog.sessions.list()))


ROUTES: dict[str, dict[str, Endpoint]] = {
    "/v1/session/create": {"PUT": create},
    "/v1/session/destroy/": {"PUT": destroy},
    "/v1/session/renew/": {"PUT": renew},
    "/v1/session/info/": {"GET": info},
    "/v1/session/node/": {"GET": node},
    "/v1/session/list": {"GET": list_sessions},
}

__all__ = ["ROUTES", "Renewer", "create", "destroy", "info", "list_sessions", "node", "parse_create", "renew",
           "session_json"]
