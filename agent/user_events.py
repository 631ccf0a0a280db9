"""User events on this agent: the recent ones (for /v1/event/list) and the `watches` of type event that run a
handler per event, with Serf's coalescing."""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .http.render import event_json

log = logging.getLogger("meshagent.agent")

USER_COALESCE_PERIOD = 3.0  # Serf agent's user event coalescing: at most this long after the first event
USER_QUIESCENT_PERIOD = 1.0  # ... or this long after the last one
HANDLER_TIMEOUT = 30.0
RECENT = 256  # events kept for /v1/event/list


@dataclass(frozen=True, slots=True)
class UserEventRecord:
    """One user event as this agent saw it; `id` is the same on every agent."""

    id: str
    name: str
    payload: bytes
    ltime: int

    @classmethod
    def of(cls, ltime: int, name: str, payload: bytes) -> UserEventRecord:
        """The record of an event; its ID derives from (ltime, name, payload), as every agent sees them."""
        ident = uuid.uuid5(uuid.NAMESPACE_OID, f"{ltime}/{name}/{payload.hex()}")
        return cls(str(ident), name, payload, ltime)


class UserEventLog:
    """Keeps the recent events, wakes blocking event lists, and queues events for the watch handlers."""

    def __init__(self, watches: Sequence[dict[str, Any]]) -> None:
        self._recent: deque[UserEventRecord] = deque(maxlen=RECENT)
        self._arrived = trio.Event()  # set (and replaced) on every event: wakes blocking event lists
        self._watches = watches
        self._in, self._out = trio.open_memory_channel[tuple[UserEventRecord, bool]](1024)

    @property
    def recent(self) -> Sequence[UserEventRecord]:
        """The recent events, oldest first."""
        return self._recent

    @property
    def arrived(self) -> trio.Event:
        """Set when the next event arrives."""
        return self._arrived

    def add(self, record: UserEventRecord, coalesce: bool) -> None:
        """An event arrived (from gossip, this agent's own included)."""
        self._recent.append(record)
        self._arrived.set()
        self._arrived = trio.Event()
        try:
            self._in.send_nowait((record, coalesce))
        except trio.WouldBlock:
            log.warning("event %s: handlers are behind; not running them for this one", record.name)

    async def run_watches(self) -> None:
        """Run the `watches` of type event: matching events' JSON on the handler's stdin. Events fired with
        coalescing (the default) are delivered as the latest per name once the stream goes quiet for
        USER_QUIESCENT_PERIOD or USER_COALESCE_PERIOD has passed since the first (Serf's coalescer)."""
        pending: dict[str, UserEventRecord] = {}
        first_at = 0.0
        async with trio.open_nursery() as nursery:
            while True:
                deadline = (min(first_at + USER_COALESCE_PERIOD, trio.current_time() + USER_QUIESCENT_PERIOD)
                            if pending else float("inf"))
                item: tuple[UserEventRecord, bool] | None = None
                with trio.move_on_at(deadline):
                    item = await self._out.receive()
                if item is not None and item[1]:
                    if not pending:
                        first_at = trio.current_time()
                    pending[item[0].name] = item[0]
                    continue
                batch = [item[0]] if item is not None else []
                if item is None:
                    batch, pending = list(pending.values()), {}
                for record in batch:
                    for watch in self._watches:
                        if watch.get("type") == "event" and watch.get("name") in ("", None, record.name):
                            nursery.start_soon(run_handler, list(watch["args"]), record)


async def run_handler(args: list[str], record: UserEventRecord) -> None:
    """Run one watch handler with `[event]` as JSON on its stdin; failures are logged, never raised."""
    data = json.dumps([event_json(record)]).encode()
    try:
        with trio.fail_after(HANDLER_TIMEOUT):
            result = await trio.run_process(args, stdin=data, capture_stdout=True, capture_stderr=True,
                                            check=False)
    except (OSError, trio.TooSlowError) as exc:
        log.error("event handler %s failed: %s", args[0], exc)
        return
    if result.returncode != 0:
        log.error("event handler %s exited with %d: %s", args[0], result.returncode,
                  result.stderr.decode(errors="replace").strip()[:500])
