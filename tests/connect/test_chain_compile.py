"""The discovery chain compiler: Consul's defaults, router/splitter/resolver combinations, nested splitter
flattening, redirects, failover, tcp ignoring routers and splitters, cycles and bounds (ChainError naming the
entry and field), and random entry graphs never hanging or raising anything but ChainError."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.agent.connect.chain_api_shape import go_duration
from meshagent.agent.connect.chain_compile import MAX_NODES, MAX_SPLIT_DEPTH, ChainError, compile_chain
from meshagent.agent.connect.entry_validate import EntryError, check_references, normalize_entry

TD = "11111111-2222-3333-4444-555555555555.consul"


def lookup(*entries: dict[str, Any]) -> Any:
    """A lookup over normalized entries, as the catalog serves them."""
    table = {(e["Kind"], e["Name"]): e for e in (normalize_entry(x) for x in entries)}
    return lambda kind, name: table.get((kind, name))


def http(*names: str) -> list[dict[str, Any]]:
    return [{"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in names]


def compile_(service: str, *entries: dict[str, Any], **kw: Any) -> Any:
    return compile_chain(service, lookup(*entries), datacenter="dc1", trust_domain=TD, **kw)


SUBSETS = {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2",
                                                                   "OnlyPassing": True}}


def test_no_entries_compile_consuls_default_chain() -> None:
    chain = compile_("web")
    assert chain.default and chain.protocol == "tcp"
    assert chain.start_node == "resolver:web.default.default.dc1"
    api = chain.to_api()
    assert api["Nodes"] == {"resolver:web.default.default.dc1": {
        "Type": "resolver", "Name": "web.default.default.dc1",
        "Resolver": {"Default": True, "ConnectTimeout": "5s", "Target": "web.default.default.dc1"}}}
    target = api["Targets"]["web.default.default.dc1"]
    assert target["SNI"] == target["Name"] == f"web.default.dc1.internal.{TD}"
    assert target["Subset"] == {} and target["MeshGateway"] == {} and target["ConnectTimeout"] == "5s"
    assert api["Default"] is True and "CustomizationHash" not in api


def test_router_splitter_resolver_canary_chain() -> None:
    router = {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin", "PrefixRewrite": "/"}},
        {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "v2"}}]}
    splitter = {"Kind": "service-splitter", "Name": "web",
                "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}
    resolver = {"Kind": "service-resolver", "Name": "web", "Subsets": SUBSETS, "ConnectTimeout": "1500ms",
                "RequestTimeout": "3s", "LoadBalancer": {"Policy": "ring_hash",
                                                         "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}}
    chain = compile_("web", *http("web", "admin"), router, splitter, resolver)
    assert chain.protocol == "http" and not chain.default
    assert chain.start_node == "router:web.default.default"
    routes = chain.nodes[chain.start_node].routes
    assert [r.next_node for r in routes] == [
        "resolver:admin.default.default.dc1", "resolver:v2.web.default.default.dc1", "splitter:web.default.default"]
    assert routes[-1].definition == {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "web"}}
    assert routes[0].definition["Destination"]["PrefixRewrite"] == "/"
    splits = chain.nodes["splitter:web.default.default"].splits
    assert [(s.weight, s.next_node) for s in splits] == [(90, "resolver:v1.web.default.default.dc1"),
                                                         (10, "resolver:v2.web.default.default.dc1")]
    v2 = chain.targets["v2.web.default.default.dc1"]
    assert (v2.filter, v2.only_passing, v2.connect_timeout_ms, v2.request_timeout_ms) == (
        "Service.Meta.version == v2", True, 1500, 3000)
    assert chain.targets["admin.default.default.dc1"].connect_timeout_ms == 5000
    api = chain.to_api()
    resolver_json = api["Nodes"]["resolver:v1.web.default.default.dc1"]
    assert resolver_json["Resolver"] == {"ConnectTimeout": "1.5s", "RequestTimeout": 3_000_000_000,
                                         "Target": "v1.web.default.default.dc1"}
    assert resolver_json["LoadBalancer"]["Policy"] == "ring_hash"
    assert api["Nodes"]["splitter:web.default.default"]["LoadBalancer"]["Policy"] == "ring_hash"
    assert api["Nodes"]["resolver:admin.default.default.dc1"]["Resolver"]["Default"] is True
    assert set(api["Targets"]) == {"admin.default.default.dc1", "v1.web.default.default.dc1",
                                   "v2.web.default.default.dc1"}  # web itself is reached by nothing


def test_nested_splitters_are_flattened_and_sum_to_100() -> None:
    entries = [*http("web", "api", "api-b"),
               {"Kind": "service-splitter", "Name": "web", "Splits": [
                   {"Weight": 50, "Service": "api"}, {"Weight": 50, "Service": "web", "ServiceSubset": "v1"}]},
               {"Kind": "service-splitter", "Name": "api", "Splits": [
                   {"Weight": 33.33, "Service": "api", "RequestHeaders": {"Set": {"x-a": "1"}}},
                   {"Weight": 66.67, "Service": "api-b"}]},
               {"Kind": "service-splitter", "Name": "api-b", "Splits": [
                   {"Weight": 100, "Service": "api-b"}, {"Weight": 0, "Service": "api", "ServiceSubset": "x"}]},
               {"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}}},
               {"Kind": "service-resolver", "Name": "api", "Subsets": {"x": {}}}]
    chain = compile_("web", *entries)
    splits = chain.nodes[chain.start_node].splits
    pairs = [(s.weight, s.next_node) for s in splits]
    assert pairs == [(16.67, "resolver:api.default.default.dc1"), (33.33, "resolver:api-b.default.default.dc1"),
                     (50, "resolver:v1.web.default.default.dc1")]
    assert round(sum(s.weight for s in splits) * 100) == 10000
    assert "splitter:api.default.default" not in chain.nodes  # flattened away, as Consul prunes it
    assert "x.api.default.default.dc1" not in chain.targets  # the zero-weight split is dropped
    assert splits[0].definition["RequestHeaders"] == {"Set": {"x-a": "1"}}


def test_redirect_default_subset_and_failover() -> None:
    entries = [{"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "api"}},
               {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v2", "Subsets": SUBSETS,
                "Failover": {"v2": {"ServiceSubset": "v1"}, "*": {"Datacenters": ["dc2", "dc1"]}}},
               {"Kind": "service-resolver", "Name": "db", "Failover": {"*": {"Targets": [
                   {"Service": "db-b"}, {"Datacenter": "dc3"}]}}}]
    chain = compile_("web", *entries)
    assert chain.start_node == "resolver:v2.api.default.default.dc1" and not chain.default
    resolver = chain.nodes[chain.start_node].resolver
    assert resolver is not None and resolver.failover == ("v1.api.default.default.dc1",)
    assert set(chain.targets) == {"v2.api.default.default.dc1", "v1.api.default.default.dc1"}
    v1 = compile_("api", *entries, override_connect_timeout_ms=0)
    assert v1.start_node == "resolver:v2.api.default.default.dc1"
    db = compile_("db", *entries).nodes["resolver:db.default.default.dc1"].resolver
    assert db is not None and db.failover == ("db-b.default.default.dc1", "db.default.default.dc3")
    star = compile_chain("api", lookup(*entries[1:2]), datacenter="dc1", trust_domain=TD)
    assert star.targets["v2.api.default.default.dc1"].sni == f"v2.api.default.dc1.internal.{TD}"


def test_tcp_ignores_routers_and_splitters_and_overrides_customize() -> None:
    router = {"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"Service": "admin"}}]}
    splitter = {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "Service": "admin"}]}
    # entries stored while web was http; the service went back to tcp (proxy-defaults now says tcp)
    chain = compile_("web", router, splitter)
    assert chain.protocol == "tcp" and chain.start_node == "resolver:web.default.default.dc1" and chain.default
    l7 = compile_("web", *http("web", "admin"), router, splitter,
                  override_protocol="tcp", override_connect_timeout_ms=7000, override_mesh_gateway="remote")
    assert l7.protocol == "tcp" and l7.start_node == "resolver:web.default.default.dc1"
    api = l7.to_api()
    assert len(api["CustomizationHash"]) == 8
    assert api["Nodes"][l7.start_node]["Resolver"]["ConnectTimeout"] == "7s"
    assert api["Targets"]["web.default.default.dc1"]["MeshGateway"] == {"Mode": "remote"}
    assert compile_("web", *http("web")).to_api().get("CustomizationHash") is None


def test_service_meta_external_sni_and_mesh_gateway_defaults() -> None:
    chain = compile_("web", {"Kind": "service-defaults", "Name": "web", "Meta": {"team": "a"},
                             "ExternalSNI": "web.example.com"})
    api = chain.to_api()
    assert api["ServiceMeta"] == {"team": "a"}
    target = api["Targets"]["web.default.default.dc1"]
    assert target["External"] is True and target["SNI"] == "web.example.com"
    assert target["Name"] == f"web.default.dc1.internal.{TD}"
    mesh = compile_("api", {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}})
    assert mesh.targets["api.default.default.dc1"].mesh_gateway == "local"
    with pytest.raises(ChainError) as err:
        compile_("web", {"Kind": "service-defaults", "Name": "web", "ExternalSNI": "x.example"},
                 {"Kind": "service-resolver", "Name": "web", "Subsets": {"a": {}}})
    assert err.value.kind == "service-resolver" and err.value.field == "Subsets"


def test_redirect_cycle_names_the_entry_and_field() -> None:
    a = {"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}}
    b = {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}
    with pytest.raises(ChainError) as err:
        compile_("b", a, b)
    assert isinstance(err.value, EntryError)
    assert (err.value.kind, err.value.name, err.value.field) == ("service-resolver", "a", "Redirect.Service")
    assert "redirect cycle b -> a -> b" in str(err.value)
    blamed = err.value.blame("service-resolver", "b")
    assert str(blamed) == "service-resolver b: field Redirect.Service: redirect cycle b -> a -> b"
    three = [{"Kind": "service-resolver", "Name": n, "Redirect": {"Service": m}} for n, m in
             (("a", "b"), ("b", "c"), ("c", "a"))]
    with pytest.raises(ChainError, match="redirect cycle a -> b -> c -> a"):
        compile_("a", *three)
    with pytest.raises(ChainError, match="redirect cycle"):  # a subset redirect loop within one service
        compile_("s", {"Kind": "service-resolver", "Name": "s", "Redirect": {"Service": "t", "ServiceSubset": "x"}},
                 {"Kind": "service-resolver", "Name": "t", "Redirect": {"Service": "s"}})


def test_splitter_cycle_names_the_splitter_and_split() -> None:
    entries = [*http("a", "b", "c"),
               {"Kind": "service-splitter", "Name": "a", "Splits": [{"Weight": 100, "Service": "b"}]},
               {"Kind": "service-splitter", "Name": "b", "Splits": [{"Weight": 50, "Service": "b"},
                                                                     {"Weight": 50, "Service": "c"}]},
               {"Kind": "service-splitter", "Name": "c", "Splits": [{"Weight": 100, "Service": "a"}]}]
    with pytest.raises(ChainError) as err:
        compile_("a", *entries)
    assert (err.value.kind, err.value.name, err.value.field) == ("service-splitter", "c", "Splits[0].Service")
    assert "splitter cycle a -> b -> c -> a" in str(err.value)
    assert err.value.blame("service-splitter", "b").field == "Splits[1].Service"
    # a splitter sending part of its traffic to its own service's resolver is no cycle (Consul)
    assert compile_("b", *http("b", "c"), entries[4]).start_node == "splitter:b.default.default"


def test_missing_subset_names_the_referring_field() -> None:
    router = {"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"ServiceSubset": "v9"}}]}
    with pytest.raises(ChainError) as err:
        compile_("web", *http("web"), router, {"Kind": "service-resolver", "Name": "web", "Subsets": SUBSETS})
    assert (err.value.kind, err.value.field) == ("service-router", "Routes[0].Destination.ServiceSubset")


def test_bounds_refuse_too_deep_and_too_wide_chains() -> None:
    names = [f"s{i}" for i in range(MAX_SPLIT_DEPTH + 2)]
    deep = [{"Kind": "service-splitter", "Name": n, "Splits": [{"Weight": 100, "Service": m}]}
            for n, m in itertools.pairwise(names)]
    with pytest.raises(ChainError, match="deeper than"):
        compile_("s0", *http(*names), *deep)
    wide = {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": f"/{i}"}}, "Destination": {"Service": f"svc{i}"}} for i in range(MAX_NODES)]}
    with pytest.raises(ChainError) as err:
        compile_("web", *http("web", *(f"svc{i}" for i in range(MAX_NODES))), wide)
    assert err.value.kind == "service-router" and err.value.field.startswith("Routes[")
    assert "nodes" in err.value.problem


def test_go_durations() -> None:
    assert [go_duration(ms) for ms in (0, 250, 5000, 1500, 90_000, 3_600_000, 3_661_001)] == [
        "0s", "250ms", "5s", "1.5s", "1m30s", "1h0m0s", "1h1m1.001s"]


# ---------------------------------------------------------------------- random graphs

_NAMES = st.sampled_from(["a", "b", "c", "d"])
_SUBS = st.sampled_from(["", "v1", "v2"])


@st.composite
def _graph(draw: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for name in ("a", "b", "c", "d"):
        if draw(st.booleans()):
            proto = draw(st.sampled_from(["http", "tcp"]))
            entries.append({"Kind": "service-defaults", "Name": name, "Protocol": proto})
        kind = draw(st.sampled_from(["none", "redirect", "subsets", "failover"]))
        if kind == "redirect":
            entries.append({"Kind": "service-resolver", "Name": name, "Redirect": {
                "Service": draw(_NAMES), "ServiceSubset": draw(_SUBS),
                "Datacenter": draw(st.sampled_from(["", "dc2"]))}})
        elif kind in ("subsets", "failover"):
            entry: dict[str, Any] = {"Kind": "service-resolver", "Name": name, "Subsets": {"v1": {}, "v2": {}}}
            if draw(st.booleans()):
                entry["DefaultSubset"] = draw(st.sampled_from(["v1", "v2"]))
            if kind == "failover":
                entry["Failover"] = {"*": {"Service": draw(_NAMES), "ServiceSubset": draw(_SUBS)}}
            entries.append(entry)
        if draw(st.booleans()):
            n = draw(st.integers(1, 3))
            weights = [100 // n] * (n - 1) + [100 - 100 // n * (n - 1)]
            entries.append({"Kind": "service-splitter", "Name": name, "Splits": [
                {"Weight": w, "Service": draw(_NAMES), "ServiceSubset": draw(_SUBS)} for w in weights]})
        if draw(st.booleans()):
            entries.append({"Kind": "service-router", "Name": name, "Routes": [
                {"Destination": {"Service": draw(_NAMES), "ServiceSubset": draw(_SUBS)}}
                for _ in range(draw(st.integers(0, 3)))]})
    return entries


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_graph(), _NAMES, st.sampled_from(["", "tcp", "http"]))
def test_random_graphs_compile_or_raise_chain_error(entries: list[dict[str, Any]], service: str, proto: str) -> None:
    table = {}
    for raw in entries:
        try:
            entry = normalize_entry(raw)
        except EntryError:
            continue
        table[(entry["Kind"], entry["Name"])] = entry
    try:
        chain = compile_chain(service, lambda k, n: table.get((k, n)), datacenter="dc1", trust_domain=TD,
                              override_protocol=proto)
    except ChainError:
        return
    api = chain.to_api()
    assert chain.start_node in chain.nodes
    for node in chain.nodes.values():  # every edge leads to a node, every resolver to a target
        for nxt in [r.next_node for r in node.routes] + [s.next_node for s in node.splits]:
            assert nxt in chain.nodes
        if node.splits:
            assert round(sum(s.weight for s in node.splits) * 100) == 10000
        if node.resolver is not None:
            assert {node.resolver.target, *node.resolver.failover} <= set(chain.targets)
    assert set(api["Targets"]) == set(chain.targets)


# ---------------------------------------------------------------------- validation through the compiler


def test_check_references_compiles_the_chains_a_write_touches() -> None:
    stored = lookup({"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}})
    with pytest.raises(ChainError) as err:  # b's own chain loops back through a
        check_references(normalize_entry({"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}),
                         stored)
    assert str(err.value) == "service-resolver b: field Redirect.Service: redirect cycle b -> a -> b"
    check_references(normalize_entry({"Kind": "service-resolver", "Name": "b", "ConnectTimeout": "2s"}), stored)
    # a service-defaults write changes chains too: ExternalSNI on a service whose resolver has subsets
    with_subsets = lookup({"Kind": "service-resolver", "Name": "ext", "Subsets": {"v1": {}}})
    with pytest.raises(ChainError, match="ExternalSNI"):
        check_references(normalize_entry({"Kind": "service-defaults", "Name": "ext", "ExternalSNI": "x.example"}),
                         with_subsets)


def test_bootstrap_entries_with_a_cycle_are_config_errors(tmp_path: Any) -> None:
    from meshagent.agent.config.errors import ConfigErrors
    from meshagent.agent.config.loader import load_config

    path = tmp_path / "entries.hcl"
    path.write_text('''config_entries {
  bootstrap = [
    { kind = "service-resolver", name = "a", redirect = { service = "b" } },
    { kind = "service-resolver", name = "b", redirect = { service = "a" } },
    { kind = "service-resolver", name = "c", redirect = { service = "a" } },
    { kind = "service-splitter", name = "web", splits = [{ weight = 100, service_subset = "v9" }] },
  ]
}
''')
    with pytest.raises(ConfigErrors) as err:
        load_config([str(path)], [], {})
    assert [str(e) for e in err.value.errors] == [
        f"{path}:3: config_entries.bootstrap[0].Redirect.Service: service-resolver a: redirect cycle a -> b -> a",
        f"{path}:4: config_entries.bootstrap[1].Redirect.Service: service-resolver b: redirect cycle b -> a -> b"]


def test_inconsistent_protocols_over_a_chain_are_refused() -> None:
    """Consul's recordServiceProtocol: every service a chain reaches speaks the chain's protocol."""
    router = {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin/"}}, "Destination": {"Service": "admin"}}]}
    compile_("web", router, *http("web", "admin"))
    for proto in ("tcp", "grpc", "http2"):
        with pytest.raises(ChainError) as err:
            compile_("web", router, *http("web"), {"Kind": "service-defaults", "Name": "admin", "Protocol": proto})
        assert err.value.reason == "protocol" and err.value.field == "Routes[0].Destination.Service"
        assert str(err.value).endswith(f'discovery chain "web" uses inconsistent protocols; service "admin" '
                                       f'has "{proto}" which is not "http"')
    redirect = {"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "legacy"}}
    with pytest.raises(ChainError) as err:
        compile_("web", redirect, *http("web"))  # legacy: no service-defaults, tcp
    assert (err.value.kind, err.value.name, err.value.field) == ("service-resolver", "web", "Redirect.Service")
    failover = {"Kind": "service-resolver", "Name": "web", "Failover": {"*": {"Targets": [{"Service": "backup"}]}}}
    with pytest.raises(ChainError) as err:
        compile_("web", failover, *http("web"))
    assert err.value.field == "Failover.*.Targets[0]" and '"backup" has "tcp"' in str(err.value)
    assert compile_("web", failover, *http("web", "backup")).protocol == "http"
    assert compile_("web", failover).protocol == "tcp"  # tcp to tcp: consistent


def _store(*entries: dict[str, Any]) -> tuple[Any, Any]:
    """A lookup and a `kind -> stored entries` reader over entries written in order, each checked first."""
    table: dict[tuple[str, str], dict[str, Any]] = {}

    def get(kind: str, name: str) -> Any:
        return table.get((kind, name))

    def stored(kind: str) -> list[dict[str, Any]]:
        return [e for (k, _), e in table.items() if k == kind]

    for raw in entries:
        e = normalize_entry(raw)
        check_references(e, get, stored)
        table[(e["Kind"], e["Name"])] = e
    return get, stored


def test_a_write_or_delete_that_breaks_a_chain_reaching_it_is_refused() -> None:
    """Consul's validateProposedConfigEntryInGraph: chains of services whose entries reach the written one."""
    from meshagent.agent.connect.entry_validate import check_delete

    get, stored = _store(*http("web", "api", "front"),
                         {"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}, "v2": {}}},
                         {"Kind": "service-router", "Name": "api", "Routes": [
                             {"Match": {"HTTP": {"PathPrefix": "/web/"}},
                              "Destination": {"Service": "web", "ServiceSubset": "v2"}}]},
                         {"Kind": "service-splitter", "Name": "front", "Splits": [{"Weight": 100, "Service": "api"}]})
    shrink = normalize_entry({"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}}})
    with pytest.raises(ChainError) as err:
        check_references(shrink, get, stored)
    assert (err.value.kind, err.value.name) == ("service-resolver", "web")
    assert str(err.value).startswith('service-resolver web: field (entry): breaks the discovery chain of "api": '
                                     'service-router api: field Routes[0].Destination.ServiceSubset: service "web" '
                                     'has no subset "v2"')
    check_references(shrink, get)  # without the stored entries: only its own chain, as before
    with pytest.raises(ChainError, match='breaks the discovery chain of "api"'):
        check_delete("service-resolver", "web", get, stored)
    # transitively: front's splitter reaches api, whose router reaches admin; admin turning tcp breaks both
    get, stored = _store(*http("web", "api", "front", "admin"),
                         {"Kind": "service-router", "Name": "api", "Routes": [
                             {"Match": {"HTTP": {"PathPrefix": "/admin/"}}, "Destination": {"Service": "admin"}}]},
                         {"Kind": "service-splitter", "Name": "front", "Splits": [{"Weight": 100, "Service": "api"}]})
    to_tcp = normalize_entry({"Kind": "service-defaults", "Name": "admin", "Protocol": "tcp"})
    with pytest.raises(ChainError) as err:
        check_references(to_tcp, get, stored)
    assert err.value.field == "Protocol" and err.value.reason == "protocol"
    assert 'breaks the discovery chain of "api"' in str(err.value) and '"admin" has "tcp"' in str(err.value)
    with pytest.raises(ChainError, match='breaks the discovery chain of "api"'):
        check_delete("service-defaults", "admin", get, stored)  # no service-defaults: tcp
    pd_tcp = normalize_entry({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "tcp"}})
    check_references(pd_tcp, get, stored)  # every service here has service-defaults: nothing changes
    check_delete("service-router", "api", get, stored)  # nothing reaches admin then: fine
    check_delete("service-defaults", "nobody", get, stored)  # absent: nothing to check
