"""The one executor of the Raft core's outputs, shared by the trio runtime and the simulator.

Both hand it the core and a `ReadyIO`; they differ only in I/O. Storage is the one step that may block, so
`ReadyIO.persist` is a coroutine (the runtime awaits an fsync in a thread) and everything else is a plain
call. The simulator's I/O never suspends and runs the coroutine to completion with `drive`, so one code
path, with no event loop and no clock of its own, is what both run. Faults belong in the I/O: a simulated
`persist` may crash its server before the write (after a leader's early sends) or right after it (before
the sends and applies), which is where ordering bugs hide. `Executor.carry_out` is a method so a test can
plant a reordering bug in a subclass and show the simulator catches it.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from .node import Apply, InstallSnapshot, Output, RaftNode, Send
from .ready import Notice, Ready, Storage

T = TypeVar("T")


class ReadyIO(Protocol):
    """What a Ready needs from the world: storage, the network, the state machine, a clock."""

    def now(self) -> float:
        """The current time (for `advance`)."""

    async def persist(self, storage: Sequence[Storage]) -> None:
        """Carry out the storage work in order and make it durable (one fsync) before returning."""

    def send(self, sends: Sequence[Send]) -> None:
        """Hand the messages to the network (fire and forget)."""

    def apply(self, out: Apply) -> None:
        """Apply committed entries to the state machine."""

    def install_snapshot(self, out: InstallSnapshot) -> None:
        """Restore the state machine from a snapshot that `persist` has already saved."""

    def publish(self, out: Notice) -> None:
        """Report a read answer, a role change or a follower's data loss."""

    def round_done(self) -> None:
        """Called after each Ready is carried out, before `advance` (membership links, commit bookkeeping)."""


class Executor:
    """Carries out a step's outputs and what the core produces in turn, until it has nothing more."""

    async def execute(self, node: RaftNode, outs: list[Output], io: ReadyIO) -> None:
        """Ready → carry out → advance, until the core has nothing more to do."""
        while outs:
            ready = Ready.of(outs, leader=node.is_leader)
            await self.carry_out(ready, io)
            io.round_done()
            outs = node.advance(io.now(), persisted=bool(ready.persist))

    async def carry_out(self, ready: Ready, io: ReadyIO) -> None:
        """The order Raft needs: early sends, persist, sends, apply, publish."""
        if ready.early_sends:
            io.send(ready.early_sends)
        if ready.persist:
            await io.persist(ready.persist)
        if ready.sends:
            io.send(ready.sends)
        for c in ready.apply:
            if isinstance(c, Apply):
                io.apply(c)
            else:
                io.install_snapshot(c)
        for n in ready.publish:
            io.publish(n)


EXECUTOR = Executor()


class Suspended(RuntimeError):
    """A coroutine driven by `drive` tried to suspend: its I/O is not synchronous."""


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (the simulator's I/O) to completion, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise Suspended("a simulated I/O call suspended; simulated I/O must complete at once")
