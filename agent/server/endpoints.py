"""The server's RPC endpoint table: one entry per :8300 method, each checking its arguments.

(auto_encrypt.sign is answered by the listener itself, from the TLS policy.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack

from ..acl import command_rights
from ..acl.identity import ACLIdentity, require
from ..acl.secrets import ANONYMOUS_SECRET_ID, MAX_SECRET_LEN
from ..rpc.errors import ACLNotFound, Rejected
from .acl_endpoints import AclHttpEndpoint
from .rpc_args import parse_add_server
from .session_runner import RenewEndpoint

if TYPE_CHECKING:
    from ..acl.resolver import ACLResolver
    from ..connect.ca_manager import CAManager
    from .raft_server import RaftServer

Handler = Callable[[Any], Awaitable[Any]]
# Ops no caller may send through RPC `apply`: the CA's (only the leader's CA writes them, through Raft
# directly) and a whole-catalog restore (servers forward it with `raft_restore`, which client certificates
# may not call: agent/tls/policy.py CLIENT_METHODS).
PRIVILEGED_OPS = {b"connect-ca": "connect-ca", b"restore": "restore"}
MAX_TOKEN_LEN = MAX_SECRET_LEN  # old names, kept for importers
ANONYMOUS_SECRET = ANONYMOUS_SECRET_ID


def parse_apply_args(args: Any) -> tuple[bytes, str | None]:
    """RPC `apply` arguments: the command's bytes (anonymous), or exactly {"command": bytes, "token": str}."""
    if isinstance(args, bytes):
        return args, None
    if not isinstance(args, dict):
        raise Rejected("apply needs the command bytes or {command, token}")
    if set(args) != {"command", "token"}:
        raise Rejected("apply: the arguments map takes exactly the keys command and token")
    command, token = args["command"], args["token"]
    if not isinstance(command, bytes):
        raise Rejected("apply: command must be bytes")
    if not isinstance(token, str):
        raise Rejected("apply: token must be a string")
    return command, token


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


def restamp_now(data: bytes, now: float, in_batch: bool = False) -> bytes:
    """Command bytes with every `now` (KV lock, session destroy, txn; one batch level) set to this server's
    wall clock: a raw :8300 caller could otherwise stamp one far ahead to skip a key's lock-delay, or to hold
    a key for years with a destroy. Anything else comes back as it was (the same object)."""
    if b"now" not in data:  # the cheap check: almost every write
        return data
    try:
        command = msgpack.unpackb(data, raw=False)
    except Exception:
        return data  # undecodable: the FSM refuses it anyway
    if not isinstance(command, dict):
        return data
    if command.get("op") == "batch" and isinstance(command.get("commands"), list) and not in_batch:
        inner = [restamp_now(d, now, True) if isinstance(d, bytes) else d for d in command["commands"]]
        if all(a is b for a, b in zip(inner, command["commands"], strict=True)):
            return data
        command["commands"] = inner
    elif "now" in command:
        command["now"] = now
    else:
        return data
    return bytes(msgpack.packb(command, use_bin_type=True))


def is_ca_command(data: bytes) -> bool:
    """Whether encoded command bytes are, or (as a batch) hold, a "connect-ca" command."""
    return privileged_op(data) == "connect-ca"


class Endpoints:
    """Maps each RPC method to its handler on one server."""

    def __init__(self, server: RaftServer) -> None:
        self.server = server
        self.acl_http = AclHttpEndpoint()  # client agents' /v1/acl/ requests; the agent sets its api
        self.session_renew = RenewEndpoint()  # the agent attaches its session runner
        self.table: dict[str, Handler] = {
            "hello": server.bootstrap.on_hello,       # a server looking for its peers (bootstrap/join)
            "apply": self.apply,                      # a write, forwarded to the leader if need be
            "read_index": self.read_index,            # (leader) an index a follower may read at
            "barrier": self.barrier,                  # a client agent's read barrier
            "add_server": self.add_server,            # a server asking the leader to add it
            "raft_restore": self.raft_restore,        # a snapshot restore, forwarded by a server to the leader
            "connect_ca_sign": self.connect_ca_sign,  # a CSR to sign (followers forward to the leader)
            "connect_ca_set_config": self.connect_ca_set_config,  # a CA configuration change (the leader's)
            "acl_http": self.acl_http.call,           # a client agent's /v1/acl/ request, run by this server
            "session_renew": self.session_renew.call,  # a session's TTL restarted at the leader (session_runner.py)
            "http_forward": self.acl_http.forward,    # a client agent's server-only request (status, operator ...)
        }
        self.ca: CAManager | None = None  # the mesh CA, set by the agent (None: connect disabled)
        # The agent's ACL resolver, set by the agent: with ACLs enabled every write arriving over RPC `apply` is
        # re-checked against the token it carries (None: not checked, as for an agent without ACLs).
        self.acl: ACLResolver | None = None

    async def dispatch(self, method: str, args: Any) -> Any:
        """Answer one call (the listener's RPC handler)."""
        handler = self.table.get(method)
        if handler is None:
            raise Rejected(f"unknown RPC method {method!r}")
        return await handler(args)

    async def apply(self, args: Any) -> Any:
        """A catalog command's bytes, or {command, token}; the answer is its result once applied. With ACLs
        on, the token (none: anonymous) must allow the write here, and again at the leader when forwarded."""
        data, token = parse_apply_args(args)
        if token is not None and len(token) > MAX_SECRET_LEN:
            # No secret is that long: with ACLs on the write is refused as Consul refuses an unknown token;
            # with ACLs off tokens mean nothing (as in Consul) and this one is dropped unread.
            if self.acl is not None and self.acl.enabled:
                raise ACLNotFound()
            token = None
        data = restamp_now(data, time.time())
        op = privileged_op(data)
        if op == "connect-ca":
            raise Rejected("connect-ca commands are written by the leader's CA only, not over RPC apply")
        if op is not None:
            raise Rejected(f"{op} commands are not accepted over RPC apply")
        self.check_write(data, token)
        return await self.server.apply_bytes(data, token=token)

    def check_write(self, data: bytes, token: str | None) -> None:
        """Raise ACLNotFound/ACLDenied (403 on the caller's HTTP) unless `token` may make the write `data`
        holds (every command of a batch), or Rejected for a command it cannot read. Nothing with ACLs off."""
        acl = self.acl
        if acl is None or not acl.enabled:
            return
        identity = self._rpc_identity(acl, token)
        try:
            decision = command_rights.authorize_all(identity, command_rights.decode(data), self.server.store.catalog)
        except command_rights.MalformedCommand as exc:
            raise Rejected(str(exc)) from None
        if decision is not None:
            require(identity, decision)

    @staticmethod
    def _rpc_identity(acl: ACLResolver, token: str | None) -> ACLIdentity:
        # A write without a token acts as the anonymous token, as in Consul (never this server's default).
        return acl.resolve_rpc(token)

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
