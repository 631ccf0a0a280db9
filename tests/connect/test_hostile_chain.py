"""Hostile entries against the discovery chain compiler: nested splitters that multiply their splits and
routers past the snapshot's bounds are refused quickly, naming the entry and field, at write time (check_chains)
rather than freezing the agent or being accepted and then refused by every sidecar's snapshot build."""

from __future__ import annotations

import time
from typing import Any

import pytest
from meshagent.agent.connect.chain_compile import MAX_ROUTES, MAX_SPLITS, ChainError, compile_chain
from meshagent.agent.connect.entry_validate import check_chains


def _table(entries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["Kind"], e["Name"]): e for e in entries}


def _http(*names: str) -> list[dict[str, Any]]:
    return [{"Kind": "service-defaults", "Name": n, "Protocol": "http"} for n in names]


def _compile(table: dict[tuple[str, str], dict[str, Any]], service: str) -> Any:
    return compile_chain(service, lambda k, n: table.get((k, n)), datacenter="dc1", trust_domain="td")


def test_nested_splitters_multiplying_splits_are_refused_fast() -> None:
    # s0 -> 1000 x s1 -> 1000 x s2: 10^6 flattened parts took 5 s (one more level: 58 s per 1000, a hang)
    entries = _http("s0", "s1", "s2")
    for i in range(2):
        entries.append({"Kind": "service-splitter", "Name": f"s{i}",
                        "Splits": [{"Weight": 0.1, "Service": f"s{i + 1}"} for _ in range(1000)]})
    table = _table(entries)
    t0 = time.perf_counter()
    with pytest.raises(ChainError) as err:
        _compile(table, "s0")
    assert time.perf_counter() - t0 < 1.0
    assert err.value.reason == "bound" and err.value.field == "Splits"
    assert f"more than {MAX_SPLITS}" in str(err.value)
    # the write that would create it is refused the same way
    t0 = time.perf_counter()
    with pytest.raises(ChainError):
        check_chains(table[("service-splitter", "s0")], lambda k, n: table.get((k, n)))
    assert time.perf_counter() - t0 < 1.0


def test_a_deep_binary_nest_is_bounded() -> None:
    # 16 nested splitters of 2 distinct splits each: 2^16 leaves
    entries = _http(*(f"n{i}" for i in range(17)), *(f"leaf{i}" for i in range(17)))
    for i in range(16):
        entries.append({"Kind": "service-splitter", "Name": f"n{i}", "Splits": [
            {"Weight": 50, "Service": f"n{i + 1}"}, {"Weight": 50, "Service": f"leaf{i}"}]})
    # a leaf per level keeps this linear; make it exponential: both halves nest
    for i in range(15):
        entries.append({"Kind": "service-splitter", "Name": f"leaf{i}", "Splits": [
            {"Weight": 50, "Service": f"n{i + 1}"}, {"Weight": 50, "Service": f"leaf{i + 1}"}]})
    table = _table(entries)
    t0 = time.perf_counter()
    try:
        chain = _compile(table, "n0")
    except ChainError as exc:
        assert exc.reason == "bound", exc
    else:  # compiled within the bounds: every route's splits fit a snapshot
        for node in chain.nodes.values():
            assert len(getattr(node, "splits", ()) or ()) <= MAX_SPLITS
    assert time.perf_counter() - t0 < 1.0


def test_a_splitter_of_many_splits_is_refused_at_write_not_at_snapshot() -> None:
    splitter = {"Kind": "service-splitter", "Name": "web",
                "Splits": [{"Weight": 100 / 400, "Service": f"v{i}"} for i in range(400)]}
    table = _table([*_http("web", *(f"v{i}" for i in range(400))), splitter])
    with pytest.raises(ChainError) as err:
        check_chains(splitter, lambda k, n: table.get((k, n)))
    assert (err.value.kind, err.value.name, err.value.reason) == ("service-splitter", "web", "bound")
    assert err.value.field.startswith("Splits")


def test_a_router_past_the_snapshot_route_bound_is_refused_at_write() -> None:
    router = {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": f"/p{i}"}}, "Destination": {"Service": "web"}} for i in range(MAX_ROUTES)]}
    table = _table([*_http("web"), router])
    with pytest.raises(ChainError) as err:
        check_chains(router, lambda k, n: table.get((k, n)))
    assert (err.value.kind, err.value.field, err.value.reason) == ("service-router", "Routes", "bound")
    router["Routes"] = router["Routes"][:MAX_ROUTES - 1]  # with the default route: exactly the bound
    check_chains(router, lambda k, n: table.get((k, n)))


def test_a_case_insensitive_router_reaches_the_snapshot() -> None:
    # CaseInsensitive was stored and returned but dropped from the snapshot: /ADMIN missed the /admin route
    from meshagent.agent.connect.proxy_chain import compiled_chain

    from tests.connect.test_proxy_chain import DC, canary_world

    w = canary_world()
    w.instance(5, "admin")
    for entry in ({"Kind": "service-defaults", "Name": "web", "Protocol": "http"},
                  {"Kind": "service-defaults", "Name": "admin", "Protocol": "http"},
                  {"Kind": "service-router", "Name": "web", "Routes": [
                      {"Match": {"HTTP": {"PathPrefix": "/Admin", "CaseInsensitive": True}},
                       "Destination": {"Service": "admin"}},
                      {"Match": {"HTTP": {"PathExact": "/x"}}, "Destination": {"Service": "admin"}}]}):
        w.entry(entry)
    first, second, _default = w.upstream(compiled_chain(w.catalog, "web", DC)).routes
    assert first.match.case_insensitive and first.match.path_prefix == "/Admin"
    assert not second.match.case_insensitive


def _many(n: int, subsets: int, match_all: bool = False) -> Any:
    """A World with `n` web instances (Meta version v0..v<subsets-1>) and a resolver with one subset per version."""
    from meshagent.agent.catalog import commands
    from meshagent.agent.catalog.model import Check, Node, Service

    from tests.connect.test_proxy_chain import World

    w = World()
    for i in range(n):
        node, sid = f"n{i}", f"web{i}-sidecar-proxy"
        svc = Service(node=node, id=sid, service="web-sidecar-proxy", port=20000 + i, kind="connect-proxy",
                      proxy={"DestinationServiceName": "web"}, meta={"version": f"v{i % subsets}"})
        w.apply(commands.register(Node(node=node, address=f"127.0.35.{10 + i % 200}"), svc, [Check(
            node=node, check_id=f"c{i}", status="passing", service_id=sid, service_name=svc.service)]))
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    op = "!=" if match_all else "=="
    w.entry({"Kind": "service-resolver", "Name": "web", "Subsets": {
        f"v{j}": {"Filter": f"Service.Meta.version {op} v{j}"} for j in range(subsets)}})
    w.entry({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": f"/{j}"}}, "Destination": {"ServiceSubset": f"v{j}"}}
        for j in range(subsets)]})
    return w


def test_a_rebuild_evaluates_subset_filters_only_for_changed_instances() -> None:
    # 120 subsets over 4,096 instances evaluated every filter on every rebuild: 3.5 s of the agent's loop per
    # health change (0.17 s now). Counted here, not timed: each filter's evaluations.
    from meshagent.agent.connect import proxy_chain
    from meshagent.agent.connect.proxy_chain import compiled_chain, subset_filter

    from tests.connect.test_proxy_chain import DC

    w = _many(300, 20)
    calls = [0]
    for j in range(20):
        inner = subset_filter(f"Service.Meta.version == v{j}")

        def counting(view: Any, inner: Any = inner) -> bool:
            calls[0] += 1
            return bool(inner(view))

        proxy_chain._filters[f"Service.Meta.version == v{j}"] = counting
    try:
        up = w.upstream(compiled_chain(w.catalog, "web", DC))
        assert sum(len(t.endpoints) for t in up.targets) == 300 + 300  # the default target has every instance
        first = calls[0]
        assert first == 300 * 20
        w.upstream(compiled_chain(w.catalog, "web", DC))
        assert calls[0] == first  # nothing changed: no filter evaluated again
        w.apply(_flap(w))
        w.upstream(compiled_chain(w.catalog, "web", DC))
        assert calls[0] - first <= 20  # one instance changed: its view only
    finally:
        proxy_chain._filters.clear()


def _flap(w: Any) -> Any:
    from meshagent.agent.catalog import commands
    from meshagent.agent.catalog.model import Check, Node, Service

    svc = Service(node="n7", id="web7-sidecar-proxy", service="web-sidecar-proxy", port=20007, kind="connect-proxy",
                  proxy={"DestinationServiceName": "web"}, meta={"version": "v7"})
    return commands.register(Node(node="n7", address="127.0.35.17"), svc, [Check(
        node="n7", check_id="c7", status="warning", service_id=svc.id, service_name=svc.service)])


def test_a_chain_past_the_workers_endpoint_bound_is_trimmed_in_order_and_says_so() -> None:
    # Review finding 13b: a service that grew past the bound fails no snapshot; later targets get fewer.
    from meshagent.agent.connect.proxy_chain import ChainReader, compiled_chain
    from meshagent.proxy.chain_check import MAX_CHAIN_ENDPOINTS

    from tests.connect.test_proxy_chain import DC

    w = _many(4096, 5, match_all=True)  # 6 targets (5 subsets of 3,277 + the default 4,096): 20,480 in all
    up = w.upstream(compiled_chain(w.catalog, "web", DC))
    sizes = [len(t.endpoints) for t in up.targets]
    assert sum(sizes) == MAX_CHAIN_ENDPOINTS == 16384
    assert 0 not in sizes[:5] and sizes[5] == 0  # in route order: the default route's target is last
    reader = ChainReader("front-sidecar-proxy", "front")
    reader.catalog, reader.datacenter = w.catalog, DC
    assert reader.chain_upstream(up, compiled_chain(w.catalog, "web", DC)) == up
    assert reader.chain_notes[-1] == ("discovery chain web: target web.default.default.dc1 keeps 0 of 4096 "
                                      "endpoints (at most 16384 over its targets)")


def test_a_chain_broken_behind_the_checks_fails_that_upstream_only_and_recovers() -> None:
    # web splits over s0..s99 (101 nodes); s0's own splitter to t0..t29 compiles alone (31 nodes), but takes
    # web's chain past 128 nodes. Written here without the reverse check (as a restore or an older agent could):
    # the sidecar's web upstream has no endpoints, the runner says why, the rest of it is applied, and it
    # recovers when the entry goes (review finding 1b).
    from meshagent.agent.catalog import commands
    from meshagent.agent.connect.entry_validate import check_references

    from tests.connect.test_proxy_runner import World, run, until

    async def put(w: World, entry: dict[str, Any]) -> None:
        check_references(entry, lambda k, n: (row.entry if (row := w.store.catalog.config_entries.get(k, n))
                                              else None))
        await w.store.apply(commands.config_entry_set(entry))

    async def scenario(w: World) -> None:
        for name in ("web", "api", *(f"s{i}" for i in range(100)), *(f"t{i}" for i in range(30))):
            await put(w, {"Kind": "service-defaults", "Name": name, "Protocol": "http"})
        await put(w, {"Kind": "service-splitter", "Name": "web",
                      "Splits": [{"Weight": 1, "Service": f"s{i}"} for i in range(100)]})
        sid = w.add_sidecar("api", upstreams=[{"DestinationName": "web", "LocalBindPort": 9191}])
        w.leaves.renew("api")
        await until(lambda: w.runner.snapshot(sid))
        sup = w.supervisors[0]
        good = sup.updates[-1]
        assert len(good.upstreams[0].targets) == 100
        s0 = {"Kind": "service-splitter", "Name": "s0",
              "Splits": [{"Weight": 100 / 32, "Service": f"t{i}"} for i in range(30)] +
                        [{"Weight": 100 - 30 * (100 / 32), "Service": "t0"}]}
        entries = w.store.catalog.config_entries
        with pytest.raises(ChainError, match="more than 128 nodes"):  # what PUT /v1/config checks now (78b78bd)
            check_references(s0, lambda k, n: (row.entry if (row := entries.get(k, n)) else None),
                             lambda kind: [row.entry for row in entries.list(kind)])
        await put(w, s0)  # as an entry stored before that check (or written past it) would be
        await until(lambda: w.runner.status()[sid]["error"])
        assert "more than 128 nodes" in w.runner.status()[sid]["error"]
        await until(lambda: sup.updates[-1] is not good)
        broken = sup.updates[-1].upstreams[0]
        assert broken.targets == () and broken.endpoints == () and sup.updates[-1].tls == good.tls
        await w.store.apply(commands.config_entry_delete("service-splitter", "s0"))
        await until(lambda: w.runner.status()[sid]["error"] is None)
        await until(lambda: len(sup.updates[-1].upstreams[0].targets) == 100)

    run(scenario)
