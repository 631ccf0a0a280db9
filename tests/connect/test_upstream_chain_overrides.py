"""An upstream's chain as its sidecar sees it (review of issue 17, findings 1b, 2, 3, 9, 13b): compiled with
the upstream's protocol and explicit connect timeout as overrides, a broken chain failing that upstream only,
route retries as Consul sets them, and the endpoint bound over targets trimming instead of failing. Pure."""

from __future__ import annotations

from typing import Any

from meshagent.agent.connect.intention_entries import intentions_of
from meshagent.agent.connect.intentions import IntentionIndex
from meshagent.agent.connect.proxy_snapshot import BuildReport, build_report
from meshagent.proxy.snapshot import ProxySnapshot

from tests.connect.test_proxy_snapshot import DC, LEAF, World, sidecar, up


def build(w: World, upstreams: list[dict[str, Any]]) -> tuple[ProxySnapshot, BuildReport]:
    index = IntentionIndex(intentions_of(w.catalog.config_entries.list("service-intentions")))
    return build_report(sidecar(upstreams), None, w.catalog, LEAF, index, True, datacenter=DC,
                        bind_address="127.0.17.1")


def canary(w: World, protocol: str = "http") -> None:
    """api: v1 on 127.0.17.11-12, v2 on 127.0.17.13; a 90/10 splitter, ConnectTimeout 250ms."""
    w.entry({"Kind": "service-defaults", "Name": "api", "Protocol": protocol})
    for n in (1, 2, 3):
        w.instance(f"n{n}", f"127.0.17.1{n}", f"api{n}-sidecar-proxy", "api", 21000)
    w.entry({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "250ms", "DefaultSubset": "v1",
             "Subsets": {"v1": {"Filter": "Service.ID != api3-sidecar-proxy"},
                         "v2": {"Filter": "Service.ID == api3-sidecar-proxy"}}})
    w.entry({"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                                  {"Weight": 10, "ServiceSubset": "v2"}]})


def addrs(endpoints: Any) -> list[str]:
    return [e.address for e in endpoints]


def test_an_explicit_tcp_upstream_takes_the_resolvers_chain_not_the_largest_split() -> None:
    """Finding 2: Consul compiles with OverrideProtocol tcp, which drops the splitter: DefaultSubset v1."""
    w = World()
    canary(w)
    snap, report = build(w, [up("api", Config={"protocol": "tcp"}), up("api", 9192)])
    tcp, http = snap.upstreams
    assert tcp.routes == () and addrs(tcp.endpoints) == ["127.0.17.11", "127.0.17.12"]
    assert len(http.routes) == 1 and [s.weight for s in http.routes[0].splits] == [9000, 1000]
    w.entry({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "250ms", "Subsets": {
        "v1": {"Filter": "Service.ID != api3-sidecar-proxy"}, "v2": {"Filter": "Service.ID == api3-sidecar-proxy"}}})
    tcp = build(w, [up("api", Config={"protocol": "tcp"})])[0].upstreams[0]
    assert addrs(tcp.endpoints) == ["127.0.17.11", "127.0.17.12", "127.0.17.13"]  # no DefaultSubset: all
    assert report == BuildReport()


def test_an_explicit_connect_timeout_wins_over_the_resolvers() -> None:
    """Finding 2: Consul's OverrideConnectTimeout (the upstream's explicit connect_timeout_ms) wins."""
    w = World()
    canary(w)
    http = build(w, [up("api")])[0].upstreams[0]
    assert {t.connect_timeout_ms for t in http.targets} == {250}
    http = build(w, [up("api", Config={"connect_timeout_ms": 900})])[0].upstreams[0]
    assert {t.connect_timeout_ms for t in http.targets} == {900}
    w.entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 700}}})
    tcp = build(w, [up("api", Config={"protocol": "tcp"})])[0].upstreams[0]
    assert tcp.connect_timeout_ms == 700


def test_grpc_and_http2_upstreams_are_l4_and_say_the_router_is_not_applied() -> None:
    """Finding 3: proxied at L4, compiled as tcp (the resolver's DefaultSubset, not a silent largest split)."""
    w = World()
    canary(w, "grpc")
    snap, report = build(w, [up("api"), up("api", 9192, Config={"protocol": "http2"})])
    for u in snap.upstreams:
        assert u.protocol == "tcp" and u.routes == () and addrs(u.endpoints) == ["127.0.17.11", "127.0.17.12"]
    assert report.errors == () and len(report.notes) == 2
    assert report.notes[0] == ("sidecar 'web-sidecar-proxy' of 'web': proxy.upstreams[0]: service-router/splitter "
                               "of 'api' not applied: protocol grpc is proxied at L4")
    assert "protocol http2 is proxied at L4" in report.notes[1]


def test_a_chain_that_does_not_compile_fails_that_upstream_only() -> None:
    """Finding 1b: no endpoints for it (503), the error reported; the other upstreams, intentions and the leaf
    are still built."""
    w = World()
    canary(w)
    w.instance("n9", "127.0.17.19", "db1-sidecar-proxy", "db", 21000)
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    w.entry({"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "api", "Action": "allow"}]})
    # written straight to the catalog, as a write before the reverse check (or a restore) could leave it
    w.entry({"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {}}})
    snap, report = build(w, [up("api"), up("db", 9192)])
    broken, db = snap.upstreams
    assert broken.endpoints == () and broken.routes == () and broken.targets == ()
    assert addrs(db.endpoints) == ["127.0.17.19"] and snap.intentions.rules[0].source == "api"
    assert snap.tls.cert_pem.startswith("LEAF")
    (error,) = report.errors
    assert error.startswith("sidecar 'web-sidecar-proxy' of 'web': proxy.upstreams[0].destination_name: "
                            "discovery chain of 'api': service-splitter api: field Splits[1].ServiceSubset: "
                            'service "api" has no subset "v2"')
    assert error.endswith("(the upstream has no endpoints until it is fixed)")
    w.entry({"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {}, "v2": {}}})
    snap, report = build(w, [up("api"), up("db", 9192)])
    assert report.errors == () and len(snap.upstreams[0].targets) == 2


def test_route_retries_as_consul_sets_them() -> None:
    """Finding 9: NumRetries counts only above 0; a retry condition without it retries once (Envoy's default)."""
    w = World()
    canary(w)
    routes = [
        {"Match": {"HTTP": {"PathPrefix": "/a/"}}, "Destination": {"NumRetries": 0, "RequestTimeout": "1s"}},
        {"Match": {"HTTP": {"PathPrefix": "/b/"}}, "Destination": {"RetryOnConnectFailure": True}},
        {"Match": {"HTTP": {"PathPrefix": "/c/"}}, "Destination": {"RetryOnStatusCodes": [503]}},
        {"Match": {"HTTP": {"PathPrefix": "/d/"}}, "Destination": {"NumRetries": 4,
                                                                    "RetryOnConnectFailure": False}},
    ]
    w.entry({"Kind": "service-router", "Name": "api", "Routes": routes})
    u = build(w, [up("api")])[0].upstreams[0]
    a, b, c, d, _default = u.routes
    assert a.retries is None  # NumRetries 0: the upstream's policy, unchanged
    assert b.retries is not None and (b.retries.num_retries, b.retries.retry_on_connect_failure) == (1, True)
    assert c.retries is not None and (c.retries.num_retries, c.retries.retry_on_status_codes) == (1, (503,))
    assert d.retries is not None and (d.retries.num_retries, d.retries.retry_on_connect_failure) == (4, False)
    u = build(w, [up("api", Config={"num_retries": 3})])[0].upstreams[0]
    assert u.routes[1].retries is not None and u.routes[1].retries.num_retries == 3  # the upstream's, above 1
