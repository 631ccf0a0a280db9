"""`/v1/agent/*`: this agent's own services, checks, maintenance, members (`/v1/status/*` is in operator_api)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import meshagent
import trio

from ...proxy.metrics import merge as merge_proxy_metrics
from ...proxy.metrics import render_prometheus
from ..catalog import MAINTENANCE, PASSING, WARNING
from ..config.acl_settings import redacted
from ..config.errors import ConfigErrors
from ..telemetry.scrape import scrape_json, scrape_prometheus
from .acl_gate import FILTERED_HEADER, Visibility, acl_identity, acl_keep, request_token, require_acl
from .agent_acl import vet_check_target, vet_check_update, vet_scripts, vet_service_register, vet_service_update
from .catalog_api import required
from .errors import config_errors_text
from .filter import AGENT_SERVICE_SCHEMA, CHECK_SCHEMA
from .messages import Request, Response
from .query import HTTPError, Query, bad_request, parse_bool
from .render import (
    agent_self_json,
    agent_service_json,
    local_check_json,
    local_health_json,
    member_json,
)

if TYPE_CHECKING:
    from ..config.types import ServiceDefinition
    from .api import API
    from .view import GossipView

PROMETHEUS_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_HEALTH_CODES = {PASSING: 200, WARNING: 429}  # anything else (critical, maintenance) is 503


def body_json(request: Request) -> Any:
    """The request body as JSON (an empty body is an empty object)."""
    if not request.body.strip():
        return {}
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Request decode failed: {str(exc)[:120]}") from None


def _empty() -> Response:
    return 200, [], b""


def advertise_address(api: API) -> str:
    """The LAN address this agent advertises (no port)."""
    agent = api.agent
    config = agent.config
    return agent.advertise_addr or config.advertise_addr or config.bind_addr


def gossip_of(api: API) -> GossipView:
    """The gossip pool, or a 500 where none runs."""
    gossip = api.agent.gossip
    if gossip is None:
        raise HTTPError(500, "gossip is not running on this agent")
    return gossip


def _filtered_json(api: API, request: Request, data: Any, query: Query) -> Response:
    """A JSON answer carrying X-Consul-Results-Filtered-By-ACLs when ACLs left something out."""
    return api.json(data, query, extra=[FILTERED_HEADER] if request.acl_filtered else None)


# ---------------------------------------------------------------------- self, members


async def self_(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/self: Config, DebugConfig, Coord, Member, Meta (agent:read on this node; never a token)."""
    agent = api.agent
    require_acl(api, request, lambda a: a.agent_read(agent.node_name))
    members = agent.members()
    mine = next((m for m in members if m.name == agent.node_name), members[0] if members else None)
    member = member_json(mine) if mine is not None else {}
    stats: dict[str, dict[str, str]] = {}
    if agent.server is not None:
        stats["raft"] = agent.server.stats()
    if agent.gossip is not None:
        stats["serf_lan"] = agent.gossip.stats_view()
    data = agent_self_json(agent, member, stats, meshagent.__version__)
    data["DebugConfig"].update(redacted(agent.config.acl))  # ACL settings; every token set shows as "hidden"
    return api.json(data, query)


async def members(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/members (?wan gives the same single node until WAN gossip lands); members without
    node:read left out."""
    found = api.agent.members()
    identity = acl_identity(api, request)
    if identity is not None:
        see = Visibility(identity)
        found = acl_keep(request, identity, found, lambda m: see.node(m.name))
    return _filtered_json(api, request, [member_json(m) for m in found], query)


# ---------------------------------------------------------------------- services


def _services_json(api: API, request: Request) -> dict[str, dict[str, Any]]:
    items = sorted(api.agent.local.services().items())
    identity = acl_identity(api, request)
    if identity is not None:
        see = Visibility(identity)
        items = acl_keep(request, identity, items, lambda item: see.service(item[1].name))
    return {sid: agent_service_json(defn, api.agent.datacenter) for sid, defn in items}


async def services(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/services (?filter); services without service:read left out."""
    predicate = api.predicate(query.filter, AGENT_SERVICE_SCHEMA) if query.filter else None
    data = _services_json(api, request)
    if predicate is not None:
        data = {k: v for k, v in data.items() if predicate(v)}
    return _filtered_json(api, request, data, query)


async def service(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/service/:id, with Consul's ContentHash (and X-Consul-ContentHash)."""
    sid = required(arg, "service ID")
    acl_identity(api, request)  # the token first: an invalid one is refused whether or not the ID exists
    defn = api.agent.local.services().get(sid)
    if defn is None:
        raise HTTPError(404, f"unknown service ID: {sid}")
    require_acl(api, request, lambda a: a.service_read(defn.name))
    data = agent_service_json(defn, api.agent.datacenter)
    digest = hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=8).hexdigest()
    data["ContentHash"] = digest
    return api.json(data, query, extra=[(b"x-consul-contenthash", digest.encode())])


async def service_register(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/service/register (CamelCase or snake_case body; ?replace-existing-checks)."""
    from ..config.loader import parse_service
    from ..config.types import Source

    body = body_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: body must be a JSON object")
    replace = query.flag("replace-existing-checks")
    defn = parse_service(body, Source("<api>"))
    vet_service_register(api, request, defn)
    # The registering secret goes with the service: anti-entropy writes it (and its checks) as that token.
    await api.agent.local.register_service(defn, replace_existing_checks=replace,
                                           token=request_token(request) or None)
    return _empty()


async def service_deregister(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/service/deregister/:id (no-op when unknown; service:write on it)."""
    sid = required(arg, "service ID")
    vet_service_update(api, request, sid)
    await api.agent.local.deregister_service(sid)
    return _empty()


def _enable_reason(query: Query) -> tuple[bool, str]:
    if not query.has("enable"):
        raise bad_request("Missing value for enable")
    value = query.get("enable")
    try:
        return parse_bool("enable", value), query.get("reason")
    except HTTPError:
        raise bad_request(f"Invalid value for enable: {value[:40]!r}") from None


async def service_maintenance(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/service/maintenance/:id?enable=true|false&reason=..."""
    sid = required(arg, "service ID")
    enable, reason = _enable_reason(query)
    vet_service_update(api, request, sid)
    await api.agent.local.set_service_maintenance(sid, enable, reason)
    return _empty()


async def maintenance(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/maintenance?enable=true|false&reason=... (node maintenance)."""
    enable, reason = _enable_reason(query)
    require_acl(api, request, lambda a: a.node_write(api.agent.node_name))
    await api.agent.local.set_node_maintenance(enable, reason)
    return _empty()


# ---------------------------------------------------------------------- checks


def _checks_json(api: API, request: Request) -> dict[str, dict[str, Any]]:
    local = api.agent.local
    svcs = local.services()
    node = api.agent.node_name
    out = {}
    items = sorted(local.checks().items())
    identity = acl_identity(api, request)
    if identity is not None:
        # Service checks need service:read on their service, node checks node:read on this node.
        see = Visibility(identity)
        items = acl_keep(request, identity, items,
                         lambda item: see.service(item[1].service_name) if item[1].service_id else see.node(node))
    for cid, check in items:
        svc = svcs.get(check.service_id)
        out[cid] = local_check_json(check, node, list(svc.tags) if svc is not None else [])
    return out


async def checks(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/checks (?filter)."""
    predicate = api.predicate(query.filter, CHECK_SCHEMA) if query.filter else None
    data = _checks_json(api, request)
    if predicate is not None:
        data = {k: v for k, v in data.items() if predicate(v)}
    return _filtered_json(api, request, data, query)


async def check_register(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/register."""
    from ..config.loader import parse_check
    from ..config.types import Source

    body = body_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: body must be a JSON object")
    cdef = parse_check(body, Source("<api>"))
    identity = acl_identity(api, request)
    if identity is not None:
        # The check's own target, and the one of a check it replaces by ID (Consul's vetCheckRegister).
        vet_check_target(api, identity, cdef.service_id, "")
        vet_check_update(api, request, cdef.id)
        vet_scripts(api, identity, [cdef])
    await api.agent.local.register_check(cdef, token=request_token(request) or None)
    return _empty()


async def check_deregister(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/deregister/:id."""
    cid = required(arg, "check ID")
    vet_check_update(api, request, cid)
    await api.agent.local.deregister_check(cid)
    return _empty()


async def _ttl(api: API, request: Request, arg: str, status: str, output: str) -> Response:
    cid = required(arg, "check ID")
    vet_check_update(api, request, cid)
    await api.agent.local.update_ttl(cid, status, output)
    return _empty()


async def check_pass(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/pass/:id?note=..."""
    return await _ttl(api, request, arg, "passing", query.get("note"))


async def check_warn(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/warn/:id?note=..."""
    return await _ttl(api, request, arg, "warning", query.get("note"))


async def check_fail(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/fail/:id?note=..."""
    return await _ttl(api, request, arg, "critical", query.get("note"))


async def check_update(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/check/update/:id with body {"Status": ..., "Output": ...}."""
    body = body_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: body must be a JSON object")
    status = body.get("Status", body.get("status", ""))
    output = body.get("Output", body.get("output", ""))
    if status not in ("passing", "warning", "critical"):
        raise bad_request(f"Invalid check status: {str(status)[:40]!r}")
    if not isinstance(output, str):
        raise bad_request("Invalid check output: must be a string")
    return await _ttl(api, request, arg, status, output)


# ---------------------------------------------------------------------- local health


def _local_health(api: API, sid: str, defn: ServiceDefinition) -> dict[str, Any]:
    """{AggregatedStatus, Service, Checks} for one local service; node-level checks count too."""
    checks = [c for cid, c in sorted(api.agent.local.checks().items()) if c.service_id == sid or not c.service_id]
    return local_health_json(defn, checks, api.agent.node_name, api.agent.datacenter)


def _health_response(api: API, query: Query, status: str, data: Any) -> Response:
    code = _HEALTH_CODES.get(status, 503)
    if query.get("format") == "text":
        return code, [(b"content-type", b"text/plain")], status.encode()
    return api.json(data, query, status=code)


async def health_by_name(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/health/service/name/:name: 200 passing, 429 warning, 503 critical, 404 unknown."""
    name = required(arg, "service name")
    require_acl(api, request, lambda a: a.service_read(name))
    entries = [_local_health(api, sid, d) for sid, d in sorted(api.agent.local.services().items())
               if d.name == name]
    if not entries:
        if query.get("format") == "text":
            return 404, [(b"content-type", b"text/plain")], f"ServiceName {name} Not Found".encode()
        raise HTTPError(404, f"ServiceName {name} Not Found")
    rank = {PASSING: 0, WARNING: 1, "critical": 2, MAINTENANCE: 3}
    worst = max((e["AggregatedStatus"] for e in entries), key=lambda s: rank.get(s, 2))
    return _health_response(api, query, worst, entries)


async def health_by_id(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/health/service/id/:id."""
    sid = required(arg, "service ID")
    acl_identity(api, request)  # the token first: an invalid one is refused whether or not the ID exists
    defn = api.agent.local.services().get(sid)
    if defn is None:
        if query.get("format") == "text":
            return 404, [(b"content-type", b"text/plain")], f"ServiceId {sid} not found".encode()
        raise HTTPError(404, f"ServiceId {sid} not found")
    require_acl(api, request, lambda a: a.service_read(defn.name))
    entry = _local_health(api, sid, defn)
    return _health_response(api, query, entry["AggregatedStatus"], entry)


# ---------------------------------------------------------------------- lifecycle


async def reload(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/reload: re-read config files; broken files give a 500 listing every reason."""
    require_acl(api, request, lambda a: a.agent_write(api.agent.node_name))
    try:
        await api.agent.reload()
    except ConfigErrors as exc:
        raise HTTPError(500, f"Failed reloading config: {config_errors_text(exc)}") from None
    return _empty()


async def join(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/join/:address: join the gossip pool through that address."""
    if not arg:
        raise bad_request("Missing address to join")
    require_acl(api, request, lambda a: a.agent_write(api.agent.node_name))
    joined = await gossip_of(api).join([arg])
    if not joined:
        raise HTTPError(500, f"Failed to join {arg}: no answer to a push-pull exchange")
    return _empty()


async def force_leave(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/force-leave/:node[?prune]: mark a failed node left (prune: forget it)."""
    if not arg:
        raise bad_request("Missing node name")
    require_acl(api, request, lambda a: a.operator_write())
    if not gossip_of(api).force_leave(arg, prune=query.has("prune")):
        raise HTTPError(500, f"agent: No node found with name '{arg}'")
    return _empty()


async def leave(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/leave: leave the gossip pool gracefully, answer, then shut the agent down."""
    require_acl(api, request, lambda a: a.agent_write(api.agent.node_name))
    await api.agent.leave()

    async def later() -> None:
        # Let the 200 reach the client before the agent's nursery (and this server) is cancelled.
        await trio.sleep(0.2)
        api.agent.shutdown()

    trio.lowlevel.spawn_system_task(later)
    return _empty()


async def metrics(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/metrics: the agent's registry in Consul's JSON shape (names prefixed `meshagent.` or
    telemetry.metrics_prefix); `?format=prometheus` or `Accept: application/openmetrics-text`: Prometheus text,
    the agent's own figures and every local sidecar's proxy metrics. Both need agent:read on this node."""
    require_acl(api, request, lambda a: a.agent_read(api.agent.node_name))
    fmt = query.get("format")
    if not fmt and b"openmetrics-text" in (request.header(b"accept") or b""):
        fmt = "prometheus"
    if fmt == "prometheus":
        text = scrape_prometheus(api.agent, time.monotonic())
        runner = api.agent.proxy_runner
        wires = await runner.metrics() if runner is not None else []
        if wires:  # merged across sidecars, rendered once: each family appears once, labels tell them apart
            text += render_prometheus(merge_proxy_metrics(wires))
        return 200, [PROMETHEUS_TEXT], text.encode()
    if fmt:
        raise bad_request(f"Invalid format {fmt[:40]!r}: only prometheus is supported")
    timestamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
    return api.json(scrape_json(api.agent, timestamp), query)
