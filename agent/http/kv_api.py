"""`/v1/kv/:key`: GET (blocking; ?recurse ?keys ?separator ?raw), PUT (?cas ?flags ?acquire ?release),
DELETE (?recurse ?cas)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..acl.identity import ALLOW_ALL, ACLIdentity, require
from ..catalog import commands
from .acl_gate import FILTERED_HEADER, acl_identity, acl_keep, write_token
from .messages import Request, Response
from .query import Query, bad_request, parse_uint
from .render import dumps, kv_json

if TYPE_CHECKING:
    from ..acl.authorizer import Authorizer
    from .api import API

_TRUE = b"true"
_FALSE = b"false"


def _bool_response(api: API, ok: bool) -> Response:
    return 200, [(b"content-type", b"application/json")], _TRUE if ok else _FALSE


async def get(api: API, request: Request, query: Query, key: str) -> Response:
    """Read one key, a subtree (?recurse) or key names (?keys, ?separator); 404 with an index when empty.
    ACLs: key:read on the key; in a subtree or key names, entries without key:read are left out
    (X-Consul-Results-Filtered-By-ACLs), and key:list on the prefix is required only with
    acl.enable_key_list_policy, as Consul's KVS.List/ListKeys."""
    catalog = api.agent.store.catalog
    listing = query.has("keys") or query.has("recurse")
    _read_rights(api, request, key, listing)  # before any wait: an unknown token waits for nothing
    if query.has("keys"):
        separator = query.get("separator")
        index = await api.block([f"kvprefix:{key}"], query, request)
        identity, authz = _read_rights(api, request, key, listing)  # the token's rights after the wait
        keys: list[Any] = catalog.kv_keys(key, separator)
        keys = acl_keep(request, identity, keys, lambda k: authz.key_read(k).allowed)
        headers = _filtered(request, api.meta_headers(index, query))
        # Consul answers the root with an empty list but any other empty prefix with 404.
        if not keys and key:
            return 404, headers[1:], b""
        return 200, headers, dumps(keys, query.pretty)
    if query.has("recurse"):
        index = await api.block([f"kvprefix:{key}"], query, request)
        identity, authz = _read_rights(api, request, key, listing)
        entries: list[Any] = catalog.kv_list(key)
        entries = acl_keep(request, identity, entries, lambda e: authz.key_read(e.key).allowed)
        headers = _filtered(request, api.meta_headers(index, query))
        if not entries:
            return 404, headers[1:], b""
        return 200, headers, dumps([kv_json(e) for e in entries], query.pretty)
    index = await api.block([f"kv:{key}"], query, request)
    _read_rights(api, request, key, listing)
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


def _read_rights(api: API, request: Request, key: str, listing: bool) -> tuple[ACLIdentity | None, Authorizer]:
    """key:read on the key (key:list on the prefix for a listing, only with acl.enable_key_list_policy, as
    Consul); the request's identity (None with ACLs off) and its authorizer, as current now."""
    identity = acl_identity(api, request)
    authz = (identity or ALLOW_ALL).authorizer
    if identity is not None:
        if not listing:
            require(identity, authz.key_read(key))
        elif api.agent.config.acl.enable_key_list_policy:  # Consul's default: off
            require(identity, authz.key_list(key))
    return identity, authz


def _filtered(request: Request, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if request.acl_filtered:
        headers.append(FILTERED_HEADER)
    return headers


def _write_rights(api: API, request: Request, key: str, prefix: bool = False) -> str | None:
    """Check key:write (on every key under `key` for a tree delete) and return the secret the write carries
    to the servers, which re-check it; None with ACLs off (the write is the agent's own, as before)."""
    identity = acl_identity(api, request)
    if identity is None:
        return None
    authz = identity.authorizer
    require(identity, authz.key_write_prefix(key) if prefix else authz.key_write(key))
    return write_token(request, api.agent.acl.tokens.default)


MAX_SESSION_ID = 64  # a UUID is 36 characters


def _lock_session(query: Query) -> tuple[str, str] | None:
    """`?acquire=<session>` ("lock") or `?release=<session>` ("unlock"), or None for a plain write."""
    for param, verb in (("acquire", "lock"), ("release", "unlock")):
        if query.has(param):
            session = query.get(param)
            if not session or len(session) > MAX_SESSION_ID:
                raise bad_request(f"Invalid ?{param}: a session ID of at most {MAX_SESSION_ID} characters "
                                  "is required")
            return verb, session
    return None


def _session_rights(api: API, request: Request, session: str) -> None:
    """?acquire/?release also need session:write on the session's node (an unknown session: the FSM refuses)."""
    identity = acl_identity(api, request)
    row = api.agent.store.catalog.sessions.get(session)
    if identity is not None and row is not None:
        require(identity, identity.authorizer.session_write(row.node))


async def put(api: API, request: Request, query: Query, key: str) -> Response:
    """Write a key; `?cas=0` creates only when absent, `?cas=N` writes only at ModifyIndex N; `?acquire=<session>`
    writes and locks it for the session, `?release=<session>` writes and unlocks it (true/false, as Consul)."""
    if not key:
        raise bad_request("Missing key name")
    lock = _lock_session(query)
    token = _write_rights(api, request, key)
    flags = parse_uint("flags", query.get("flags")) if query.has("flags") else 0
    if lock is not None:  # Consul: ?acquire / ?release win over ?cas
        verb, session = lock
        _session_rights(api, request, session)
        command = (commands.kv_lock(key, request.body, session, time.time(), flags) if verb == "lock"
                   else commands.kv_unlock(key, request.body, session, flags))
        ok = await api.agent.store.apply(command, token=token)
    elif query.has("cas"):
        cas = parse_uint("cas", query.get("cas"))
        ok = await api.agent.store.apply(commands.kv_cas(key, request.body, cas, flags), token=token)
    else:
        ok = await api.agent.store.apply(commands.kv_set(key, request.body, flags), token=token)
    return _bool_response(api, bool(ok))


async def delete(api: API, request: Request, query: Query, key: str) -> Response:
    """Delete a key, a subtree (?recurse), or a key at a ModifyIndex (?cas)."""
    store = api.agent.store
    if query.has("recurse"):
        token = _write_rights(api, request, key, prefix=True)
        await store.apply(commands.kv_delete_tree(key), token=token)
        return _bool_response(api, True)
    if not key:
        raise bad_request("Missing key name")
    token = _write_rights(api, request, key)
    if query.has("cas"):
        cas = parse_uint("cas", query.get("cas"))
        if store.catalog.kv_get(key) is None:
            # Consul: a CAS delete of a key that is already gone succeeds (nothing to protect).
            return _bool_response(api, True)
        return _bool_response(api, bool(await store.apply(commands.kv_delete_cas(key, cas), token=token)))
    await store.apply(commands.kv_delete(key), token=token)
    return _bool_response(api, True)


__all__ = ["delete", "get", "put"]
