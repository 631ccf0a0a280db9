"""`/v1/config`: config entries. PUT one (`?cas=`), GET one or a kind's list (blocking), DELETE (`?cas=`).

Entries are validated in full (agent/connect/entry_validate.py) before the write; the FSM checks only their
structure. Answers follow Consul's handlers: PUT → true/false, DELETE → `{}` (or true/false with `?cas=`),
a missing entry → 404 "Config entry not found for ...".

ACLs, as Consul's CanRead/CanWrite per kind: service-defaults, -router, -splitter, -resolver read with
service:read on the name and write with service:write on it plus service:read on every service the entry
sends to; service-intentions read/write with intentions on the destination; proxy-defaults (and any other
kind) read by anyone, written with mesh:write (else operator:write). Deletes are writes; lists are filtered.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..acl.authorizer import Authorizer, Decision
from ..acl.identity import ACLIdentity, require
from ..catalog import CommandError, commands
from ..catalog.config_entries import KINDS, ConfigEntryRow, entry_watch_key
from ..connect.entry_validate import EntryError, check_delete, check_references, named_services, normalize_entry
from .acl_gate import keep_allowed, write_token
from .filter import ANYMAP, INT, STR, STRMAP, Schema
from .messages import Request, Response
from .query import HTTPError, Query, bad_request, parse_uint

if TYPE_CHECKING:
    from .api import API

_TRUE = b"true"
_FALSE = b"false"
_CT_JSON = (b"content-type", b"application/json")
_CT_TEXT = (b"content-type", b"text/plain; charset=utf-8")
MAX_ERROR = 1024  # characters of an error message in an answer
MAX_NAME = 256  # the FSM's bound on an entry name; a longer path part can name nothing
SERVICE_KINDS = ("service-defaults", "service-router", "service-splitter", "service-resolver")
INTENTIONS_KIND = "service-intentions"

# `?filter=` over a listed entry: the fields every kind shares, plus the common kind-specific ones.
ENTRY_SCHEMA: Schema = {
    "Kind": STR, "Name": STR, "Namespace": STR, "Partition": STR, "Meta": STRMAP, "Protocol": STR,
    "Mode": STR, "Config": ANYMAP, "CreateIndex": INT, "ModifyIndex": INT,
}


def entry_json(row: ConfigEntryRow) -> dict[str, Any]:
    """Consul's JSON for a stored entry: the canonical entry plus its Raft indexes."""
    return {**row.entry, "CreateIndex": row.create_index, "ModifyIndex": row.modify_index}


def check_kind(kind: str) -> str:
    """The kind, or a 400 as Consul's MakeConfigEntry answers for an unknown one."""
    if kind not in KINDS:
        raise bad_request(f"invalid config entry kind: {kind[:64]}")
    return kind


# ---------------------------------------------------------------------- ACLs


def read_decision(authz: Authorizer, kind: str, name: str) -> Decision | None:
    """What reading an entry needs; None when anyone may (proxy-defaults, as Consul)."""
    if kind in SERVICE_KINDS:
        return authz.service_read(name)
    if kind == INTENTIONS_KIND:
        return authz.intention_read(name)
    return None


def require_write(identity: ACLIdentity, kind: str, name: str, entry: dict[str, Any] | None = None) -> None:
    """Raise ACLDenied unless the identity may write (or delete: entry None) this entry."""
    authz = identity.authorizer
    if kind in SERVICE_KINDS:
        require(identity, authz.service_write(name))
        # Consul: read on a related service is enough to send one's own traffic there.
        for related in sorted(named_services(entry or {}) - {name}):
            require(identity, authz.service_read(related))
    elif kind == INTENTIONS_KIND:
        require(identity, authz.intention_write(name))
    else:
        require(identity, authz.mesh_write())


def _readable(identity: ACLIdentity, row: ConfigEntryRow) -> bool:
    decision = read_decision(identity.authorizer, row.kind, row.name)
    return decision is None or decision.allowed


# ---------------------------------------------------------------------- entries


def lookup(api: API) -> Any:
    """A `(kind, name) -> entry | None` reader over the agent's catalog, for check_references."""
    entries = api.agent.store.catalog.config_entries

    def read(kind: str, name: str) -> dict[str, Any] | None:
        row = entries.get(kind, name)
        return None if row is None else row.entry

    return read


def stored(api: API) -> Any:
    """A `kind -> stored entries` reader over the agent's catalog: check_references re-compiles the chains
    that reach a written or deleted entry's service."""
    entries = api.agent.store.catalog.config_entries

    def read(kind: str) -> list[dict[str, Any]]:
        return [row.entry for row in entries.list(kind)]

    return read


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def body_json(request: Request) -> Any:
    """The request body as strict JSON (NaN and Infinity refused: no client could read them back)."""
    if not request.body.strip():
        return {}
    try:
        return json.loads(request.body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Request decoding failed: {str(exc)[:120]}") from None


def normalized(raw: Any) -> dict[str, Any]:
    """A request's entry in canonical form (structure checked, not references); 400 naming the field."""
    if not isinstance(raw, dict):
        raise bad_request("Request decoding failed: the body must be a JSON object (one config entry)")
    try:
        return normalize_entry(raw)
    except EntryError as exc:
        raise bad_request(str(exc)[:MAX_ERROR]) from None  # errors may quote hostile input: bounded


def check_stored(api: API, entry: dict[str, Any]) -> dict[str, Any]:
    """A canonical entry checked against the stored ones (references, chains); 400 naming the field."""
    try:
        check_references(entry, lookup(api), stored(api))
    except EntryError as exc:
        raise bad_request(str(exc)[:MAX_ERROR]) from None
    return entry


def validate(api: API, raw: Any) -> dict[str, Any]:
    """A request's entry, normalized and checked against the stored ones; 400 naming the field otherwise."""
    return check_stored(api, normalized(raw))


def cas_of(query: Query) -> int | None:
    """`?cas=N` as an int, None when absent or empty (Consul ignores `?cas=`)."""
    text = query.get("cas")
    return parse_uint("cas", text) if text else None


async def apply(api: API, command: dict[str, Any], request: Request | None = None) -> bool:
    """Write through the store (Raft, a server, or -dev) as the request's token (servers re-check it); a
    command the FSM refuses is a 400."""
    # None with ACLs off (the contract): no secret travels where none is needed
    enabled = api.agent.acl.enabled
    token = write_token(request, api.agent.acl.tokens.default) if request is not None and enabled else None
    try:
        result = await api.agent.store.apply(command, token=token)
    except CommandError as exc:
        raise bad_request(str(exc)) from None
    return bool(result)


def _bool(ok: bool) -> Response:
    return 200, [_CT_JSON], _TRUE if ok else _FALSE


def _split(arg: str) -> tuple[str, str | None]:
    kind, sep, name = arg.partition("/")
    if not kind:
        raise HTTPError(404, "Must provide either a kind or both kind and name")
    check_kind(kind)
    if not sep:
        return kind, None
    if not name:
        raise bad_request("Missing config entry name")
    return kind, name


async def put(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/config: create or replace one entry; with `?cas=N` only at ModifyIndex N (0: only if absent)."""
    cas = cas_of(query)
    entry = normalized(body_json(request))
    require_write(api.identity(request), str(entry["Kind"]), str(entry["Name"]), entry)
    # References are checked against this agent's replica: on a client it may not hold this client's own
    # previous write yet (a resolver, then its splitter), so catch up with the leader first.
    await api.agent.store.read_barrier(b"default")
    check_stored(api, entry)
    return _bool(await apply(api, commands.config_entry_set(entry, cas), request))


async def get(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/config/:kind/:name (404 when absent) or /v1/config/:kind (a list by name); both blocking."""
    kind, name = _split(arg)
    identity = api.identity(request)
    if name is None:
        def build() -> list[dict[str, Any]]:
            rows = api.agent.store.catalog.config_entries.list(kind)
            now = api.identity(request)  # current after a blocking wait (API.block resolves it again)
            if now.enabled:
                rows, dropped = keep_allowed(rows, lambda row: _readable(now, row))
                request.acl_filtered = request.acl_filtered or dropped
            return [entry_json(row) for row in rows]

        return await api.read(request, query, [entry_watch_key(kind)], build, ENTRY_SCHEMA)
    decision = read_decision(identity.authorizer, kind, name[:MAX_NAME])
    if decision is not None:
        require(identity, decision)
    index = await api.block([entry_watch_key(kind, name)], query, request)
    if decision is not None:
        _read_again(api, request, kind, name[:MAX_NAME])
    entries = api.agent.store.catalog.config_entries  # a restore may have replaced the catalog meanwhile
    row = entries.get(kind, name) if len(name) <= MAX_NAME else None
    headers = api.meta_headers(index, query)
    if row is None:
        reason = f"Config entry not found for {json.dumps(kind)} / {json.dumps(name[:MAX_NAME])}"
        return 404, [_CT_TEXT, *headers[1:]], reason.encode()
    return api.json(entry_json(row), query, extra=headers[1:])


def _read_again(api: API, request: Request, kind: str, name: str) -> None:
    """The read check once more after a blocking wait: the token (resolved again) may have lost the right."""
    identity = api.identity(request)
    decision = read_decision(identity.authorizer, kind, name)
    if decision is not None:
        require(identity, decision)


async def delete(api: API, request: Request, query: Query, arg: str) -> Response:
    """DELETE /v1/config/:kind/:name: `{}`; with `?cas=N` true/false (N must be the entry's ModifyIndex)."""
    kind, name = _split(arg)
    if name is None:
        raise HTTPError(404, "Must provide both a kind and name to delete")
    cas = cas_of(query)
    require_write(api.identity(request), kind, name[:MAX_NAME])
    if len(name) > MAX_NAME:  # nothing so named can exist: the delete has nothing to do
        return _bool(True) if cas is not None else api.json({}, query)
    # A delete can break the chains that reach the entry's service (Consul checks deletes too): checked
    # against the leader's state, as a write's references are.
    await api.agent.store.read_barrier(b"default")
    try:
        check_delete(kind, name, lookup(api), stored(api))
    except EntryError as exc:
        raise bad_request(str(exc)[:MAX_ERROR]) from None
    ok = await apply(api, commands.config_entry_delete(kind, name, cas), request)
    if cas is not None:
        return _bool(ok)
    return api.json({}, query)


__all__ = ["ENTRY_SCHEMA", "apply", "body_json", "cas_of", "check_kind", "check_stored", "delete", "entry_json", "get",
           "lookup", "normalized", "put", "read_decision", "require_write", "validate"]
