"""Writes and reads waiting on the Raft loop: a proposal hears its command's outcome, a read its index."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..rpc.errors import ServerError
from .listener import Reply

BATCH_MAX_COMMANDS = 512
# One batch entry stays well below an append's byte budget (RaftConfig.max_bytes_per_append), and one
# command below the smallest :8300 frame cap (16 MiB from anyone but a verified server), so that whatever
# is committed can also be replicated, on a plaintext cluster too.
BATCH_MAX_BYTES = 1024 * 1024


class Proposal:
    """A command waiting to be committed and applied; `on_done` hears the outcome."""

    __slots__ = ("data", "error", "index", "on_done", "reply", "result", "rid", "term", "token")

    def __init__(self, data: bytes, on_done: Callable[[Proposal], None]) -> None:
        self.data = data
        self.on_done = on_done
        self.index = self.term = 0
        self.result: Any = None
        self.error: ServerError | None = None
        self.reply: Reply | None = None  # the RPC connection's answer callback, for remote proposals
        self.rid: Any = None
        self.token: str | None = None  # the ACL secret a remote write carries (forwarded with it if need be)

    def finish(self, result: Any, error: ServerError | None) -> None:
        """Record the outcome and tell whoever waits."""
        self.result, self.error = result, error
        self.on_done(self)


def setter(event: trio.Event) -> Callable[[Proposal], None]:
    """An `on_done` that sets `event`."""
    return lambda _p: event.set()


def batches(proposals: list[Proposal]) -> list[list[Proposal]]:
    """Proposals in queue order, grouped by at most BATCH_MAX_COMMANDS and BATCH_MAX_BYTES (a bigger one alone)."""
    groups: list[list[Proposal]] = []
    size = 0
    for p in proposals:
        if not groups or len(groups[-1]) >= BATCH_MAX_COMMANDS or size + len(p.data) > BATCH_MAX_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += len(p.data)
    return groups


@dataclass
class Read:
    """A read waiting for the leader to confirm an index (`consistent`: by a quorum round, not the lease)."""

    consistent: bool
    done: trio.Event = field(default_factory=trio.Event)
    index: int = 0
    error: ServerError | None = None
