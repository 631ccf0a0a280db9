"""CatalogFeed: a server streams its catalog to client agents, which keep a read replica of it.

The frames are agent/rpc/feed.py's. Client agents never get the CA's private keys nor ACL token secrets:
snapshots are sent redacted, "connect-ca" and "acl" commands re-encoded without them (tokens carry the secret's
SHA-256 digest instead), and a restore's own bytes not at all (its snapshot frame,
sent first, already covers its index). Catalog indexes are the same on every server (each maps Raft entries
to catalog indexes the same way), so a client may move to another server and compare indexes across them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import trio

from ..catalog.acl_state import redacted_acl_command
from ..catalog.connect_state import redacted_command
from ..rpc.feed import HEARTBEAT_INTERVAL, command_frame, heartbeat_frame, snapshot_frame
from ..store import CatalogStore

log = logging.getLogger("meshagent.server.feed")

MAX_BACKLOG_BYTES = 64 * 1024 * 1024  # a subscriber this far behind is dropped; it resubscribes from a snapshot


class Subscriber(Protocol):
    """The outgoing side of a subscribed connection (transport's _Conn)."""

    def send_frame(self, frame: bytes) -> None: ...

    def backlog(self) -> int: ...

    def abort(self) -> None: ...


class CatalogFeed:
    """Fans applied catalog commands out to subscribed client agents."""

    def __init__(self, store: CatalogStore, leader_info: Callable[[], tuple[bool, int]]) -> None:
        self._store = store
        self._leader_info = leader_info
        self._subscribers: dict[Subscriber, str] = {}
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        """How many client agents are subscribed."""
        return len(self._subscribers)

    def subscribe(self, sub: Subscriber, node: str) -> None:
        """Start streaming to `sub`: the whole catalog now, every command after."""
        self._subscribers[sub] = node
        catalog = self._store.catalog
        sub.send_frame(snapshot_frame(catalog.last_index, catalog.snapshot(redact_secrets=True)))
        log.debug("feed: %s subscribed at index %d", node, catalog.last_index)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a closed connection."""
        self._subscribers.pop(sub, None)

    def publish(self, index: int, command: bytes, decoded: Any = None) -> None:
        """An applied command (applied or rejected: either way it used its index); `decoded` is its value."""
        if not self._subscribers:
            return
        if isinstance(decoded, dict):
            op = decoded.get("op")
            if op == "restore":
                return
            if op == "connect-ca":
                command = msgpack.packb(redacted_command(decoded), use_bin_type=True)
            elif op == "acl":
                # Token secrets stay on servers: replicas get their SHA-256 digests (enough to resolve).
                command = msgpack.packb(redacted_acl_command(decoded), use_bin_type=True)
        self._send_all(command_frame(index, command))

    def restored(self) -> None:
        """The catalog was replaced (snapshot install or restore): everyone gets the new one."""
        if not self._subscribers:
            return
        catalog = self._store.catalog
        self._send_all(snapshot_frame(catalog.last_index, catalog.snapshot(redact_secrets=True)))

    def _send_all(self, frame: bytes) -> None:
        for sub, node in list(self._subscribers.items()):
            if sub.backlog() > MAX_BACKLOG_BYTES:
                log.warning("feed: dropping %s, %d bytes behind", node, sub.backlog())
                self.dropped += 1
                self.unsubscribe(sub)
                sub.abort()
                continue
            sub.send_frame(frame)

    async def run(self) -> None:
        """Heartbeats, so that a client can tell a quiet catalog from a lost server."""
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL)
            if self._subscribers:
                known, last_contact = self._leader_info()
                self._send_all(heartbeat_frame(self._store.catalog.last_index, known, last_contact))
