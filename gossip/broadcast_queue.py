"""The SWIM core's piggyback queue: memberlist's TransmitLimitedQueue (queue.go). Pure.

Each broadcast goes out at most `limit` times (retransmit_mult * ceil(log10(n + 1)), the caller's figure);
the least-transmitted go first and, among equals, the newest; a newer broadcast about the same member
replaces the older one; a broadcast too big for what is left of a packet is skipped, not blocking smaller ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PART_OVERHEAD = 2  # bytes a message costs in a compound packet besides itself (its u16 length)


@dataclass(slots=True)
class Broadcast:
    """One queued message and how often it has been sent."""

    key: str | None  # the member it is about (a newer one replaces it); None for messages never replaced
    msg: bytes
    order: int  # rises with each queued message: the newest has the highest
    transmits: int = 0


class BroadcastQueue:
    """Messages to piggyback on outgoing packets, each sent a limited number of times."""

    def __init__(self) -> None:
        self._items: list[Broadcast] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Broadcast]:
        return iter(list(self._items))

    def clear(self) -> None:
        """Drop everything queued."""
        self._items = []

    def queue(self, key: str | None, msg: bytes) -> None:
        """Queue `msg`; it replaces a queued broadcast with the same `key`."""
        if key is not None:
            self._items = [b for b in self._items if b.key != key]
        self._order += 1
        self._items.append(Broadcast(key, msg, self._order))

    def pending(self, key: str, below: int) -> bool:
        """Whether a broadcast about `key` is queued and has been sent fewer than `below` times."""
        return any(b.key == key and b.transmits < below for b in self._items)

    def take(self, room: int, taken: list[bytes], limit: int, max_parts: int) -> list[Broadcast]:
        """Append to `taken` the broadcasts that fit `room` bytes (and `max_parts` messages in all), least
        transmitted first, counting each as sent; drop those sent `limit` times. Returns the broadcasts that
        did not fit and may still be sent, in queue order."""
        used = 0
        self._items.sort(key=lambda b: (b.transmits, -b.order))
        keep: list[Broadcast] = []
        rest: list[Broadcast] = []
        for b in self._items:
            cost = len(b.msg) + PART_OVERHEAD
            if used + cost <= room and len(taken) < max_parts:
                taken.append(b.msg)
                used += cost
                b.transmits += 1
                if b.transmits < limit:
                    keep.append(b)
            elif b.transmits < limit:
                keep.append(b)
                rest.append(b)
        self._items = keep
        return rest

    def sent(self, broadcasts: list[Broadcast], limit: int) -> None:
        """Count `broadcasts` (left over by `take`, then sent after all) as sent once more; drop those at `limit`."""
        for b in broadcasts:
            b.transmits += 1
        self._items = [b for b in self._items if b.transmits < limit]
