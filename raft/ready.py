"""One step's outputs as a single value that carries their order: persist → send → apply → publish.

As etcd raft's `Ready`: the core's inputs (`receive`, `tick`, `propose`, ...) return their outputs, and
`Ready.of` sorts one step's outputs into the order they must be carried out in. The core's methods keep
returning output lists (its unit tests read them); the order lives here, once, for every executor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .node import (
    AppendLog,
    Apply,
    CompactLog,
    FollowerLostEntries,
    InstallSnapshot,
    Output,
    PersistState,
    ReadFailed,
    ReadReady,
    RoleChange,
    Send,
    TruncateLog,
)

Storage = PersistState | AppendLog | TruncateLog | CompactLog | InstallSnapshot
Committed = Apply | InstallSnapshot
Notice = ReadReady | ReadFailed | RoleChange | FollowerLostEntries


@dataclass(frozen=True, slots=True)
class Ready:
    """One step's work, in order: early sends, persist (one fsync), sends, apply, publish."""

    # A leader may replicate its new entries before its own fsync (Raft allows it: the leader only cannot
    # count itself towards commitment until `persisted`); these go out first.
    early_sends: tuple[Send, ...] = ()
    persist: tuple[Storage, ...] = ()  # in order; durable before any of `sends` leaves
    sends: tuple[Send, ...] = ()  # votes and acknowledgements: only once what they promise is durable
    apply: tuple[Committed, ...] = ()  # committed entries and snapshots for the state machine, in order
    publish: tuple[Notice, ...] = ()  # read answers, role changes, data-loss reports

    @classmethod
    def of(cls, outs: Iterable[Output], leader: bool) -> Ready:
        """Sort `outs` (one step of a node that is `leader` now) into the order they are carried out in."""
        persist: list[Storage] = []
        sends: list[Send] = []
        apply: list[Committed] = []
        publish: list[Notice] = []
        for o in outs:
            if isinstance(o, Send):
                sends.append(o)
            elif isinstance(o, Apply):
                apply.append(o)
            elif isinstance(o, InstallSnapshot):
                persist.append(o)  # saved with the other storage work, then restored into the state machine
                apply.append(o)
            elif isinstance(o, PersistState | AppendLog | TruncateLog | CompactLog):
                persist.append(o)
            else:
                publish.append(o)
        # Only a leader's own appends (and compaction) may be outrun by its sends; a new term, a vote, a cut
        # log or a snapshot must be durable before anyone hears of it.
        early = leader and not any(isinstance(o, PersistState | TruncateLog | InstallSnapshot) for o in persist)
        if early:
            return cls(tuple(sends), tuple(persist), (), tuple(apply), tuple(publish))
        return cls((), tuple(persist), tuple(sends), tuple(apply), tuple(publish))

    def __bool__(self) -> bool:
        return bool(self.early_sends or self.persist or self.sends or self.apply or self.publish)
