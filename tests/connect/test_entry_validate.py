"""Config entry validation: Consul's documented examples of each kind are accepted (CamelCase or snake_case)
and stay as written; each bad input is refused naming its field; arbitrary JSON never raises anything but
EntryError; rules across entries (routers and splitters need an HTTP protocol)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.agent.config.values import snake_case
from meshagent.agent.connect.entry_schema import KIND_SPECS, Obj
from meshagent.agent.connect.entry_validate import EntryError, check_references, normalize_entry

# Examples from Consul's config entry reference pages (one or more per kind), in Consul's JSON.
EXAMPLES: list[dict[str, Any]] = [
    {"Kind": "service-defaults", "Name": "web", "Namespace": "default", "Protocol": "http"},
    {"Kind": "service-defaults", "Name": "counting", "UpstreamConfig": {
        "Defaults": {"MeshGateway": {"Mode": "local"},
                     "Limits": {"MaxConnections": 512, "MaxPendingRequests": 512, "MaxConcurrentRequests": 512}},
        "Overrides": [{"Name": "dashboard", "MeshGateway": {"Mode": "remote"}}]}},
    {"Kind": "service-defaults", "Name": "api", "Protocol": "grpc", "Mode": "transparent",
     "TransparentProxy": {"OutboundListenerPort": 15001, "DialedDirectly": True}, "MeshGateway": {"Mode": "none"},
     "Expose": {"Checks": True, "Paths": [{"ListenerPort": 21500, "Path": "/health", "LocalPathPort": 8080,
                                           "Protocol": "http"}]},
     "ExternalSNI": "api.example.com", "MaxInboundConnections": 100, "LocalConnectTimeoutMs": 1000,
     "LocalRequestTimeoutMs": 15000, "BalanceInboundConnections": "exact_balance", "Meta": {"owner": "team-a"},
     "UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 5000, "PassiveHealthCheck": {
         "Interval": "10s", "MaxFailures": 5, "EnforcingConsecutive5xx": 100, "MaxEjectionPercent": 10,
         "BaseEjectionTime": "30s"}}}},
    {"Kind": "proxy-defaults", "Name": "global",
     "Config": {"local_connect_timeout_ms": 1000, "handshake_timeout_ms": 10000}},
    {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"},
     "Config": {"protocol": "http", "envoy_prometheus_bind_addr": "0.0.0.0:9102"}},
    {"Kind": "service-intentions", "Name": "db",
     "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]},
    {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "frontend-web", "Permissions": [
            {"Action": "deny", "HTTP": {"PathExact": "/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET", "PUT", "POST", "DELETE", "HEAD"]}},
            {"Action": "allow", "HTTP": {"PathRegex": "^/v[0-9]+/.*$",
                                         "Header": [{"Name": "x-debug", "Present": True},
                                                    {"Name": "x-team", "Exact": "a", "Invert": True}]}}]},
        {"Name": "*", "Action": "deny", "Description": "deny everything else"}]},
    {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin"}}]},
    {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"Header": [{"Name": "x-debug", "Exact": "1"}]}},
         "Destination": {"Service": "web", "ServiceSubset": "canary"}},
        {"Match": {"HTTP": {"QueryParam": [{"Name": "x-debug", "Exact": "1"}]}},
         "Destination": {"Service": "web", "ServiceSubset": "canary"}},
        {"Match": {"HTTP": {"PathExact": "/mkt.Inventory/WatchPrices", "Methods": ["POST"]}},
         "Destination": {"Service": "inventory-watch", "PrefixRewrite": "/", "RequestTimeout": "15s",
                         "IdleTimeout": "1m30s", "NumRetries": 3, "RetryOnConnectFailure": True,
                         "RetryOnStatusCodes": [503], "RetryOn": ["reset", "5xx"],
                         "RequestHeaders": {"Add": {"x-foo": "bar"}, "Remove": ["x-debug"]},
                         "ResponseHeaders": {"Set": {"x-served-by": "inventory"}}}}]},
    {"Kind": "service-splitter", "Name": "web",
     "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]},
    {"Kind": "service-splitter", "Name": "billing", "Splits": [
        {"Weight": 33.33, "Service": "billing-a"}, {"Weight": 33.33, "Service": "billing-b"},
        {"Weight": 33.34, "Service": "billing-c", "RequestHeaders": {"Set": {"x-split": "c"}}}]},
    {"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2",
                                                               "OnlyPassing": True}}},
    {"Kind": "service-resolver", "Name": "web-dc2", "Redirect": {"Service": "web", "Datacenter": "dc2"}},
    {"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "15s", "RequestTimeout": "30s",
     "Failover": {"*": {"Datacenters": ["dc3", "dc4"]}}},
    {"Kind": "service-resolver", "Name": "web", "LoadBalancer": {
        "Policy": "maglev", "HashPolicies": [{"Field": "header", "FieldValue": "x-user-id"}]}},
    {"Kind": "service-resolver", "Name": "web", "LoadBalancer": {
        "Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 1024, "MaximumRingSize": 8192},
        "HashPolicies": [{"Field": "cookie", "FieldValue": "map-cookie", "CookieConfig": {"TTL": "1s"}},
                         {"SourceIP": True, "Terminal": True}]}},
    {"Kind": "service-resolver", "Name": "api", "Subsets": {"v2": {"Filter": "Service.Meta.version == v2"}},
     "Failover": {"v2": {"Targets": [{"Service": "api", "Datacenter": "dc2"}]}},
     "LoadBalancer": {"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 3}}},
]


def _without_computed(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry minus what normalization adds to intention sources (Type, Precedence)."""
    out = copy.deepcopy(entry)
    for src in out.get("Sources", []):
        src.pop("Precedence", None)
        if src.get("Type") == "consul":
            src.pop("Type")
    return out


def _snake(value: Any, user_keys: bool = False) -> Any:
    """Consul's JSON with HCL-style snake_case keys (user keys in Meta, Config, header maps left alone)."""
    if isinstance(value, dict):
        return {(k if user_keys else snake_case(k)): _snake(v, k in ("Meta", "Config", "Add", "Set"))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e['Kind']}/{e['Name']}")
def test_consuls_examples_are_accepted_as_written(example: dict[str, Any]) -> None:
    out = normalize_entry(copy.deepcopy(example))
    assert _without_computed(out) == example
    assert list(out)[:2] == ["Kind", "Name"]
    assert normalize_entry(out) == out  # canonical form is a fixed point
    assert normalize_entry(_snake(example)) == out
    assert normalize_entry(json.loads(json.dumps(out))) == out


def test_intention_sources_get_type_and_precedence_and_ignore_a_given_precedence() -> None:
    out = normalize_entry({"Kind": "service-intentions", "Name": "db", "Sources": [
        {"Name": "web", "Action": "allow", "Precedence": 1}, {"Name": "*", "Action": "deny"}]})
    assert [(s["Type"], s["Precedence"]) for s in out["Sources"]] == [("consul", 9), ("consul", 8)]
    star = normalize_entry({"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "*", "Action": "deny"}]})
    assert star["Sources"][0]["Precedence"] == 5


def test_numbers_of_nanoseconds_become_duration_strings_and_protocol_is_lowercased() -> None:
    out = normalize_entry({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": 15_000_000_000})
    assert out["ConnectTimeout"] == "15s"
    assert normalize_entry({"kind": "service-defaults", "name": "w", "protocol": "HTTP"})["Protocol"] == "http"
    # HCL blocks arrive as one-element lists of maps
    out = normalize_entry({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": [{"Mode": "local"}]})
    assert out["MeshGateway"] == {"Mode": "local"}


def _sd(**fields: Any) -> dict[str, Any]:
    return {"Kind": "service-defaults", "Name": "web", **fields}


def _router(http: dict[str, Any] | None = None, dest: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {}
    if http is not None:
        route["Match"] = {"HTTP": http}
    if dest is not None:
        route["Destination"] = dest
    return {"Kind": "service-router", "Name": "web", "Routes": [route]}


def _splits(*weights: Any) -> dict[str, Any]:
    return {"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": w, "ServiceSubset": f"v{i}"} for i, w in enumerate(weights)]}


def _sources(*sources: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": "db", "Sources": list(sources)}


def _resolver(**fields: Any) -> dict[str, Any]:
    return {"Kind": "service-resolver", "Name": "web", **fields}


_V1 = {"v1": {"Filter": "Service.Meta.version == v1"}}

BAD: list[tuple[str, Any, str]] = [
    ("not a map", [], ""),
    ("no kind", {"Name": "web"}, "Kind"),
    ("unknown kind", {"Kind": "mesh", "Name": "web"}, "Kind"),
    ("no name", {"Kind": "service-defaults"}, "Name"),
    ("name with a space", _sd(Name="web db"), "Name"),
    ("wildcard name outside intentions", _sd(Name="*"), "Name"),
    ("unknown field", _sd(Protocl="http"), "Protocl"),
    ("field given twice", _sd(Protocol="http", protocol="http"), "Protocol"),
    ("wrong type", _sd(Protocol=5), "Protocol"),
    ("unknown protocol", _sd(Protocol="udp"), "Protocol"),
    ("nested wrong type", _sd(MeshGateway={"Mode": "far"}), "MeshGateway.Mode"),
    ("bool as string", _sd(TransparentProxy={"DialedDirectly": "yes"}), "TransparentProxy.DialedDirectly"),
    ("negative int", _sd(MaxInboundConnections=-1), "MaxInboundConnections"),
    ("port out of range", _sd(Expose={"Paths": [{"ListenerPort": 70000}]}), "Expose.Paths[0].ListenerPort"),
    ("override without name", _sd(UpstreamConfig={"Overrides": [{"ConnectTimeoutMs": 5}]}),
     "UpstreamConfig.Overrides[0].Name"),
    ("bad meta key", _sd(Meta={"a b": "c"}), "Meta.a b"),
    ("meta value not a string", _sd(Meta={"a": 1}), "Meta.a"),
    ("long string", _sd(ExternalSNI="x" * 5000), "ExternalSNI"),
    ("enterprise namespace", _sd(Namespace="team"), "Namespace"),
    ("proxy-defaults not global", {"Kind": "proxy-defaults", "Name": "web"}, "Name"),
    ("proxy-defaults bad protocol", {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "udp"}},
     "Config.protocol"),
    ("config not a map", {"Kind": "proxy-defaults", "Name": "global", "Config": "x"}, "Config"),
    ("entry too large", {"Kind": "proxy-defaults", "Name": "global",
                         "Config": {f"k{i}": "v" * 300 for i in range(900)}}, ""),
    ("source with action and permissions", _sources({"Name": "web", "Action": "allow", "Permissions": [
        {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}), "Sources[0].Permissions"),
    ("source with neither", _sources({"Name": "web"}), "Sources[0].Action"),
    ("source without name", _sources({"Action": "allow"}), "Sources[0].Name"),
    ("bad action", _sources({"Name": "web", "Action": "permit"}), "Sources[0].Action"),
    ("duplicate source", _sources({"Name": "web", "Action": "allow"}, {"Name": "web", "Action": "deny"}),
     "Sources[1].Name"),
    ("permission without HTTP", _sources({"Name": "web", "Permissions": [{"Action": "allow"}]}),
     "Sources[0].Permissions[0].HTTP"),
    ("permission two paths", _sources({"Name": "web", "Permissions": [
        {"Action": "allow", "HTTP": {"PathExact": "/a", "PathRegex": "/b"}}]}),
     "Sources[0].Permissions[0].HTTP.PathRegex"),
    ("permission bad header regex", _sources({"Name": "web", "Permissions": [
        {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Regex": "(unclosed"}]}}]}),
     "Sources[0].Permissions[0].HTTP.Header[0].Regex"),
    ("header two matchers", _sources({"Name": "web", "Permissions": [
        {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]}}]}),
     "Sources[0].Permissions[0].HTTP.Header[0]"),
    ("bad method", _sources({"Name": "web", "Permissions": [
        {"Action": "allow", "HTTP": {"Methods": ["FETCH"]}}]}), "Sources[0].Permissions[0].HTTP.Methods[0]"),
    ("legacy id not a uuid", _sources({"Name": "web", "Action": "allow", "LegacyID": "abc"}),
     "Sources[0].LegacyID"),
    ("too many sources", _sources(*({"Name": f"s{i}", "Action": "allow"} for i in range(1001))), "Sources"),
    ("PathExact and PathPrefix", _router({"PathExact": "/a", "PathPrefix": "/b"}),
     "Routes[0].Match.HTTP.PathPrefix"),
    ("bad path regex", _router({"PathRegex": "a(b"}), "Routes[0].Match.HTTP.PathRegex"),
    ("prefix without slash", _router({"PathPrefix": "admin"}), "Routes[0].Match.HTTP.PathPrefix"),
    ("query param without matcher", _router({"QueryParam": [{"Name": "q"}]}), "Routes[0].Match.HTTP.QueryParam[0]"),
    ("unknown destination field", _router(dest={"Servce": "admin"}), "Routes[0].Destination.Servce"),
    ("bad duration", _router(dest={"RequestTimeout": "5 parsecs"}), "Routes[0].Destination.RequestTimeout"),
    ("negative duration", _router(dest={"IdleTimeout": "-5s"}), "Routes[0].Destination.IdleTimeout"),
    ("bad status code", _router(dest={"RetryOnStatusCodes": [700]}), "Routes[0].Destination.RetryOnStatusCodes[0]"),
    ("bad retry-on", _router(dest={"RetryOn": ["sometimes"]}), "Routes[0].Destination.RetryOn[0]"),
    ("rewrite without path match", _router({"Methods": ["GET"]}, {"PrefixRewrite": "/x"}),
     "Routes[0].Destination.PrefixRewrite"),
    ("weight out of range", _splits(150, -50), "Splits[0].Weight"),
    ("weight not a number", _splits("90", 10), "Splits[0].Weight"),
    ("weights not summing to 100", _splits(90, 5), "Splits"),
    ("weight finer than 0.01", _splits(33.333, 66.667), "Splits[0].Weight"),
    ("no splits", {"Kind": "service-splitter", "Name": "web", "Splits": []}, "Splits"),
    ("split without weight", {"Kind": "service-splitter", "Name": "web", "Splits": [{"Service": "a"}]},
     "Splits[0].Weight"),
    ("bad filter", _resolver(Subsets={"v1": {"Filter": "Service.Nope == 1"}}), "Subsets.v1.Filter"),
    ("default subset not defined", _resolver(DefaultSubset="v9", Subsets=_V1), "DefaultSubset"),
    ("failover for unknown subset", _resolver(Subsets=_V1, Failover={"v2": {"Datacenters": ["dc2"]}}),
     "Failover.v2"),
    ("empty failover", _resolver(Failover={"*": {}}), "Failover.*"),
    ("redirect and subsets", _resolver(Subsets=_V1, Redirect={"Service": "api"}), "Redirect"),
    ("redirect to itself", _resolver(Redirect={"Service": "web"}), "Redirect.Service"),
    ("bad lb policy", _resolver(LoadBalancer={"Policy": "fastest"}), "LoadBalancer.Policy"),
    ("hash policies without hashing", _resolver(LoadBalancer={
        "Policy": "round_robin", "HashPolicies": [{"Field": "header", "FieldValue": "x"}]}),
     "LoadBalancer.HashPolicies"),
    ("ring config without ring_hash", _resolver(LoadBalancer={"Policy": "random", "RingHashConfig": {}}),
     "LoadBalancer.RingHashConfig"),
    ("cookie config on header", _resolver(LoadBalancer={"Policy": "maglev", "HashPolicies": [
        {"Field": "header", "FieldValue": "x", "CookieConfig": {"Session": True}}]}),
     "LoadBalancer.HashPolicies[0].CookieConfig"),
    ("connect timeout as bool", _resolver(ConnectTimeout=True), "ConnectTimeout"),
]


@pytest.mark.parametrize(("raw", "field"), [(raw, field) for _, raw, field in BAD], ids=[b[0] for b in BAD])
def test_bad_entries_are_refused_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(EntryError) as err:
        normalize_entry(raw)
    assert err.value.field == field, str(err.value)
    assert f"field {field or '(entry)'}: " in str(err.value)
    if field == "Protocl":
        assert "did you mean Protocol?" in str(err.value)
    if isinstance(raw, dict) and isinstance(raw.get("Kind"), str) and isinstance(raw.get("Name"), str):
        assert str(err.value).startswith(f"{raw['Kind']} {raw['Name']}: ")


def _field_names() -> list[str]:
    names: set[str] = set()

    def walk(spec: Any) -> None:
        if isinstance(spec, Obj):
            for name, sub in spec.fields.items():
                names.add(name)
                walk(sub)
        for attr in ("item", "value"):
            if hasattr(spec, attr):
                walk(getattr(spec, attr))

    for spec in KIND_SPECS.values():
        walk(spec)
    return sorted(names)


_KEYS = st.sampled_from(_field_names()) | st.sampled_from([snake_case(n) for n in _field_names()]) | st.text(
    max_size=8)
_SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
            | st.sampled_from(["", "*", "http", "allow", "/a", "5s", "v1", "global", "(", "Service.Meta.x == 1"])
            | st.text(max_size=12))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner,
                                                                                           max_size=5), max_leaves=25)


@pytest.mark.slow  # 300 generated entries: 3-9 s on a loaded machine
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([*KIND_SPECS, "nope"]), name=st.sampled_from(["web", "global", "*", "", "a b"]),
       body=st.dictionaries(_KEYS, _JSON, max_size=6))
def test_arbitrary_json_raises_only_entry_error(kind: str, name: str, body: dict[str, Any]) -> None:
    raw = {"Kind": kind, "Name": name, **body}
    try:
        out = normalize_entry(raw)
    except EntryError as exc:
        assert str(exc)
        return
    assert normalize_entry(out) == out


@settings(max_examples=300, deadline=None)
@given(example=st.sampled_from(EXAMPLES), data=st.data())
def test_a_valid_entry_with_one_field_replaced_raises_only_entry_error(example: dict[str, Any],
                                                                         data: st.DataObject) -> None:
    raw = copy.deepcopy(example)
    node: Any = raw
    while True:  # walk to a random container inside the example, then replace one of its values
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(_JSON)
        break
    try:
        out = normalize_entry(raw)
    except EntryError:
        return
    assert normalize_entry(out) == out


def _lookup(*entries: dict[str, Any]) -> Any:
    table = {(e["Kind"], e["Name"]): normalize_entry(e) for e in entries}
    return lambda kind, name: table.get((kind, name))


def test_routers_and_splitters_need_an_http_protocol() -> None:
    router = normalize_entry(EXAMPLES[7])  # web → admin
    with pytest.raises(EntryError) as err:
        check_references(router, _lookup())
    assert err.value.field == "Name" and '"tcp"' in str(err.value)
    with pytest.raises(EntryError) as err:
        check_references(router, _lookup(_sd(Protocol="http")))
    assert err.value.field == "Routes[0].Destination.Service"
    check_references(router, _lookup(_sd(Protocol="http"), _sd(Name="admin", Protocol="http")))
    with pytest.raises(EntryError) as err:  # HTTP-like is not enough: one protocol over the chain (Consul)
        check_references(router, _lookup(_sd(Protocol="http"), _sd(Name="admin", Protocol="http2")))
    assert err.value.field == "Routes[0].Destination.Service" and "inconsistent protocols" in str(err.value)
    check_references(router, _lookup({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "HTTP"}}))
    # service-defaults overrides proxy-defaults
    with pytest.raises(EntryError):
        check_references(router, _lookup({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}},
                                         _sd(Protocol="tcp")))
    splitter = normalize_entry(_splits(50, 50))
    subsets = _resolver(Subsets={"v0": {"Filter": "Service.Meta.version == v0"}, "v1": {}})
    with pytest.raises(EntryError) as err:
        check_references(splitter, _lookup(subsets))
    assert err.value.field == "Name"
    check_references(splitter, _lookup(_sd(Protocol="grpc"), subsets))


def test_routes_and_splits_to_a_subset_need_it_in_the_resolver() -> None:
    http = [_sd(Protocol="http"), _sd(Name="api", Protocol="http")]
    splitter = normalize_entry(_splits(50, 50))  # subsets v0 and v1 of web
    with pytest.raises(EntryError) as err:
        check_references(splitter, _lookup(*http))
    assert err.value.field == "Splits[0].ServiceSubset" and '"v0"' in str(err.value)
    with pytest.raises(EntryError) as err:
        check_references(splitter, _lookup(*http, _resolver(Subsets={"v0": {}})))
    assert err.value.field == "Splits[1].ServiceSubset"
    check_references(splitter, _lookup(*http, _resolver(Subsets={"v0": {}, "v1": {}})))
    router = normalize_entry(_router({"PathPrefix": "/"}, {"Service": "api", "ServiceSubset": "canary"}))
    with pytest.raises(EntryError) as err:  # web's resolver does not count for api's subset
        check_references(router, _lookup(*http, _resolver(Subsets={"canary": {}})))
    assert err.value.field == "Routes[0].Destination.ServiceSubset"
    check_references(router, _lookup(*http, _resolver(Name="api", Subsets={"canary": {}})))


def test_a_service_with_a_router_cannot_go_back_to_tcp() -> None:
    lookup = _lookup(EXAMPLES[7], _sd(Name="admin", Protocol="http"))
    with pytest.raises(EntryError) as err:
        check_references(normalize_entry(_sd(Protocol="tcp")), lookup)
    assert err.value.field == "Protocol"
    check_references(normalize_entry(_sd(Protocol="http")), lookup)
    check_references(normalize_entry(_sd(Name="other")), lookup)
    l7 = _lookup(_sources({"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}))
    with pytest.raises(EntryError) as err:
        check_references(normalize_entry(_sd(Name="db", Protocol="tcp")), l7)
    assert err.value.field == "Protocol" and "L7" in str(err.value)
    check_references(normalize_entry(_sd(Name="db", Protocol="http")), l7)


def test_l7_intentions_need_an_http_destination_and_l4_ones_do_not() -> None:
    l7 = normalize_entry(_sources({"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}))
    with pytest.raises(EntryError) as err:
        check_references(l7, _lookup())
    assert err.value.field == "Sources[0].Permissions"
    check_references(l7, _lookup(_sd(Name="db", Protocol="http")))
    check_references(normalize_entry(_sources({"Name": "web", "Action": "allow"})), _lookup())
