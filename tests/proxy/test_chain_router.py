"""proxy/chain_router.py and http1.rewrite_target, pure: which route a request head takes (paths exact,
prefix, RE2 regex on the normalised path; methods; headers incl. invert; query parameters), the split by
weight (uniform draw within statistical bounds, deterministic by hash), PrefixRewrite."""

from __future__ import annotations

import random

import pytest
from meshagent.proxy.chain_router import ChainRouter, parse_query, target_service, target_upstream
from meshagent.proxy.http1 import HeadReader, HTTPError, parse_request, rewrite_target
from meshagent.proxy.snapshot import (
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

V1, V2, ADMIN = "v1.db.default.default.dc1", "v2.db.default.default.dc1", "admin.default.default.dc1"


def head(target: str = "/", method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> object:
    raw = f"{method} {target} HTTP/1.1\r\nHost: db\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return parse_request(raw.encode())


def route(match: RouteMatch = RouteMatch(), *splits: tuple[str, int], **kw: object) -> ChainRoute:
    return ChainRoute(match=match, splits=tuple(WeightedTarget(t, w) for t, w in splits or ((V1, 10000),)),
                      **kw)  # type: ignore[arg-type]


def router(*routes: ChainRoute, rng: random.Random | None = None, **up: object) -> ChainRouter:
    targets = tuple(ChainTarget(id=t) for t in (V1, V2, ADMIN))
    upstream = Upstream("db", "127.0.31.1", 9000, protocol="http", routes=routes, targets=targets,
                        **up)  # type: ignore[arg-type]
    return ChainRouter(upstream, rng or random.Random(1))


def took(r: ChainRouter, h: object) -> str | None:
    found = r.match(h)  # type: ignore[arg-type]
    return None if found is None else found.route.name


def test_paths_exact_prefix_regex_first_match_wins_on_the_normalised_path_without_query() -> None:
    r = router(route(RouteMatch(path_exact="/exact"), name="exact"),
               route(RouteMatch(path_prefix="/admin"), name="prefix"),
               route(RouteMatch(path_regex="/v[0-9]+/items/[a-z]+"), name="regex"),
               route(RouteMatch(path_prefix="/"), name="default"))
    assert took(r, head("/exact")) == "exact"
    assert took(r, head("/exact?x=1")) == "exact"  # the query is not part of the path
    assert took(r, head("/exact/")) == "default"
    assert took(r, head("/admin")) == "prefix" and took(r, head("/adminx/y")) == "prefix"  # a string prefix
    assert took(r, head("/x/../admin/users")) == "prefix"  # normalised as intentions see it
    assert took(r, head("/%61dmin")) == "prefix"
    assert took(r, head("/v2/items/abc?q=1")) == "regex"
    assert took(r, head("/v2/items/abc/d")) == "default"  # a full match, not a search
    assert took(r, head("http://db/admin/x")) == "prefix"  # absolute form: its path
    with pytest.raises(HTTPError):
        r.match(head("/a%2fb"))  # type: ignore[arg-type]


def test_no_route_matches_without_a_catch_all() -> None:
    r = router(route(RouteMatch(path_prefix="/api"), name="api"))
    assert took(r, head("/other")) is None
    assert took(r, head("*", "OPTIONS")) is None


def test_methods_and_every_condition_must_match() -> None:
    r = router(route(RouteMatch(path_prefix="/w", methods=("post", "PUT")), name="write"),
               route(RouteMatch(), name="default"))
    assert took(r, head("/w", "POST")) == "write" and took(r, head("/w", "PUT")) == "write"
    assert took(r, head("/w", "GET")) == "default"
    assert took(r, head("/r", "POST")) == "default"


@pytest.mark.parametrize(("match", "yes", "no"), [
    (HeaderMatch("x-canary", exact="1"), (("X-Canary", "1"),), (("x-canary", "10"),)),
    (HeaderMatch("x-canary", present=True), (("x-canary", ""),), ()),
    (HeaderMatch("x-canary", present=True, invert=True), (), (("x-canary", "1"),)),
    (HeaderMatch("x-v", prefix="ab"), (("x-v", "abc"),), (("x-v", "cab"),)),
    (HeaderMatch("x-v", suffix="bc"), (("x-v", "abc"),), (("x-v", "bca"),)),
    (HeaderMatch("x-v", regex="v[0-9]"), (("x-v", "v7"),), (("x-v", "v77"),)),
    (HeaderMatch("x-v", exact="1", invert=True), (("x-v", "2"),), (("x-v", "1"),)),
    (HeaderMatch("x-v", exact="a,b"), (("x-v", "a"), ("x-v", "b")), (("x-v", "a"),)),  # repeated: joined
])
def test_headers(match: HeaderMatch, yes: tuple[tuple[str, str], ...], no: tuple[tuple[str, str], ...]) -> None:
    r = router(route(RouteMatch(headers=(match,)), name="h"), route(name="default"))
    assert took(r, head("/", headers=yes)) == "h"
    assert took(r, head("/", headers=no)) == "default"


@pytest.mark.parametrize(("match", "yes", "no"), [
    (QueryMatch("v", exact="2"), "/?a=1&v=2", "/?v=20"),
    (QueryMatch("v", exact="a b"), "/?v=a%20b", "/?v=a+b"),  # percent-decoded (Envoy), '+' is not a space
    (QueryMatch("v", present=True), "/?v", "/?vv=1"),
    (QueryMatch("v", regex="[0-9]+"), "/p?v=123", "/p?v=12a"),
    (QueryMatch("v", exact="1"), "/?v=1&v=2", "/?v=2&v=1"),  # the first value of a name
])
def test_query_parameters(match: QueryMatch, yes: str, no: str) -> None:
    r = router(route(RouteMatch(query=(match,)), name="q"), route(name="default"))
    assert took(r, head(yes)) == "q"
    assert took(r, head(no)) == "default"


def test_parse_query_is_bounded() -> None:
    params = parse_query(b"&".join(b"k%d=v" % i for i in range(10_000)))
    assert len(params) <= 256 and params[b"k0"] == b"v"


def test_weighted_split_within_bounds_over_many_draws() -> None:
    r = router(route(RouteMatch(), (V1, 9000), (V2, 1000)), rng=random.Random())  # unseeded: bound holds
    compiled = r.routes[0]
    n = 100_000
    share = sum(r.pick(compiled) == V2 for _ in range(n)) / n
    assert abs(share - 0.10) < 0.01  # sigma is 0.095 %: ten of them
    r = router(route(RouteMatch(), (V1, 1), (V2, 9999)))
    assert sum(r.pick(r.routes[0]) == V1 for _ in range(n)) < 40  # 0.01 % resolution: 10 expected


def test_hash_split_is_deterministic_and_spread() -> None:
    r = router(route(RouteMatch(), (V1, 5000), (V2, 5000)))
    compiled = r.routes[0]
    for key in (0, 1, 4999, 5000, 9999, 10_000, 2**64 - 1):
        assert len({r.pick(compiled, key) for _ in range(20)}) == 1
    assert r.pick(compiled, 4999) == V1 and r.pick(compiled, 5000) == V2
    rng = random.Random(5)
    share = sum(r.pick(compiled, rng.getrandbits(64)) == V2 for _ in range(20_000)) / 20_000
    assert 0.45 < share < 0.55


def test_the_split_hashes_only_request_borne_policies() -> None:
    # SourceIP is always the local app on an outbound listener: it must not make the split one constant
    header, cookie = HashPolicy("header", "x-user"), HashPolicy("cookie", "s")
    query = HashPolicy("query_parameter", "u")
    lb = LoadBalancer("ring_hash", hash_policies=(HashPolicy(source_ip=True, terminal=True), header, cookie, query))
    assert router(route(), load_balancer=lb).hash_policies == (header, cookie, query)
    only_ip = LoadBalancer("ring_hash", hash_policies=(HashPolicy(source_ip=True),))
    assert router(route(), load_balancer=only_ip).hash_policies == ()  # random draws


def test_one_target_needs_no_draw() -> None:
    class NoDraw(random.Random):
        def random(self) -> float:
            raise AssertionError("drew")

    r = router(route(RouteMatch(), (V2, 10000)), rng=NoDraw())
    assert r.pick(r.routes[0]) == V2


def test_router_refuses_what_check_refuses() -> None:
    with pytest.raises(ValueError, match="not a target"):
        router(route(RouteMatch(), ("nope", 10000)))
    with pytest.raises(ValueError, match="path_regex"):
        router(route(RouteMatch(path_regex="(a")))
    with pytest.raises(ValueError, match="headers"):
        router(route(RouteMatch(headers=(HeaderMatch("x", regex="(?<=a)b"),))))


def test_prefix_rewrite_keeps_the_query_and_a_leading_slash() -> None:
    r = router(route(RouteMatch(path_prefix="/admin"), prefix_rewrite="/"),
               route(RouteMatch(path_prefix="/api/"), prefix_rewrite="/v2/"),
               route(RouteMatch(path_exact="/old"), prefix_rewrite="/new"),
               route(RouteMatch(path_prefix="/strip"), prefix_rewrite=""),
               route(RouteMatch(path_prefix="/odd"), prefix_rewrite="/a b?#\u00e9%41/"))
    for target, want in (("/admin/users?x=1", b"//users?x=1"),  # Envoy's result: use "/admin/" → "/"
                         ("/api/things", b"/v2/things"), ("/old?q", b"/new?q"), ("/strip", b"/"),
                         ("/x/../api/a", b"/v2/a"),
                         ("/odd/x?q=1", b"/a%20b%3F%23%C3%A9%41//x?q=1")):  # what a target cannot carry: %-encoded
        h = head(target)
        found = r.match(h)  # type: ignore[arg-type]
        assert found is not None
        assert r.rewritten(found, h) == want, target  # type: ignore[arg-type]


def test_rewrite_target_keeps_the_head_consistent() -> None:
    h = parse_request(b"POST /api/x?y=1 HTTP/1.1\r\nHost: db\r\nContent-Length: 3\r\nX-A: b\r\n\r\n")
    assert h.headers[0] == (b"host", b"db") and h.length == 3
    rewrite_target(h, b"/v2/longer/path/x?y=1")
    assert h.raw.startswith(b"POST /v2/longer/path/x?y=1 HTTP/1.1\r\nHost: db\r\n")
    assert h.target == b"/v2/longer/path/x?y=1"
    fresh = parse_request(b"GET / HTTP/1.1\r\nHost: db\r\nX-A: b\r\n\r\n")
    h2 = parse_request(fresh.raw)
    rewrite_target(h2, b"/z")
    assert h2.headers == [(b"host", b"db"), (b"x-a", b"b")]  # fields split after the rewrite: offsets moved
    assert HeadReader().feed(h2.raw)[0] is not None  # and it parses as received
    with pytest.raises(ValueError):
        rewrite_target(h2, b"/a b")
    with pytest.raises(ValueError):
        rewrite_target(h2, b"/a#b")


def test_target_upstream_takes_the_target_parts_and_keeps_the_upstream_policies() -> None:
    assert target_service(V2) == ("db", "dc1") and target_service("x") is None
    up = Upstream("db", "127.0.31.1", 9000, protocol="http", request_timeout_ms=7000,
                  retries=Retries(num_retries=3), load_balancer=LoadBalancer(hash_policies=(HashPolicy("header",
                                                                                                        "x-u"),)))
    t = ChainTarget(V2, endpoints=(Endpoint("127.0.31.2", 1),), spiffe_ids=("spiffe://x/ns/default/dc/dc1/svc/db",),
                    connect_timeout_ms=100, load_balancer=LoadBalancer(policy="round_robin"))
    cfg = target_upstream(up, t)
    assert (cfg.destination_name, cfg.datacenter, cfg.endpoints, cfg.spiffe_ids) == ("db", "dc1", t.endpoints,
                                                                                     t.spiffe_ids)
    assert (cfg.connect_timeout_ms, cfg.request_timeout_ms, cfg.load_balancer.policy) == (100, 7000, "round_robin")
    assert cfg.retries == up.retries and cfg.routes == () and cfg.targets == ()
    from dataclasses import replace
    assert target_upstream(up, replace(t, request_timeout_ms=50)).request_timeout_ms == 50
