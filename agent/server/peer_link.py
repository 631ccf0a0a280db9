"""PeerLink: a server's outgoing :8300 connection to one peer, carrying Raft messages (never waiting for answers)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ...raft.messages import Message, encode_message
from ..rpc.framing import CONNECT_ERRORS, open_stream, pack_frame

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS

log = logging.getLogger("meshagent.server.transport")


class PeerLink:
    """The outgoing connection to one peer: a queue drained by one task that reconnects as needed."""

    def __init__(self, address: str, my_id: str, my_address: str, tls: RPCTLS | None = None) -> None:
        self.address = address
        self._my_id = my_id
        self._my_address = my_address
        self._tls = tls
        self._send, self._recv = trio.open_memory_channel[bytes](8192)
        self.dropped = 0

    def send(self, msg: Message) -> None:
        """Queue a Raft message; dropped (Raft retries) when the queue is full."""
        try:
            self._send.send_nowait(pack_frame(["raft", self._my_id, self._my_address, encode_message(msg)]))
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self) -> None:
        """Deliver queued frames forever; on errors wait a little and reconnect."""
        backoff = 0.05
        while True:
            try:
                stream, _ = await open_stream(self.address, self._tls)
            except CONNECT_ERRORS as exc:
                log.debug("raft link to %s: %s", self.address, exc)
                await self._discard_for(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                async with stream:
                    while True:
                        frame = await self._recv.receive()
                        chunks = [frame]
                        while len(chunks) < 256:  # coalesce what is queued into one write
                            try:
                                chunks.append(self._recv.receive_nowait())
                            except trio.WouldBlock:
                                break
                        await stream.send_all(b"".join(chunks))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep(backoff)

    async def _discard_for(self, seconds: float) -> None:
        # While the peer is unreachable, stale messages are worthless: drop them instead of replaying.
        with trio.move_on_after(seconds):
            while True:
                await self._recv.receive()

