"""The server's RPC endpoint table: one entry per :8300 method, each checking its arguments.

(auto_encrypt.sign is answered by the listener itself, from the TLS policy.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack

from ..rpc.errors import Rejected
from .rpc_args import parse_add_server

if TYPE_CHECKING:
    from ..connect.ca_manager import CAManager
    from .raft_server import RaftServer

Handler = Callable[[Any], Awaitable[Any]]
# Ops no caller may send through RPC `apply`: the CA's (only the leader's CA writes them, through Raft
# directly) and a whole-catalog restore (servers forward it with `raft_restore`, which client certificates
# may not call: agent/tls/policy.py CLIENT_METHODS).
PRIVILEGED_OPS = {b"connect-ca": "connect-ca", b"restore": "restore"}


def privileged_op(data: bytes, in_batch: bool = False) -> str | None:
    """The privileged op that encoded command bytes are, or (as a batch) hold; None for ordinary writes.
    One level of batch is looked into: the FSM applies no batch inside a batch (it refuses it as unknown)."""
    if not any(marker in data for marker in PRIVILEGED_OPS):  # the cheap check: almost every write
        return None
    try:
        command = msgpack.unpackb(data, raw=False)
    except Exception:
        return None  # undecodable: the FSM refuses it anyway
    if not isinstance(command, dict):
        return None
    if command.get("op") == "batch" and isinstance(command.get("commands"), list) and not in_batch:
        return next((op for d in command["commands"]
                     if isinstance(d, bytes) and (op := privileged_op(d, in_batch=True))), None)
    op = command.get("op")
    return op if op in PRIVILEGED_OPS.values() else None


def is_ca_command(data: bytes) -> bool:
    """Whether encoded command bytes are, or (as a batch) hold, a "connect-ca" command."""
    return privileged_op(data) == "connect-ca"


class Endpoints:
    """Maps each RPC method to its handler on one server."""

    def __init__(self, server: RaftServer) -> None:
        self.server = server
        self.table: dict[str, Handler] = {
            "hello": server.bootstrap.on_hello,       # a server looking for its peers (bootstrap/join)
            "apply": self.apply,                      # a write, forwarded to the leader if need be
            "read_index": self.read_index,            # (leader) an index a follower may read at
            "barrier": self.barrier,                  # a client agent's read barrier
            "add_server": self.add_server,            # a server asking the leader to add it
            "raft_restore": self.raft_restore,        # a snapshot restore, forwarded by a server to the leader
            "connect_ca_sign": self.connect_ca_sign,  # a CSR to sign (followers forward to the leader)
            "connect_ca_set_config": self.connect_ca_set_config,  # a CA configuration change (the leader's)
        }
        self.ca: CAManager | None = None  # the mesh CA, set by the agent (None: connect disabled)

    async def dispatch(self, method: str, args: Any) -> Any:
        """Answer one call (the listener's RPC handler)."""
        handler = self.table.get(method)
        if handler is None:
            raise Rejected(f"unknown RPC method {method!r}")
        return await handler(args)

    async def apply(self, args: Any) -> Any:
        """A catalog command's bytes; the answer is its result once applied."""
        if not isinstance(args, bytes):
            raise Rejected("apply needs the command bytes")
        op = privileged_op(args)
        if op == "connect-ca":
            raise Rejected("connect-ca commands are written by the leader's CA only, not over RPC apply")
        if op is not None:
            raise Rejected(f"{op} commands are not accepted over RPC apply")
        return await self.server.apply_bytes(args)

    async def raft_restore(self, args: Any) -> Any:
        """A restore command's bytes (only that), from a server's /v1/snapshot PUT; forwarded to the leader."""
        if not isinstance(args, bytes) or privileged_op(args) != "restore":
            raise Rejected("raft_restore needs a restore command")
        return await self.server.apply_bytes(args, forward_method="raft_restore")

    async def read_index(self, args: Any) -> int:
        """(Leader) confirm leadership and name the index a read must wait for."""
        if not isinstance(args, bool):
            raise Rejected("read_index needs a boolean (consistent)")
        return await self.server.driver.read_index(args)

    async def barrier(self, args: Any) -> int:
        """A client agent's read: once this returns, its replica must reach this catalog index."""
        if not isinstance(args, bool):
            raise Rejected("barrier needs a boolean (consistent)")
        await self.server.read_barrier(args)
        return self.server.store.catalog.last_index

    async def add_server(self, args: Any) -> bool:
        """Add the calling server as a non-voter (forwarded to the leader if need be)."""
        add = parse_add_server(args)
        await self.server.bootstrap.add_server(add.id, add.address, add.name)
        return True

    def _ca(self) -> CAManager:
        if self.ca is None or not self.ca.enabled:
            raise Rejected("Connect is not enabled on this server (connect { enabled = false })")
        return self.ca

    async def connect_ca_sign(self, args: Any) -> dict[str, Any]:
        """Sign a CSR ({csr: PEM}); a follower forwards it to the leader. RateLimited carries a wait hint."""
        return await self._ca().rpc_sign(args)

    async def connect_ca_set_config(self, args: Any) -> bool:
        """Change the CA configuration ({provider, config, force_without_cross_signing}); at the leader."""
        return await self._ca().rpc_set_config(args)
