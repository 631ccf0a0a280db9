"""CatalogStore: the single-node home of the catalog. Hands out log indexes, persists, serves blocking queries.

The Raft issue replaces the index counter and persistence with a replicated log; `Catalog` itself and the
read/blocking-query side stay as they are.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import trio

from ..raft.storage import write_atomic
from .catalog import Catalog, CommandError
from .watch import WatchHub

log = logging.getLogger("meshagent.store")

SNAPSHOT_FILE = "catalog.snapshot"


class StoreError(Exception):
    """The store could not load or persist its state."""


class Replicator(Protocol):
    """What the store needs from Raft (RaftServer implements it)."""

    async def apply(self, command: dict[str, Any]) -> Any: ...

    async def read_barrier(self, consistent: bool) -> None: ...


class CatalogStore:
    """Owns the catalog on a single node; with a data dir every acknowledged write is on disk."""

    def __init__(self, data_dir: str | None = None, replicated: bool = False) -> None:
        self.hub = WatchHub()
        # A Raft server's catalog is rebuilt from the Raft snapshot and log, so it writes no file of its own.
        self._path = Path(data_dir) / SNAPSHOT_FILE if data_dir and not replicated else None
        self.replicator: Replicator | None = None
        # On a client agent: when its catalog replica lost its server (None while fed and current).
        self.stale_since: float | None = None
        self.catalog = self._load()
        self.catalog.add_listener(self.hub.notify)
        self._persisted_index = self.catalog.last_index
        self._dirty = trio.Event()
        self._persisted = trio.Event()
        self._persist_error: Exception | None = None

    def _load(self) -> Catalog:
        if self._path is None or not self._path.exists():
            return Catalog()
        try:
            return Catalog.restore(self._path.read_bytes())
        except (CommandError, OSError) as exc:
            raise StoreError(f"cannot load catalog from {self._path}: {exc}") from exc

    async def apply(self, command: dict[str, Any]) -> Any:
        """Apply a command: through Raft on a server, else at the next index once durable (with a data dir)."""
        if self.replicator is not None:
            return await self.replicator.apply(command)
        index = self.catalog.last_index + 1
        result = self.catalog.apply(index, command)
        if self._path is not None:
            self._dirty.set()
            while self._persisted_index < index:
                if self._persist_error is not None:
                    raise StoreError(f"cannot persist catalog to {self._path}: {self._persist_error}")
                await self._persisted.wait()
        return result

    def apply_committed(self, index: int, command: dict[str, Any]) -> Any:
        """Apply a command Raft committed at `index` (raises CommandError for a rejected one)."""
        return self.catalog.apply(index, command)

    def restore(self, data: bytes, at_least: int = 0) -> None:
        """Replace the catalog with a snapshot's; its index never goes below `at_least`. Wakes every watcher."""
        catalog = Catalog.restore(data)
        catalog.last_index = max(catalog.last_index, at_least)
        catalog.add_listener(self.hub.notify)
        self.catalog = catalog
        self.hub.notify_all(catalog.last_index)

    async def read_barrier(self, consistency: bytes) -> None:
        """Before a read: nothing for `stale` (or without Raft); else confirm leadership (lease or quorum)."""
        if self.replicator is not None and consistency != b"stale":
            await self.replicator.read_barrier(consistency == b"consistent")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Persist in the background: one snapshot write covers every write that arrived meanwhile."""
        task_status.started()
        if self._path is None:
            await trio.sleep_forever()
        path = self._path
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            index = self.catalog.last_index
            data = self.catalog.snapshot()
            try:
                await trio.to_thread.run_sync(write_atomic, path, data)
                self._persist_error = None
                self._persisted_index = index
            except OSError as exc:
                # Keep serving from memory and keep retrying; writers waiting on this index get the error.
                log.error("cannot persist catalog to %s: %s", path, exc)
                self._persist_error = exc
                self._dirty.set()
                await trio.sleep(1.0)
            self._persisted.set()
            self._persisted = trio.Event()

    def index_for(self, keys: Iterable[str]) -> int:
        """The X-Consul-Index for a query watching `keys`."""
        return self.catalog.index_for(keys)

    async def block(self, keys: list[str], min_index: int, wait: float) -> int:
        """Hold a blocking query until the index of `keys` passes min_index or wait (+ jitter ≤ wait/16) ends."""
        deadline = trio.current_time() + wait + random.uniform(0, wait / 16)
        index = self.catalog.index_for(keys)
        # An index from the future (the store was restored or rebuilt) answers at once so the client resets.
        while index <= min_index <= self.catalog.last_index:
            remaining = deadline - trio.current_time()
            if remaining <= 0 or not await self.hub.wait(keys, remaining):
                break
            index = self.catalog.index_for(keys)
        return self.catalog.index_for(keys)
