"""`/v1/health/*`: service instances with their checks, and check lists by service, node or state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..catalog import PASSING, Check
from .acl_gate import Visibility, acl_identity, acl_keep
from .catalog_api import node_meta_ok, node_meta_pairs, required
from .filter import CHECK_SCHEMA, HEALTH_ENTRY_SCHEMA
from .messages import Request, Response
from .query import Query, bad_request
from .render import check_json, health_entry_json

if TYPE_CHECKING:
    from .api import API

STATES = frozenset({"any", "passing", "warning", "critical"})


async def service(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/health/service/:name (?passing, ?tag repeatable, ?node-meta, ?filter)."""
    return await _entries(api, request, query, required(arg, "service name"), connect=False)


async def connect(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/health/connect/:name: the service's sidecar proxies and Connect-native instances with their
    checks (?passing, ?tag, ?node-meta, ?filter as /v1/health/service)."""
    return await _entries(api, request, query, required(arg, "service name"), connect=True)


async def _entries(api: API, request: Request, query: Query, name: str, connect: bool) -> Response:
    catalog = api.agent.store.catalog
    passing = query.flag("passing")
    tags = [t.lower() for t in query.all("tag")]
    meta = node_meta_pairs(query)
    instances = catalog.connect_instances if connect else catalog.service_instances
    identity = acl_identity(api, request)

    def build() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # An entry needs service:read on its service and node:read on its node (Consul's
        # filterCheckServiceNodes, after the query's own conditions: the header then means "the token hid
        # something you asked for"); its checks come with it. The identity current at build time: API.block
        # resolves it again after a wait.
        see = Visibility(api.identity(request)) if identity is not None else None
        if connect and see is not None and not see.service(name):
            # Consul's connect queries first need service:read on the service whose proxies are asked for.
            request.acl_filtered = True
            return out
        for inst in instances(name):
            if passing and inst.status != PASSING:
                continue
            if tags and not set(tags) <= {t.lower() for t in inst.service.tags}:
                continue
            if meta and not node_meta_ok(inst.node, meta):
                continue
            if see is not None and not see.row(inst.node.node, inst.service.service):
                request.acl_filtered = True
                continue
            out.append(health_entry_json(inst))
        return out

    key = f"connect:{name.lower()}" if connect else f"service:{name.lower()}"
    return await api.read(request, query, [key], build, HEALTH_ENTRY_SCHEMA)


def _checks_json(api: API, request: Request, rows: Callable[[], list[Check]]) -> Callable[[], list[dict[str, Any]]]:
    """A build of check rows: each needs node:read on its node and service:read on its service (node-level
    checks: node:read only), as Consul's filterHealthChecks."""
    identity = acl_identity(api, request)

    def build() -> list[dict[str, Any]]:
        found = rows()
        if identity is not None:
            now = api.identity(request)  # current after a blocking wait
            see = Visibility(now)
            found = acl_keep(request, now, found, lambda c: see.row(c.node, c.service_name))
        return [check_json(c) for c in found]

    return build


async def checks(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/health/checks/:service."""
    name = required(arg, "service name")
    catalog = api.agent.store.catalog
    return await api.read(request, query, [f"service:{name.lower()}"],
                          _checks_json(api, request, lambda: catalog.service_checks(name)), CHECK_SCHEMA)


async def node(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/health/node/:node."""
    name = required(arg, "node name")
    catalog = api.agent.store.catalog
    return await api.read(request, query, [f"node:{name.lower()}"],
                          _checks_json(api, request, lambda: catalog.node_checks(name)), CHECK_SCHEMA)


async def state(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/health/state/:state (any, passing, warning, critical)."""
    if arg not in STATES:
        raise bad_request(f"Invalid state {arg[:40]!r}: must be one of any, passing, warning, critical")
    catalog = api.agent.store.catalog
    return await api.read(request, query, ["checks"],
                          _checks_json(api, request, lambda: catalog.checks_in_state(arg)), CHECK_SCHEMA)
