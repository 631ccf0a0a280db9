"""A stand-in subscriber for agent/server/feed.py `CatalogFeed`: keeps every frame it is sent."""

from __future__ import annotations


class Sink:
    """A subscribed connection that keeps the frames it was sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def backlog(self) -> int:
        return 0

    def abort(self) -> None:
        raise AssertionError("not dropped")
