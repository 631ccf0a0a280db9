"""RaftServer: a server's Raft node holding the catalog, as the agent and the HTTP API see it.

It wires the parts (see docs): the listener (:8300) hands Raft messages to the driver and calls to the
endpoint table; the driver runs the core, raft_io its storage and sends, the FSM the catalog; bootstrap
finds the peers, autopilot promotes and removes servers. This module holds the public API: writes and
reads (forwarded to the leader when need be), leader info, the configuration, snapshots and figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from ...raft.config import RaftConfig
from ...raft.node import LEADER, RaftNode
from ...raft.storage import LogStore
from ..rpc.client import RPCClient
from ..rpc.errors import NoLeader, NotLeader, Rejected, ServerError, Unanswered, Unreachable
from ..store import CatalogStore
from ..telemetry.registry import Counter, Summary
from .autopilot_runner import Autopilot
from .bootstrap import Bootstrap
from .driver import RaftDriver
from .endpoints import Endpoints, parse_apply_args, privileged_op, restamp_now
from .feed import CatalogFeed
from .fsm import CatalogFSM, check_restore, restore_command
from .links import PeerLinks
from .listener import Reply, ServerListener
from .peers import NAMES_FILE, RaftPeer
from .proposals import Proposal, setter

RPC_HOLD_TIMEOUT = 7.0
MAX_COMMAND_BYTES = 4 * 1024 * 1024  # below the smallest :8300 frame cap (see proposals.BATCH_MAX_BYTES)


class RaftServer:
    """A server's Raft node, holding the catalog as its state machine."""

    def __init__(self, *, node_id: str, node_name: str, bind: str, advertise: str, port: int,
                 data_dir: str | None, store: CatalogStore, bootstrap_expect: int = 0,
                 join: list[str] | None = None, config: RaftConfig | None = None, datacenter: str = "dc1") -> None:
        self.id = node_id
        self.name = node_name
        self.bind = bind
        self.port = port
        self.address = f"{advertise}:{port}"
        self.datacenter = datacenter
        self.store = store
        self.bootstrap_expect = bootstrap_expect
        self.join = list(join or [])
        self.config = config or RaftConfig()
        self.feed = CatalogFeed(store, self.leader_info)
        self.fsm = CatalogFSM(store, self.feed)
        self.links = PeerLinks(node_id, self.address, lambda: self.listener.tls)
        self.driver = RaftDriver(node_id, self.config, Path(data_dir) / "raft" if data_dir else None,
                                 self.fsm, self.links)
        self.autopilot = Autopilot(node_id, self.driver)
        self.driver.on_role_change = self.autopilot.role_changed
        self.bootstrap = Bootstrap(self, Path(data_dir) / "raft" / NAMES_FILE if data_dir else None)
        self.endpoints = Endpoints(self)
        # Servers found through gossip tags (the agent sets this), tried like -retry-join addresses.
        self.discover: Callable[[], list[str]] = list
        self.listener = ServerListener(bind, port, self.driver.receive, self._dispatch,
                                       self._submit_apply, feed=self.feed)
        # Consul's raft.apply, raft.commitTime (ms, writes proposed through apply_bytes) and rpc.request;
        # the agent registers these objects (agent/metrics.py).
        self.applies = Counter()
        self.commit_time = Summary()
        self.rpc_requests = Counter()
        self._rpc: dict[str, RPCClient] = {}
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------------------------------ start

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open storage, listen on :8300, and run the Raft loop until cancelled."""
        await trio.to_thread.run_sync(self.driver.open, trio.current_time())
        node = self.driver.node
        assert node is not None
        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            self._nursery = self.links.nursery = nursery
            await nursery.start(self.listener.run)
            if self.listener.bound_port != self.port:
                self.port = self.listener.bound_port
                self.address = self.links.my_address = f"{self.address.rpartition(':')[0]}:{self.port}"
            self.links.sync(node.membership)
            nursery.start_soon(self.driver.run)
            nursery.start_soon(self.bootstrap.run)
            nursery.start_soon(self.bootstrap.keep_names)
            nursery.start_soon(self.autopilot.run)
            nursery.start_soon(self.feed.run)
            task_status.started()

    # ------------------------------------------------------------------------------------------ state

    @property
    def node(self) -> RaftNode | None:
        """The Raft core (None until storage is open)."""
        return self.driver.node

    @property
    def fsm_index(self) -> int:
        """The Raft index the catalog has applied."""
        return self.fsm.index

    @property
    def caught_up(self) -> bool:
        """Whether this server has applied what a leader had committed when it started (then stays True)."""
        return self.driver.caught_up

    @property
    def storage_error(self) -> str | None:
        """Why this server stopped taking part in Raft after a failed write, or None."""
        return self.driver.storage_error

    @property
    def bad_raft_messages(self) -> int:
        """Raft messages refused before the core."""
        return self.driver.bad_raft_messages

    @property
    def followers_lost_entries(self) -> int:
        """(Leader) followers found without entries they had acknowledged."""
        return self.driver.followers_lost_entries

    def is_leader(self) -> bool:
        """Whether this server leads."""
        return self.driver.is_leader()

    def leader_address(self) -> str | None:
        """The leader's server address ("ip:8300"), if known."""
        node = self.driver.node
        if node is None or node.leader_id is None:
            return None
        return self.driver.address_of(node.leader_id) or None

    def leader_info(self) -> tuple[bool, int]:
        """(a leader is known, ms since this server last heard from it), for X-Consul-KnownLeader/LastContact.

        A server that has not caught up with a leader since it started says no leader is known: its catalog
        may be older than what the cluster has told clients.
        """
        known = self.caught_up and (self.is_leader() or self.leader_address() is not None)
        return known, self.last_contact_ms()

    def last_contact_ms(self) -> int:
        """Milliseconds since this server last heard from the leader (0 on the leader)."""
        node = self.driver.node
        if node is None or node.role == LEADER:
            return 0
        last = node.last_leader_contact
        if last is None:
            return 0
        return int((trio.current_time() - last) * 1000)

    # ------------------------------------------------------------------------------------------ calls

    def _rpc_client(self, address: str) -> RPCClient:
        client = self._rpc.get(address)
        if client is None:
            client = self._rpc[address] = RPCClient(address, self.listener.tls)
        return client

    async def call_server(self, address: str, method: str, args: Any, timeout: float = 10.0) -> Any:
        """Call another server's RPC method."""
        assert self._nursery is not None
        return await self._rpc_client(address).call(self._nursery, method, args, timeout)

    async def _wait_for_leader(self) -> str | None:
        """The leader's address (None when we lead), waiting up to rpc_hold_timeout for one."""
        if self.is_leader():
            return None
        with trio.move_on_after(RPC_HOLD_TIMEOUT):
            while True:
                if self.is_leader():
                    return None
                leader = self.leader_address()
                if leader:
                    return leader
                await self.driver.wait_leader_known()
                await trio.sleep(0)
        raise NoLeader()

    # ------------------------------------------------------------------------------------------ writes

    def _submit_apply(self, args: Any, reply: Reply, rid: Any) -> bool:
        """The leader's task-free path for an "apply" RPC (bytes: anonymous, or {command, token}); False sends
        the call down the general path."""
        try:
            data, token = parse_apply_args(args)
        except Rejected:
            return False  # (Endpoints.apply refuses it, naming why)
        if not self.is_leader() or len(data) > MAX_COMMAND_BYTES or privileged_op(data) is not None:
            return False  # (Endpoints.apply refuses it)
        data = restamp_now(data, time.time())  # a raw caller's `now` is not trusted (lock-delay)
        try:
            self.endpoints.check_write(data, token)
        except ServerError as exc:
            reply(rid, exc, None)
            return True
        p = Proposal(data, self._answer_remote)
        p.reply, p.rid, p.token = reply, rid, token
        if not self.driver.enqueue(p):
            return False  # (a full queue: Endpoints.apply takes it, and counts it)
        self.rpc_requests.value += 1
        self.applies.value += 1
        return True

    async def _dispatch(self, method: str, args: Any) -> Any:
        self.rpc_requests.value += 1
        return await self.endpoints.dispatch(method, args)

    def _answer_remote(self, p: Proposal) -> None:
        assert p.reply is not None
        if isinstance(p.error, NotLeader) and self._nursery is not None:
            self._nursery.start_soon(self._apply_and_reply, p)  # lost the lead meanwhile: forward it
        else:
            p.reply(p.rid, p.error, p.result)

    async def _apply_and_reply(self, p: Proposal) -> None:
        assert p.reply is not None
        try:
            p.reply(p.rid, None, await self.apply_bytes(p.data, token=p.token))
        except ServerError as exc:
            p.reply(p.rid, exc, None)

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        """Replicate a catalog command and return its result once applied here; forwards to the leader.
        `token`: the secret the write acts as (None: this server's own write). A write with a token is checked
        here as an RPC write is (Endpoints.check_write: one definition of a write's rights, whatever this
        server's HTTP layer let through; ~11-45 us); a forwarded one carries it and the leader checks it again."""
        data = msgpack.packb(command, use_bin_type=True)
        if token is not None:
            self.endpoints.check_write(data, token)
        return await self.apply_bytes(data, token=token)

    async def apply_bytes(self, data: bytes, forward_method: str = "apply", token: str | None = None) -> Any:
        """`apply` for an encoded command (the RPC entry point); a follower forwards it with `forward_method`,
        with `token` when there is one (RPC `apply` as {command, token}; the leader re-checks it)."""
        if len(data) > MAX_COMMAND_BYTES:
            raise Rejected(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            leader = await self._wait_for_leader()
            if leader is None:
                finished = trio.Event()
                p = Proposal(data, setter(finished))
                started = trio.current_time()
                while not self.driver.enqueue(p):
                    await trio.sleep(0.01)  # backpressure: the queue is full
                self.applies.value += 1
                await finished.wait()
                self.commit_time.observe((trio.current_time() - started) * 1000.0)
                if p.error is None:
                    return p.result
                if not isinstance(p.error, NotLeader) or trio.current_time() > deadline:
                    raise p.error
                await trio.sleep(0.01)
                continue
            args: Any = data
            if token and forward_method == "apply":  # "" is anonymous, as bytes alone are
                args = {"command": data, "token": token}
            try:
                result = await self.call_server(leader, forward_method, args, timeout=RPC_HOLD_TIMEOUT)
            except (NotLeader, Unreachable) as exc:
                # Retried only when it cannot have been applied: refused, or never sent.
                if trio.current_time() > deadline or isinstance(exc, Unanswered):
                    raise
                await trio.sleep(0.05)
                continue
            return result

    # ------------------------------------------------------------------------------------------ reads

    async def read_barrier(self, consistent: bool) -> None:
        """Wait until this server may answer a `default` (consistent=False) or `consistent` read."""
        node = self.driver.node
        if self.storage_error is not None:
            if node is not None and [s.id for s in node.membership.servers if s.voter] == [self.id]:
                return  # the only voter: nothing can have been committed elsewhere, the catalog is current
            raise ServerError(f"{self.storage_error}; this server stopped replicating (?stale reads answer)")
        if not consistent and node is not None and node.role == LEADER:
            # The hot path: a leader inside its lease answers without a round through the Raft loop.
            index = node.lease_read_index(trio.current_time())
            if index is not None and self.fsm.index >= index:
                return
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            leader = await self._wait_for_leader()
            try:
                if leader is None:
                    index = await self.driver.read_index(consistent)
                else:
                    index = await self.call_server(leader, "read_index", consistent, timeout=RPC_HOLD_TIMEOUT)
                    if type(index) is not int:
                        raise ServerError(f"the leader answered read_index with {type(index).__name__}")
                break
            except ServerError:
                if trio.current_time() > deadline:
                    raise NoLeader() from None
                await trio.sleep(0.05)
        with trio.move_on_after(RPC_HOLD_TIMEOUT) as scope:
            while self.fsm.index < index:
                await self.driver.wait_applied()
        if scope.cancelled_caught:
            raise ServerError("timed out waiting for this server to catch up with the leader")

    # ------------------------------------------------------------------------------------------ operator

    def peers(self) -> list[str]:
        """Voter addresses."""
        node = self.driver.node
        if node is None:
            return []
        return [s.address for s in node.membership.servers if s.voter]

    def configuration(self) -> tuple[int, list[RaftPeer]]:
        """The Raft configuration in effect and the log index it was appended at."""
        node = self.driver.node
        if node is None:
            return 0, []
        names = self.bootstrap.names
        missing = {s.id for s in node.membership.servers} - names.keys()
        if missing:  # a server that never sent us a hello since we started: its catalog node has its ID
            for row in self.store.catalog.nodes():
                if row.id in missing:
                    self.bootstrap.remember_name(row.id, row.node)
        return node.membership_index, [RaftPeer(s.id, names.get(s.id, s.id), s.address, s.id == node.leader_id,
                                                s.voter) for s in node.membership.servers]

    async def remove_peer(self, *, server_id: str | None, address: str | None) -> None:
        """Remove a server from the configuration (leader only; forwarded otherwise)."""
        node = self.driver.node
        assert node is not None
        target = next((s for s in node.membership.servers
                       if (server_id and s.id == server_id) or (address and s.address == address)), None)
        if target is None:
            raise ServerError(f"no server with {'id ' + repr(server_id) if server_id else 'address ' + repr(address)}"
                              " in the Raft configuration", 404)
        if not self.is_leader():
            raise ServerError("remove-peer must be sent to the leader's agent", 500)
        await self.driver.change_membership(node.membership.without(target.id))

    async def snapshot(self, stale: bool) -> tuple[dict[str, object], bytes]:
        """A point-in-time catalog snapshot with its index and term."""
        if not stale:
            await self.read_barrier(consistent=True)
        node = self.driver.node
        assert node is not None
        index = self.fsm.index
        data = self.fsm.snapshot()
        meta: dict[str, object] = {"ID": f"{node.term}-{index}-{int(time.time() * 1000)}", "Index": index,
                                   "Term": node.term_at(index) or node.term, "Version": 1}
        return meta, data

    async def restore(self, meta: dict[str, object], state: bytes) -> None:
        """Replace the catalog with a snapshot's, through the log so that every server does it."""
        check_restore(state)
        await self.apply_bytes(msgpack.packb(restore_command(state), use_bin_type=True), forward_method="raft_restore")

    # ------------------------------------------------------------------------------------------ figures

    def _tail_cut_text(self) -> str:
        ls = self.driver.log_store
        cut = ls.cut_tail if isinstance(ls, LogStore) else None
        return "" if cut is None else f"{cut.path}@{cut.offset}: {cut.size} bytes, entries from {cut.first_lost}"

    def stats(self) -> dict[str, str]:
        """Figures for `meshagent info`."""
        node = self.driver.node
        if node is None:
            return {"state": "starting"}
        io = self.driver.io
        return {"state": node.role, "term": str(node.term), "last_log_index": str(node.last_index),
                "last_log_term": str(node.last_term), "commit_index": str(node.commit_index),
                "applied_index": str(self.fsm.index), "num_peers": str(max(0, len(self.peers()) - 1)),
                "leader": str(node.role == LEADER).lower(), "leader_addr": self.leader_address() or "",
                "last_snapshot_index": str(self.driver.last_snapshot_index),
                "fsyncs": str(io.fsyncs if io is not None else 0),
                "commands_applied": str(self.fsm.commands_applied),
                "caught_up": str(self.caught_up).lower(), "bad_raft_messages": str(self.bad_raft_messages),
                "dropped_raft_messages": str(node.dropped), "bad_frames": str(self.listener.bad_frames),
                "followers_lost_entries": str(self.followers_lost_entries),
                "log_tail_cut": self._tail_cut_text(),
                # Consul's (Go's) text of the configuration, never a Python repr
                "latest_configuration": "[" + " ".join(
                    f"{{Suffrage:{'Voter' if s.voter else 'Nonvoter'} ID:{s.id} Address:{s.address}}}"
                    for s in node.membership.servers) + "]"}
