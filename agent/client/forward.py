"""ServerForwarder: a client agent's writes and read barriers, sent over :8300 RPC to a server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ..rpc.client import RPCClient
from ..rpc.errors import ServerError, Unreachable
from .replica import CatalogReplica
from .servers import ServerPool

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS

log = logging.getLogger("meshagent.client")

RPC_HOLD_TIMEOUT = 7.0  # Consul's rpc_hold_timeout: how long a request may wait for a leader or a server
CALL_TIMEOUT = 5.0


class ServerForwarder:
    """The store's `Replicator` on a client agent: writes go to a server, which forwards them to the leader."""

    def __init__(self, pool: ServerPool, replica: CatalogReplica, tls: RPCTLS | None = None) -> None:
        self.pool = pool
        self.replica = replica
        self.tls = tls  # :8300's TLS policy (None: plaintext)
        self._clients: dict[str, RPCClient] = {}
        self._nursery: trio.Nursery | None = None
        self.forwarded = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the RPC connections' reader tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _call(self, method: str, args: Any) -> Any:
        """Call a server, moving on to the next one when it cannot be reached, for up to RPC_HOLD_TIMEOUT."""
        assert self._nursery is not None, "ServerForwarder.run must be started first"
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        last_error = "No known servers"
        tried: set[str] = set()
        while True:
            # The server feeding our replica first: its answers and our replica move in step.
            candidates = [a for a in [self.replica.server, *self.pool.candidates()] if a]
            if not candidates:
                raise Unreachable("No known servers (none has been seen through gossip yet)")
            address = next((a for a in candidates if a not in tried), None)
            if address is None:
                tried.clear()
                address = candidates[0]
            tried.add(address)
            client = self._clients.get(address)
            if client is None:
                client = self._clients[address] = RPCClient(address, self.tls)
            timeout = min(CALL_TIMEOUT, max(0.5, deadline - trio.current_time()))
            try:
                self.forwarded += 1
                return await client.call(self._nursery, method, args, timeout)
            except Unreachable as exc:  # any other error is the server's answer: the request's own
                last_error = str(exc)
                log.debug("RPC %s to %s failed: %s", method, address, exc)
                self.pool.failed(address)
            if trio.current_time() >= deadline:
                raise Unreachable(last_error)
            await trio.sleep(0.05)

    async def call(self, method: str, args: Any) -> Any:
        """Call a server's RPC method (the next server while one cannot be reached, up to RPC_HOLD_TIMEOUT)."""
        return await self._call(method, args)

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        """Write through a server; the answer is the catalog command's result. `token`: the secret the write
        acts as, sent with it ({command, token}) for the servers to re-check; None or "" sends the bytes
        alone (anonymous either way: bytes keep the leader's task-free path, listener.py on_apply)."""
        data = msgpack.packb(command, use_bin_type=True)
        return await self._call("apply", {"command": data, "token": token} if token else data)

    async def read_barrier(self, consistent: bool) -> None:
        """Before a `default` or `consistent` read: the leader confirms an index, the replica reaches it."""
        index = await self._call("barrier", consistent)
        if not isinstance(index, int):
            raise ServerError(f"bad barrier answer {index!r}")
        if not await self.replica.wait_for_index(index, RPC_HOLD_TIMEOUT):
            raise ServerError(f"the local catalog replica did not reach index {index} in {RPC_HOLD_TIMEOUT:.0f}s")
