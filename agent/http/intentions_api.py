"""`/v1/connect/intentions`: the legacy intention API, mapped onto `service-intentions` entries as Consul ≥ 1.9.

Every intention is one Source of its destination's entry. A write reads that entry, changes the one source
(agent/connect/intention_entries.py) and writes the whole entry back with `cas` = its ModifyIndex, retrying
when another write got there first; so two clients editing intentions of one destination never lose one.
Reads answer Consul's legacy JSON, ordered by precedence; `check` decides with intentions.decide_l4.

ACLs, as Consul: intentions are governed by the destination's service rule (`intentions = ...`). Reads need
intentions read on the destination (lists are filtered; match needs it on every name asked, as Consul,
and its answer is filtered by destination too); writes need intentions write on the destination; check
needs only service:read on the destination (it reveals no intention).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ..acl.identity import ACLIdentity, require
from ..catalog import commands
from ..catalog.config_entries import ConfigEntryRow, entry_watch_key
from ..connect.entry_validate import EntryError
from ..connect.intention_entries import (
    find_by_id,
    find_source,
    legacy_json,
    legacy_list,
    match,
    remove_source,
    upsert_source,
)
from .acl_gate import keep_allowed, require_acl
from .config_api import MAX_ERROR, apply, body_json, validate
from .connect_api import compiled_intentions, default_allow
from .filter import INT, STR, STRMAP, Schema
from .intentions_parse import check_id as _check_id
from .intentions_parse import fold_body as _fold
from .intentions_parse import meta_of as _meta
from .intentions_parse import now as _now
from .intentions_parse import pair as _pair
from .intentions_parse import service_name
from .intentions_parse import source_of as _source
from .intentions_parse import str_field as _str
from .messages import Request, Response
from .query import HTTPError, Query, bad_request

if TYPE_CHECKING:
    from ..store import CatalogStore
    from .api import API

KIND = "service-intentions"
WRITE_ATTEMPTS = 5
# How long a retry waits for this agent's catalog to show the write that beat it (a client's replica lags).
CATCH_UP_WAIT = 2.0
_CT_JSON = (b"content-type", b"application/json")
_NOT_FOUND = "Intention not found"

INTENTION_SCHEMA: Schema = {
    "ID": STR, "Description": STR, "SourceNS": STR, "SourceName": STR, "DestinationNS": STR,
    "DestinationName": STR, "SourceType": STR, "Action": STR, "Meta": STRMAP, "Precedence": INT,
    "CreateIndex": INT, "ModifyIndex": INT,
}

Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


# ---------------------------------------------------------------------- reading


def _rows(api: API) -> list[ConfigEntryRow]:
    return api.agent.store.catalog.config_entries.list(KIND)


def _find_id(api: API, ixn_id: str) -> tuple[ConfigEntryRow, dict[str, Any], dict[str, Any]] | None:
    """(entry row, source, legacy JSON) of the intention with this ID, or None."""
    legacy = find_by_id(_rows(api), ixn_id)
    if legacy is None:
        return None
    row = api.agent.store.catalog.config_entries.get(KIND, str(legacy["DestinationName"]))
    source = find_source(None if row is None else row.entry, str(legacy["SourceName"]))
    if row is None or source is None:
        return None
    return row, source, legacy


def _readable(identity: ACLIdentity, request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The legacy intentions whose destination the identity may read intentions of (marks the request)."""
    if not identity.enabled:
        return items
    kept, dropped = keep_allowed(items, lambda ixn: identity.authorizer.intention_read(
        str(ixn.get("DestinationName", ""))).allowed)
    request.acl_filtered = request.acl_filtered or dropped
    return kept


def _may_read(api: API, request: Request, destination: str) -> None:
    require_acl(api, request, lambda authz: authz.intention_read(destination))


def _may_write(api: API, request: Request, destination: str) -> None:
    require_acl(api, request, lambda authz: authz.intention_write(destination))


# ---------------------------------------------------------------------- writing


# Writers on this agent to one destination take turns (each rewrites the whole entry, so they would only
# beat each other's cas); cas and retry are left for writers on other agents. Per store: one per agent.
_WRITERS: weakref.WeakKeyDictionary[CatalogStore, dict[str, trio.Lock]] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _turn(store: CatalogStore, destination: str) -> AsyncIterator[None]:
    locks = _WRITERS.setdefault(store, {})
    lock = locks.setdefault(destination, trio.Lock())
    try:
        async with lock:
            yield
    finally:
        if not lock.locked() and not lock.statistics().tasks_waiting:
            locks.pop(destination, None)  # only destinations being written keep a lock


async def modify(api: API, destination: str, change: Change, request: Request | None = None) -> None:
    """Read the destination's entry, change it (None: delete it) and write it back at its ModifyIndex,
    retrying when a concurrent write moved it; 409 after WRITE_ATTEMPTS conflicts. The write carries
    `request`'s token (servers re-check it); the caller has checked intentions write on `destination`."""
    async with _turn(api.agent.store, destination):
        await _modify(api, destination, change, request)


async def _modify(api: API, destination: str, change: Change, request: Request | None) -> None:
    store = api.agent.store
    key = entry_watch_key(KIND, destination)
    for _ in range(WRITE_ATTEMPTS):
        seen = store.index_for([key])
        row = store.catalog.config_entries.get(KIND, destination)
        try:
            new = change(None if row is None else row.entry)
        except EntryError as exc:
            raise bad_request(str(exc)[:MAX_ERROR]) from None
        if new is None:
            if row is None:
                return
            command = commands.config_entry_delete(KIND, destination, row.modify_index)
        else:
            if row is not None and new == row.entry:
                return
            command = commands.config_entry_set(validate(api, new), row.modify_index if row else 0)
        if await apply(api, command, request):
            return
        # Another write won: wait (bounded) until this agent's catalog shows it, then try again on top of it.
        await store.block([key], seen, CATCH_UP_WAIT)
    raise HTTPError(409, f'config entry failed to persist due to CAS failure: kind="{KIND}", '
                         f'name="{destination}"; retry')


def _upsert(destination: str, source: dict[str, Any], meta: dict[str, str]) -> Change:
    def change(entry: dict[str, Any] | None) -> dict[str, Any]:
        # Consul: Meta cannot live on one intention; it may only repeat the enclosing entry's Meta.
        if meta and (entry is None or (entry.get("Meta") or {}) != meta):
            raise bad_request("Meta must not be specified, or should be unchanged during an update.")
        return upsert_source(entry, destination, source)

    return change


def _remove(name: str) -> Change:
    def change(entry: dict[str, Any] | None) -> dict[str, Any] | None:
        if entry is None or find_source(entry, name) is None:
            return entry
        return remove_source(entry, name)

    return change


def _bool(ok: bool = True) -> Response:
    return 200, [_CT_JSON], b"true" if ok else b"false"


# ---------------------------------------------------------------------- endpoints


async def list_intentions(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/intentions: every intention the token may read, highest precedence first (blocking)."""
    api.identity(request)  # an unknown token is refused before any wait

    def build() -> list[dict[str, Any]]:
        # the identity current at build time (API.block resolves it again after a wait)
        return _readable(api.identity(request), request, list(legacy_list(_rows(api))))

    return await api.read(request, query, [entry_watch_key(KIND)], build, INTENTION_SCHEMA)


async def create(api: API, request: Request, query: Query, arg: str) -> Response:
    """POST /v1/connect/intentions: a legacy intention with a new ID (answers {"ID": ...}); 400 if the
    pair exists."""
    body = _fold(body_json(request))
    if _str(body, "ID"):
        raise bad_request("ID must be empty when creating a new intention")
    source_name = service_name(_str(body, "SourceName"), "SourceName")
    destination = service_name(_str(body, "DestinationName"), "DestinationName")
    _may_write(api, request, destination)
    source = _source(body, source_name, legacy=True)
    now = _now()
    ixn_id = str(uuid.uuid4())
    source.update(LegacyID=ixn_id, LegacyCreateTime=now, LegacyUpdateTime=now)
    meta = _meta(body)
    if meta:
        source["LegacyMeta"] = meta

    def change(entry: dict[str, Any] | None) -> dict[str, Any]:
        if find_source(entry, source_name) is not None:
            raise bad_request(f"duplicate intention found: {source_name} => {destination}")
        return upsert_source(entry, destination, source)

    await modify(api, destination, change, request)
    return api.json({"ID": ixn_id}, query)


async def exact_get(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/intentions/exact?source=&destination=: one intention, 404 when absent (blocking)."""
    source_name, destination = _pair(query)
    _may_read(api, request, destination)
    index = await api.block([entry_watch_key(KIND, destination)], query, request)
    _may_read(api, request, destination)  # again: the token's rights after the wait
    row = api.agent.store.catalog.config_entries.get(KIND, destination)
    source = find_source(None if row is None else row.entry, source_name)
    if row is None or source is None:
        raise HTTPError(404, _NOT_FOUND)
    return api.json(legacy_json(row, source), query, extra=api.meta_headers(index, query)[1:])


async def exact_put(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/connect/intentions/exact?source=&destination=: create or replace that intention (true)."""
    source_name, destination = _pair(query)
    _may_write(api, request, destination)
    body = _fold(body_json(request))
    if _str(body, "ID"):
        raise bad_request("ID must not be specified")
    await modify(api, destination, _upsert(destination, _source(body, source_name, legacy=False), _meta(body)),
                 request)
    return _bool()


async def exact_delete(api: API, request: Request, query: Query, arg: str) -> Response:
    """DELETE /v1/connect/intentions/exact?source=&destination=: true, also when there was none."""
    source_name, destination = _pair(query)
    _may_write(api, request, destination)
    await modify(api, destination, _remove(source_name), request)
    return _bool()


async def match_intentions(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/intentions/match?by=source|destination&name=...: {name: [intentions]} (blocking)."""
    by = query.all("by")
    if len(by) != 1:
        raise bad_request("required query parameter 'by' not set")
    if by[0] not in ("source", "destination"):
        raise bad_request("'by' parameter must be one of 'source' or 'destination'")
    names = query.all("name")
    if not names:
        raise bad_request("required query parameter 'name' not set")
    if len(names) > 64:
        raise bad_request("at most 64 'name' parameters")
    parsed = [(raw, service_name(raw, "name")) for raw in names]
    identity = api.identity(request)
    for _, name in parsed:  # Consul: intentions read on every name asked, else 403
        require(identity, identity.authorizer.intention_read(name))

    def build() -> dict[str, list[dict[str, Any]]]:
        rows = _rows(api)
        now = api.identity(request)  # current after a blocking wait
        for _, name in parsed:
            require(now, now.authorizer.intention_read(name))
        return {raw: _readable(now, request, list(match(rows, by[0], name))) for raw, name in parsed}

    return await api.read(request, query, [entry_watch_key(KIND)], build)


async def check(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/intentions/check?source=&destination=: {"Allowed": bool} with the default policy."""
    source_type = query.get("source-type", "consul")
    if source_type != "consul":
        raise bad_request(f"Invalid source-type {source_type[:40]!r}: only \"consul\" is supported")
    source_name, destination = _pair(query)
    identity = api.identity(request)
    require(identity, identity.authorizer.service_read(destination))
    await api.agent.store.read_barrier(query.consistency)
    decision = compiled_intentions(api).decide(source_name, destination, default_allow(api))
    return api.json({"Allowed": decision.allowed}, query)


async def by_id_get(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/intentions/:id: one intention by its (legacy) ID, 404 when none has it."""
    ixn_id = _check_id(arg)
    api.identity(request)  # an unknown token is refused before anything is looked up
    index = await api.block([entry_watch_key(KIND)], query, request)
    found = _find_id(api, ixn_id)
    if found is None:
        raise HTTPError(404, _NOT_FOUND)
    _may_read(api, request, found[0].name)
    return api.json(found[2], query, extra=api.meta_headers(index, query)[1:])


async def by_id_put(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/connect/intentions/:id: replace a legacy intention (its destination cannot change)."""
    ixn_id = _check_id(arg)
    api.identity(request)
    body = _fold(body_json(request))
    found = _find_id(api, ixn_id)
    if found is None:
        raise HTTPError(404, f"Cannot modify non-existent intention: '{ixn_id}'")
    row, old, legacy = found
    _may_write(api, request, row.name)
    destination = service_name(_str(body, "DestinationName") or row.name, "DestinationName")
    _may_write(api, request, destination)  # a move needs write on both ends (then refused below, as Consul)
    if destination != row.name:
        raise bad_request("Cannot modify DestinationNS or DestinationName for an intention once it exists.")
    source_name = service_name(_str(body, "SourceName") or str(old.get("Name", "")), "SourceName")
    source = _source(body, source_name, legacy=True)
    source.update(LegacyID=ixn_id, LegacyUpdateTime=_now(),
                  LegacyCreateTime=old.get("LegacyCreateTime") or legacy.get("CreatedAt") or _now())
    meta = _meta(body)
    if meta:
        source["LegacyMeta"] = meta
    old_name = str(old.get("Name", ""))

    def change(entry: dict[str, Any] | None) -> dict[str, Any]:
        current = find_source(entry, old_name)
        if entry is None or current is None:
            raise HTTPError(404, f"Cannot modify non-existent intention: '{ixn_id}'")
        if source_name != old_name:
            if find_source(entry, source_name) is not None:
                raise bad_request(f"duplicate intention found: {source_name} => {destination}")
            remaining = remove_source(entry, old_name)
            return upsert_source(remaining, destination, source)
        return upsert_source(entry, destination, source)

    await modify(api, destination, change, request)
    return api.json({"ID": ixn_id}, query)


async def by_id_delete(api: API, request: Request, query: Query, arg: str) -> Response:
    """DELETE /v1/connect/intentions/:id: true; 404 when no intention has that ID."""
    ixn_id = _check_id(arg)
    api.identity(request)
    found = _find_id(api, ixn_id)
    if found is None:
        raise HTTPError(404, f"Cannot delete non-existent intention: '{ixn_id}'")
    row, source, _ = found
    _may_write(api, request, row.name)
    await modify(api, row.name, _remove(str(source.get("Name", ""))), request)
    return _bool()


__all__ = ["INTENTION_SCHEMA", "by_id_delete", "by_id_get", "by_id_put", "check", "create",
           "exact_delete", "exact_get", "exact_put", "list_intentions", "match_intentions", "modify",
           "service_name"]
