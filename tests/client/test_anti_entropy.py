"""Anti-entropy against a real catalog store: syncs write only differences, output-only changes wait for
check_update_interval, and entries changed behind the agent's back are restored. Virtual time (MockClock)."""

from __future__ import annotations

import trio
import trio.testing
from meshagent.agent.catalog import Node, commands
from meshagent.agent.config.loader import parse_service
from meshagent.agent.config.types import Source
from meshagent.agent.local_state import LocalState
from meshagent.agent.store import CatalogStore


def _state() -> tuple[LocalState, CatalogStore]:
    store = CatalogStore()
    local = LocalState(node=Node(node="web-1", address="198.18.0.21"), store=store, data_dir=None,
                       enable_local_script_checks=False, enable_script_checks=False, check_update_interval=300.0)
    return local, store


def _output(store: CatalogStore, check_id: str) -> str:
    return next(c.output for c in store.catalog.node_checks("web-1") if c.check_id == check_id)


async def _scenario() -> None:
    local, store = _state()
    async with trio.open_nursery() as nursery:
        await nursery.start(local.run)
        svc = parse_service({"Name": "web", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "1h"}},
                            Source("<test>"))
        await local.start([svc], [])
        await local.update_ttl("web-ttl", "passing", "first")
        assert _output(store, "web-ttl") == "first"

        # In sync: a full sync writes nothing (an idle fleet sends nothing to Raft).
        writes, index = local.syncs, store.catalog.last_index
        await local.sync_full()
        assert (local.syncs, store.catalog.last_index) == (writes, index)

        # Output-only change: deferred, also by full syncs, until check_update_interval has passed.
        await local.update_ttl("web-ttl", "passing", "second")
        await local.sync_full()
        assert _output(store, "web-ttl") == "first"
        await trio.sleep(301)
        await local.sync_full()
        assert _output(store, "web-ttl") == "second"

        # A status change goes out at once.
        await local.update_ttl("web-ttl", "critical", "down")
        assert _output(store, "web-ttl") == "down"

        # Deleted behind the agent's back: the catalog watch notices and the entry comes back.
        await store.apply(commands.deregister("web-1", service_id="web"))
        with trio.fail_after(10):
            while not store.catalog.service_instances("web"):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


def test_anti_entropy_writes_differences_defers_output_and_repairs() -> None:
    trio.run(_scenario, clock=trio.testing.MockClock(autojump_threshold=0))
