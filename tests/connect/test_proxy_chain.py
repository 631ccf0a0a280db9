"""An upstream's compiled discovery chain as snapshot routes and targets (agent/connect/proxy_chain.py), over a
real catalog: subsets by filter, OnlyPassing, failover at snapshot time, redirects, router matches and
overrides, the flat form for trivial chains and tcp, bounds, and errors naming the entry and field. Chains are
built by hand here (the compiler has its own tests); the last tests go through the real compiler."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.connect import ca
from meshagent.agent.connect.ca_plan import root_fields, stored_config
from meshagent.agent.connect.chain_model import (
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
from meshagent.agent.connect.proxy_chain import chain_upstream, compiled_chain, subset_filter
from meshagent.agent.connect.proxy_config_read import SnapshotError
from meshagent.proxy.snapshot import (
    MAX_ROUTES,
    MAX_SPLITS,
    HashPolicy,
    HeaderMatch,
    LoadBalancer,
    QueryMatch,
    Retries,
    RouteMatch,
    Upstream,
    WeightedTarget,
)

TD = "11111111-2222-3333-4444-555555555555.mesh"
DC = "dc1"
NOW = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)


class World:
    """A catalog with an initialized CA; sidecar instances carry their parent's Tags and Meta (sidecar.py)."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self._index = itertools.count(1)
        self.apply(commands.connect_ca("init", cluster_id="c1", trust_domain=TD, root=root_fields(ca.new_root(TD, NOW)),
                                       config=stored_config("consul", {}, False)))

    def apply(self, cmd: dict[str, Any]) -> Any:
        return self.catalog.apply(next(self._index), cmd)

    def entry(self, entry: dict[str, Any]) -> None:
        self.apply(commands.config_entry_set(entry))

    def instance(self, n: int, dest: str, status: str = "passing", version: str = "v1", tags: tuple[str, ...] = (),
                 warning_weight: int = 1) -> None:
        node, sid = f"n{n}", f"{dest}{n}-sidecar-proxy"
        svc = Service(node=node, id=sid, service=f"{dest}-sidecar-proxy", port=21000 + n, kind="connect-proxy",
                      proxy={"DestinationServiceName": dest}, meta={"version": version}, tags=list(tags),
                      weights={"Passing": 1, "Warning": warning_weight})
        check = Check(node=node, check_id=f"c-{sid}", status=status, service_id=sid, service_name=svc.service)
        self.apply(commands.register(Node(node=node, address=f"127.0.32.{100 + n}"), svc, [check]))

    def upstream(self, chain: CompiledChain, protocol: str = "http", **base: Any) -> Upstream:
        up = Upstream(destination_name=chain.service_name, local_bind_address="127.0.0.1", local_bind_port=9191,
                      datacenter=DC, protocol=protocol, spiffe_ids=(sid("web"),), **base)
        return chain_upstream(up, chain, self.catalog, datacenter=DC, proxy_id="front-sidecar-proxy",
                              service="front")


def sid(service: str) -> str:
    return f"spiffe://{TD}/ns/default/dc/{DC}/svc/{service}"


def tgt(service: str, subset: str = "", filter: str = "", only_passing: bool = False, dc: str = DC
        ) -> ChainTargetSpec:
    return ChainTargetSpec(id=f"{subset + '.' if subset else ''}{service}.default.default.{dc}", service=service,
                           service_subset=subset, datacenter=dc, filter=filter, only_passing=only_passing)


def res(t: ChainTargetSpec, failover: tuple[ChainTargetSpec, ...] = (), default: bool = False,
        **kw: Any) -> ChainNode:
    return ChainNode(RESOLVER, t.id, resolver=ResolverSpec(target=t.id, default=default,
                                                           failover=tuple(f.id for f in failover), **kw))


def chain(service: str, start: ChainNode, nodes: list[ChainNode], targets: list[ChainTargetSpec],
          protocol: str = "http") -> CompiledChain:
    return CompiledChain(service_name=service, datacenter=DC, protocol=protocol, start_node=start.key,
                         nodes={n.key: n for n in [start, *nodes]}, targets={t.id: t for t in targets})


V1 = tgt("web", "v1", "Service.Meta.version == v1")
V2 = tgt("web", "v2", "Service.Meta.version == v2")


def canary_world() -> World:
    w = World()
    w.instance(1, "web", version="v1")
    w.instance(2, "web", version="v1")
    w.instance(3, "web", version="v2")
    w.instance(4, "api")
    return w


def splitter(v1: int | float = 90, v2: int | float = 10) -> tuple[ChainNode, list[ChainNode]]:
    r1, r2 = res(V1), res(V2)
    return ChainNode(SPLITTER, "web.default.default", splits=(ChainSplitSpec(v1, r1.key), ChainSplitSpec(v2, r2.key))
                     ), [r1, r2]


def ports(eps: Any) -> list[int]:
    return sorted(e.port for e in eps)


def test_a_canary_splitter_by_meta_gives_weighted_targets_of_the_matching_instances() -> None:
    w = canary_world()
    start, nodes = splitter()
    u = w.upstream(chain("web", start, nodes, [V1, V2]))
    (route,) = u.routes
    assert route.match == RouteMatch(path_prefix="/") and route.name == "web default"
    assert route.splits == (WeightedTarget(V1.id, 9000), WeightedTarget(V2.id, 1000))
    by_id = {t.id: t for t in u.targets}
    assert ports(by_id[V1.id].endpoints) == [21001, 21002] and ports(by_id[V2.id].endpoints) == [21003]
    assert by_id[V2.id].spiffe_ids == (sid("web"),) and u.endpoints == ()
    # 0.01 % resolution; rounding drift lands on the largest share; zero weights are dropped
    start, nodes = splitter(66.67, 33.33)
    assert [s.weight for s in w.upstream(chain("web", start, nodes, [V1, V2])).routes[0].splits] == [6667, 3333]
    start, nodes = splitter(100, 0)
    assert w.upstream(chain("web", start, nodes, [V1, V2])).routes == ()  # one target left: flat
    w.instance(2, "web", version="v2")  # re-registered with new Meta: the cached filter view follows
    start, nodes = splitter()
    by_id = {t.id: t for t in w.upstream(chain("web", start, nodes, [V1, V2])).targets}
    assert ports(by_id[V1.id].endpoints) == [21001] and ports(by_id[V2.id].endpoints) == [21002, 21003]


def test_a_tags_contains_subset_and_the_health_rules() -> None:
    w = World()
    w.instance(1, "web", tags=("canary",))
    w.instance(2, "web", tags=("canary",), status="warning", warning_weight=3)
    w.instance(3, "web", tags=("canary",), status="critical")
    w.instance(4, "web")
    canary = tgt("web", "canary", "Service.Tags contains canary")
    u = w.upstream(chain("web", res(canary), [], [canary]))
    assert u.routes == () and ports(u.endpoints) == [21001, 21002]  # passing + warning (Consul's default)
    assert {e.port: e.weight for e in u.endpoints} == {21001: 1, 21002: 3}  # Weights.Warning for warning
    strict = tgt("web", "canary", "Service.Tags contains canary", only_passing=True)
    assert ports(w.upstream(chain("web", res(strict), [], [strict])).endpoints) == [21001]
    everyone = tgt("web")
    assert ports(w.upstream(chain("web", res(everyone, default=True), [], [everyone])).endpoints) == [
        21001, 21002, 21004]


def test_failover_at_snapshot_time_when_a_subset_is_empty_or_critical() -> None:
    w = canary_world()
    backup = tgt("api")
    v3 = tgt("web", "v3", "Service.Meta.version == v3")  # no instance at all
    u = w.upstream(chain("web", res(v3, failover=(V2, backup)), [], [v3, V2, backup]))
    assert ports(u.endpoints) == [21003] and u.spiffe_ids == (sid("web"),)
    w.instance(3, "web", version="v2", status="critical")  # every v2 critical: the next failover target
    u = w.upstream(chain("web", res(v3, failover=(V2, backup)), [], [v3, V2, backup]))
    assert ports(u.endpoints) == [21004] and u.spiffe_ids == (sid("api"),)
    # in a split, each target fails over on its own
    start = ChainNode(SPLITTER, "web.default.default", splits=(ChainSplitSpec(50, res(V1).key),
                                                               ChainSplitSpec(50, f"resolver:{v3.id}")))
    u = w.upstream(chain("web", start, [res(V1), res(v3, failover=(backup,))], [V1, v3, backup]))
    by_id = {t.id: t for t in u.targets}
    assert ports(by_id[v3.id].endpoints) == [21004] and by_id[v3.id].spiffe_ids == (sid("api"),)
    # nothing anywhere: the target stays empty (the data plane answers 503), never an error
    u = w.upstream(chain("web", res(v3, failover=(tgt("nothing"),)), [], [v3, tgt("nothing")]))
    assert u.endpoints == () and u.spiffe_ids == (sid("web"),)


def test_a_redirect_resolves_to_the_other_service_and_its_identity() -> None:
    w = canary_world()
    api = tgt("api")
    u = w.upstream(chain("web", res(api), [], [api]))  # the compiler followed web's Redirect to api
    assert ports(u.endpoints) == [21004] and u.spiffe_ids == (sid("api"),)
    other_dc = tgt("web", dc="dc2")  # no instances of other datacenters are known yet
    assert w.upstream(chain("web", res(other_dc), [], [other_dc])).endpoints == ()


def route(match: dict[str, Any], dest: dict[str, Any], nxt: ChainNode) -> ChainRouteSpec:
    return ChainRouteSpec({"Match": {"HTTP": match}, "Destination": dest}, nxt.key)


def test_a_router_becomes_routes_in_order_with_matches_and_overrides() -> None:
    w = canary_world()
    admin_t, web_t = tgt("admin"), tgt("web")
    w.instance(5, "admin")
    r_admin, r_v2, r_web = res(admin_t), res(V2), res(web_t, default=True)
    split, (r1, r2) = splitter()
    routes = (
        route({"PathPrefix": "/admin"}, {"Service": "admin", "PrefixRewrite": "/", "RequestTimeout": "2s",
                                         "NumRetries": 3, "RetryOnStatusCodes": [503]}, r_admin),
        route({"Header": [{"Name": "x-canary", "Exact": "1"}, {"Name": "x-debug"},
                          {"Name": "x-no", "Present": True, "Invert": True}],
               "QueryParam": [{"Name": "beta", "Exact": "yes"}, {"Name": "trace"}],
               "Methods": ["get", "POST"], "PathRegex": "/api/.*"}, {"ServiceSubset": "v2"}, r_v2),
        route({"PathExact": "/split"}, {}, split),
        route({"PathPrefix": "/"}, {"Service": "web"}, r_web))
    start = ChainNode(ROUTER, "web.default.default", routes=routes)
    u = w.upstream(chain("web", start, [r_admin, r_v2, r_web, split, r1, r2], [admin_t, V1, V2, web_t]),
                   retries=Retries(num_retries=1, retry_on_connect_failure=False))
    admin, canary, split_route, default = u.routes
    assert admin.match == RouteMatch(path_prefix="/admin") and admin.prefix_rewrite == "/"
    assert admin.request_timeout_ms == 2000 and admin.splits == (WeightedTarget(admin_t.id, 10000),)
    assert admin.retries == Retries(num_retries=3, retry_on_connect_failure=False, retry_on_status_codes=(503,))
    assert canary.match == RouteMatch(
        path_regex="/api/.*", methods=("GET", "POST"),
        headers=(HeaderMatch("x-canary", exact="1"), HeaderMatch("x-debug", present=True),
                 HeaderMatch("x-no", present=True, invert=True)),
        query=(QueryMatch("beta", exact="yes"), QueryMatch("trace", present=True)))
    assert canary.retries is None and canary.prefix_rewrite is None and canary.request_timeout_ms == 0
    assert split_route.match == RouteMatch(path_exact="/split") and len(split_route.splits) == 2
    assert default.name == "web default" and default.match == RouteMatch(path_prefix="/")
    assert [r.name for r in u.routes[:3]] == ["web route 0", "web route 1", "web route 2"]
    assert {t.id for t in u.targets} == {admin_t.id, V1.id, V2.id, web_t.id}
    assert {t.id: ports(t.endpoints) for t in u.targets}[admin_t.id] == [21005]
    assert {t.id: t.spiffe_ids for t in u.targets}[admin_t.id] == (sid("admin"),)


def test_a_trivial_chain_keeps_the_flat_form_with_the_upstream_settings() -> None:
    w = canary_world()
    web = tgt("web")
    lb = LoadBalancer(policy="round_robin")
    u = w.upstream(chain("web", res(web, default=True), [], [web]), connect_timeout_ms=700, load_balancer=lb,
                   request_timeout_ms=1500)
    assert u.routes == () and u.targets == () and ports(u.endpoints) == [21001, 21002, 21003]
    assert (u.connect_timeout_ms, u.load_balancer, u.request_timeout_ms) == (700, lb, 1500)


def test_a_tcp_upstream_follows_the_chain_to_one_resolver_and_the_resolver_entry_wins() -> None:
    w = canary_world()
    w.entry({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "250ms",
             "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 64},
                              "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}, {"SourceIP": True}]}})
    raw_lb = w.catalog.config_entries.get("service-resolver", "web").entry["LoadBalancer"]  # type: ignore[union-attr]
    start, nodes = splitter(10, 90)
    nodes = [ChainNode(RESOLVER, V1.id, resolver=ResolverSpec(target=V1.id, connect_timeout_ms=250)),
             ChainNode(RESOLVER, V2.id, resolver=ResolverSpec(target=V2.id, connect_timeout_ms=250,
                                                              request_timeout_ms=3000, load_balancer=raw_lb))]
    # a chain compiled for http, given to a tcp upstream: compiled again as Consul would for it (routers and
    # splitters off), so the service's own resolver, not the largest split (review finding 2)
    u = w.upstream(chain("web", start, nodes, [V1, V2], protocol="tcp"), protocol="tcp", connect_timeout_ms=700)
    assert u.routes == () and ports(u.endpoints) == [21001, 21002, 21003]
    assert u.connect_timeout_ms == 250 and u.request_timeout_ms == 15000  # the resolver sets none
    assert u.load_balancer == LoadBalancer(policy="ring_hash", minimum_ring_size=64, hash_policies=(
        HashPolicy(field="header", field_value="x-user"), HashPolicy(source_ip=True)))
    # as http, the split choice hashes with the resolver's hash policies; a target whose resolver sets no
    # LoadBalancer keeps the upstream's
    u = w.upstream(chain("web", start, nodes, [V1, V2]), connect_timeout_ms=700)
    by_id = {t.id: t for t in u.targets}
    assert by_id[V1.id].connect_timeout_ms == 250  # web's resolver entry sets ConnectTimeout
    assert by_id[V1.id].load_balancer == LoadBalancer() and u.load_balancer.policy == "ring_hash"


def test_bounds_and_bad_values_fail_naming_the_entry_and_field() -> None:
    w = canary_world()
    web = tgt("web")
    r = res(web)
    many = ChainNode(ROUTER, "web.default.default", routes=tuple(route({"PathExact": f"/{k}"}, {}, r)
                                                               for k in range(MAX_ROUTES + 1)))
    with pytest.raises(SnapshotError, match=r"service-router web Routes: 257 routes"):
        w.upstream(chain("web", many, [r], [web]))
    wide = ChainNode(SPLITTER, "web.default.default", splits=tuple(ChainSplitSpec(0.1, r.key)
                                                                   for _ in range(MAX_SPLITS + 1)))
    with pytest.raises(SnapshotError, match=r"service-splitter web Splits: 257 splits"):
        w.upstream(chain("web", wide, [r], [web]))
    bad = tgt("web", "v9", "Service.Nope == 1")
    with pytest.raises(SnapshotError, match=r"front-sidecar-proxy.*service-resolver web Subsets\.v9\.Filter"):
        w.upstream(chain("web", res(bad), [], [bad]))
    forged = ChainNode(ROUTER, "web.default.default", routes=(
        ChainRouteSpec({"Match": {"HTTP": {"Header": [{"Name": 7}]}}}, r.key),))
    with pytest.raises(SnapshotError, match=r"service-router web default route\.Match\.HTTP\.Header\[0\]\.Name"):
        w.upstream(chain("web", forged, [r], [web]))
    lost = ChainNode(ROUTER, "web.default.default", routes=(ChainRouteSpec({}, "resolver:gone"),))
    with pytest.raises(SnapshotError, match=r"not in the compiled chain"):
        w.upstream(chain("web", lost, [], [web]))


def test_subset_filters_are_compiled_once_per_text() -> None:
    assert subset_filter("Service.Meta.version == v2") is subset_filter("Service.Meta.version == v2")


# ---------------------------------------------------------------------- through the real compiler


def test_chains_compile_once_per_entry_index_and_watch_keys_follow_them() -> None:
    from meshagent.agent.connect.proxy_snapshot import watch_keys

    w = canary_world()
    first = compiled_chain(w.catalog, "web", DC)
    assert first is not None and compiled_chain(w.catalog, "web", DC) is first
    w.entry({"Kind": "service-defaults", "Name": "backup", "Protocol": "http"})  # one protocol over a chain
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    w.entry({"Kind": "service-resolver", "Name": "web", "Failover": {"*": {"Service": "backup"}}})
    assert compiled_chain(w.catalog, "web", DC) is not first
    proxy = ServiceDefinition(name="front-sidecar-proxy", id="front-sidecar-proxy", port=21000,
                              kind="connect-proxy", proxy={"DestinationServiceName": "front", "Upstreams": [
                                  {"DestinationName": "web", "LocalBindPort": 9191}]})
    keys = watch_keys(proxy, w.catalog, DC)
    assert {"connect:web", "connect:backup", "config-entry:service-router",
            "config-entry:service-splitter", "config-entry:service-resolver"} <= set(keys)
    assert "connect:backup" not in watch_keys(proxy)


def test_entries_through_the_compiler_canary_failover_and_tcp() -> None:
    w = canary_world()
    w.instance(5, "backup")
    w.entry({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1", "ConnectTimeout": "300ms",
             "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                         "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True}},
             "Failover": {"v2": {"Service": "backup"}}})
    tcp = w.upstream(compiled_chain(w.catalog, "web", DC), protocol="tcp")
    assert tcp.routes == () and ports(tcp.endpoints) == [21001, 21002] and tcp.connect_timeout_ms == 300
    w.entry({"Kind": "service-defaults", "Name": "backup", "Protocol": "http"})  # one protocol over a chain
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    w.entry({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 75, "ServiceSubset": "v1"},
                                                                  {"Weight": 25, "ServiceSubset": "v2"}]})
    u = w.upstream(compiled_chain(w.catalog, "web", DC))
    assert [(s.target, s.weight) for s in u.routes[0].splits] == [(V1.id, 7500), (V2.id, 2500)]
    assert {t.id: ports(t.endpoints) for t in u.targets} == {V1.id: [21001, 21002], V2.id: [21003]}
    w.instance(3, "web", version="v2", status="warning")  # OnlyPassing: v2 is empty, backup takes it
    u = w.upstream(compiled_chain(w.catalog, "web", DC))
    v2 = next(t for t in u.targets if t.id == V2.id)
    assert ports(v2.endpoints) == [21005] and v2.spiffe_ids == (sid("backup"),)
