"""Carries out the Raft core's outputs: storage writes (one fsync per batch), sends, then the rest.

The driver hands each round's outputs to `RaftIO.carry_out`; the outputs that are not storage or sends
(applies, read answers, role changes...) go back to the driver through the small `RaftEffects` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from ...raft.entry import Entry
from ...raft.messages import Message
from ...raft.node import (
    LEADER,
    AppendLog,
    CompactLog,
    InstallSnapshot,
    Output,
    PersistState,
    RaftNode,
    Send,
    TruncateLog,
)
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
                 send: Callable[[str, Message], None]) -> None:
        self.log_store = log_store
        self.snapshots = snapshots
        self._send = send
        self.fsyncs = 0  # storage batches made durable (group commit: one fsync each)

    async def carry_out(self, node: RaftNode, outs: list[Output], effects: RaftEffects) -> None:
        """Carry out `outs` and whatever the core produces in turn, until it has nothing more."""
        while outs:
            storage = [o for o in outs if isinstance(o, PersistState | AppendLog | TruncateLog | CompactLog |
                                                     InstallSnapshot)]
            sends = [o for o in outs if isinstance(o, Send)]
            # A leader may replicate before its own fsync (it just cannot count itself until then);
            # anything else (votes, acknowledgements) goes out only once durable.
            early = node.role == LEADER and not any(isinstance(o, PersistState | TruncateLog | InstallSnapshot)
                                                    for o in storage)
            if early:
                self.send_all(sends)
            if storage:
                await trio.to_thread.run_sync(self.write, storage)
            if not early:
                self.send_all(sends)
            for o in outs:
                if not isinstance(o, Send | PersistState | AppendLog | TruncateLog | CompactLog):
                    effects.handle(o)
            effects.after_round()
            now = trio.current_time()
            outs = []
            if storage and node.role == LEADER:
                outs.extend(node.persisted(now, node.last_index))
            outs.extend(node.flush(now))
            if not outs:
                await effects.idle()

    def write(self, storage: list[Output]) -> None:
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

    def send_all(self, sends: list[Send]) -> None:
        """Hand each message to the link of its destination (dropped when there is none)."""
        for s in sends:
            self._send(s.to, s.msg)
