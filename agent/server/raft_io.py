"""The trio I/O beneath the shared Raft executor (raft/executor.py): the on-disk log, links, the driver.

The order of a step's outputs (a leader's early sends, persist with one fsync per batch, sends, apply,
publish) is the executor's, the same one the simulator runs; this module only does the I/O. Outputs that
are neither storage nor sends (applies, read answers, role changes...) go back to the driver through the
small `RaftEffects` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from ...raft.entry import Entry
from ...raft.executor import EXECUTOR, Executor
from ...raft.messages import Message
from ...raft.node import (
    AppendLog,
    Apply,
    CompactLog,
    InstallSnapshot,
    Output,
    PersistState,
    RaftNode,
    Send,
    TruncateLog,
)
from ...raft.ready import Notice, Storage
from ...raft.storage import LogStore, MemoryLogStore, MemorySnapshotStore, SnapshotStore


class RaftEffects(Protocol):
    """What the driver does with the outputs that are neither storage nor sends."""

    def handle(self, out: Output) -> None:
        """Apply, InstallSnapshot (once saved), ReadReady/ReadFailed, RoleChange, FollowerLostEntries."""

    def after_round(self) -> None:
        """Called after each round's outputs are carried out (caught-up check, link sync)."""

    async def idle(self) -> None:
        """Called when the core has nothing more to carry out (a chance to snapshot)."""


class RaftIO:
    """The storage and the sender of one server's Raft core."""

    def __init__(self, log_store: LogStore | MemoryLogStore, snapshots: SnapshotStore | MemorySnapshotStore,
                 send: Callable[[str, Message], None], executor: Executor = EXECUTOR) -> None:
        self.log_store = log_store
        self.snapshots = snapshots
        self._send = send
        self._executor = executor
        self.fsyncs = 0  # storage batches made durable (group commit: one fsync each)

    async def carry_out(self, node: RaftNode, outs: list[Output], effects: RaftEffects) -> None:
        """Carry out `outs` and whatever the core produces in turn, until it has nothing more; then idle.

        An OSError from storage propagates: the caller stops taking part in Raft (see _storage_failed).
        """
        if not outs:
            return
        await self._executor.execute(node, outs, _TrioReadyIO(self, effects))
        await effects.idle()

    def write(self, storage: Sequence[Output]) -> None:
        """Write storage outputs in order and fsync once (blocking: run it in a thread)."""
        ls, snaps = self.log_store, self.snapshots
        appended: list[Entry] = []
        for o in storage:
            if isinstance(o, AppendLog):
                appended.extend(o.entries)
                continue
            if appended:
                ls.append(appended)
                appended = []
            if isinstance(o, PersistState):
                ls.set_hard_state(o.term, o.vote)
            elif isinstance(o, TruncateLog):
                ls.truncate_suffix(o.from_index)
            elif isinstance(o, CompactLog):
                ls.compact_prefix(o.upto_index, o.upto_term)
            elif isinstance(o, InstallSnapshot):
                snaps.save(o.meta, o.data)
                if o.reset_log:
                    ls.reset(o.meta.index, o.meta.term)
        if appended:
            ls.append(appended)
        ls.sync()
        self.fsyncs += 1

    def send_all(self, sends: Sequence[Send]) -> None:
        """Hand each message to the link of its destination (dropped when there is none)."""
        for s in sends:
            self._send(s.to, s.msg)


class _TrioReadyIO:
    """The executor's ReadyIO for one carry_out: fsync in a worker thread, the rest on the event loop."""

    def __init__(self, io: RaftIO, effects: RaftEffects) -> None:
        self._io, self._effects = io, effects

    def now(self) -> float:
        return trio.current_time()

    async def persist(self, storage: Sequence[Storage]) -> None:
        await trio.to_thread.run_sync(self._io.write, storage)

    def send(self, sends: Sequence[Send]) -> None:
        self._io.send_all(sends)

    def apply(self, out: Apply) -> None:
        self._effects.handle(out)

    def install_snapshot(self, out: InstallSnapshot) -> None:
        self._effects.handle(out)

    def publish(self, out: Notice) -> None:
        self._effects.handle(out)

    def round_done(self) -> None:
        self._effects.after_round()
