"""InstantIO: the Raft executor's I/O for cores driven by hand in a test (storage durable at once, no FSM)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshagent.raft.node import Apply, InstallSnapshot, Send
from meshagent.raft.ready import Notice, Storage


class InstantIO:
    """Sends and notices go to the test's callbacks; persisting, applying and installing need no work."""

    def __init__(self, now: Callable[[], float], on_send: Callable[[Send], None],
                 on_notice: Callable[[Notice], None] = lambda _n: None) -> None:
        self._now, self._on_send, self._on_notice = now, on_send, on_notice

    def now(self) -> float:
        return self._now()

    async def persist(self, storage: Sequence[Storage]) -> None:
        pass

    def send(self, sends: Sequence[Send]) -> None:
        for s in sends:
            self._on_send(s)

    def apply(self, out: Apply) -> None:
        pass

    def install_snapshot(self, out: InstallSnapshot) -> None:
        pass

    def publish(self, out: Notice) -> None:
        self._on_notice(out)

    def round_done(self) -> None:
        pass
