"""CatalogReplica: a client agent's copy of the catalog, fed by one server's CatalogFeed.

DNS, the HTTP API and blocking queries on a client read this copy, so they keep answering while no server
can be reached (beyond Consul, hashicorp/consul#13243). While the feed is down the store says since when
(`stale_since`), and DNS counts the answers it gives from the stale copy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgpack
import trio

from ..catalog import CommandError
from ..rpc.feed import HEARTBEAT_INTERVAL, subscribe_frame
from ..rpc.framing import FrameReader, open_stream
from ..store import CatalogStore
from .servers import ServerPool

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS

log = logging.getLogger("meshagent.client")

CONNECT_TIMEOUT = 2.0
SILENCE_LIMIT = 3 * HEARTBEAT_INTERVAL  # no frame for this long: the server is gone, try another


class CatalogReplica:
    """Subscribes to a server's feed and applies what it sends to the local store."""

    def __init__(self, store: CatalogStore, pool: ServerPool, node_name: str) -> None:
        self.store = store
        self.pool = pool
        self.node_name = node_name
        self.server: str | None = None  # the server feeding us now
        self.leader_known = False
        self.server_last_contact_ms = 0
        self.last_frame = float("-inf")
        self.synced = trio.Event()  # set once the first snapshot arrived
        self.resubscribes = 0
        self._progress = trio.Event()
        self.tls: RPCTLS | None = None  # :8300's TLS policy, set by the agent (None: plaintext)

    def last_contact_ms(self) -> int:
        """Milliseconds since the leader's data last reached us (through the server)."""
        if self.last_frame == float("-inf"):
            return 0
        return int((trio.current_time() - self.last_frame) * 1000) + self.server_last_contact_ms

    async def wait_for_index(self, index: int, timeout: float) -> bool:
        """Wait until the replica has applied catalog index `index`; False on timeout."""
        with trio.move_on_after(timeout):
            while self.store.catalog.last_index < index:
                await self._progress.wait()
            return True
        return False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a subscription to some server until cancelled."""
        self.store.stale_since = trio.current_time()  # nothing confirmed yet
        task_status.started()
        while True:
            address = self.pool.pick()
            if address is None:
                await trio.sleep(0.5)  # waiting for gossip to show a server
                continue
            try:
                await self._follow(address)
            except (OSError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                log.warning("catalog feed from %s lost: %s", address, exc or type(exc).__name__)
            self._lost(address)
            await trio.sleep(0.1)

    def _lost(self, address: str) -> None:
        self.pool.failed(address)
        self.server = None
        self.leader_known = False
        if self.store.stale_since is None:
            self.store.stale_since = self.last_frame

    async def _follow(self, address: str) -> None:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream, _ = await open_stream(address, self.tls)
        async with stream:
            await stream.send_all(subscribe_frame(self.node_name))
            reader = FrameReader()
            while True:
                with trio.fail_after(SILENCE_LIMIT):
                    data = await stream.receive_some(262144)
                if not data:
                    raise trio.BrokenResourceError("server closed the feed")
                for frame in reader.feed(data):
                    self._on_frame(address, frame)
                self._progress.set()
                self._progress = trio.Event()

    def _on_frame(self, address: str, frame: object) -> None:
        if not isinstance(frame, list) or len(frame) < 2 or not isinstance(frame[1], int):
            raise ValueError(f"unexpected feed frame {str(frame)[:80]}")
        kind, index = frame[0], frame[1]
        self.last_frame = trio.current_time()
        if kind == "cmd" and len(frame) == 3 and isinstance(frame[2], bytes):
            if index <= self.store.catalog.last_index:
                return  # already have it
            try:
                command = msgpack.unpackb(frame[2], raw=False)
                self.store.catalog.apply(index, command)
            except CommandError:
                pass  # rejected on the server too; the index is used up the same way
            except Exception as exc:
                raise ValueError(f"undecodable command at index {index}: {exc}") from exc
        elif kind == "beat" and len(frame) == 4:
            self.leader_known, self.server_last_contact_ms = bool(frame[2]), int(frame[3])
        elif kind == "snap" and len(frame) == 3 and isinstance(frame[2], bytes):
            try:
                self.store.restore(frame[2])
            except CommandError as exc:
                raise ValueError(f"undecodable snapshot: {exc}") from exc
            if self.server != address:
                log.info("catalog feed from %s at index %d", address, index)
                self.resubscribes += 1
            self.server = address
            self.leader_known = True
            self.store.stale_since = None
            self.synced.set()
        else:
            raise ValueError(f"unexpected feed frame {kind!r}")
