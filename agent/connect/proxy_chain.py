"""An upstream's compiled discovery chain as the proxy snapshot's routes and targets, pure (mypy --strict).

From the issue-14 `Upstream` (listener, limits, passive health, the upstream's `config`), the destination's
CompiledChain (chain_compile.py) and the catalog: per target the mesh instances of its service that pass its
subset filter (the `?filter=` evaluator over the health-entry view) and OnlyPassing, with failover applied
here, at snapshot time; per route the router's match and per-route overrides. A trivial chain (one default
route, one target) and every tcp upstream keep issue 14's flat form (`routes == ()`).

Precedence: an upstream's explicitly set `connect_timeout_ms` (its `config` or UpstreamConfig) wins over a
service-resolver's ConnectTimeout, as Consul's OverrideConnectTimeout; else the resolver's, where it sets it,
else the default. A resolver's LoadBalancer, where set, wins over the upstream's `load_balancer`; its
RequestTimeout is the target's (0 = the upstream's), and a route's RequestTimeout / retries win over both for
what it matched (a route's NumRetries only when above 0, as Consul).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ...proxy.chain_check import MAX_CHAIN_ENDPOINTS
from ...proxy.snapshot import (
    MAX_ENDPOINTS,
    MAX_ROUTES,
    MAX_SPLITS,
    MAX_STR,
    MAX_TARGETS,
    ChainRoute,
    ChainTarget,
    Endpoint,
    HashPolicy,
    HeaderMatch,
    LoadBalancer,
    QueryMatch,
    Retries,
    RouteMatch,
    Upstream,
    WeightedTarget,
)
from ..catalog.model import PASSING, WARNING, Check, Node, Service
from ..catalog.state import Catalog, Instance
from ..http.filter import HEALTH_ENTRY_SCHEMA, FilterError, compile_filter
from ..http.render import health_entry_json
from .chain_compile import compile_chain
from .chain_model import RESOLVER, ROUTER, SPLITTER, ChainNode, ChainRouteSpec, CompiledChain, ResolverSpec
from .proxy_config_read import MAX_RETRIES, MAX_TIMEOUT_MS, ConfigReader, Map, config_get, is_ip
from .spiffe import SpiffeIDError, service_id

LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
CHAIN_KINDS = ("service-router", "service-splitter", "service-resolver", "service-defaults", "proxy-defaults")
CHAIN_KEYS = tuple(f"config-entry:{k}" for k in CHAIN_KINDS)  # every entry a compiled chain depends on
WHOLE = 10000  # a route's split weights, in hundredths of a percent
_MAX_FILTERS = 512  # cached compiled subset filters (one per distinct filter text)
_MAX_CHAINS = 1024  # cached compiled chains
_MAX_VIEWS = 16384  # cached health-entry views of mesh instances (subset filters evaluate over them)

Predicate = Callable[[Any], bool]
_filters: dict[str, Predicate | FilterError] = {}
_chains: dict[tuple[str, str, str, int, str, int], tuple[Catalog, CompiledChain | ValueError]] = {}
_MAX_RESULTS = 128  # subset-filter verdicts kept per instance view (one per distinct filter text)
_MAX_CHAIN_ENDPOINTS = MAX_CHAIN_ENDPOINTS  # over all targets of one upstream: the workers refuse more
# (node row, service row, check rows, the health-entry view, filter text -> verdict)
_ViewEntry = tuple[Node, Service, tuple[Check, ...], dict[str, Any], dict[str, bool]]
_views: dict[tuple[str, str], _ViewEntry] = {}
# One mesh instance as every target of its service reads it in one build: the endpoint with its weight for any
# target (None: no traffic or not dialable), the same for OnlyPassing targets, the instance, its view entry.
_Candidate = list[Any]


def lookup_of(catalog: Catalog) -> Callable[[str, str], dict[str, Any] | None]:
    """The compiler's `(kind, name) -> canonical entry or None` over the catalog's config entries."""
    def lookup(kind: str, name: str) -> dict[str, Any] | None:
        row = catalog.config_entries.get(kind, name)
        return row.entry if row is not None else None
    return lookup


def compiled_chain(catalog: Catalog, service: str, datacenter: str, *, override_protocol: str = "",
                   override_connect_timeout_ms: int = 0) -> CompiledChain:
    """`service`'s chain, compiled once per (service, datacenter, trust domain, config-entry index, overrides).
    The overrides are an upstream's own protocol and explicit connect timeout (Consul's OverrideProtocol /
    OverrideConnectTimeout). Raises ValueError (the compiler's ChainError names the entry and field)."""
    trust_domain = catalog.connect.trust_domain
    key = (service, datacenter, trust_domain, catalog.index_for(CHAIN_KEYS), override_protocol,
           override_connect_timeout_ms)
    cached = _chains.get(key)
    if cached is None or cached[0] is not catalog:
        if len(_chains) >= _MAX_CHAINS:
            _chains.clear()  # entries of older indexes are dead weight; the live ones recompile once
        result: CompiledChain | ValueError
        try:
            result = compile_chain(service, lookup_of(catalog), datacenter=datacenter, trust_domain=trust_domain,
                                   override_protocol=override_protocol,
                                   override_connect_timeout_ms=override_connect_timeout_ms)
        except ValueError as exc:
            result = exc
        cached = _chains[key] = (catalog, result)
    if isinstance(cached[1], ValueError):
        raise cached[1]
    return cached[1]


def reached_services(chain: CompiledChain) -> list[str]:
    """Every service whose instances the chain can send to (targets, failover included), sorted."""
    return sorted({t.service for t in chain.targets.values()})


def subset_filter(text: str) -> Predicate:
    """A resolver subset's Filter over health entries, compiled once per text; raises FilterError."""
    found = _filters.get(text)
    if found is None:
        if len(_filters) >= _MAX_FILTERS:
            _filters.clear()
        try:
            found = compile_filter(text, HEALTH_ENTRY_SCHEMA)
        except FilterError as exc:
            found = exc
        _filters[text] = found
    if isinstance(found, FilterError):
        raise found
    return found


def chain_upstream(base: Upstream, chain: CompiledChain, catalog: Catalog, *, datacenter: str,
                   proxy_id: str = "", service: str = "") -> Upstream:
    """`base` following `chain`: routes and targets, or the flat form filled from the one target. Raises
    SnapshotError naming the entry and field."""
    reader = ChainReader(proxy_id, service)
    reader.catalog = catalog
    reader.datacenter = datacenter
    return reader.chain_upstream(base, chain)


class ChainReader(ConfigReader):
    """Turns compiled chains into snapshot routes and targets; UpstreamReader (proxy_upstreams.py) is one."""

    catalog: Catalog
    datacenter: str
    explicit_connect_timeout = False  # the upstream sets connect_timeout_ms: it wins over a resolver's
    chain_notes: list[str]  # per call: what the build trimmed, for the runner to log once

    def chain_upstream(self, base: Upstream, chain: CompiledChain) -> Upstream:
        """See `chain_upstream`."""
        self.chain_notes = []
        # Per call: targets of one service (its subsets) share its instances and the address checks.
        self._candidates: dict[str, list[_Candidate]] = {}
        self._ips: dict[str, bool] = {}
        self._total = 0  # endpoints over the targets built so far
        if base.protocol != "http":  # tcp: routers and splitters do not apply, the chain is the resolver's
            if not chain.start_node.startswith(f"{RESOLVER}:"):  # compiled for http: compile it as Consul would
                chain = compiled_chain(self.catalog, chain.service_name, chain.datacenter, override_protocol="tcp")
            return self._flat(base, chain, self._tcp_resolver(chain))
        start = self._node(chain, chain.start_node, f"discovery chain {chain.service_name} StartNode")
        if start.type == ROUTER:
            specs = start.routes
            if len(specs) > MAX_ROUTES:
                raise self.fail(f"service-router {chain.service_name} Routes",
                                f"{len(specs)} routes with the default one, more than {MAX_ROUTES}")
            used: dict[str, ResolverSpec] = {}
            routes = tuple(self._route(chain, spec, n, n == len(specs) - 1, base, used)
                           for n, spec in enumerate(specs))
        else:
            used = {}
            splits = self._splits(chain, start, used)
            routes = (ChainRoute(match=RouteMatch(path_prefix="/"), splits=splits,
                                 name=f"{chain.service_name} default"),)
        if len(routes) == 1 and len(routes[0].splits) == 1 and _plain(routes[0]):
            return self._flat(base, chain, used[routes[0].splits[0].target])
        if len(used) > MAX_TARGETS:
            raise self.fail(f"discovery chain {chain.service_name}",
                            f"{len(used)} targets, more than {MAX_TARGETS}")
        targets = tuple(self._target(chain, res, base) for res in used.values())
        lb = base.load_balancer
        if not lb.hash_policies:  # the split choice hashes with the first resolver's hash policies, if any
            lb = next((t.load_balancer for t in targets if t.load_balancer.hash_policies), lb)
        return replace(base, endpoints=(), routes=routes, targets=targets, load_balancer=lb)

    # ------------------------------------------------------------------ nodes

    def _node(self, chain: CompiledChain, key: str, where: str) -> ChainNode:
        node = chain.nodes.get(key)
        if node is None:
            raise self.fail(where, f"node {key!r:.200} is not in the compiled chain")
        return node

    def _tcp_resolver(self, chain: CompiledChain) -> ResolverSpec:
        """A tcp upstream's one resolver: the chain compiled for tcp starts at it (no router, no splitter)."""
        where = f"discovery chain {chain.service_name} StartNode"
        node = self._node(chain, chain.start_node, where)
        if node.type != RESOLVER or node.resolver is None:
            raise self.fail(where, "a tcp upstream's chain must start at a resolver")
        return node.resolver

    def _splits(self, chain: CompiledChain, node: ChainNode, used: dict[str, ResolverSpec]
                ) -> tuple[WeightedTarget, ...]:
        """A splitter's or resolver's node as weighted targets summing to WHOLE (records the resolvers used)."""
        if node.type == RESOLVER and node.resolver is not None:
            used[node.resolver.target] = node.resolver
            return (WeightedTarget(node.resolver.target, WHOLE),)
        where = f"service-splitter {node.name.split('.', 1)[0]} Splits"
        if node.type != SPLITTER or not node.splits:
            raise self.fail(where, f"node {node.key!r:.200} is neither a splitter nor a resolver")
        if len(node.splits) > MAX_SPLITS:
            raise self.fail(where, f"{len(node.splits)} splits, more than {MAX_SPLITS}")
        weights: dict[str, int] = {}
        for n, split in enumerate(node.splits):
            nxt = self._node(chain, split.next_node, f"{where}[{n}]")
            if nxt.type != RESOLVER or nxt.resolver is None:
                raise self.fail(f"{where}[{n}]", "leads to a node that is not a resolver")
            hundredths = round(split.weight * 100)
            if hundredths <= 0:
                continue  # Consul drops zero-weight splits
            used[nxt.resolver.target] = nxt.resolver
            weights[nxt.resolver.target] = weights.get(nxt.resolver.target, 0) + hundredths
        if not weights:
            raise self.fail(where, "no split has a weight above 0")
        top = max(weights, key=weights.__getitem__)
        weights[top] += WHOLE - sum(weights.values())  # rounding drift goes to the largest share
        return tuple(WeightedTarget(t, w) for t, w in weights.items())

    # ------------------------------------------------------------------ routes

    def _route(self, chain: CompiledChain, spec: ChainRouteSpec, n: int, last: bool, base: Upstream,
               used: dict[str, ResolverSpec]) -> ChainRoute:
        svc = chain.service_name
        where = f"service-router {svc} " + ("default route" if last else f"Routes[{n}]")
        d = self._map(spec.definition, where)
        http = self._map(self._map(d.get("Match"), f"{where}.Match").get("HTTP"), f"{where}.Match.HTTP")
        dest = self._map(d.get("Destination"), f"{where}.Destination")
        splits = self._splits(chain, self._node(chain, spec.next_node, f"{where}.Destination"), used)
        rewrite = self._opt(dest.get("PrefixRewrite"), f"{where}.Destination.PrefixRewrite")
        timeout_ms = 0
        if dest.get("RequestTimeout") not in (None, ""):
            seconds = self._seconds(dest["RequestTimeout"], f"{where}.Destination.RequestTimeout")
            timeout_ms = min(MAX_TIMEOUT_MS, int(seconds * 1000))
        return ChainRoute(match=self._match(http, f"{where}.Match.HTTP"), splits=splits, prefix_rewrite=rewrite,
                          request_timeout_ms=timeout_ms, retries=self._route_retries(dest, base, where),
                          name=f"{svc} default" if last else f"{svc} route {n}")

    def _match(self, http: Map, where: str) -> RouteMatch:
        methods = self._list(http.get("Methods") or [], f"{where}.Methods", 16)
        headers = []
        for k, raw in enumerate(self._list(http.get("Header") or [], f"{where}.Header", 64)):
            h = self._map(raw, f"{where}.Header[{k}]")
            at = f"{where}.Header[{k}]"
            exact, prefix, suffix, regex = (self._opt(h.get(f), f"{at}.{f}") for f in
                                            ("Exact", "Prefix", "Suffix", "Regex"))
            present = h.get("Present") is True or (exact, prefix, suffix, regex) == (None, None, None, None)
            headers.append(HeaderMatch(name=self._name(h.get("Name"), f"{at}.Name"), present=present,
                                       exact=exact, prefix=prefix, suffix=suffix, regex=regex,
                                       invert=self._bool(h.get("Invert", False), f"{at}.Invert")))
        query = []
        for k, raw in enumerate(self._list(http.get("QueryParam") or [], f"{where}.QueryParam", 64)):
            q = self._map(raw, f"{where}.QueryParam[{k}]")
            at = f"{where}.QueryParam[{k}]"
            exact, regex = self._opt(q.get("Exact"), f"{at}.Exact"), self._opt(q.get("Regex"), f"{at}.Regex")
            query.append(QueryMatch(name=self._name(q.get("Name"), f"{at}.Name"),
                                    present=q.get("Present") is True or (exact is None and regex is None),
                                    exact=exact, regex=regex))
        return RouteMatch(path_exact=self._opt(http.get("PathExact"), f"{where}.PathExact"),
                          path_prefix=self._opt(http.get("PathPrefix"), f"{where}.PathPrefix"),
                          path_regex=self._opt(http.get("PathRegex"), f"{where}.PathRegex"),
                          methods=tuple(self._str(m, f"{where}.Methods[{k}]").upper()
                                        for k, m in enumerate(methods)),
                          headers=tuple(headers), query=tuple(query),
                          case_insensitive=self._bool(http.get("CaseInsensitive", False), f"{where}.CaseInsensitive"))

    def _route_retries(self, dest: Map, base: Upstream, where: str) -> Retries | None:
        """The route's retry overrides over the upstream's policy; None when it sets none. As Consul: NumRetries
        counts only above 0, and a retry condition without it retries once (Envoy's default) unless the
        upstream's policy already retries more."""
        values: dict[str, Any] = {}
        if dest.get("NumRetries") is not None:
            n = self._int(dest["NumRetries"], f"{where}.Destination.NumRetries", 0, MAX_RETRIES)
            if n > 0:
                values["num_retries"] = n
        if dest.get("RetryOnConnectFailure") is not None:
            values["retry_on_connect_failure"] = self._bool(dest["RetryOnConnectFailure"],
                                                            f"{where}.Destination.RetryOnConnectFailure")
        if dest.get("RetryOnStatusCodes") is not None:
            at = f"{where}.Destination.RetryOnStatusCodes"
            values["retry_on_status_codes"] = tuple(self._int(c, f"{at}[{k}]", 100, 599)
                                                    for k, c in enumerate(self._list(dest["RetryOnStatusCodes"],
                                                                                     at, 64)))
        if not values:
            return None
        policy = replace(base.retries, **values)
        if policy.num_retries == 0 and (values.get("retry_on_connect_failure") or values.get("retry_on_status_codes")):
            policy = replace(policy, num_retries=1)
        return policy

    def _opt(self, value: Any, where: str) -> str | None:
        return None if value in (None, "") else self._str(value, where)

    def _name(self, value: Any, where: str) -> str:
        text = self._str(value, where)
        if not text:
            raise self.fail(where, "is empty")
        return text

    # ------------------------------------------------------------------ targets

    def _flat(self, base: Upstream, chain: CompiledChain, res: ResolverSpec) -> Upstream:
        """Issue 14's flat upstream, filled from one resolver's target (failover applied)."""
        t = self._target(chain, res, base)
        return replace(base, endpoints=t.endpoints, spiffe_ids=t.spiffe_ids, connect_timeout_ms=t.connect_timeout_ms,
                       request_timeout_ms=t.request_timeout_ms or base.request_timeout_ms,
                       load_balancer=t.load_balancer)

    def _target(self, chain: CompiledChain, res: ResolverSpec, base: Upstream) -> ChainTarget:
        spec = chain.targets.get(res.target)
        if spec is None:
            raise self.fail(f"discovery chain {chain.service_name}", f"target {res.target!r:.200} is missing")
        endpoints = self._target_endpoints(chain, res.target)
        sid_target = spec
        for fid in res.failover if not endpoints else ():  # failover at snapshot time: the first with some
            found = self._target_endpoints(chain, fid)
            if found:
                endpoints, sid_target = found, chain.targets[fid]
                break
        room = _MAX_CHAIN_ENDPOINTS - self._total
        if len(endpoints) > room:  # the workers would refuse the snapshot: later targets get fewer (in order)
            self.chain_notes.append(f"discovery chain {chain.service_name}: target {spec.id} keeps {max(0, room)} "
                                    f"of {len(endpoints)} endpoints (at most {_MAX_CHAIN_ENDPOINTS} over its targets)")
            endpoints = endpoints[:max(0, room)]
        self._total += len(endpoints)
        entry = self._entry("service-resolver", spec.service)
        connect_timeout = base.connect_timeout_ms
        if entry.get("ConnectTimeout") not in (None, "") and not res.default and not self.explicit_connect_timeout:
            connect_timeout = max(1, min(MAX_TIMEOUT_MS, res.connect_timeout_ms))
        lb = base.load_balancer
        if res.load_balancer is not None and not res.default:
            lb = self._load_balancer(res.load_balancer, f"service-resolver {spec.service} LoadBalancer")
        return ChainTarget(id=spec.id, endpoints=endpoints, spiffe_ids=(self._spiffe(sid_target.service,
                                                                                     sid_target.datacenter),),
                           connect_timeout_ms=connect_timeout,
                           request_timeout_ms=max(0, min(MAX_TIMEOUT_MS, res.request_timeout_ms)),
                           load_balancer=lb)

    def _entry(self, kind: str, name: str) -> Map:
        row = self.catalog.config_entries.get(kind, name)
        return row.entry if row is not None else {}

    def _spiffe(self, service: str, datacenter: str) -> str:
        try:
            return service_id(self.catalog.connect.trust_domain, datacenter, service).uri()
        except SpiffeIDError as exc:
            raise self.fail(f"discovery chain target {service}", str(exc)) from None

    def _target_endpoints(self, chain: CompiledChain, target_id: str) -> tuple[Endpoint, ...]:
        """A target's mesh instances (sidecars, Connect-native) that pass its subset filter and health rule."""
        spec = chain.targets.get(target_id)
        if spec is None or spec.datacenter != self.datacenter:
            return ()  # only the local datacenter's instances are known here
        keep: Predicate | None = None
        if spec.filter:
            where = f"service-resolver {spec.service} Subsets.{spec.service_subset}.Filter"
            try:
                keep = subset_filter(spec.filter)
            except FilterError as exc:
                raise self.fail(where, str(exc)) from None
        # Per build, each instance is read once for all targets of its service (weights, address, port); a
        # filter's verdict is kept on the instance's view until its rows change. 120 subsets over 4,096
        # instances re-evaluated every filter on every rebuild: 3.5 s of the agent's loop per health change.
        text = spec.filter
        out: list[Endpoint] = []
        slot = 1 if spec.only_passing else 0
        for c in self._service_candidates(spec.service):
            ep = c[slot]
            if ep is None:
                continue
            if keep is not None:
                entry = c[3]
                if entry is None:
                    entry = c[3] = _view_entry(c[2])
                results = entry[4]
                hit = results.get(text)
                if hit is None:
                    if len(results) >= _MAX_RESULTS:
                        results.clear()
                    hit = results[text] = bool(keep(entry[3]))
                if not hit:
                    continue
            out.append(ep)
            if len(out) == MAX_ENDPOINTS:  # more would be refused by the workers; these are enough to balance
                break
        return tuple(out)

    def _service_candidates(self, service: str) -> list[_Candidate]:
        """`service`'s mesh instances as its targets read them in this build (see _Candidate)."""
        found = self._candidates.get(service)
        if found is not None:
            return found
        found = self._candidates[service] = []
        for inst in self.catalog.connect_instances(service):
            weight = _weight(inst, False)
            svc = inst.service
            address = svc.address or inst.node.address
            if not weight or not 1 <= svc.port <= 65535:
                continue  # no traffic, or no port to dial
            ip = self._ips.get(address)
            if ip is None:
                ip = self._ips[address] = is_ip(address)
            if not ip:
                continue  # a host name: a worker would block its event loop resolving it
            ep = Endpoint(address=address, port=svc.port, weight=weight, node=inst.node.node[:MAX_STR],
                          service_id=svc.id[:MAX_STR])
            found.append([ep, ep if inst.status == PASSING else None, inst, None])
        return found

    # ------------------------------------------------------------------ load balancer (Consul's CamelCase or
    # the upstream config's snake_case: keys match ignoring case and underscores)

    def _load_balancer(self, value: Any, where: str) -> LoadBalancer:
        if value is None:
            return LoadBalancer()
        raw = self._map(value, where)
        values: dict[str, Any] = {}
        policy = config_get(raw, "policy")
        if policy is not None:
            values["policy"] = self._str(policy, f"{where}.policy", LB_POLICIES)
        least = self._map(config_get(raw, "least_request_config"), f"{where}.least_request_config")
        choice = config_get(least, "choice_count", config_get(raw, "choice_count"))
        if choice:
            values["choice_count"] = self._int(choice, f"{where}.choice_count", 2, 100)
        ring = self._map(config_get(raw, "ring_hash_config"), f"{where}.ring_hash_config")
        for key in ("minimum_ring_size", "maximum_ring_size"):
            size = config_get(ring, key, config_get(raw, key))
            if size:
                values[key] = self._int(size, f"{where}.{key}", 1, 8_388_608)
        if values.get("minimum_ring_size", 1024) > values.get("maximum_ring_size", 8_388_608):
            raise self.fail(f"{where}.minimum_ring_size", "is above maximum_ring_size")
        policies = config_get(raw, "hash_policies")
        if policies is not None:
            values["hash_policies"] = tuple(self._hash_policy(p, f"{where}.hash_policies[{k}]")
                                            for k, p in enumerate(self._list(policies, f"{where}.hash_policies",
                                                                             100)))
        return LoadBalancer(**values)

    def _hash_policy(self, value: Any, where: str) -> HashPolicy:
        raw = self._map(value, where)
        field_ = self._str(config_get(raw, "field") or "", f"{where}.field",
                           ("", "header", "cookie", "query_parameter"))
        field_value = self._str(config_get(raw, "field_value") or "", f"{where}.field_value")
        source_ip = self._bool(config_get(raw, "source_ip", False), f"{where}.source_ip")
        if bool(field_) == source_ip:
            raise self.fail(where, "needs exactly one of field or source_ip")
        if field_ and not field_value:
            raise self.fail(f"{where}.field_value", "is required with field")
        return HashPolicy(field=field_, field_value=field_value, source_ip=source_ip,
                          terminal=self._bool(config_get(raw, "terminal", False), f"{where}.terminal"))


def _plain(route: ChainRoute) -> bool:
    """A route that changes nothing: the catch-all with no rewrite, timeout or retry override."""
    m = route.match
    return (m == RouteMatch(path_prefix="/") and route.prefix_rewrite is None and not route.request_timeout_ms
            and route.retries is None)


def _view_entry(inst: Instance) -> _ViewEntry:
    """The instance as the health API's entry (what subset filters select on) and its filter verdicts, rebuilt
    only when its node, service or checks rows changed: the catalog replaces a row on every change."""
    key = (inst.node.node, inst.service.id)
    cached = _views.get(key)
    if (cached is not None and cached[0] is inst.node and cached[1] is inst.service
            and len(cached[2]) == len(inst.checks)
            and all(a is b for a, b in zip(cached[2], inst.checks, strict=True))):
        return cached
    if len(_views) >= _MAX_VIEWS:
        _views.clear()
    entry: _ViewEntry = (inst.node, inst.service, inst.checks, health_entry_json(inst), {})
    _views[key] = entry
    return entry


def _weight(inst: Instance, only_passing: bool) -> int:
    """An instance's balancing weight by health (Weights.Passing / Weights.Warning), 0 = no traffic."""
    status = inst.status
    if status == PASSING:
        key = "Passing"
    elif status == WARNING and not only_passing:
        key = "Warning"
    else:
        return 0
    weights = inst.service.weights
    weight = weights.get(key, 1) if isinstance(weights, Mapping) else 1
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        return 0
    return min(weight, 65535)
