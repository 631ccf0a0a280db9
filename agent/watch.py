"""Blocking-query waiters keyed by catalog watch keys: a write wakes only the queries whose data changed."""

from __future__ import annotations

from collections.abc import Iterable

import trio

KV_PREFIX = "kvprefix:"


class WatchHub:
    """Wakes waiters whose watch keys were changed by a catalog apply."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[trio.Event]] = {}
        self._by_prefix: dict[str, set[trio.Event]] = {}
        self.wakeups = 0  # waiters woken, for tests and benchmarks

    @property
    def waiting(self) -> int:
        """How many waiter registrations are pending."""
        return sum(len(s) for s in self._by_key.values()) + sum(len(s) for s in self._by_prefix.values())

    def notify(self, index: int, changed: frozenset[str]) -> None:
        """Catalog change listener: wake every waiter watching one of `changed`."""
        woken: set[trio.Event] = set()
        for key in changed:
            woken.update(self._by_key.pop(key, ()))
            if key.startswith("kv:") and self._by_prefix:
                name = key[3:]
                for prefix in [p for p in self._by_prefix if name.startswith(p)]:
                    woken.update(self._by_prefix.pop(prefix))
        for event in woken:
            event.set()
        self.wakeups += len(woken)

    def notify_all(self, index: int) -> None:
        """Wake every waiter (the whole catalog was replaced by a snapshot restore)."""
        woken: set[trio.Event] = set()
        for table in (self._by_key, self._by_prefix):
            for waiters in table.values():
                woken.update(waiters)
            table.clear()
        for event in woken:
            event.set()
        self.wakeups += len(woken)

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """Sleep until one of `keys` changes (True) or `timeout` seconds pass (False)."""
        event = trio.Event()
        registered: list[tuple[dict[str, set[trio.Event]], str]] = []
        for key in keys:
            table, name = (self._by_prefix, key[len(KV_PREFIX):]) if key.startswith(KV_PREFIX) else (
                self._by_key, key)
            table.setdefault(name, set()).add(event)
            registered.append((table, name))
        try:
            with trio.move_on_after(timeout):
                await event.wait()
                return True
            return False
        finally:
            for table, name in registered:
                waiters = table.get(name)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del table[name]
