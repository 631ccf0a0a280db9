"""The `/v1` HTTP API: routing, blocking reads with a response cache, and error mapping.

Endpoint bodies live in the area modules (catalog_api, health_api, kv_api, agent_api, operator_api); each is an
`async (api, request, query, arg) -> Response` registered in ROUTES below.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..acl.identity import ACLIdentity
from . import (
    acl_api,
    acl_policy_api,
    agent_api,
    agent_token_api,
    catalog_api,
    catalog_write_api,
    config_api,
    connect_api,
    discovery_chain_api,
    event_api,
    health_api,
    intentions_api,
    kv_api,
    monitor_api,
    operator_api,
    proxy_api,
    session_api,
    txn_api,
)
from .acl_gate import FILTERED_HEADER, request_token
from .errors import error_response
from .filter import Schema, compile_filter
from .messages import Headers, Request, Response, simple_response
from .query import HTTPError, Query, parse_query
from .render import dumps
from .view import AgentView

log = logging.getLogger("meshagent.http")

Endpoint = Callable[["API", Request, Query, str], Awaitable[Response]]

CT_JSON = (b"content-type", b"application/json")
_KNOWN_LEADER = (b"x-consul-knownleader", b"true")
_LAST_CONTACT = (b"x-consul-lastcontact", b"0")
_CACHE_SIZE = 512
_CACHE_BYTES = 64 * 1024 * 1024
_CACHE_MAX_BODY = 8 * 1024 * 1024
_BLOCKING_PARAMS = re.compile(r"(?:^|(?<=&))(?:index|wait)=[^&]*&?")
_TOKEN_PARAM = re.compile(r"(?:^|(?<=&))token=[^&]*&?")
_NOT_FOUND = simple_response(404, "404 page not found")
_FILTERED = -1  # a cached body's mark: ACLs left something out (the response carries FILTERED_HEADER)

# path (exact, or prefix ending in "/") -> {method: endpoint}. A prefix route gets the rest as `arg`.
ROUTES: dict[str, dict[str, Endpoint]] = {
    "/v1/agent/self": {"GET": agent_api.self_},
    "/v1/agent/members": {"GET": agent_api.members},
    "/v1/agent/metrics": {"GET": agent_api.metrics},
    "/v1/agent/monitor": {"GET": monitor_api.monitor},
    "/v1/agent/services": {"GET": agent_api.services},
    "/v1/agent/service/register": {"PUT": agent_api.service_register},
    "/v1/agent/service/deregister/": {"PUT": agent_api.service_deregister},
    "/v1/agent/service/maintenance/": {"PUT": agent_api.service_maintenance},
    "/v1/agent/service/": {"GET": agent_api.service},
    "/v1/agent/checks": {"GET": agent_api.checks},
    "/v1/agent/check/register": {"PUT": agent_api.check_register},
    "/v1/agent/check/deregister/": {"PUT": agent_api.check_deregister},
    "/v1/agent/check/pass/": {"PUT": agent_api.check_pass},
    "/v1/agent/check/warn/": {"PUT": agent_api.check_warn},
    "/v1/agent/check/fail/": {"PUT": agent_api.check_fail},
    "/v1/agent/check/update/": {"PUT": agent_api.check_update},
    "/v1/agent/health/service/name/": {"GET": agent_api.health_by_name},
    "/v1/agent/health/service/id/": {"GET": agent_api.health_by_id},
    "/v1/agent/reload": {"PUT": agent_api.reload},
    "/v1/agent/maintenance": {"PUT": agent_api.maintenance},
    "/v1/agent/leave": {"PUT": agent_api.leave},
    "/v1/agent/join/": {"PUT": agent_api.join},
    "/v1/agent/force-leave/": {"PUT": agent_api.force_leave},
    "/v1/agent/token/": {"PUT": agent_token_api.set_token},
    "/v1/event/fire/": {"PUT": event_api.fire},
    "/v1/event/list": {"GET": event_api.list_events},
    "/v1/catalog/services": {"GET": catalog_api.services},
    "/v1/catalog/service/": {"GET": catalog_api.service},
    "/v1/catalog/nodes": {"GET": catalog_api.nodes},
    "/v1/catalog/node/": {"GET": catalog_api.node},
    "/v1/catalog/connect/": {"GET": catalog_api.connect},
    "/v1/catalog/datacenters": {"GET": catalog_api.datacenters},
    "/v1/catalog/register": {"PUT": catalog_write_api.register},
    "/v1/catalog/deregister": {"PUT": catalog_write_api.deregister},
    "/v1/health/service/": {"GET": health_api.service},
    "/v1/health/checks/": {"GET": health_api.checks},
    "/v1/health/node/": {"GET": health_api.node},
    "/v1/health/state/": {"GET": health_api.state},
    "/v1/health/connect/": {"GET": health_api.connect},
    "/v1/kv/": {"GET": kv_api.get, "PUT": kv_api.put, "DELETE": kv_api.delete},
    "/v1/txn": {"PUT": txn_api.txn},
    **session_api.ROUTES,  # /v1/session/create, destroy/, renew/, info/, node/, list
    "/v1/status/leader": {"GET": operator_api.status_leader},
    "/v1/status/peers": {"GET": operator_api.status_peers},
    "/v1/operator/raft/configuration": {"GET": operator_api.raft_configuration},
    "/v1/operator/raft/peer": {"DELETE": operator_api.raft_remove_peer},
    "/v1/operator/keyring": {"GET": operator_api.keyring, "POST": operator_api.keyring,
                             "PUT": operator_api.keyring, "DELETE": operator_api.keyring},
    "/v1/snapshot": {"GET": operator_api.snapshot_save, "PUT": operator_api.snapshot_restore},
    "/v1/agent/connect/ca/roots": {"GET": connect_api.agent_roots},
    "/v1/agent/connect/ca/leaf/": {"GET": connect_api.leaf},
    "/v1/agent/connect/authorize": {"POST": connect_api.authorize},
    "/v1/agent/connect/proxy/": {"GET": proxy_api.proxy_config},
    "/v1/connect/ca/roots": {"GET": connect_api.roots},
    "/v1/connect/ca/configuration": {"GET": connect_api.ca_configuration_get,
                                     "PUT": connect_api.ca_configuration_put},
    "/v1/config": {"PUT": config_api.put},
    "/v1/config/": {"GET": config_api.get, "DELETE": config_api.delete},
    "/v1/discovery-chain/": {"GET": discovery_chain_api.read, "POST": discovery_chain_api.read},
    "/v1/connect/intentions": {"GET": intentions_api.list_intentions, "POST": intentions_api.create},
    "/v1/connect/intentions/exact": {"GET": intentions_api.exact_get, "PUT": intentions_api.exact_put,
                                     "DELETE": intentions_api.exact_delete},
    "/v1/connect/intentions/match": {"GET": intentions_api.match_intentions},
    "/v1/connect/intentions/check": {"GET": intentions_api.check},
    "/v1/connect/intentions/": {"GET": intentions_api.by_id_get, "PUT": intentions_api.by_id_put,
                                "DELETE": intentions_api.by_id_delete},
    "/v1/acl/bootstrap": {"PUT": acl_api.bootstrap, "POST": acl_api.bootstrap},
    "/v1/acl/token": {"PUT": acl_api.token_create},
    "/v1/acl/token/self": {"GET": acl_api.token_self},
    "/v1/acl/token/": {"GET": acl_api.token_item, "PUT": acl_api.token_item, "DELETE": acl_api.token_item},
    "/v1/acl/tokens": {"GET": acl_api.token_list},
    "/v1/acl/policy": {"PUT": acl_policy_api.policy_create},
    "/v1/acl/policy/name/": {"GET": acl_policy_api.policy_by_name},
    "/v1/acl/policy/": {m: acl_policy_api.policy_item for m in ("GET", "PUT", "DELETE")},
    "/v1/acl/policies": {"GET": acl_policy_api.policy_list},
    "/v1/acl/role": {"PUT": acl_policy_api.role_create},
    "/v1/acl/role/name/": {"GET": acl_policy_api.role_by_name},
    "/v1/acl/role/": {m: acl_policy_api.role_item for m in ("GET", "PUT", "DELETE")},
    "/v1/acl/roles": {"GET": acl_policy_api.role_list},
    "/v1/acl/templated-policies": {"GET": acl_policy_api.templated_policies},
    "/v1/acl/templated-policy/name/": {"GET": acl_policy_api.templated_policy},
}
# Longest prefix first so /v1/agent/service/register beats /v1/agent/service/.
_PREFIXES = sorted((p for p in ROUTES if p.endswith("/")), key=len, reverse=True)


class API:
    """The `/v1` handler for HTTPServer: `await api(request) -> (status, headers, body)`."""

    def __init__(self, agent: AgentView) -> None:
        self.agent = agent
        self.default_wait = float(agent.config.default_query_time or 300.0)
        self.max_wait = float(agent.config.max_query_time or 600.0)
        # (path, raw query) -> (index, status, body): a repeated read at an unchanged index re-renders nothing.
        self._cache: dict[tuple[str, str], tuple[int, int, bytes]] = {}
        self.cache_hits = 0
        self._cache_bytes = 0
        self._filters: dict[tuple[str, int], Callable[[Any], bool]] = {}
        # Who restarts a session's TTL timer at the leader (set by the agent; None: renew answers from the catalog).
        self.sessions: session_api.Renewer | None = None

    async def __call__(self, request: Request) -> Response:
        """Route one request; every failure becomes a one-line error response."""
        path = request.path
        routes = ROUTES.get(path)
        arg = ""
        if routes is None:
            for prefix in _PREFIXES:
                if path.startswith(prefix):
                    routes, arg = ROUTES[prefix], path[len(prefix):]
                    break
            else:
                return _NOT_FOUND
        method = "GET" if request.method == "HEAD" else request.method
        endpoint = routes.get(method)
        if endpoint is None:
            allow = ", ".join(sorted(routes)).encode()
            return simple_response(405, f"method {request.method[:20]} not allowed", [(b"allow", allow)])
        try:
            query = parse_query(request.query, self.default_wait, self.max_wait)
            dc = query.get("dc")
            if dc and dc != self.agent.datacenter:
                raise HTTPError(500, "No path to datacenter")
            response = await endpoint(self, request, query, arg)
            if request.acl is not None and request.acl.enabled and FILTERED_HEADER in response[1]:
                response = self._mask_filtered(request, response)
            return response
        except Exception as exc:
            answer = error_response(exc)
            if answer is None:
                raise  # the server logs it and answers a bare 500
            return answer

    def _mask_filtered(self, request: Request, response: Response) -> Response:
        """Consul's maskResultsFilteredByACLs: a request with no token at all (none presented, no default token)
        is not told that something was hidden from it, so that it cannot probe for what exists."""
        if request_token(request) or self.agent.acl.tokens.default:
            return response
        status, headers, body = response
        return status, [h for h in headers if h != FILTERED_HEADER], body

    # ------------------------------------------------------------------ helpers for endpoints

    def identity(self, request: Request) -> ACLIdentity:
        """The request's ACL identity (its token resolved once; ALLOW_ALL with ACLs off). Raises ACLNotFound."""
        identity: ACLIdentity | None = request.acl
        if identity is None:
            identity = request.acl = self.agent.acl.resolve(request_token(request))
        return identity

    def recheck(self, request: Request) -> ACLIdentity:
        """The request's identity resolved again, after a wait: a token deleted, expired or narrowed meanwhile gets
        no answer built with its old rights (memoised per ACL index, so cheap). Raises ACLNotFound (403)."""
        if self.agent.acl.enabled:
            request.acl = None
        return self.identity(request)

    def predicate(self, text: str, schema: Schema) -> Callable[[Any], bool]:
        """A compiled `?filter=` (memoised: dashboards repeat the same few filters)."""
        key = (text, id(schema))
        predicate = self._filters.get(key)
        if predicate is None:
            predicate = compile_filter(text, schema)
            if len(self._filters) >= _CACHE_SIZE:
                self._filters.clear()
            self._filters[key] = predicate
        return predicate

    def json(self, data: Any, query: Query, status: int = 200, extra: Headers | None = None) -> Response:
        """A JSON response (compact, or indented with ?pretty)."""
        headers: Headers = [CT_JSON]
        if extra:
            headers.extend(extra)
        return status, headers, dumps(data, query.pretty)

    def meta_headers(self, index: int, query: Query) -> Headers:
        """Consul's query-meta headers for a catalog read at `index`."""
        known_leader, last_contact = self.agent.leader_status()
        if known_leader and not last_contact:
            leader_headers = [_KNOWN_LEADER, _LAST_CONTACT]
        else:
            leader_headers = [(b"x-consul-knownleader", b"true" if known_leader else b"false"),
                              (b"x-consul-lastcontact", b"%d" % last_contact)]
        return [CT_JSON, (b"x-consul-effective-consistency", query.consistency),
                (b"x-consul-index", b"%d" % index), *leader_headers]

    async def block(self, keys: list[str], query: Query, request: Request | None = None) -> int:
        """Wait for `?index=` (if given) and return the query's current X-Consul-Index. A client that
        hangs up ends the wait at once (as Go's request context does in Consul)."""
        store = self.agent.store
        await store.read_barrier(query.consistency)
        if query.index > 0:
            if request is not None and request.parking is not None and request.sock is not None:
                with request.parking.watch(request.sock):
                    await store.block(keys, query.index, query.wait)
            else:
                await store.block(keys, query.index, query.wait)
            if request is not None:
                self.recheck(request)
        index: int = store.index_for(keys)
        return index

    async def read(self, request: Request, query: Query, keys: list[str],
                   build: Callable[[], Any], schema: Schema | None = None) -> Response:
        """A blocking catalog/health read: wait, then answer from cache or build + filter + render."""
        # A bad filter is a 400 now, not after a blocking wait.
        predicate = self.predicate(query.filter, schema) if query.filter and schema is not None else None
        index = await self.block(keys, query, request)
        raw_query = request.query
        if "index=" in raw_query or "wait=" in raw_query:
            # Blocking loops send a new index every time; the body does not depend on it.
            raw_query = _BLOCKING_PARAMS.sub("", raw_query)
        if "token=" in raw_query:
            # No secret in a cache key (the dict would hold it): with ACLs on the identity's key stands for
            # it; with ACLs off the body does not depend on it.
            raw_query = _TOKEN_PARAM.sub("", raw_query)
        # With ACLs on, a body depends on who asks (lists are filtered): the identity's key joins the cache
        # key, and it is resolved here so that `build` (skipped on a hit) is never where it first happens.
        identity = self.identity(request) if self.agent.acl.enabled else None
        cache_key = (request.path, raw_query if identity is None else f"{raw_query}#{identity.cache_key}")
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] == index:
            self.cache_hits += 1
            headers = self.meta_headers(index, query)
            if hit[1] == _FILTERED:
                headers.append(FILTERED_HEADER)
            return 200, headers, hit[2]
        data = build()
        if predicate is not None:
            data = apply_filter(data, predicate)
        body = dumps(data, query.pretty)
        headers = self.meta_headers(index, query)
        if request.acl_filtered:
            headers.append(FILTERED_HEADER)
        self._remember(cache_key, index, body, _FILTERED if request.acl_filtered else 200)
        return 200, headers, body

    def _remember(self, key: tuple[str, str], index: int, body: bytes, mark: int = 200) -> None:
        """Cache a rendered body, bounded by entry count and bytes (oldest half dropped when full)."""
        if len(body) > _CACHE_MAX_BODY:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= len(old[2])
        if len(self._cache) >= _CACHE_SIZE or self._cache_bytes + len(body) > _CACHE_BYTES:
            for stale in list(self._cache)[: len(self._cache) // 2 + 1]:
                self._cache_bytes -= len(self._cache.pop(stale)[2])
        self._cache[key] = (index, mark, body)
        self._cache_bytes += len(body)


def apply_filter(data: Any, predicate: Callable[[Any], bool]) -> Any:
    """Filter a list (or the values of a map) with a compiled `?filter=` predicate."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if predicate(v)}
    if isinstance(data, Iterable):
        return [item for item in data if predicate(item)]
    return data
