"""CatalogStore.block: an index from the future answers at once, but on an empty catalog index 1 waits (a loop
that blocks on a client before its first snapshot must not spin)."""

from __future__ import annotations

import trio
import trio.testing
from meshagent.agent.catalog import commands
from meshagent.agent.store import CatalogStore


def test_an_empty_catalog_blocks_until_its_first_write() -> None:
    async def main() -> None:
        store = CatalogStore()
        assert store.index_for(["kv:a"]) == 1 and store.catalog.last_index == 0
        woke: list[int] = []

        async def waiter() -> None:
            woke.append(await store.block(["kv:a"], 1, 30.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []  # waiting, not answered at once
            store.catalog.apply(1, commands.kv_set("b", b"x"))
            store.catalog.apply(2, commands.kv_set("a", b"x"))
        assert woke == [2]

    trio.run(main)


def test_an_index_from_the_future_answers_at_once() -> None:
    async def main() -> None:
        store = CatalogStore()
        store.catalog.apply(1, commands.kv_set("a", b"x"))
        with trio.fail_after(5):
            assert await store.block(["kv:a"], 50, 30.0) == 1

    trio.run(main)
