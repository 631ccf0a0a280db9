"""RaftDriver: drives the sans-IO Raft core with trio: the inputs queue, proposals, reads and role changes.

One task owns the core. It takes every queued input (messages, proposals, reads), feeds them to the core,
then hands the outputs to raft_io (one storage write + fsync for the whole batch, the sends) and carries out
the rest here: applies through the FSM, read answers, role changes. While that fsync runs in a worker
thread, new inputs queue up and form the next batch.
"""

from __future__ import annotations

import errno
import logging
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ...raft.config import RaftConfig
from ...raft.entry import Entry, Membership, SnapshotMeta
from ...raft.messages import Message
from ...raft.node import (
    LEADER,
    Apply,
    FollowerLostEntries,
    InstallSnapshot,
    Output,
    RaftNode,
    ReadFailed,
    ReadReady,
    RoleChange,
)
from ...raft.node import NotLeader as CoreNotLeader
from ...raft.storage import LogStore, MemoryLogStore, MemorySnapshotStore, SnapshotStore
from ..rpc.errors import NotLeader, ServerError
from .fsm import CatalogFSM, batch_command, restorable
from .links import PeerLinks
from .proposals import Proposal, Read, batches
from .raft_io import RaftIO

log = logging.getLogger("meshagent.server")

MAX_QUEUED_PROPOSALS = 100_000
MAX_LOGGED_SOURCES = 32  # a misbehaving source is logged once; after this many, no more are named

Call = Callable[[float], list[Output]]  # a function run on the loop with the core, returning its outputs


class RaftDriver:
    """The loop around one server's Raft core."""

    def __init__(self, node_id: str, config: RaftConfig, data_dir: Path | None, fsm: CatalogFSM,
                 links: PeerLinks) -> None:
        self.id = node_id
        self.config = config
        self.fsm = fsm
        self.links = links
        self._dir = data_dir
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, Any]](100_000)
        self._pending: dict[int, list[Proposal]] = {}
        # Proposals skip the inbox channel (its per-item cost showed in profiles): a deque, plus one
        # "wake" item in the inbox when the deque stops being empty.
        self._proposals: deque[Proposal] = deque()
        self._reads: dict[int, Read] = {}
        self._read_seq = 0
        self._applied = trio.Event()
        self._leader_known = trio.Event()
        self.node: RaftNode | None = None
        self.io: RaftIO | None = None
        self.log_store: LogStore | MemoryLogStore | None = None
        self.last_snapshot_index = 0
        # Why this server stopped taking part in Raft after a failed write ("no space left on device
        # writing ..."), or None while its storage works.
        self.storage_error: str | None = None
        # False after start until this server has applied everything a leader had committed (or, leading,
        # its term's first entry is committed); reads are not authoritative before (DNS SERVFAIL, HTTP
        # X-Consul-KnownLeader: false). It then stays True: an election does not make the catalog older.
        self.caught_up = False
        self.bad_raft_messages = 0  # refused before the core: wrong address for the ID, handler errors
        self.followers_lost_entries = 0  # (leader) followers found without entries they had acknowledged
        self.on_role_change: Callable[[RoleChange], None] = lambda _change: None
        self._logged_sources: set[str] = set()

    # ------------------------------------------------------------------------------------------ start

    def open(self, now: float) -> None:
        """Open storage and rebuild the core and the catalog from snapshot + log (blocking; run in a thread)."""
        snapshots: SnapshotStore | MemorySnapshotStore
        if self._dir is None:
            self.log_store, snapshots = MemoryLogStore(), MemorySnapshotStore()
        else:
            self.log_store = LogStore.open(self._dir)
            snapshots = SnapshotStore(self._dir / "snapshots")
        latest = snapshots.latest()
        ls = self.log_store
        entries = ls.entries(ls.first_index, ls.last_index) if ls.last_index >= ls.first_index else []
        base = ls.first_index - 1
        base_term = ls.term_at(base) or 0
        meta, data = latest if latest else (None, b"")
        if meta is not None:
            self.fsm.open(meta.index, data)
            self.last_snapshot_index = meta.index
        self.io = RaftIO(ls, snapshots, self.links.send)
        self.node = RaftNode(self.id, self.config, random.Random(), now, term=ls.term,
                             vote=ls.vote, entries=entries, base_index=base, base_term=base_term,
                             snapshot=meta, snapshot_data=data, snapshot_check=restorable)

    # ------------------------------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Feed queued inputs to the core and carry out its outputs, until cancelled."""
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
                        self.bad_message(item[0], "raft message raised in the core", exc_info=True)
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
                    p.finish(None, ServerError(reason))
            self._pending.clear()
            while self._proposals:
                self._proposals.popleft().finish(None, ServerError(reason))
            for ctx in list(self._reads):
                self._finish_read(ctx, 0, ServerError(reason))
            kind, item = await self._inbox.receive()
            if kind == "read":
                item.error = ServerError(reason)
                item.done.set()

    def _propose(self, now: float, proposals: list[Proposal]) -> list[Output]:
        assert self.node is not None
        # Proposals that queued up together share one log entry (a "batch" command): one record, one
        # CRC and one Entry per batch instead of per write, on every server. Each write keeps its own
        # catalog index, since indexes are handed out per command as they apply.
        groups = batches(proposals)
        datas = [g[0].data if len(g) == 1 else batch_command([p.data for p in g]) for g in groups]
        try:
            first, outs = self.node.propose_batch(now, datas)
        except CoreNotLeader as exc:
            for p in proposals:
                p.finish(None, NotLeader(f"not the leader ({exc})"))
            return []
        term = self.node.term
        for i, g in enumerate(groups):
            for p in g:
                p.index, p.term = first + i, term
            self._pending[first + i] = g
        return outs

    def _start_read(self, now: float, read: Read) -> list[Output]:
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

    # ------------------------------------------------------------------------------------------ inputs

    def enqueue(self, p: Proposal) -> bool:
        """Queue a proposal for the next round; False when the queue is full."""
        if len(self._proposals) >= MAX_QUEUED_PROPOSALS:
            return False
        if not self._proposals:
            try:
                self._inbox_send.send_nowait(("wake", None))
            except trio.WouldBlock:
                return False
        self._proposals.append(p)
        return True

    async def call(self, fn: Call) -> None:
        """Run `fn(now)` on the loop, with the core, and carry out what it returns."""
        await self._inbox_send.send(("call", fn))

    async def change_membership(self, new: Membership) -> None:
        """(Leader) propose a configuration and wait (up to 1 s) to hold it; ServerError when refused."""
        box: list[Exception] = []

        def change(now: float) -> list[Output]:
            try:
                _, outs = self.node.propose_membership(now, new)  # type: ignore[union-attr]
                return outs
            except (CoreNotLeader, ValueError) as exc:
                box.append(exc)
                return []
        await self.call(change)
        with trio.move_on_after(1):
            while not box and self.node is not None and self.node.membership != new:
                await trio.sleep(0.01)
        if box:
            raise ServerError(str(box[0]), 409 if isinstance(box[0], ValueError) else 500)
        if self.node is not None:
            self.links.sync(self.node.membership)

    async def read_index(self, consistent: bool) -> int:
        """(Leader) an index a read may be served at once the FSM reaches it: the lease's or a quorum's."""
        if not self.is_leader():
            raise NotLeader("not the leader")
        read = Read(consistent)
        await self._inbox_send.send(("read", read))
        await read.done.wait()
        if read.error is not None:
            raise ServerError(f"read not confirmed: {read.error}")
        return read.index

    def receive(self, src: str, address: str, msg: Message) -> None:
        """A Raft message from the listener: checked against the configuration, then queued for the core
        (dropped when overloaded: Raft retransmits)."""
        node = self.node
        if node is None:
            return
        member = node.membership.get(src)
        if member is not None and member.address != address:
            self.bad_message(src, f"it claims address {address[:80]!r}, the configuration says {member.address}")
            return
        known = node.known_servers()
        if known and src not in known and not node.admits_stranger(trio.current_time(), msg):
            node.dropped += 1  # the core would drop it too; spare the inbox
            return
        if not self.links.has(src):
            # A peer we have no configuration entry for yet (a leader adding us, a fresh bootstrap):
            # answer it at the address it gave; a few such links at most.
            if not self.links.answer_stranger(src, address, member.address if member else None):
                self.bad_message(src, "no link for an unknown server (bad address, or too many strangers)")
                return
        try:
            self._inbox_send.send_nowait(("msg", (src, msg)))
        except trio.WouldBlock:
            pass  # overloaded: Raft retransmits

    def bad_message(self, src: str, what: str, exc_info: bool = False) -> None:
        """Count a refused message; name its source in the log once."""
        self.bad_raft_messages += 1
        if src not in self._logged_sources and len(self._logged_sources) < MAX_LOGGED_SOURCES:
            self._logged_sources.add(src)
            log.warning("raft: dropping a message from %r: %s (further ones from it are only counted)",
                        src[:80], what, exc_info=exc_info)

    # ------------------------------------------------------------------------------------------ waiting

    async def wait_applied(self) -> None:
        """Until the FSM applies more."""
        await self._applied.wait()

    async def wait_leader_known(self) -> None:
        """Until a leader is known (returns at once while one is)."""
        await self._leader_known.wait()

    def is_leader(self) -> bool:
        """Whether this server leads."""
        return self.node is not None and self.node.role == LEADER

    def address_of(self, server_id: str | None) -> str:
        """A configuration member's address ("" when unknown)."""
        if server_id is None or self.node is None:
            return ""
        s = self.node.membership.get(server_id)
        return s.address if s else ""

    # ------------------------------------------------------------------------------------------ RaftEffects

    def handle(self, o: Output) -> None:
        """Carry out one output that is neither storage nor a send (raft_io calls this)."""
        if isinstance(o, Apply):
            self._apply(o.entries)
        elif isinstance(o, InstallSnapshot):
            self.fsm.install(o.meta.index, o.data)
            self.last_snapshot_index = o.meta.index
            self._wake_applied()
        elif isinstance(o, ReadReady):
            self._finish_read(o.ctx, o.index, None)
        elif isinstance(o, ReadFailed):
            self._finish_read(o.ctx, 0, ServerError(o.reason))
        elif isinstance(o, RoleChange):
            self._role_changed(o)
        elif isinstance(o, FollowerLostEntries):
            self.followers_lost_entries += 1
            log.error("raft: DATA LOSS on server %s (%s): it had acknowledged entries up to %d and now "
                      "holds only up to %d; sending entries %d..%d again", o.server,
                      self.address_of(o.server) or "?", o.acknowledged, o.held, o.held + 1,
                      o.acknowledged)

    def after_round(self) -> None:
        """After each round: note catching up, and follow membership changes with links."""
        node = self.node
        assert node is not None
        if not self.caught_up:
            index = node.caught_up_index
            self.caught_up = index is not None and self.fsm.index >= index
        if node.membership is not self.links.synced_to:
            # Membership takes effect on append, not commit: a follower that holds the configuration
            # but has not yet learned that it is committed must still reach its peers to elect a new
            # leader (found by killing a leader before any commit index reached the followers).
            self.links.sync(node.membership)

    async def idle(self) -> None:
        """Nothing more to carry out: snapshot if the log has grown enough."""
        node, io = self.node, self.io
        assert node is not None and io is not None
        if self.fsm.index - self.last_snapshot_index < self.config.snapshot_threshold:
            return
        index = self.fsm.index
        data = self.fsm.snapshot()
        meta = SnapshotMeta(index, node.term_at(index) or 0, node.membership_at(index))
        await trio.to_thread.run_sync(io.snapshots.save, meta, data)
        self.last_snapshot_index = index
        outs = node.snapshot_taken(index, data)
        if outs:
            await trio.to_thread.run_sync(io.write, outs)
        log.info("raft: snapshot at index %d (%d bytes)", index, len(data))

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            waiting = self._pending.pop(e.index, None)
            outcomes = self.fsm.apply(e)
            if waiting is not None:
                for i, p in enumerate(waiting):
                    if p.term != e.term:
                        # Not NotLeader: the caller must not retry it blindly (it is not retried today).
                        p.finish(None, ServerError("leadership changed before the write committed; it was "
                                                   "not applied"))
                    elif i < len(outcomes):
                        p.finish(*outcomes[i])
                    else:
                        p.finish(None, ServerError("the committed entry does not hold this write"))
        self._wake_applied()

    def _wake_applied(self) -> None:
        self._applied.set()
        self._applied = trio.Event()

    def _finish_read(self, ctx: object, index: int, error: ServerError | None) -> None:
        read = self._reads.pop(ctx, None)  # type: ignore[call-overload]
        if read is not None:
            read.index, read.error = index, error
            read.done.set()

    def _role_changed(self, change: RoleChange) -> None:
        log.info("raft: %s in term %d (leader %s)", change.role, change.term,
                 self.address_of(change.leader) if change.leader else "unknown")
        if change.leader is not None:
            self._leader_known.set()
        else:
            self._leader_known = trio.Event()
        self.on_role_change(change)
