"""RaftServer: drives the sans-IO Raft core with trio, durable storage, the :8300 transport and the catalog.

One task owns the core. It takes every queued input (messages, proposals, reads), feeds them to the core,
then carries out the outputs: one storage write + fsync for the whole batch (group commit), the sends, and
the applies. While that fsync runs in a worker thread, new inputs queue up and form the next batch.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from ...raft.config import RaftConfig
from ...raft.entry import COMMAND, Entry, Membership, Server, SnapshotMeta, valid_address
from ...raft.messages import Message
from ...raft.node import (
    LEADER,
    Apply,
    FollowerLostEntries,
    InstallSnapshot,
    NotLeader,
    Output,
    RaftNode,
    ReadFailed,
    ReadReady,
    RoleChange,
)
from ...raft.storage import LogStore, MemoryLogStore, MemorySnapshotStore, SnapshotStore
from ..catalog import Catalog, CommandError
from ..store import CatalogStore
from .errors import REJECTED, NoLeader, ServerError, error_from_text
from .feed import CatalogFeed
from .raft_io import RaftIO
from .rpc_args import parse_add_server, parse_hello
from .transport import PeerLink, Reply, RPCClient, ServerListener, split_address

log = logging.getLogger("meshagent.server")

RPC_HOLD_TIMEOUT = 7.0
SERVER_STABILIZATION_TIME = 10.0
DEAD_SERVER_AFTER = 10.0
MAX_QUEUED_PROPOSALS = 100_000
BATCH_MAX_COMMANDS = 512
# One batch entry stays well below an append's byte budget (RaftConfig.max_bytes_per_append), and one
# command below the smallest :8300 frame cap (16 MiB from anyone but a verified server), so that whatever
# is committed can also be replicated, on a plaintext cluster too.
BATCH_MAX_BYTES = 1024 * 1024
MAX_COMMAND_BYTES = 4 * 1024 * 1024
MAX_STRANGER_LINKS = 8   # links to servers outside our (empty) configuration: a leader adding us, a bootstrap
MAX_SEEN = 64            # hellos kept from servers that contacted us before we bootstrapped
MAX_NAMES = 1024
MAX_LOGGED_SOURCES = 32  # a misbehaving source is logged once; after this many, no more are named


def _restorable(data: bytes) -> bool:
    """Whether snapshot data from a leader restores into a catalog (checked before it is saved)."""
    try:
        Catalog.restore(data)
    except Exception:
        log.error("raft: refusing a snapshot from the leader that does not restore", exc_info=True)
        return False
    return True


def _setter(event: trio.Event) -> Callable[[_Proposal], None]:
    return lambda _p: event.set()


def _batches(proposals: list[_Proposal]) -> list[list[_Proposal]]:
    """Proposals in queue order, grouped by at most BATCH_MAX_COMMANDS and BATCH_MAX_BYTES (a bigger one alone)."""
    groups: list[list[_Proposal]] = []
    size = 0
    for p in proposals:
        if not groups or len(groups[-1]) >= BATCH_MAX_COMMANDS or size + len(p.data) > BATCH_MAX_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += len(p.data)
    return groups


class _Proposal:
    """A command waiting to be committed and applied; `on_done` hears the outcome."""

    __slots__ = ("data", "error", "index", "on_done", "reply", "result", "rid", "term")

    def __init__(self, data: bytes, on_done: Callable[[_Proposal], None]) -> None:
        self.data = data
        self.on_done = on_done
        self.index = self.term = 0
        self.result: Any = None
        self.error: str | None = None
        self.reply: Reply | None = None  # the RPC connection's answer callback, for remote proposals
        self.rid: Any = None

    def finish(self, result: Any, error: str | None) -> None:
        self.result, self.error = result, error
        self.on_done(self)


@dataclass
class _Read:
    consistent: bool
    done: trio.Event = field(default_factory=trio.Event)
    index: int = 0
    error: str | None = None


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
        self._dir = Path(data_dir) / "raft" if data_dir else None
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, Any]](100_000)
        self._links: dict[str, PeerLink] = {}
        self._linked_membership: Membership | None = None  # the configuration _links was last synced to
        self._rpc: dict[str, RPCClient] = {}
        self._names: dict[str, str] = {node_id: node_name}
        self._pending: dict[int, list[_Proposal]] = {}
        # Proposals skip the inbox channel (its per-item cost showed in profiles): a deque, plus one
        # "wake" item in the inbox when the deque stops being empty.
        self._proposals: deque[_Proposal] = deque()
        self._reads: dict[int, _Read] = {}
        self._read_seq = 0
        self._applied = trio.Event()
        self._leader_known = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._nonvoter_since: dict[str, float] = {}
        self._seen: dict[str, dict[str, Any]] = {}  # hellos received from servers that contacted us
        self.feed = CatalogFeed(store, self.leader_info)
        # Servers found through gossip tags (the agent sets this), tried like -retry-join addresses.
        self.discover: Callable[[], list[str]] = list
        self.listener = ServerListener(bind, port, self._on_raft_message, self._on_rpc, self._submit_apply,
                                       feed=self.feed)
        self.node: RaftNode | None = None
        self.log_store: LogStore | MemoryLogStore | None = None
        self.snapshots: SnapshotStore | MemorySnapshotStore | None = None
        self._last_snapshot_index = 0
        self.io: RaftIO | None = None  # storage and sends, once storage is open
        self.commands_applied = 0
        # What the catalog has really applied. The core's applied_index runs ahead of it while a batch's
        # fsync is in flight, so reads must wait on this one.
        self.fsm_index = 0
        # Why this server stopped taking part in Raft after a failed write ("no space left on device
        # writing ..."), or None while its storage works.
        self.storage_error: str | None = None
        # False after start until this server has applied everything a leader had committed (or, leading,
        # its term's first entry is committed); reads are not authoritative before (DNS SERVFAIL, HTTP
        # X-Consul-KnownLeader: false). It then stays True: an election does not make the catalog older.
        self.caught_up = False
        self.bad_raft_messages = 0  # refused before the core: wrong address for the ID, handler errors
        self.followers_lost_entries = 0  # (leader) followers found without entries they had acknowledged
        self._logged_sources: set[str] = set()
        self._stranger_links = 0

    # ------------------------------------------------------------------------------------------ start

    def _open(self, now: float) -> None:
        """Open storage and rebuild the core and the catalog from snapshot + log (blocking; run in a thread)."""
        if self._dir is None:
            self.log_store, self.snapshots = MemoryLogStore(), MemorySnapshotStore()
        else:
            self.log_store = LogStore.open(self._dir)
            self.snapshots = SnapshotStore(self._dir / "snapshots")
        latest = self.snapshots.latest()
        ls = self.log_store
        entries = ls.entries(ls.first_index, ls.last_index) if ls.last_index >= ls.first_index else []
        base = ls.first_index - 1
        base_term = ls.term_at(base) or 0
        meta, data = latest if latest else (None, b"")
        if meta is not None:
            self.store.restore(data)
            self._last_snapshot_index = self.fsm_index = meta.index
        self.io = RaftIO(self.log_store, self.snapshots, self._send)
        self.node = RaftNode(self.id, self.config, random.Random(), now, term=ls.term,
                             vote=ls.vote, entries=entries, base_index=base, base_term=base_term,
                             snapshot=meta, snapshot_data=data, snapshot_check=_restorable)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open storage, listen on :8300, and run the Raft loop until cancelled."""
        await trio.to_thread.run_sync(self._open, trio.current_time())
        assert self.node is not None
        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.listener.run)
            if self.listener.bound_port != self.port:
                self.port = self.listener.bound_port
                self.address = f"{self.address.rpartition(':')[0]}:{self.port}"
            self._sync_links()
            nursery.start_soon(self._loop)
            nursery.start_soon(self._bootstrap_or_join)
            nursery.start_soon(self._autopilot)
            nursery.start_soon(self.feed.run)
            task_status.started()

    # ------------------------------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        node, io = self.node, self.io
        assert node is not None and io is not None
        while True:
            batch: list[tuple[str, Any]] = []
            with trio.move_on_at(node.next_deadline()):
                batch.append(await self._inbox.receive())
            while len(batch) < 4096:
                try:
                    batch.append(self._inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            now = trio.current_time()
            outs: list[Output] = []
            for kind, item in batch:
                if kind == "msg":
                    try:
                        outs.extend(node.receive(now, item[0], item[1]))
                    except Exception:  # a core bug on one message must not end the server's Raft loop
                        self._bad_message(item[0], "raft message raised in the core", exc_info=True)
                elif kind == "read":
                    outs.extend(self._start_read(now, item))
                elif kind == "call":
                    outs.extend(item(now))
            if self._proposals:
                proposals = list(self._proposals)
                self._proposals.clear()
                outs.extend(self._propose(now, proposals))
            outs.extend(node.tick(now))
            try:
                await io.carry_out(node, outs, self)
            except OSError as exc:
                await self._storage_failed(exc)

    async def _storage_failed(self, exc: OSError) -> None:
        """The disk refused a write (full, read-only). The core's log is now ahead of the one on disk, so this
        server stops taking part in Raft, as a crashed one would, but the agent keeps running: writes here get
        the reason, reads answer (see read_barrier). A restart, once there is space, recovers from disk."""
        what = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc)).lower()
        reason = self.storage_error = f"{what} writing {exc.filename or self._dir}"
        log.error("raft: %s; this server has stopped replicating until it is restarted", reason)
        while True:  # answer everything that reaches the loop, forever; never touch the core again
            for group in self._pending.values():
                for p in group:
                    p.finish(None, reason)
            self._pending.clear()
            while self._proposals:
                self._proposals.popleft().finish(None, reason)
            for ctx in list(self._reads):
                self._finish_read(ctx, 0, reason)
            kind, item = await self._inbox.receive()
            if kind == "read":
                item.error = reason
                item.done.set()

    def _propose(self, now: float, proposals: list[_Proposal]) -> list[Output]:
        assert self.node is not None
        # Proposals that queued up together share one log entry (a "batch" command): one record, one
        # CRC and one Entry per batch instead of per write, on every server. Each write keeps its own
        # catalog index, since indexes are handed out per command as they apply.
        groups = _batches(proposals)
        datas = [g[0].data if len(g) == 1 else
                 msgpack.packb({"op": "batch", "commands": [p.data for p in g]}, use_bin_type=True) for g in groups]
        try:
            first, outs = self.node.propose_batch(now, datas)
        except NotLeader as exc:
            for p in proposals:
                p.finish(None, f"not the leader ({exc})")
            return []
        term = self.node.term
        for i, g in enumerate(groups):
            for p in g:
                p.index, p.term = first + i, term
            self._pending[first + i] = g
        return outs

    def _start_read(self, now: float, read: _Read) -> list[Output]:
        assert self.node is not None
        if not read.consistent:
            index = self.node.lease_read_index(now)
            if index is not None:
                read.index = index
                read.done.set()
                return []
        self._read_seq += 1
        self._reads[self._read_seq] = read
        return self.node.read_index(now, self._read_seq)

    # RaftEffects: what raft_io hands back after storage and sends

    def handle(self, o: Output) -> None:
        """Carry out one output that is neither storage nor a send."""
        if isinstance(o, Apply):
            self._apply(o.entries)
        elif isinstance(o, InstallSnapshot):
            self.store.restore(o.data)
            self.feed.restored()
            self._last_snapshot_index = self.fsm_index = o.meta.index
            self._wake_applied()
        elif isinstance(o, ReadReady):
            self._finish_read(o.ctx, o.index, None)
        elif isinstance(o, ReadFailed):
            self._finish_read(o.ctx, 0, o.reason)
        elif isinstance(o, RoleChange):
            self._on_role_change(o)
        elif isinstance(o, FollowerLostEntries):
            self.followers_lost_entries += 1
            log.error("raft: DATA LOSS on server %s (%s): it had acknowledged entries up to %d and now "
                      "holds only up to %d; sending entries %d..%d again", o.server,
                      self._address_of(o.server) or "?", o.acknowledged, o.held, o.held + 1,
                      o.acknowledged)

    def after_round(self) -> None:
        """After each round: note catching up, and follow membership changes with links."""
        node = self.node
        assert node is not None
        if not self.caught_up:
            index = node.caught_up_index
            self.caught_up = index is not None and self.fsm_index >= index
        if node.membership is not self._linked_membership:
            # Membership takes effect on append, not commit: a follower that holds the configuration
            # but has not yet learned that it is committed must still reach its peers to elect a new
            # leader (found by killing a leader before any commit index reached the followers).
            self._sync_links()

    async def idle(self) -> None:
        """Nothing more to carry out: snapshot if the log has grown enough."""
        await self._maybe_snapshot()

    def _send(self, to: str, msg: Message) -> None:
        link = self._links.get(to)
        if link is not None:
            link.send(msg)

    @property
    def fsyncs(self) -> int:
        """Storage batches made durable (group commit: one fsync each)."""
        return self.io.fsyncs if self.io is not None else 0

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            waiting = self._pending.pop(e.index, None)
            results: list[tuple[Any, str | None]] = []
            if e.kind == COMMAND:
                results = self._apply_entry(e)
                self.commands_applied += len(results)
            self.fsm_index = e.index
            if waiting is not None:
                for i, p in enumerate(waiting):
                    if p.term != e.term:
                        p.finish(None, "leadership changed before the write committed; it was not applied")
                    elif i < len(results):
                        p.finish(*results[i])
                    else:
                        p.finish(None, "the committed entry does not hold this write")
        self._wake_applied()

    def _apply_entry(self, e: Entry) -> list[tuple[Any, str | None]]:
        try:
            command = msgpack.unpackb(e.data, raw=False)
        except Exception as exc:
            return [(None, f"undecodable command: {exc}")]
        if isinstance(command, dict) and command.get("op") == "batch" and isinstance(command.get("commands"), list):
            results = []
            for data in command["commands"]:
                try:
                    sub = msgpack.unpackb(data, raw=False)
                except Exception as exc:
                    results.append((None, f"undecodable command: {exc}"))
                    continue
                results.append(self._apply_command(e.index, sub, data))
            return results
        return [self._apply_command(e.index, command, e.data)]

    def _apply_command(self, raft_index: int, command: Any, data: bytes) -> tuple[Any, str | None]:
        catalog = self.store.catalog
        # Raft indexes also count no-op and configuration entries, a batch entry holds several commands,
        # and after a restore the catalog may be ahead of the log: each command gets the next catalog
        # index at or above its entry's. Every replica maps them the same way, so they stay identical.
        index = max(raft_index, catalog.last_index + 1)
        if isinstance(command, dict) and command.get("op") == "restore":
            try:
                self.store.restore(command["state"], at_least=index)
            except (CommandError, KeyError, TypeError, ValueError) as exc:
                return None, f"cannot restore snapshot: {exc}"
            self.feed.restored()
            return True, None
        try:
            return self.store.apply_committed(index, command), None
        except CommandError as exc:
            return None, f"{REJECTED}{exc}"
        except Exception as exc:
            # A committed command the catalog chokes on (a bug, or a hostile write): every replica fails it
            # the same way, so it is refused here too instead of ending the server.
            log.exception("raft: command at index %d failed to apply", raft_index)
            return None, f"{REJECTED}command failed: {type(exc).__name__}"
        finally:
            # Subscribed client agents apply the same command at the same index (a rejected one too:
            # it used its index here, so it must there).
            self.feed.publish(index, data)

    def _wake_applied(self) -> None:
        self._applied.set()
        self._applied = trio.Event()

    def _finish_read(self, ctx: object, index: int, error: str | None) -> None:
        read = self._reads.pop(ctx, None)  # type: ignore[call-overload]
        if read is not None:
            read.index, read.error = index, error
            read.done.set()

    def _on_role_change(self, change: RoleChange) -> None:
        log.info("raft: %s in term %d (leader %s)", change.role, change.term,
                 self._address_of(change.leader) if change.leader else "unknown")
        if change.leader is not None:
            self._leader_known.set()
        else:
            self._leader_known = trio.Event()
        if change.role == LEADER:
            now = trio.current_time()
            for s in self.node.membership.servers if self.node else ():
                if not s.voter:
                    self._nonvoter_since.setdefault(s.id, now)

    async def _maybe_snapshot(self) -> None:
        node = self.node
        assert node is not None and self.snapshots is not None
        if self.fsm_index - self._last_snapshot_index < self.config.snapshot_threshold:
            return
        index = self.fsm_index
        data = self.store.catalog.snapshot()
        meta = SnapshotMeta(index, node.term_at(index) or 0, node.membership_at(index))
        await trio.to_thread.run_sync(self.snapshots.save, meta, data)
        self._last_snapshot_index = index
        outs = node.snapshot_taken(index, data)
        if outs and self.io is not None:
            await trio.to_thread.run_sync(self.io.write, outs)
        log.info("raft: snapshot at index %d (%d bytes)", index, len(data))

    # ------------------------------------------------------------------------------------------ peers

    def _address_of(self, server_id: str | None) -> str:
        if server_id is None or self.node is None:
            return ""
        s = self.node.membership.get(server_id)
        return s.address if s else ""

    def _sync_links(self) -> None:
        """One outgoing link per other member of the configuration."""
        if self.node is None or self._nursery is None:
            return
        self._linked_membership = self.node.membership
        for s in self.node.membership.servers:
            if s.id != self.id and (s.id not in self._links or self._links[s.id].address != s.address):
                link = PeerLink(s.address, self.id, self.address, self.listener.tls)
                self._links[s.id] = link
                self._nursery.start_soon(link.run)

    def _bad_message(self, src: str, what: str, exc_info: bool = False) -> None:
        """Count a refused message; name its source in the log once."""
        self.bad_raft_messages += 1
        if src not in self._logged_sources and len(self._logged_sources) < MAX_LOGGED_SOURCES:
            self._logged_sources.add(src)
            log.warning("raft: dropping a message from %r: %s (further ones from it are only counted)",
                        src[:80], what, exc_info=exc_info)

    def _on_raft_message(self, src: str, address: str, msg: Message) -> None:
        node = self.node
        if node is None:
            return
        member = node.membership.get(src)
        if member is not None and member.address != address:
            self._bad_message(src, f"it claims address {address[:80]!r}, the configuration says {member.address}")
            return
        known = node.known_servers()
        if known and src not in known and not node.admits_stranger(trio.current_time(), msg):
            node.dropped += 1  # the core would drop it too; spare the inbox
            return
        if src not in self._links and self._nursery is not None:
            # A peer we have no configuration entry for yet (a leader adding us, a fresh bootstrap):
            # answer it at the address it gave; a few such links at most.
            if member is None and (not valid_address(address) or self._stranger_links >= MAX_STRANGER_LINKS):
                self._bad_message(src, "no link for an unknown server (bad address, or too many strangers)")
                return
            self._stranger_links += member is None
            link = PeerLink(member.address if member else address, self.id, self.address, self.listener.tls)
            self._links[src] = link
            self._nursery.start_soon(link.run)
        try:
            self._inbox_send.send_nowait(("msg", (src, msg)))
        except trio.WouldBlock:
            pass  # overloaded: Raft retransmits

    async def _call(self, fn: Any) -> None:
        await self._inbox_send.send(("call", fn))

    def _rpc_client(self, address: str) -> RPCClient:
        client = self._rpc.get(address)
        if client is None:
            client = self._rpc[address] = RPCClient(address, self.listener.tls)
        return client

    async def _call_server(self, address: str, method: str, args: Any, timeout: float = 10.0) -> Any:
        assert self._nursery is not None
        return await self._rpc_client(address).call(self._nursery, method, args, timeout)

    # ------------------------------------------------------------------------------------------ RPC

    async def _on_rpc(self, method: str, args: Any) -> Any:
        if method == "hello":
            hello = parse_hello(args)
            if hello is not None and hello["id"] != self.id:
                self._remember_name(hello["id"], hello["name"])
                bootstrapped = self.node is not None and (self.node.membership.servers or self.node.last_index)
                if not bootstrapped and (hello["id"] in self._seen or len(self._seen) < MAX_SEEN):
                    self._seen[hello["id"]] = hello
            return self._hello()
        if method == "apply":
            if not isinstance(args, bytes):
                raise ServerError("apply needs the command bytes")
            return await self.apply_bytes(args)
        if method == "read_index":
            if not isinstance(args, bool):
                raise ServerError("read_index needs a boolean (consistent)", 400)
            return await self._leader_read_index(args)
        if method == "barrier":
            if not isinstance(args, bool):
                raise ServerError("barrier needs a boolean (consistent)", 400)
            # A client agent's read: once this returns, its replica must reach this catalog index.
            await self.read_barrier(args)
            return self.store.catalog.last_index
        if method == "add_server":
            add = parse_add_server(args)
            await self._add_server(add.id, add.address, add.name)
            return True
        raise ServerError(f"unknown RPC method {method!r}")

    def _remember_name(self, server_id: str, name: str) -> None:
        if server_id in self._names or len(self._names) < MAX_NAMES:
            self._names[server_id] = name

    def _hello(self) -> dict[str, Any]:
        node = self.node
        assert node is not None
        return {"id": self.id, "name": self.name, "address": self.address, "datacenter": self.datacenter,
                "bootstrap_expect": self.bootstrap_expect, "leader": self.leader_address(),
                "bootstrapped": bool(node.membership.servers) or node.last_index > 0}

    # ------------------------------------------------------------------------------------------ bootstrap

    async def _bootstrap_or_join(self) -> None:
        """Find the other servers through the join addresses; bootstrap once `bootstrap_expect` agree."""
        node = self.node
        assert node is not None
        if node.membership.servers or node.last_index > 0:
            return  # already part of a cluster: the log knows the peers
        if self.bootstrap_expect == 1 and not self.join:
            await self._call(lambda now: self.node.bootstrap(  # type: ignore[union-attr]
                Membership((Server(self.id, self.address, True),))))
            log.info("raft: bootstrapped a single-server cluster")
            return
        if not self.bootstrap_expect and not self.join:
            log.warning("no -bootstrap-expect and no -retry-join: waiting to be added to a cluster")
            return
        warned: set[str] = set()
        while not (self.node.membership.servers or self.node.last_index > 0):
            hellos: dict[str, dict[str, Any]] = {self.id: self._hello()}
            for addr in dict.fromkeys([*self.join, *self.discover()]):
                host, _ = split_address(addr, self.port)
                target = f"{host}:{self.port}"
                if target == self.address:
                    continue
                try:
                    h = await self._call_server(target, "hello", self._hello(), timeout=2.0)
                except ServerError:
                    continue
                parsed = parse_hello(h)
                if parsed is not None:
                    hellos[parsed["id"]] = parsed
                    self._remember_name(parsed["id"], parsed["name"])
            hellos.update({k: v for k, v in self._seen.items() if k not in hellos})
            log.debug("raft: bootstrap round: %d servers known (%s)", len(hellos),
                      ", ".join(f"{h.get('address')} expect={h.get('bootstrap_expect')} "
                                f"bootstrapped={h.get('bootstrapped')}" for h in hellos.values()))
            leader = next((h["leader"] for h in hellos.values() if h.get("leader")), None)
            if leader:
                try:
                    await self._call_server(leader, "add_server", {"id": self.id, "address": self.address,
                                                                   "name": self.name}, timeout=5.0)
                    log.info("raft: asked leader %s to add us", leader)
                except ServerError as exc:
                    log.warning("raft: could not join through leader %s: %s", leader, exc)
            elif self.bootstrap_expect and not any(h.get("bootstrapped") for h in hellos.values()):
                for h in hellos.values():
                    if h.get("bootstrap_expect") not in (0, self.bootstrap_expect) and h["id"] not in warned:
                        warned.add(h["id"])
                        log.error("raft: server %s (%s) has bootstrap_expect %s but we have %d; not "
                                  "bootstrapping with it", h.get("name"), h.get("address"),
                                  h.get("bootstrap_expect"), self.bootstrap_expect)
                agree = sorted((h for h in hellos.values() if h.get("bootstrap_expect") == self.bootstrap_expect),
                               key=lambda h: h["id"])
                if len(agree) >= self.bootstrap_expect:
                    membership = Membership(tuple(Server(h["id"], h["address"], True) for h in agree))
                    await self._call(lambda now, m=membership: self.node.bootstrap(m))  # type: ignore[union-attr]
                    log.info("raft: bootstrapping with %d servers: %s", len(agree),
                             ", ".join(h["address"] for h in agree))
                    self._sync_links_soon()
                    return
            await trio.sleep(1.0)

    def _sync_links_soon(self) -> None:
        async def later() -> None:
            with trio.move_on_after(5):
                while self.node is not None and not self.node.membership.servers:
                    await trio.sleep(0.05)
            self._sync_links()
        assert self._nursery is not None
        self._nursery.start_soon(later)

    async def _add_server(self, server_id: str, address: str, name: str) -> None:
        """Leader side of a join: add as a non-voter (autopilot promotes it once stable)."""
        node = self.node
        assert node is not None
        if node.role != LEADER:
            leader = self.leader_address()
            if not leader:
                raise NoLeader()
            await self._call_server(leader, "add_server", {"id": server_id, "address": address, "name": name})
            return
        existing = node.membership.get(server_id)
        if existing is not None and existing.address == address:
            return
        now = trio.current_time()
        if server_id == self.id:
            raise ServerError("the leader cannot be re-added through add_server", 409)
        if existing is not None and existing.voter and self._healthy(server_id, now):
            # A live voter moving address would be demoted to a non-voter: only a server that is gone
            # (restarted elsewhere) may be re-added under its ID.
            raise ServerError(f"server {server_id} is a live voter at {existing.address}; refusing to move it "
                              f"to {address}", 409)
        clash = next((s for s in node.membership.servers if s.address == address and s.id != server_id), None)
        if clash is not None and (clash.id == self.id or self._healthy(clash.id, now)):
            raise ServerError(f"address {address} belongs to live server {clash.id}", 409)
        self._remember_name(server_id, name)
        new = node.membership.with_server(Server(server_id, address, False))
        await self._change_membership(new)
        self._nonvoter_since[server_id] = trio.current_time()

    async def _change_membership(self, new: Membership) -> None:
        box: list[Exception] = []

        def change(now: float) -> list[Output]:
            try:
                _, outs = self.node.propose_membership(now, new)  # type: ignore[union-attr]
                return outs
            except (NotLeader, ValueError) as exc:
                box.append(exc)
                return []
        await self._call(change)
        with trio.move_on_after(1):
            while not box and self.node is not None and self.node.membership != new:
                await trio.sleep(0.01)
        if box:
            raise ServerError(str(box[0]), 409 if isinstance(box[0], ValueError) else 500)
        self._sync_links()

    async def _autopilot(self) -> None:
        """Promote stable non-voters; remove a dead voter once a healthy replacement is there."""
        while True:
            await trio.sleep(1.0)
            node = self.node
            if node is None or node.role != LEADER:
                continue
            now = trio.current_time()
            try:
                for s in node.membership.servers:
                    if s.voter or s.id == self.id:
                        continue
                    since = self._nonvoter_since.setdefault(s.id, now)
                    healthy = self._healthy(s.id, now)
                    if not healthy:
                        self._nonvoter_since[s.id] = now
                        continue
                    dead = [v.id for v in node.membership.servers
                            if v.voter and v.id != self.id and not self._healthy(v.id, now, DEAD_SERVER_AFTER)]
                    if dead:
                        log.info("autopilot: removing dead server %s for its replacement %s", dead[0], s.id)
                        await self._change_membership(node.membership.without(dead[0]))
                        break
                    if now - since >= SERVER_STABILIZATION_TIME:
                        log.info("autopilot: promoting %s to voter", s.id)
                        await self._change_membership(node.membership.with_server(Server(s.id, s.address, True)))
                        break
            except ServerError as exc:
                log.debug("autopilot: %s", exc)

    def _healthy(self, server_id: str, now: float, window: float | None = None) -> bool:
        pr = self.node._progress.get(server_id) if self.node else None
        if pr is None:
            return False
        return now - pr.last_response < (window or self.config.election_timeout)

    # ------------------------------------------------------------------------------------------ API

    def is_leader(self) -> bool:
        """Whether this server leads."""
        return self.node is not None and self.node.role == LEADER

    def leader_address(self) -> str | None:
        """The leader's server address ("ip:8300"), if known."""
        if self.node is None or self.node.leader_id is None:
            return None
        return self._address_of(self.node.leader_id) or None

    def leader_info(self) -> tuple[bool, int]:
        """(a leader is known, ms since this server last heard from it), for X-Consul-KnownLeader/LastContact.

        A server that has not caught up with a leader since it started says no leader is known: its catalog
        may be older than what the cluster has told clients.
        """
        known = self.caught_up and (self.is_leader() or self.leader_address() is not None)
        return known, self.last_contact_ms()

    def last_contact_ms(self) -> int:
        """Milliseconds since this server last heard from the leader (0 on the leader)."""
        node = self.node
        if node is None or node.role == LEADER:
            return 0
        last = node._last_leader_contact
        if last == float("-inf"):
            return 0
        return int((trio.current_time() - last) * 1000)

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
                await self._leader_known.wait()
                await trio.sleep(0)
        raise NoLeader()

    def _submit_apply(self, data: bytes, reply: Reply, rid: Any) -> bool:
        """The leader's task-free path for an "apply" RPC; False sends the call down the general path."""
        if not self.is_leader() or len(data) > MAX_COMMAND_BYTES:
            return False
        p = _Proposal(data, self._answer_remote)
        p.reply, p.rid = reply, rid
        return self._enqueue(p)

    def _answer_remote(self, p: _Proposal) -> None:
        assert p.reply is not None
        if p.error is not None and p.error.startswith("not the leader") and self._nursery is not None:
            self._nursery.start_soon(self._apply_and_reply, p)  # lost the lead meanwhile: forward it
        else:
            p.reply(p.rid, p.error, p.result)

    def _enqueue(self, p: _Proposal) -> bool:
        if len(self._proposals) >= MAX_QUEUED_PROPOSALS:
            return False
        if not self._proposals:
            try:
                self._inbox_send.send_nowait(("wake", None))
            except trio.WouldBlock:
                return False
        self._proposals.append(p)
        return True

    async def _apply_and_reply(self, p: _Proposal) -> None:
        assert p.reply is not None
        try:
            p.reply(p.rid, None, await self.apply_bytes(p.data))
        except ServerError as exc:
            p.reply(p.rid, str(exc), None)

    async def apply(self, command: dict[str, Any]) -> Any:
        """Replicate a catalog command and return its result once applied here; forwards to the leader."""
        return await self.apply_bytes(msgpack.packb(command, use_bin_type=True))

    async def apply_bytes(self, data: bytes) -> Any:
        """`apply` for an encoded command (the RPC entry point)."""
        if len(data) > MAX_COMMAND_BYTES:
            raise ServerError(f"{REJECTED}command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}", 400)
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            leader = await self._wait_for_leader()
            if leader is None:
                finished = trio.Event()
                p = _Proposal(data, _setter(finished))
                while not self._enqueue(p):
                    await trio.sleep(0.01)  # backpressure: the queue is full
                await finished.wait()
                if p.error is None:
                    return p.result
                if not p.error.startswith("not the leader") or trio.current_time() > deadline:
                    raise error_from_text(p.error)
                await trio.sleep(0.01)
                continue
            try:
                result = await self._call_server(leader, "apply", data, timeout=RPC_HOLD_TIMEOUT)
            except ServerError as exc:
                if trio.current_time() > deadline or ("not the leader" not in str(exc) and "reach" not in str(exc)):
                    raise
                await trio.sleep(0.05)
                continue
            return result

    async def _leader_read_index(self, consistent: bool) -> int:
        if not self.is_leader():
            raise ServerError("not the leader")
        read = _Read(consistent)
        await self._inbox_send.send(("read", read))
        await read.done.wait()
        if read.error is not None:
            raise ServerError(f"read not confirmed: {read.error}")
        return read.index

    async def read_barrier(self, consistent: bool) -> None:
        """Wait until this server may answer a `default` (consistent=False) or `consistent` read."""
        node = self.node
        if self.storage_error is not None:
            if node is not None and [s.id for s in node.membership.servers if s.voter] == [self.id]:
                return  # the only voter: nothing can have been committed elsewhere, the catalog is current
            raise ServerError(f"{self.storage_error}; this server stopped replicating (?stale reads answer)")
        if not consistent and node is not None and node.role == LEADER:
            # The hot path: a leader inside its lease answers without a round through the Raft loop.
            index = node.lease_read_index(trio.current_time())
            if index is not None and self.fsm_index >= index:
                return
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            leader = await self._wait_for_leader()
            try:
                if leader is None:
                    index = await self._leader_read_index(consistent)
                else:
                    index = await self._call_server(leader, "read_index", consistent, timeout=RPC_HOLD_TIMEOUT)
                    if type(index) is not int:
                        raise ServerError(f"the leader answered read_index with {type(index).__name__}")
                break
            except ServerError:
                if trio.current_time() > deadline:
                    raise NoLeader() from None
                await trio.sleep(0.05)
        with trio.move_on_after(RPC_HOLD_TIMEOUT) as scope:
            while self.fsm_index < index:
                await self._applied.wait()
        if scope.cancelled_caught:
            raise ServerError("timed out waiting for this server to catch up with the leader")

    def peers(self) -> list[str]:
        """Voter addresses."""
        if self.node is None:
            return []
        return [s.address for s in self.node.membership.servers if s.voter]

    def configuration(self) -> tuple[int, list[dict[str, object]]]:
        """The Raft configuration as /v1/operator/raft/configuration shows it."""
        node = self.node
        if node is None:
            return 0, []
        index = max((i for i, _ in node._configs), default=node._base_membership_index)
        return index, [{"ID": s.id, "Node": self._names.get(s.id, s.id), "Address": s.address,
                        "Leader": s.id == node.leader_id, "Voter": s.voter, "ProtocolVersion": "3"}
                       for s in node.membership.servers]

    async def remove_peer(self, *, server_id: str | None, address: str | None) -> None:
        """Remove a server from the configuration (leader only; forwarded otherwise)."""
        node = self.node
        assert node is not None
        target = next((s for s in node.membership.servers
                       if (server_id and s.id == server_id) or (address and s.address == address)), None)
        if target is None:
            raise ServerError(f"no server with {'id ' + repr(server_id) if server_id else 'address ' + repr(address)}"
                              " in the Raft configuration", 404)
        if not self.is_leader():
            raise ServerError("remove-peer must be sent to the leader's agent", 500)
        await self._change_membership(node.membership.without(target.id))

    async def snapshot(self, stale: bool) -> tuple[dict[str, object], bytes]:
        """A point-in-time catalog snapshot with its index and term."""
        if not stale:
            await self.read_barrier(consistent=True)
        node = self.node
        assert node is not None
        index = self.fsm_index
        data = self.store.catalog.snapshot()
        meta: dict[str, object] = {"ID": f"{node.term}-{index}-{int(time.time() * 1000)}", "Index": index,
                                   "Term": node.term_at(index) or node.term, "Version": 1}
        return meta, data

    async def restore(self, meta: dict[str, object], state: bytes) -> None:
        """Replace the catalog with a snapshot's, through the log so that every server does it."""
        try:
            Catalog.restore(state)
        except Exception as exc:
            raise ServerError(f"snapshot state does not decode: {exc}", 400) from exc
        await self.apply({"op": "restore", "state": state})

    def _tail_cut_text(self) -> str:
        cut = self.log_store.cut_tail if isinstance(self.log_store, LogStore) else None
        return "" if cut is None else f"{cut.path}@{cut.offset}: {cut.size} bytes, entries from {cut.first_lost}"

    def stats(self) -> dict[str, str]:
        """Figures for `meshagent info`."""
        node = self.node
        if node is None:
            return {"state": "starting"}
        return {"state": node.role, "term": str(node.term), "last_log_index": str(node.last_index),
                "last_log_term": str(node.last_term), "commit_index": str(node.commit_index),
                "applied_index": str(self.fsm_index), "num_peers": str(max(0, len(self.peers()) - 1)),
                "leader": str(node.role == LEADER).lower(), "leader_addr": self.leader_address() or "",
                "last_snapshot_index": str(self._last_snapshot_index),
                "fsyncs": str(self.fsyncs), "commands_applied": str(self.commands_applied),
                "caught_up": str(self.caught_up).lower(), "bad_raft_messages": str(self.bad_raft_messages),
                "dropped_raft_messages": str(node.dropped), "bad_frames": str(self.listener.bad_frames),
                "followers_lost_entries": str(self.followers_lost_entries),
                "log_tail_cut": self._tail_cut_text(),
                "latest_configuration": str([{"id": s.id, "address": s.address, "voter": s.voter}
                                             for s in node.membership.servers])}
