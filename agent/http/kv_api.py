"""`/v1/kv/:key`: GET (blocking; ?recurse ?keys ?separator ?raw), PUT (?cas ?flags), DELETE (?recurse ?cas)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..catalog import commands
from .messages import Request, Response
from .query import Query, bad_request, parse_uint
from .render import dumps, kv_json

if TYPE_CHECKING:
    from .api import API

_TRUE = b"true"
_FALSE = b"false"


def _bool_response(api: API, ok: bool) -> Response:
    return 200, [(b"content-type", b"application/json")], _TRUE if ok else _FALSE


async def get(api: API, request: Request, query: Query, key: str) -> Response:
    """Read one key, a subtree (?recurse) or key names (?keys, ?separator); 404 with an index when empty."""
    catalog = api.agent.store.catalog
    if query.has("keys"):
        separator = query.get("separator")
        index = await api.block([f"kvprefix:{key}"], query, request)
        keys = catalog.kv_keys(key, separator)
        headers = api.meta_headers(index, query)
        # Consul answers the root with an empty list but any other empty prefix with 404.
        if not keys and key:
            return 404, headers[1:], b""
        return 200, headers, dumps(keys, query.pretty)
    if query.has("recurse"):
        index = await api.block([f"kvprefix:{key}"], query, request)
        entries = catalog.kv_list(key)
        headers = api.meta_headers(index, query)
        if not entries:
            return 404, headers[1:], b""
        return 200, headers, dumps([kv_json(e) for e in entries], query.pretty)
    index = await api.block([f"kv:{key}"], query, request)
    entry = catalog.kv_get(key)
    headers = api.meta_headers(index, query)
    if entry is None:
        return 404, headers[1:], b""
    if query.has("raw"):
        # Raw values are user bytes: never let a browser sniff them into HTML.
        headers[0] = (b"content-type", b"text/plain; charset=utf-8")
        headers.append((b"x-content-type-options", b"nosniff"))
        return 200, headers, entry.value
    return 200, headers, dumps([kv_json(entry)], query.pretty)


def _no_sessions(query: Query) -> None:
    if query.has("acquire") or query.has("release"):
        raise bad_request("Sessions are not supported by this agent yet (?acquire / ?release)")


async def put(api: API, request: Request, query: Query, key: str) -> Response:
    """Write a key; `?cas=0` creates only when absent, `?cas=N` writes only at ModifyIndex N."""
    if not key:
        raise bad_request("Missing key name")
    _no_sessions(query)
    flags = parse_uint("flags", query.get("flags")) if query.has("flags") else 0
    if query.has("cas"):
        cas = parse_uint("cas", query.get("cas"))
        ok = await api.agent.store.apply(commands.kv_cas(key, request.body, cas, flags))
    else:
        ok = await api.agent.store.apply(commands.kv_set(key, request.body, flags))
    return _bool_response(api, bool(ok))


async def delete(api: API, request: Request, query: Query, key: str) -> Response:
    """Delete a key, a subtree (?recurse), or a key at a ModifyIndex (?cas)."""
    store = api.agent.store
    if query.has("recurse"):
        await store.apply(commands.kv_delete_tree(key))
        return _bool_response(api, True)
    if not key:
        raise bad_request("Missing key name")
    if query.has("cas"):
        cas = parse_uint("cas", query.get("cas"))
        if store.catalog.kv_get(key) is None:
            # Consul: a CAS delete of a key that is already gone succeeds (nothing to protect).
            return _bool_response(api, True)
        return _bool_response(api, bool(await store.apply(commands.kv_delete_cas(key, cas))))
    await store.apply(commands.kv_delete(key))
    return _bool_response(api, True)


__all__ = ["delete", "get", "put"]
