"""The discovery chain compiler (Consul's `discoverychain.Compile`), pure: a service's router, splitters and
resolvers, read through `lookup(kind, name)`, become one `CompiledChain` (chain_model.py).

Consul's semantics: the router is consulted only for the chain's own service; a route or split without a
subset goes to the destination's splitter if it has one, else to its resolver; nested splitters are flattened
(weights multiplied); a resolver follows Redirect and DefaultSubset before it becomes a node; Failover lists
target IDs. Routers and splitters of a service whose protocol is not HTTP-like are ignored; every service the
chain reaches must have its protocol (Consul's "uses inconsistent protocols"). Unlike Consul,
zero-weight splits are dropped here (Consul drops them when it writes Envoy routes) and flattened weights are
evened out to sum to exactly 100.00.

Bounded against hostile or accidental graphs: a redirect cycle, a splitter reaching itself, more than
MAX_NODES nodes, MAX_TARGETS targets, MAX_SPLIT_DEPTH nested splitters or MAX_REDIRECTS redirect hops is a
ChainError naming the entry and field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .chain_model import (
    RESOLVER,
    ROUTER,
    SPLITTER,
    ChainNode,
    ChainRouteSpec,
    ChainSplitSpec,
    ChainTargetSpec,
    CompiledChain,
    ResolverSpec,
)
from .chain_parts import (
    SCOPE,
    ChainError,
    Customized,
    Ref,
    SplitPart,
    as_map,
    as_str,
    duration_ms,
    hundredths,
    merge_parent,
    target_id,
    target_sni,
)
from .entry_schema import HTTP_PROTOCOLS
from .entry_validate import Lookup, protocol_of

MAX_NODES = 128
MAX_TARGETS = 256
MAX_SPLIT_DEPTH = 16
MAX_REDIRECTS = 32
MAX_ROUTES = 256  # a router's routes plus the default one (proxy/snapshot.py refuses more per upstream)
MAX_SPLITS = 256  # a splitter's splits once nested splitters are multiplied out (as the snapshot's per route)
_MAX_PARTS = 4096  # flattened parts looked at before rounding (nested splitters multiply: 1000 x 1000 took 5 s)
DEFAULT_CONNECT_TIMEOUT_MS = 5000
_RESOLVER_FIELDS = ("ConnectTimeout", "RequestTimeout", "DefaultSubset", "Subsets", "Redirect", "Failover",
                    "LoadBalancer")

def compile_chain(service: str, lookup: Lookup, *, datacenter: str, trust_domain: str,
                  override_protocol: str = "", override_connect_timeout_ms: int = 0,
                  override_mesh_gateway: str = "") -> CompiledChain:
    """Compile `service`'s discovery chain as seen from `datacenter`; raises ChainError (and nothing else for
    entries that normalize_entry accepted)."""
    return _Compiler(service, lookup, datacenter, trust_domain, override_protocol.lower(),
                     max(0, override_connect_timeout_ms), override_mesh_gateway).compile()


class _Compiler:
    """One compilation's state (single use)."""

    def __init__(self, service: str, lookup: Lookup, dc: str, trust_domain: str, override_protocol: str,
                 override_timeout_ms: int, override_mesh: str) -> None:
        self.service, self.dc, self.trust_domain = service, dc, trust_domain
        self._raw_lookup = lookup
        self._entries: dict[tuple[str, str], Mapping[str, Any] | None] = {}
        self._protocols: dict[str, str] = {}
        self.override_protocol = override_protocol
        self.override_timeout_ms = override_timeout_ms
        self.override_mesh = override_mesh
        # An override to a non-HTTP protocol turns routers and splitters off everywhere (Consul).
        self.advanced = not override_protocol or override_protocol in HTTP_PROTOCOLS
        self.customized = Customized()
        self.routes: dict[str, list[ChainRouteSpec]] = {}
        self.splits: dict[str, list[SplitPart]] = {}
        self.resolvers: dict[str, ResolverSpec] = {}  # node key -> resolver
        self.targets: dict[str, ChainTargetSpec] = {}
        self.splitting: list[tuple[str, str]] = []  # (service, field) of splitters being expanded

    # ------------------------------------------------------------------ entries

    def entry(self, kind: str, name: str) -> Mapping[str, Any] | None:
        key = (kind, name)
        if key not in self._entries:
            found = self._raw_lookup(kind, name)
            self._entries[key] = found if isinstance(found, Mapping) else None
        return self._entries[key]

    def lookup(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.entry(kind, name)
        return dict(found) if found is not None else None

    def protocol(self, service: str) -> str:
        if service not in self._protocols:
            try:
                self._protocols[service] = protocol_of(service, self.lookup).lower()
            except (AttributeError, TypeError):
                self._protocols[service] = "tcp"
        return self._protocols[service]

    def l7(self, kind: str, service: str) -> Mapping[str, Any] | None:
        """A router or splitter, or None when the service's protocol (or the override) turns it off."""
        found = self.entry(kind, service)
        if found is None or self.protocol(service) not in HTTP_PROTOCOLS:
            return None
        if not self.advanced:
            self.customized.protocol = True
            return None
        return found

    # ------------------------------------------------------------------ the whole chain

    def compile(self) -> CompiledChain:
        router = self.l7("service-router", self.service)
        ref: Ref = ("service-router" if router else "service-resolver", self.service, "Name")
        start = self.router_node(router) if router is not None else self.next_node(self.service, "", ref)
        self.flatten()
        nodes = self.reachable(start)
        targets: dict[str, ChainTargetSpec] = {}
        for node in nodes.values():
            if node.resolver is not None:
                for tid in (node.resolver.target, *node.resolver.failover):
                    targets[tid] = self.targets[tid]
        protocol = self.protocol(self.service)
        if self.override_protocol and self.override_protocol != protocol:
            protocol = self.override_protocol
            self.customized.protocol = True
        first = nodes[start]
        default = (first.type == RESOLVER and first.resolver is not None and first.resolver.default
                   and targets[first.resolver.target].service == self.service)
        defaults = self.entry("service-defaults", self.service) or {}
        meta = {k: v for k, v in as_map(defaults.get("Meta")).items() if isinstance(k, str) and isinstance(v, str)}
        return CompiledChain(service_name=self.service, datacenter=self.dc, protocol=protocol, start_node=start,
                             nodes=nodes, targets=targets, default=default, service_meta=meta,
                             customization_hash=self.customization_hash())

    def customization_hash(self) -> str:
        c = self.customized
        if not (c.protocol or c.connect_timeout or c.mesh_gateway):
            return ""
        applied = {"OverrideProtocol": self.override_protocol if c.protocol else "",
                   "OverrideConnectTimeout": self.override_timeout_ms if c.connect_timeout else 0,
                   "OverrideMeshGateway": self.override_mesh if c.mesh_gateway else ""}
        return hashlib.sha256(json.dumps(applied, sort_keys=True).encode()).hexdigest()[:8]

    def count(self, ref: Ref) -> None:
        """Refuse a chain that grew past the bounds, naming the entry that led there."""
        nodes = len(self.routes) + len(self.splits) + len(self.resolvers)
        if nodes >= MAX_NODES:
            raise ChainError(*ref, f'the chain of "{self.service}" reaches more than {MAX_NODES} nodes',
                             reason="bound")
        if len(self.targets) > MAX_TARGETS:
            raise ChainError(*ref, f'the chain of "{self.service}" reaches more than {MAX_TARGETS} targets',
                             reason="bound")

    # ------------------------------------------------------------------ router

    def router_node(self, router: Mapping[str, Any]) -> str:
        key = f"{ROUTER}:{self.service}.{SCOPE}"
        self.routes[key] = routes = []
        raw_routes = router.get("Routes")
        if isinstance(raw_routes, list) and len(raw_routes) >= MAX_ROUTES:
            raise ChainError("service-router", self.service, "Routes",
                             f"{len(raw_routes)} routes and the default one, more than {MAX_ROUTES}", reason="bound")
        for i, route in enumerate(raw_routes if isinstance(raw_routes, list) else []):
            route = as_map(route)
            dest = as_map(route.get("Destination"))
            svc = as_str(dest.get("Service")) or self.service
            subset = as_str(dest.get("ServiceSubset"))
            where = f"Routes[{i}].Destination.{'ServiceSubset' if subset else 'Service'}"
            nxt = self.next_node(svc, subset, ("service-router", self.service, where))
            routes.append(ChainRouteSpec(definition=route, next_node=nxt))
        default = {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": self.service}}
        nxt = self.next_node(self.service, "", ("service-router", self.service, "Name"))
        routes.append(ChainRouteSpec(definition=default, next_node=nxt))
        return key

    def next_node(self, service: str, subset: str, ref: Ref) -> str:
        """Where a route or split leads: a subset's resolver, else the service's splitter or resolver."""
        if not subset:
            key = self.splitter_node(service, ref)
            if key is not None:
                return key
        return self.resolver_node(service, subset, self.dc, ref)

    # ------------------------------------------------------------------ splitter

    def splitter_node(self, service: str, ref: Ref) -> str | None:
        key = f"{SPLITTER}:{service}.{SCOPE}"
        if key in self.splits:
            return key
        onstack = [s for s, _ in self.splitting]
        if service in onstack:
            loop = self.splitting[onstack.index(service):]
            path = " -> ".join([*(s for s, _ in loop), service])
            involved = tuple(("service-splitter", s, f) for s, f in loop)
            raise ChainError(*involved[-1], f"splitter cycle {path}", involved, "cycle")
        splitter = self.l7("service-splitter", service)
        if splitter is None:
            return None
        if len(self.splitting) >= MAX_SPLIT_DEPTH:
            raise ChainError(*ref, f"nests splitters deeper than {MAX_SPLIT_DEPTH}", reason="bound")
        self.count(ref)
        splits: list[SplitPart] = []
        raw_splits = splitter.get("Splits")
        for i, split in enumerate(raw_splits if isinstance(raw_splits, list) else []):
            split = as_map(split)
            svc = as_str(split.get("Service")) or service
            subset = as_str(split.get("ServiceSubset"))
            where = f"Splits[{i}].{'ServiceSubset' if subset else 'Service'}"
            self.splitting.append((service, where))
            try:
                if svc != service and not subset:
                    nested = self.splitter_node(svc, ("service-splitter", service, where))
                    if nested is not None:
                        splits.append(SplitPart(hundredths(split.get("Weight")), nested, split))
                        continue
                nxt = self.resolver_node(svc, subset, self.dc, ("service-splitter", service, where))
                splits.append(SplitPart(hundredths(split.get("Weight")), nxt, split))
            finally:
                self.splitting.pop()
        self.splits[key] = splits
        return key

    def flatten(self) -> None:
        """Nested splitters multiplied out (no cycles remain: splitter_node refused them), weights evened
        out to 10000 hundredths, zero weights dropped."""
        done: dict[str, list[SplitPart]] = {}

        def expand(key: str) -> list[SplitPart]:
            if key in done:
                return done[key]
            # Count before multiplying out: nested splitters of 1000 splits each are 10^6 parts, 10^9 deeper.
            size = sum(len(expand(s.next_node)) if s.next_node in self.splits else 1 for s in self.splits[key])
            if size > _MAX_PARTS:
                raise self.too_many_splits(key, size)
            parts: list[tuple[int, SplitPart]] = []  # weight in 1/10000 of a hundredth (exact), split
            for split in self.splits[key]:
                if split.next_node in self.splits:
                    for inner in expand(split.next_node):
                        parts.append((split.weight * inner.weight,
                                      SplitPart(0, inner.next_node, merge_parent(inner.definition, split.definition))))
                else:
                    parts.append((split.weight * 10000, split))
            # Largest remainder: hundredths that add up to exactly what the splits add up to (10000).
            total = round(sum(w for w, _ in parts) / 10000)
            out = [SplitPart(w // 10000, s.next_node, s.definition) for w, s in parts]
            short = total - sum(s.weight for s in out)
            for i in sorted(range(len(parts)), key=lambda i: -(parts[i][0] % 10000))[:max(0, short)]:
                out[i].weight += 1
            done[key] = [s for s in out if s.weight > 0]
            if len(done[key]) > MAX_SPLITS:
                raise self.too_many_splits(key, len(done[key]))
            return done[key]

        for key in list(self.splits):
            self.splits[key] = expand(key)

    @staticmethod
    def too_many_splits(key: str, size: int) -> ChainError:
        """A splitter whose splits, nested splitters multiplied out, are more than a route may carry."""
        service = key.partition(":")[2].removesuffix(f".{SCOPE}")
        return ChainError("service-splitter", service, "Splits",
                          f"{size} splits (nested splitters multiplied out), more than {MAX_SPLITS}",
                          reason="bound")

    # ------------------------------------------------------------------ resolver

    def resolve(self, service: str, subset: str, dc: str, ref: Ref) -> tuple[str, str, str, Ref]:
        """Follow Redirect and DefaultSubset to the final (service, subset, dc); the Ref names what led there."""
        history: list[tuple[str, Ref]] = []
        while True:
            tid = target_id(service, subset, dc)
            seen = [t for t, _ in history]
            if tid in seen:
                labels = [self.label(t) for t in seen] + [self.label(tid)]
                # the entries on the loop: the refs that led from its first target round to it again
                involved = (*(r for _, r in history[seen.index(tid) + 1:]), ref)
                raise ChainError(*ref, f"redirect cycle {' -> '.join(labels)}", involved, "cycle")
            if len(history) >= MAX_REDIRECTS:
                raise ChainError(*ref, f"redirects more than {MAX_REDIRECTS} times", reason="bound")
            history.append((tid, ref))
            resolver = self.entry("service-resolver", service) or {}
            redirect = as_map(resolver.get("Redirect"))
            if redirect:
                new_service = as_str(redirect.get("Service")) or service
                new_subset = as_str(redirect.get("ServiceSubset")) if new_service != service else (
                    as_str(redirect.get("ServiceSubset")) or subset)
                new_dc = as_str(redirect.get("Datacenter")) or dc
                if target_id(new_service, new_subset, new_dc) != tid:
                    moved = "Service" if new_service != service else "ServiceSubset" if new_subset != subset \
                        else "Datacenter"
                    ref = ("service-resolver", service, f"Redirect.{moved}")
                    service, subset, dc = new_service, new_subset, new_dc
                    continue
            default_subset = as_str(resolver.get("DefaultSubset"))
            if not subset and default_subset:
                subset, ref = default_subset, ("service-resolver", service, "DefaultSubset")
                continue
            if subset and subset not in as_map(resolver.get("Subsets")):
                raise ChainError(*ref, f'service "{service}" has no subset "{subset}" (define it in its '
                                 "service-resolver)", reason="subset")
            return service, subset, dc, ref

    def same_protocol(self, service: str, ref: Ref) -> None:
        """Every service a chain sends to speaks the chain's own protocol (Consul's recordServiceProtocol): an
        http chain must not send L7 traffic to a tcp service, nor tcp to one whose L7 intentions then lapse."""
        want, have = self.protocol(self.service), self.protocol(service)
        if have != want:
            raise ChainError(*ref, f'discovery chain "{self.service}" uses inconsistent protocols; service '
                             f'"{service}" has "{have}" which is not "{want}"', reason="protocol")

    def label(self, tid: str) -> str:
        """A target ID as people say it in an error: the local scope and datacenter left out."""
        local = f".{SCOPE}.{self.dc}"
        return tid[: -len(local)] if tid.endswith(local) else tid

    def resolver_node(self, service: str, subset: str, dc: str, ref: Ref, failover: bool = False) -> str:
        """The resolver node's key (or, for a failover, the target ID it resolves to)."""
        key = f"{RESOLVER}:{target_id(service, subset, dc)}"
        if key in self.resolvers:
            return self.resolvers[key].target if failover else key
        service, subset, dc, ref = self.resolve(service, subset, dc, ref)
        self.same_protocol(service, ref)
        tid = target_id(service, subset, dc)
        key = f"{RESOLVER}:{tid}"
        if key in self.resolvers:
            return tid if failover else key
        resolver = self.entry("service-resolver", service) or {}
        connect_ms = duration_ms(resolver.get("ConnectTimeout")) or DEFAULT_CONNECT_TIMEOUT_MS
        if self.override_timeout_ms and self.override_timeout_ms != connect_ms:
            connect_ms, self.customized.connect_timeout = self.override_timeout_ms, True
        request_ms = duration_ms(resolver.get("RequestTimeout"))
        self.add_target(service, subset, dc, resolver, connect_ms, request_ms, ref)
        if failover:
            return tid
        self.count(ref)
        lb = resolver.get("LoadBalancer")
        spec = ResolverSpec(target=tid, default=not any(resolver.get(f) for f in _RESOLVER_FIELDS),
                            connect_timeout_ms=connect_ms, request_timeout_ms=request_ms,
                            load_balancer=lb if isinstance(lb, Mapping) and lb else None)
        self.resolvers[key] = spec  # recorded before failover: a failover back to it finds it
        fo_targets = self.failover_targets(service, subset, dc, resolver)
        if fo_targets:
            self.resolvers[key] = ResolverSpec(target=tid, default=spec.default, connect_timeout_ms=connect_ms,
                                               request_timeout_ms=request_ms, failover=fo_targets,
                                               load_balancer=spec.load_balancer)
        return key

    def failover_targets(self, service: str, subset: str, dc: str, resolver: Mapping[str, Any]) -> tuple[str, ...]:
        failovers = as_map(resolver.get("Failover"))
        name = subset if subset in failovers else "*"
        fo = as_map(failovers.get(name))
        if not fo:
            return ()
        own = target_id(service, subset, dc)
        where = f"Failover.{name}"
        wanted: list[tuple[str, str, str, str]] = []  # (service, subset, dc, field)

        def rewrite(opts: Mapping[str, Any], at: str) -> None:
            svc = as_str(opts.get("Service")) or service
            sub = as_str(opts.get("ServiceSubset")) or ("" if svc != service else subset)
            wanted.append((svc, sub, as_str(opts.get("Datacenter")) or dc, at))

        dcs, targets = fo.get("Datacenters"), fo.get("Targets")
        if isinstance(dcs, list) and dcs:
            for i, other in enumerate(dcs[:MAX_TARGETS]):
                rewrite({**fo, "Datacenter": as_str(other)}, f"{where}.Datacenters[{i}]")
        elif isinstance(targets, list) and targets:
            for i, t in enumerate(targets[:MAX_TARGETS]):
                rewrite(as_map(t), f"{where}.Targets[{i}]")
        else:
            rewrite(fo, f"{where}.{'ServiceSubset' if fo.get('ServiceSubset') else 'Service'}")
        out: list[str] = []
        for svc, sub, fdc, at in wanted:
            if target_id(svc, sub, fdc) == own:
                continue  # never a failover to itself (Consul)
            out.append(self.resolver_node(svc, sub, fdc, ("service-resolver", service, at), failover=True))
        return tuple(out)

    def add_target(self, service: str, subset: str, dc: str, resolver: Mapping[str, Any], connect_ms: int,
                   request_ms: int, ref: Ref) -> None:
        tid = target_id(service, subset, dc)
        if tid in self.targets:
            return
        chosen = as_map(as_map(resolver.get("Subsets")).get(subset)) if subset else {}
        defaults = self.entry("service-defaults", service) or {}
        sni, external, mesh = target_sni(service, subset, dc, self.trust_domain), False, ""
        if as_str(defaults.get("ExternalSNI")):
            sni, external = as_str(defaults["ExternalSNI"]), True
            for bad in ("Redirect", "Subsets", "Failover"):
                if resolver.get(bad):
                    raise ChainError("service-resolver", service, bad, f'service "{service}" has an ExternalSNI in '
                                     f"its service-defaults: an external service cannot have {bad}", reason="external")
        else:
            mesh = as_str(as_map(defaults.get("MeshGateway")).get("Mode"))
            if not mesh:
                mesh = as_str(as_map(as_map(self.entry("proxy-defaults", "global")).get("MeshGateway")).get("Mode"))
            if self.override_mesh and self.override_mesh != mesh:
                mesh, self.customized.mesh_gateway = self.override_mesh, True
        self.targets[tid] = ChainTargetSpec(
            id=tid, service=service, service_subset=subset, datacenter=dc, filter=as_str(chosen.get("Filter")),
            only_passing=chosen.get("OnlyPassing") is True, connect_timeout_ms=connect_ms,
            request_timeout_ms=request_ms, sni=sni, external=external, mesh_gateway=mesh,
            name=target_sni(service, subset, dc, self.trust_domain))
        self.count(ref)

    # ------------------------------------------------------------------ output

    def reachable(self, start: str) -> dict[str, ChainNode]:
        """Every node reachable from the start (flattening leaves nested splitters unreferenced)."""
        out: dict[str, ChainNode] = {}
        todo = [start]
        while todo:
            key = todo.pop()
            if key in out:
                continue
            kind, _, name = key.partition(":")
            if kind == ROUTER:
                routes = tuple(self.routes[key])
                out[key] = ChainNode(type=ROUTER, name=name, routes=routes)
                todo.extend(r.next_node for r in routes)
            elif kind == SPLITTER:
                splits = tuple(ChainSplitSpec(weight=s.weight / 100, next_node=s.next_node, definition=s.definition)
                               for s in self.splits[key])
                out[key] = ChainNode(type=SPLITTER, name=name, splits=splits)
                todo.extend(s.next_node for s in splits)
            else:
                out[key] = ChainNode(type=RESOLVER, name=name, resolver=self.resolvers[key])
        return out


__all__ = ["MAX_NODES", "MAX_REDIRECTS", "MAX_SPLIT_DEPTH", "MAX_TARGETS", "ChainError", "compile_chain", "target_id",
           "target_sni"]
