"""The compiled discovery chain (Consul's `CompiledDiscoveryChain`), as typed values: what
`chain_compile.compile_chain` returns, what `GET /v1/discovery-chain/:service` prints (`to_api`), and what
the sidecar snapshot builder (`proxy_chain.py`) turns into the proxy's routes and targets. Pure.

Node names and target IDs follow Consul: `router:web.default.default`, `splitter:web.default.default`,
`resolver:v1.web.default.default.dc1`; a target ID is `[subset.]service.namespace.partition.datacenter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTER = "router"
SPLITTER = "splitter"
RESOLVER = "resolver"


@dataclass(frozen=True, slots=True)
class ChainTargetSpec:
    """Consul's `DiscoveryTarget`: one (service, subset, datacenter) whose instances take traffic."""

    id: str  # "v1.web.default.default.dc1"
    service: str
    service_subset: str  # "" = every instance
    datacenter: str
    filter: str = ""  # the subset's Filter, over the health API's selectors ("" = no filter)
    only_passing: bool = False  # False: passing and warning instances, as Consul
    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 0  # the resolver's RequestTimeout; 0 = unset
    sni: str = ""  # "v1.web.default.dc1.internal.<trust domain>"
    namespace: str = "default"
    partition: str = "default"
    external: bool = False  # service-defaults ExternalSNI: `sni` is that name
    mesh_gateway: str = ""  # MeshGateway.Mode ("" = default); no mesh gateways here yet, shown as Consul does
    name: str = ""  # Consul's target Name: the SNI as compiled, before any ExternalSNI


@dataclass(frozen=True, slots=True)
class ChainRouteSpec:
    """One router route: its definition (the entry's route, canonical CamelCase: Match, Destination) and the
    node it leads to. The compiler appends the catch-all default route (Match PathPrefix "/")."""

    definition: Mapping[str, Any]
    next_node: str


@dataclass(frozen=True, slots=True)
class ChainSplitSpec:
    """One split, flattened (nested splitters multiplied out): weight in percent (0.01 resolution) and the
    resolver node it leads to."""

    weight: float
    next_node: str
    definition: Mapping[str, Any] = field(default_factory=dict)  # the entry's split (Weight, Service, …)


@dataclass(frozen=True, slots=True)
class ResolverSpec:
    """Consul's `DiscoveryResolver`: the target it resolves to, and failover targets in order."""

    target: str
    default: bool = False  # no service-resolver entry: synthesized with Consul's defaults
    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 0
    failover: tuple[str, ...] = ()  # target IDs, tried in order when `target` has no healthy instance
    load_balancer: Mapping[str, Any] | None = None  # the resolver's LoadBalancer (canonical CamelCase)


@dataclass(frozen=True, slots=True)
class ChainNode:
    """Consul's `DiscoveryGraphNode`: a router (routes), a splitter (splits) or a resolver."""

    type: str  # ROUTER | SPLITTER | RESOLVER
    name: str  # "web.default.default" (router, splitter) or the target ID (resolver)
    routes: tuple[ChainRouteSpec, ...] = ()
    splits: tuple[ChainSplitSpec, ...] = ()
    resolver: ResolverSpec | None = None

    @property
    def key(self) -> str:
        """The node's key in `Nodes`: "type:name"."""
        return f"{self.type}:{self.name}"


@dataclass(frozen=True, slots=True)
class CompiledChain:
    """A service's whole chain: start node, every node by key, every target by ID."""

    service_name: str
    datacenter: str
    protocol: str  # tcp | http | http2 | grpc
    start_node: str
    nodes: Mapping[str, ChainNode]
    targets: Mapping[str, ChainTargetSpec]
    default: bool = False  # no router, splitter or resolver entry shaped it
    service_meta: Mapping[str, str] = field(default_factory=dict)  # the service's service-defaults Meta
    customization_hash: str = ""  # set when an override (protocol, connect timeout, mesh gateway) applied

    def to_api(self) -> dict[str, Any]:
        """Consul's JSON shape (`{"Chain": {...}}` is the endpoint's wrapping, not this)."""
        from .chain_api_shape import chain_json  # the shape lives beside: this module stays the types

        return chain_json(self)
