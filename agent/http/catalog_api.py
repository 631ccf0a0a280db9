"""`/v1/catalog/*`: services, service instances (and a service's mesh-capable instances), nodes, one node,
datacenters (all blocking reads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# acl_identity, Visibility and acl_keep lived here first: still importable from this module.
from .acl_gate import Visibility, acl_identity, acl_keep
from .filter import CATALOG_SERVICE_SCHEMA, NODE_SCHEMA
from .messages import Request, Response
from .query import Query, bad_request
from .render import catalog_node_json, catalog_service_json, node_json

if TYPE_CHECKING:
    from ..catalog import Node
    from .api import API


def node_meta_pairs(query: Query) -> list[tuple[str, str]]:
    """`?node-meta=key:value` (repeatable) as pairs."""
    pairs = []
    for item in query.all("node-meta"):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise bad_request(f"Invalid node-meta {item[:60]!r}: expected key:value")
        pairs.append((key, value))
    return pairs


def node_meta_ok(node: Node, pairs: list[tuple[str, str]]) -> bool:
    """Whether a node carries every requested meta pair."""
    return all(node.meta.get(k) == v for k, v in pairs)


def required(arg: str, what: str) -> str:
    """A path argument that must not be empty."""
    if not arg:
        raise bad_request(f"Missing {what}")
    return arg


async def services(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/services: service name -> union of tags (names without service:read left out)."""
    catalog = api.agent.store.catalog
    meta = node_meta_pairs(query)
    identity = acl_identity(api, request)
    if not query.filter and not meta:
        if identity is None:
            return await api.read(request, query, ["services"], catalog.services)
        def visible() -> dict[str, list[str]]:
            see = Visibility(api.identity(request))  # current: a blocking wait may have re-resolved it
            names = catalog.services()
            kept = {name: tags for name, tags in names.items() if see.service(name)}
            if len(kept) != len(names):
                request.acl_filtered = True
            return kept

        return await api.read(request, query, ["services"], visible)

    predicate = api.predicate(query.filter, CATALOG_SERVICE_SCHEMA) if query.filter else None

    def build() -> dict[str, list[str]]:
        # Consul filters the flattened service rows, then folds the survivors into name -> tags.
        out: dict[str, set[str]] = {}
        see = Visibility(api.identity(request)) if identity is not None else None
        for name in catalog.services():
            if see is not None and not see.service(name):
                request.acl_filtered = True
                continue
            for inst in catalog.service_instances(name):
                if meta and not node_meta_ok(inst.node, meta):
                    continue
                if predicate is not None and not predicate(catalog_service_json(inst.node, inst.service)):
                    continue
                out.setdefault(inst.service.service, set()).update(inst.service.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    # Node fields take part in the answer now, so node changes must wake the query too.
    return await api.read(request, query, ["services", "nodes"], build)


async def service(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/service/:name: every instance, any health (?tag, ?node-meta, ?filter)."""
    return await _instances(api, request, query, required(arg, "service name"), connect=False)


async def connect(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/connect/:name: the service's mesh-capable instances (its sidecar proxies and
    Connect-native instances), any health, with the options of /v1/catalog/service."""
    return await _instances(api, request, query, required(arg, "service name"), connect=True)


async def _instances(api: API, request: Request, query: Query, name: str, connect: bool) -> Response:
    catalog = api.agent.store.catalog
    tags = [t.lower() for t in query.all("tag")]
    meta = node_meta_pairs(query)
    instances = catalog.connect_instances if connect else catalog.service_instances
    identity = acl_identity(api, request)

    def build() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        # Each instance needs service:read on its service (a sidecar's own name for connect) and node:read
        # on its node, as Consul's filterServiceNodes (after the query's own conditions). The identity is the
        # one current at build time (API.block resolves it again after a wait), never one captured before.
        see = Visibility(api.identity(request)) if identity is not None else None
        if connect and see is not None and not see.service(name):
            # Consul's connect queries first need service:read on the service whose proxies are asked for.
            request.acl_filtered = True
            return rows
        for inst in instances(name):
            if tags and not set(tags) <= {t.lower() for t in inst.service.tags}:
                continue
            if meta and not node_meta_ok(inst.node, meta):
                continue
            if see is not None and not see.row(inst.node.node, inst.service.service):
                request.acl_filtered = True
                continue
            rows.append(catalog_service_json(inst.node, inst.service))
        return rows

    key = f"connect:{name.lower()}" if connect else f"service:{name.lower()}"
    return await api.read(request, query, [key], build, CATALOG_SERVICE_SCHEMA)


async def nodes(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/nodes (?node-meta, ?filter); nodes without node:read left out."""
    catalog = api.agent.store.catalog
    meta = node_meta_pairs(query)
    identity = acl_identity(api, request)

    def build() -> list[dict[str, Any]]:
        rows = catalog.nodes()
        if identity is not None:
            now = api.identity(request)  # current after a blocking wait
            see = Visibility(now)
            rows = acl_keep(request, now, rows, lambda n: see.node(n.node))
        return [node_json(n) for n in rows if not meta or node_meta_ok(n, meta)]

    return await api.read(request, query, ["nodes"], build, NODE_SCHEMA)


async def node(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/node/:node: the node and its services (null when unknown, as in Consul; null too
    without node:read, and services without service:read left out)."""
    name = required(arg, "node name")
    catalog = api.agent.store.catalog
    identity = acl_identity(api, request)

    def build() -> dict[str, Any] | None:
        row = catalog.node(name)
        if row is None:
            return None
        services = catalog.node_services(name)
        if identity is not None:
            now = api.identity(request)  # current after a blocking wait
            see = Visibility(now)
            if not see.node(row.node):
                request.acl_filtered = True
                return None  # what Consul's filterNodeServices answers for a node you may not see
            services = acl_keep(request, now, services, lambda s: see.service(s.service))
        return catalog_node_json(row, services)

    return await api.read(request, query, [f"node:{name.lower()}"], build)


async def datacenters(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/catalog/datacenters: only ours until WAN federation lands."""
    return api.json([api.agent.datacenter], query)
