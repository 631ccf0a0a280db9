"""ProxySnapshot.check() on an upstream's discovery chain (proxy/chain_check.py): a good chain round-trips;
hostile routes and targets are refused with the field named; a DataPlane given an unchecked bad chain
reports it and routes nothing instead of raising."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import (
    MAX_ROUTES,
    ChainRoute,
    ChainTarget,
    Endpoint,
    HashPolicy,
    HeaderMatch,
    LoadBalancer,
    ProxyConfigError,
    ProxySnapshot,
    QueryMatch,
    Retries,
    RouteMatch,
    TLSMaterial,
    Upstream,
    WeightedTarget,
)

from tests.support.dataplane_harness import material
from tests.support.mesh_certs import MeshCA

V1, V2 = "v1.db.default.default.dc1", "v2.db.default.default.dc1"
SID = "spiffe://td.mesh/ns/default/dc/dc1/svc/db"


def chain_upstream(**kw: Any) -> Upstream:
    routes = (
        ChainRoute(RouteMatch(path_prefix="/admin", methods=("GET",),
                              headers=(HeaderMatch("x-canary", regex="1|yes"),),
                              query=(QueryMatch("v", exact="2"),)),
                   (WeightedTarget(V2, 10000),), prefix_rewrite="/", request_timeout_ms=500,
                   retries=Retries(num_retries=2, retry_on_status_codes=(503,)), name="db route 0"),
        ChainRoute(RouteMatch(path_prefix="/"), (WeightedTarget(V1, 9000), WeightedTarget(V2, 1000)),
                   name="db default"),
    )
    targets = (ChainTarget(V1, (Endpoint("127.0.31.5", 21000),), (SID,)),
               ChainTarget(V2, (Endpoint("127.0.31.6", 21000, 2),), (SID,), 1000, 2000,
                           LoadBalancer("ring_hash", hash_policies=(HashPolicy("header", "x-user"),))))
    base: dict[str, Any] = dict(destination_name="db", local_bind_address="127.0.31.1", local_bind_port=9191,
                                protocol="http", routes=routes, targets=targets)
    base.update(kw)
    return Upstream(**base)


def snapshot(**kw: Any) -> ProxySnapshot:
    return ProxySnapshot(
        proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
        tls=TLSMaterial("CERT", "KEY", ("ROOT",), "td.mesh", "spiffe://td.mesh/ns/default/dc/dc1/svc/web"),
        public_address="127.0.31.1", public_port=21000, upstreams=(chain_upstream(**kw),))


def test_a_chain_round_trips_through_msgpack_and_json() -> None:
    snap = snapshot()
    assert ProxySnapshot.from_wire(msgpack.unpackb(msgpack.packb(snap.to_wire()))) == snap
    assert ProxySnapshot.from_wire(json.loads(json.dumps(snap.to_wire()))) == snap


U = ("upstreams", 0)
R0, R1 = (*U, "routes", 0), (*U, "routes", 1)
T0 = (*U, "targets", 0)


@pytest.mark.parametrize(("path", "value", "message"), [
    ((*U, "protocol"), "tcp", "upstreams[0].routes: only http upstreams have routes"),
    ((*U, "routes"), [], "upstreams[0].targets: targets without routes"),
    ((*U, "routes"), [{"splits": [{"target": V1, "weight": 10000}]}] * (MAX_ROUTES + 1), "items, more than"),
    ((*R1, "splits"), [], "routes[1].splits: a route needs at least one split"),
    ((*R1, "splits", 0, "weight"), 8999, "routes[1].splits: weights sum to 9999, not 10000"),
    ((*R1, "splits", 0, "weight"), 0, "routes[1].splits[0].weight: 0 is not between 1 and 10000"),
    ((*R1, "splits", 0, "weight"), -1000, "routes[1].splits[0].weight: -1000 is not between"),
    ((*R1, "splits", 0, "weight"), 10.5, "routes[1].splits[0].weight: expected an integer"),
    ((*R1, "splits", 1, "target"), "v3.db.default.default.dc1", "routes[1].splits[1].target: 'v3.db"),
    ((*U, "targets", 1, "id"), V1, "upstreams[0].targets[1].id: 'v1.db.default.default.dc1' is not unique"),
    ((*T0, "id"), "", "targets[0].id: '' is not 1-512 printable"),
    ((*T0, "id"), "a b", "targets[0].id: 'a b' is not"),
    ((*T0, "id"), "x\n", "targets[0].id:"),
    ((*T0, "endpoints", 0, "address"), "db.service.consul", "targets[0].endpoints[0].address: 'db.service"),
    ((*T0, "endpoints", 0, "port"), 0, "targets[0].endpoints[0].port: 0 is not a port"),
    ((*T0, "endpoints", 0, "weight"), 0, "targets[0].endpoints[0].weight: 0 is below 1"),
    ((*T0, "spiffe_ids", 0), "db", "targets[0].spiffe_ids[0]: 'db' is not a SPIFFE ID"),
    ((*T0, "connect_timeout_ms"), 0, "targets[0].connect_timeout_ms: 0 is not between"),
    ((*T0, "request_timeout_ms"), -1, "targets[0].request_timeout_ms: -1 is not between"),
    ((*R0, "match", "path_exact"), "/x", "routes[0].match: at most one of path_exact, path_prefix, path_regex"),
    ((*R0, "match", "path_prefix"), "admin", "routes[0].match.path_prefix: 'admin' is not a path beginning"),
    ((*R0, "match", "path_prefix"), "/a\r\nb", "routes[0].match.path_prefix: '/a\\r\\nb'"),
    ((*R1, "match"), {"path_regex": "(unclosed"}, "routes[1].match.path_regex: RE2 refuses '(unclosed'"),
    ((*R1, "match"), {"path_regex": "(a)\\1"}, "routes[1].match.path_regex: RE2 refuses"),  # backreference
    ((*R0, "match", "methods", 0), "GE T", "routes[0].match.methods[0]: 'GE T' is not a method"),
    ((*R0, "match", "headers", 0, "name"), "", "routes[0].match.headers[0].name: '' is not a header name"),
    ((*R0, "match", "headers", 0, "name"), "x\r\ny", "match.headers[0].name:"),
    ((*R0, "match", "headers", 0, "exact"), "1", "headers[0]: at most one of present, exact, prefix"),
    ((*R0, "match", "headers", 0, "regex"), "(?=x)", "match.headers[0].regex: RE2 refuses"),  # lookahead
    ((*R0, "match", "query", 0, "name"), "", "routes[0].match.query[0].name: empty"),
    ((*R0, "match", "query", 0, "present"), True, "query[0]: at most one of present, exact, regex"),
    ((*R0, "match", "query", 0), {"name": "v", "regex": "["}, "match.query[0].regex: RE2 refuses"),
    ((*R0, "prefix_rewrite"), "/a\nb", "routes[0].prefix_rewrite: '/a\\nb' has control characters"),
    ((*R1, "prefix_rewrite"), "/x", "routes[1].prefix_rewrite:"),  # fine: / is a prefix; see the next line
    ((*R0, "match", "path_prefix"), None, "routes[0].prefix_rewrite: needs match.path_exact or match.path_prefix"),
    ((*R0, "request_timeout_ms"), -5, "routes[0].request_timeout_ms: -5 is not between"),
    ((*R0, "retries", "num_retries"), 10**6, "routes[0].retries.num_retries: 1000000 is not between"),
    ((*R0, "retries", "retry_on_status_codes", 0), 99, "retry_on_status_codes[0]: 99 is not between"),
    ((*R0, "retries", "max_interval_ms"), -1, "routes[0].retries.max_interval_ms: -1 is not between 0"),
    ((*R0, "retries", "budget_percent"), 101.0, "routes[0].retries.budget_percent: 101.0 is not between"),
    ((*R0, "retries"), "many", "routes[0].retries: expected a map"),
])
def test_hostile_chains_are_refused_naming_the_field(path: tuple[Any, ...], value: Any, message: str) -> None:
    wire = snapshot().to_wire()
    if path == (*R1, "prefix_rewrite"):  # a rewrite on the catch-all prefix "/" is fine
        wire["upstreams"][0]["routes"][1]["prefix_rewrite"] = "/x"
        assert ProxySnapshot.from_wire(wire).upstreams[0].routes[1].prefix_rewrite == "/x"
        return
    target = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ProxyConfigError) as err:
        ProxySnapshot.from_wire(wire)
    assert message in str(err.value)


def test_endpoints_over_all_targets_are_bounded() -> None:
    eps = tuple(Endpoint("127.0.31.9", 1 + i) for i in range(4096))
    targets = tuple(ChainTarget(f"t{i}.db.default.default.dc1", eps) for i in range(5))
    routes = (ChainRoute(RouteMatch(), (WeightedTarget(targets[0].id, 10000),)),)
    with pytest.raises(ProxyConfigError, match=r"upstreams\[0\].targets: more than 16384 endpoints in all"):
        snapshot(targets=targets, routes=routes).check()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["routes", "targets"]), st.integers(0, 1),
       st.sampled_from(["match", "splits", "prefix_rewrite", "retries", "id", "endpoints", "load_balancer",
                        "request_timeout_ms", "spiffe_ids"]), _json)
def test_any_value_in_a_chain_builds_or_is_refused_cleanly(kind: str, i: int, key: str, value: Any) -> None:
    wire = snapshot().to_wire()
    wire["upstreams"][0][kind][i][key] = value
    try:
        ProxySnapshot.from_wire(wire)
    except ProxyConfigError:
        pass


def test_an_unchecked_bad_chain_is_reported_by_apply_and_routes_nothing() -> None:
    ca = MeshCA()
    reactor = Reactor()
    try:
        dp = DataPlane(reactor, ProxyMetrics("web", "dc1"))
        bad = chain_upstream(routes=(ChainRoute(RouteMatch(path_regex="(x"), (WeightedTarget(V1, 10000),)),))
        snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                             tls=material(ca, "web"), public_address="127.0.31.1", public_port=21000,
                             upstreams=(bad,))
        errors = dp.apply(snap)
        assert len(errors) == 1 and "path_regex: RE2 refuses" in errors[0]
        state = dp.upstream("db")
        assert state is not None and state.chain is not None and state.chain.router.routes == ()
        assert set(state.chain.targets) == {V1, V2}
        dp.close()
    finally:
        reactor.close()


def test_target_states_are_kept_by_upstream_and_id_and_follow_the_tls_generation() -> None:
    ca = MeshCA()
    reactor = Reactor()
    try:
        dp = DataPlane(reactor, ProxyMetrics("web", "dc1"))

        def snap(up: Upstream, leaf: TLSMaterial | None = None) -> ProxySnapshot:
            return ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                                 tls=leaf or tls, public_address="127.0.31.1", public_port=21000, upstreams=(up,))

        tls = material(ca, "web")
        up = chain_upstream()
        assert dp.apply(snap(up)) == []
        state = dp.upstream("db")
        assert state is not None and state.chain is not None
        v1, v2, router = state.chain.targets[V1], state.chain.targets[V2], state.chain.router
        assert (v1.name, v1.spiffe_ids, v2.config.connect_timeout_ms) == (V1, (SID,), 1000)
        g1, g2 = v1.tls_generation, v2.tls_generation
        moved = replace(up, targets=(replace(up.targets[0], endpoints=(Endpoint("127.0.31.7", 21000),)),
                                     up.targets[1]))
        assert dp.apply(snap(moved)) == []  # an endpoint change: same states, same router, same generation
        assert state.chain.targets[V1] is v1 and state.chain.targets[V2] is v2 and state.chain.router is router
        assert v1.config.endpoints == (Endpoint("127.0.31.7", 21000),) and v1.tls_generation == g1
        assert dp.apply(snap(moved, material(ca, "web"))) == []  # a new leaf: pooled connections are stale
        assert (v1.tls_generation, v2.tls_generation) == (g1 + 1, g2 + 1)
        only_v1 = replace(moved, routes=(ChainRoute(RouteMatch(), (WeightedTarget(V1, 10000),)),),
                          targets=moved.targets[:1])
        assert dp.apply(snap(only_v1)) == []
        assert set(state.chain.targets) == {V1} and state.chain.router is not router
        assert dp.apply(snap(replace(only_v1, routes=(), targets=()))) == []  # flat again
        assert state.chain is None
        dp.close()
    finally:
        reactor.close()
