"""CatalogStore: the agent's catalog, whoever feeds it, and the blocking queries over it.

On a server Raft applies committed commands to it; on a client agent the catalog replica does; under
`-dev` it applies its own writes directly (in memory). Reads and blocking queries work the same in all three.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .acl import command_rights
from .acl.identity import require
from .catalog import Catalog
from .rpc.errors import Rejected
from .watch import WatchHub

if TYPE_CHECKING:
    from .acl.resolver import ACLResolver

log = logging.getLogger("meshagent.store")


class Replicator(Protocol):
    """Where writes go and what reads wait for: Raft on a server, the server RPC on a client."""

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any: ...

    async def read_barrier(self, consistent: bool) -> None: ...


class CatalogStore:
    """Holds the catalog; writes go through the replicator when there is one."""

    def __init__(self) -> None:
        self.hub = WatchHub()
        self.replicator: Replicator | None = None
        # On a client agent: when its catalog replica lost its server (None while fed and current).
        self.stale_since: float | None = None
        self.catalog = Catalog()
        self.catalog.add_listener(self.hub.notify)
        # The agent's resolver (set by the agent): a write applied here without a replicator (-dev) that carries
        # a token is checked as the servers check RPC writes (None: not checked).
        self.write_acl: ACLResolver | None = None

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        """Apply a command: through the replicator (Raft or a server), else here at the next index.
        `token`: the ACL secret the write acts as; servers re-check it when the write reaches them over RPC
        (None: the caller is the agent itself, already authorized locally)."""
        if self.replicator is not None:
            return await self.replicator.apply(command, token)
        if token is not None:
            self.check_write(command, token)
        return self.catalog.apply(self.catalog.last_index + 1, command)

    def check_write(self, command: dict[str, Any], token: str) -> None:
        """Raise ACLNotFound/ACLDenied unless `token` may make this write, by the same rules (and identity) as a
        server's re-check of an RPC write (agent/acl/command_rights.py): whatever the HTTP layer lets through,
        this is the one definition of a write's rights. Rejected for a command it cannot read."""
        acl = self.write_acl
        if acl is None or not acl.enabled:
            return
        identity = acl.resolve_rpc(token)
        try:
            decision = command_rights.authorize(identity, command, self.catalog)
        except command_rights.MalformedCommand as exc:
            raise Rejected(str(exc)) from None
        if decision is not None:
            require(identity, decision)

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

    def index_for(self, keys: Iterable[str]) -> int:
        """The X-Consul-Index for a query watching `keys`."""
        return self.catalog.index_for(keys)

    async def block(self, keys: list[str], min_index: int, wait: float) -> int:
        """Hold a blocking query until the index of `keys` passes min_index or wait (+ jitter ≤ wait/16) ends."""
        deadline = trio.current_time() + wait + random.uniform(0, wait / 16)
        index = self.catalog.index_for(keys)
        # An index from the future (the store was restored or rebuilt) answers at once so the client resets;
        # an empty catalog (a client before its first snapshot) has no future, and index 1 waits as any other.
        while index <= min_index and (min_index <= self.catalog.last_index or self.catalog.last_index == 0):
            remaining = deadline - trio.current_time()
            if remaining <= 0 or not await self.hub.wait(keys, remaining):
                break
            index = self.catalog.index_for(keys)
        return self.catalog.index_for(keys)
