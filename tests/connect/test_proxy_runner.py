"""ProxyRunner over a real catalog store, with a small stand-in for the supervisor (it records what it is
given) and for the leaf cache: sidecars added and removed start and stop supervisors, catalog writes and leaf
renewals reach the supervisor as new snapshot versions within a second (coalesced), a broken configuration
keeps the last good snapshot, a failed supervisor is replaced. Time is trio's MockClock (autojump).

The agent-level test (a real -dev agent starting real worker processes) is tests/connect/test_proxy_agent.py.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from meshagent.agent.catalog import commands
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.connect import ca, proxy_runner
from meshagent.agent.connect.ca_plan import root_fields, stored_config
from meshagent.agent.connect.leaf_plan import LeafRecord
from meshagent.agent.connect.proxy_runner import ProxyRunner
from meshagent.agent.store import CatalogStore
from meshagent.proxy.snapshot import ProxySnapshot

TD = "11111111-2222-3333-4444-555555555555.mesh"
NOW = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)


class FakeSupervisor:
    """Records updates; `run` blocks until cancelled (or raises when told to)."""

    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.updates: list[ProxySnapshot] = []
        self.running = False
        self.stopped = False
        world.supervisors.append(self)
        self.fail = world.fail_next_run
        self.asked = 0
        self.restarts = 0  # worker restarts, as ProxySupervisor.status() says
        world.fail_next_run = False

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            if self.fail:
                raise RuntimeError("worker spawn failed")
            await trio.sleep_forever()
        finally:
            self.running = False
            self.stopped = True

    def update(self, snapshot: ProxySnapshot) -> None:
        self.updates.append(snapshot)

    async def metrics(self) -> dict[str, Any]:
        self.asked += 1
        await trio.sleep(0.01)  # asking workers takes a moment: concurrent scrapes overlap
        return {"from": self.name}

    def status(self) -> dict[str, Any]:
        return {"updates": len(self.updates), "restarts": self.restarts}


class FakeLeaves:
    """A leaf per service, renewed by `renew`; `get` blocks on the index as LeafCache does."""

    def __init__(self) -> None:
        self.records: dict[str, LeafRecord] = {}
        self.changed = trio.Event()
        self.refuse = False

    def renew(self, service: str) -> None:
        old = self.records.get(service)
        index = old.index + 1 if old else 1
        self.records[service] = LeafRecord(service=service, service_uri=f"spiffe://{TD}/ns/default/dc/dc1/svc/"
                                           f"{service}", cert_pem=f"CERT{index}", intermediate_pems=(),
                                           private_key_pem=f"KEY{index}", index=index)
        self.changed.set()
        self.changed = trio.Event()

    async def get(self, service: str, min_index: int = 0, wait: float = 300.0) -> LeafRecord:
        with trio.move_on_after(wait):
            while True:
                if self.refuse:
                    raise ValueError("CA not initialized")
                rec = self.records.get(service)
                if rec is not None and rec.index > min_index:
                    return rec
                await self.changed.wait()
        return self.records[service]


class World:
    def __init__(self) -> None:
        self.store = CatalogStore()
        self.services: dict[str, ServiceDefinition] = {}
        self.leaves = FakeLeaves()
        self.supervisors: list[FakeSupervisor] = []
        self.fail_next_run = False
        self.runner = ProxyRunner(self.store, lambda: self.services, self.leaves, datacenter="dc1",
                                  node_name="n1", bind_address="127.0.17.1", default_allow=lambda: True,
                                  supervisor=lambda name: FakeSupervisor(name, self))

    async def init_ca(self) -> None:
        root = ca.new_root(TD, NOW)
        await self.store.apply(commands.connect_ca("init", cluster_id="c1", trust_domain=TD,
                                                   root=root_fields(root), config=stored_config("consul", {}, False)))

    def add_sidecar(self, parent: str = "web", upstreams: list[dict[str, Any]] | None = None,
                    config: dict[str, Any] | None = None, port: int = 21000) -> str:
        sid = f"{parent}-sidecar-proxy"
        block: dict[str, Any] = {"DestinationServiceName": parent, "DestinationServiceID": parent,
                                 "LocalServicePort": 8080, "Upstreams": upstreams or [], "Config": config or {}}
        self.services[parent] = ServiceDefinition(name=parent, id=parent, port=8080)
        self.services[sid] = ServiceDefinition(name=sid, id=sid, port=port, kind="connect-proxy", proxy=block)
        return sid

    async def intention(self, source: str, action: str, dest: str = "web") -> None:
        await self.store.apply(commands.config_entry_set({"Kind": "service-intentions", "Name": dest,
                                                          "Sources": [{"Name": source, "Action": action}]}))


Scenario = Callable[[World], Awaitable[Any]]


def run(scenario: Scenario) -> Any:
    result: list[Any] = []

    async def main() -> None:
        world = World()
        await world.init_ca()
        async with trio.open_nursery() as nursery:
            await nursery.start(world.runner.run)
            result.append(await scenario(world))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> float:
    """Virtual seconds until `condition` holds (fails after `timeout`)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    return trio.current_time() - start


def test_a_sidecar_gets_a_supervisor_with_its_snapshot_and_losing_it_stops_the_supervisor() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar()
        await until(lambda: w.runner.proxies())  # noticed by the local poll at the latest
        assert w.supervisors == []  # nothing to run before the first leaf
        w.leaves.renew("web")
        await until(lambda: w.supervisors and w.supervisors[0].updates and w.supervisors[0].running)
        sup = w.supervisors[0]
        snap = sup.updates[0]
        assert (snap.proxy_id, snap.service, snap.tls.cert_pem, snap.version) == (sid, "web", "CERT1\n", 1)
        assert w.runner.snapshot(sid) == (1, snap) and w.runner.proxies() == [sid]
        assert await w.runner.metrics() == [{"from": sid}]
        del w.services[sid]
        await until(lambda: sup.stopped)
        assert w.runner.snapshot(sid) is None and w.runner.proxies() == []

    run(scenario)


def test_a_sidecar_with_embedded_false_gets_a_snapshot_but_no_workers_here() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar(config={"embedded": False})
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(sid))  # for `meshagent connect proxy`, over HTTP
        await trio.sleep(1)
        assert w.supervisors == [] and await w.runner.metrics() == []
        w.add_sidecar(config={"embedded": True})
        await until(lambda: w.supervisors and w.supervisors[0].running)
        assert w.runner.status()[sid]["supervisor"] == {"updates": 1, "restarts": 0}
        w.add_sidecar(config={"embedded": False})
        await until(lambda: w.supervisors[0].stopped)
        assert w.runner.status()[sid]["supervisor"] == {} and w.runner.snapshot(sid) is not None

    run(scenario)


def test_no_leaf_no_supervisor() -> None:
    async def scenario(w: World) -> None:
        w.leaves.refuse = True
        w.add_sidecar()
        await trio.sleep(5)
        assert w.supervisors == [] and w.runner.snapshot("web-sidecar-proxy") is None
        w.leaves.refuse = False
        w.leaves.renew("web")
        await until(lambda: w.supervisors, timeout=60)  # the leaf watch retries with back-off

    run(scenario)


def test_an_intention_write_reaches_the_supervisor_as_a_new_version_within_a_second() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar()
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(sid))
        sup = w.supervisors[0]
        waiter: list[Any] = []

        async def wait() -> None:
            waiter.append(await w.runner.wait_snapshot(sid, 1, 30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(1)
            assert not waiter  # nothing changed yet: the wait blocks
            await w.intention("api", "deny")
            took = await until(lambda: len(sup.updates) == 2)
        assert took <= 1.0
        version, snap = waiter[0]
        assert version == 2 and [(r.source, r.action) for r in snap.intentions.rules] == [("api", "deny")]
        assert sup.updates[-1] is snap

    run(scenario)


def test_a_burst_of_writes_is_coalesced_and_unrelated_writes_build_nothing_new() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar()
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(sid))
        sup = w.supervisors[0]
        for i in range(20):  # 20 writes 10 ms apart: coalesced in 50 ms windows, about 4 snapshots, not 20
            await w.intention(f"s{i}", "allow")
            await trio.sleep(0.01)
        await trio.sleep(1)
        assert 2 <= len(sup.updates) <= 7
        assert len(sup.updates[-1].intentions.rules) == 1 and sup.updates[-1].intentions.rules[0].source == "s19"
        n = len(sup.updates)
        await w.intention("x", "deny", dest="other")  # another destination's entry: rebuilt, but identical
        await trio.sleep(1)
        assert len(sup.updates) == n

    run(scenario)


def test_upstream_endpoints_and_leaf_renewals_make_new_snapshots() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar(upstreams=[{"DestinationName": "db", "LocalBindPort": 9191}])
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(sid))
        sup = w.supervisors[0]
        assert sup.updates[-1].upstreams[0].endpoints == ()
        svc = Service(node="n2", id="db-sidecar-proxy", service="db-sidecar-proxy", port=21000,
                      kind="connect-proxy", proxy={"DestinationServiceName": "db"})
        await w.store.apply(commands.register(Node(node="n2", address="127.0.17.2"), svc, [
            Check(node="n2", check_id="c", status="passing", service_id=svc.id, service_name=svc.service)]))
        assert await until(lambda: sup.updates[-1].upstreams[0].endpoints) <= 1.0
        assert sup.updates[-1].upstreams[0].endpoints[0].address == "127.0.17.2"
        w.leaves.renew("web")
        assert await until(lambda: sup.updates[-1].tls.cert_pem == "CERT2\n") <= 1.0
        assert sup.updates[-1].tls.key_pem == "KEY2"

    run(scenario)


def test_a_bad_config_keeps_the_last_good_snapshot_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meshagent.connect.proxy")

    async def scenario(w: World) -> None:
        sid = w.add_sidecar()
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(sid))
        sup = w.supervisors[0]
        w.add_sidecar(config={"workers": "many"})
        await until(lambda: w.runner.status()[sid]["error"])
        await w.intention("api", "deny")  # another rebuild, still broken: no second log line
        await trio.sleep(1)
        assert len(sup.updates) == 1 and w.runner.snapshot(sid) == (1, sup.updates[0])
        w.add_sidecar(config={"workers": 2})
        await until(lambda: len(sup.updates) == 2)
        assert sup.updates[-1].workers == 2 and w.runner.status()[sid]["error"] is None

    run(scenario)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "web-sidecar-proxy" in errors[0] and "proxy.config.workers" in errors[0]


def test_a_failed_supervisor_is_replaced_and_given_the_latest_snapshot() -> None:
    async def scenario(w: World) -> None:
        w.fail_next_run = True
        sid = w.add_sidecar()
        w.leaves.renew("web")
        await until(lambda: len(w.supervisors) == 2 and w.supervisors[1].running, timeout=30)
        assert w.supervisors[1].updates[0] == w.runner.snapshot(sid)[1]  # type: ignore[index]
        assert w.runner.status()[sid]["restarts"] == 1

    run(scenario)


def test_a_local_registration_is_noticed_at_once_through_the_nodes_catalog_key() -> None:
    async def scenario(w: World) -> None:
        await trio.sleep(0.5)  # halfway between two local polls
        sid = w.add_sidecar()
        svc = Service(node="n1", id=sid, service=sid, port=21000, kind="connect-proxy")
        await w.store.apply(commands.register(Node(node="N1", address="127.0.17.1"), svc))  # as local sync does
        assert await until(lambda: w.runner.proxies()) < 0.1

    run(scenario)


def test_a_listener_another_local_sidecar_holds_is_refused() -> None:
    async def scenario(w: World) -> None:
        web = w.add_sidecar(upstreams=[{"DestinationName": "db", "LocalBindPort": 9191}])
        w.leaves.renew("web")
        await until(lambda: w.runner.snapshot(web))
        api = w.add_sidecar("api", upstreams=[{"DestinationName": "db", "LocalBindAddress": "0.0.0.0",
                                               "LocalBindPort": 9191}], port=21001)
        w.leaves.renew("api")
        await until(lambda: w.runner.status().get(api, {}).get("error"))
        assert "9191" in w.runner.status()[api]["error"] and web in w.runner.status()[api]["error"]
        assert w.runner.snapshot(api) is None and len(w.supervisors) == 1
        del w.services[web]  # the holder goes: the refused sidecar gets its listener without a change of its own
        assert await until(lambda: w.runner.snapshot(api)) < 1.5

    run(scenario)


def test_worker_restarts_count_over_every_supervisor_and_never_go_down() -> None:
    async def scenario(w: World) -> None:
        w.add_sidecar()
        w.add_sidecar("api", port=21001)
        w.leaves.renew("web")
        w.leaves.renew("api")
        await until(lambda: len(w.supervisors) == 2 and all(s.running for s in w.supervisors))
        web, api = sorted(w.supervisors, key=lambda s: s.name, reverse=True)
        web.restarts, api.restarts = 3, 4
        assert w.runner.worker_restarts() == 7
        del w.services["web-sidecar-proxy"]  # the sidecar goes: its workers' restarts stay in the total
        await until(lambda: w.runner.proxies() == ["api-sidecar-proxy"])
        assert w.runner.worker_restarts() == 7
        api.restarts = 5
        assert w.runner.worker_restarts() == 8 and w.runner.supervisor_restarts == 0

    run(scenario)


def test_concurrent_metrics_scrapes_share_one_gather_at_a_bounded_rate() -> None:
    async def scenario(w: World) -> None:
        sid = w.add_sidecar()
        w.leaves.renew("web")
        await until(lambda: w.supervisors and w.supervisors[0].running)
        sup = w.supervisors[0]
        got: list[Any] = []

        async def scrape() -> None:
            got.append(await w.runner.metrics())
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(scrape)
        assert sup.asked == 1 and got == [[{"from": sid}]] * 10
        start = trio.current_time()
        async with trio.open_nursery() as nursery:  # right after: one later gather (fresh), not the last one
            for _ in range(10):
                nursery.start_soon(scrape)
        assert sup.asked == 2 and trio.current_time() - start >= proxy_runner.METRICS_INTERVAL - 0.02

    run(scenario)
