"""RPCClient: pipelined calls to one server's :8300 over a single connection, for servers and client agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .errors import Unanswered, Unreachable, decode_error
from .framing import CONNECT_ERRORS, FrameReader, open_stream, pack_frame

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS


class RPCClient:
    """Pipelined RPC calls to one server over a single connection (`bootstrap`: the auto_encrypt channel)."""

    def __init__(self, address: str, tls: RPCTLS | None = None, *, bootstrap: bool = False) -> None:
        self.address = address
        self._tls = tls
        self._bootstrap = bootstrap
        self._stream: trio.abc.Stream | None = None
        self._sock: trio.socket.SocketType | None = None
        self._next_id = 0
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._lock = trio.Lock()
        self._reader_running = False

    async def call(self, nursery: trio.Nursery, method: str, args: Any, timeout: float = 10.0) -> Any:
        """Call `method`; raises the remote error's type (ServerError and kin), Unreachable for transport failures."""
        rid: int | None = None
        sent = False
        slot: tuple[trio.Event, list[Any]] = (trio.Event(), [])
        with trio.move_on_after(timeout) as scope:
            async with self._lock:
                if self._stream is None:
                    try:
                        self._stream, self._sock = await open_stream(self.address, self._tls,
                                                                     bootstrap=self._bootstrap)
                    except CONNECT_ERRORS as exc:
                        raise Unreachable(f"cannot reach server {self.address}: "
                                          f"{exc.__cause__ or exc or type(exc).__name__}") from exc
                    nursery.start_soon(self._read_loop, self._stream)
                self._next_id += 1
                rid = self._next_id
                self._pending[rid] = slot
                try:
                    await self._stream.send_all(pack_frame(["req", rid, method, args]))
                    sent = True
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._pending.pop(rid, None)
                    self._reset()
                    raise Unanswered(f"lost connection to server {self.address}") from exc
                finally:
                    if not sent:
                        self._reset()  # cancelled halfway through a frame: the stream is unusable
            await slot[0].wait()
        if scope.cancelled_caught:
            if rid is None:
                raise Unreachable(f"cannot reach server {self.address}: no connection within {timeout:.0f}s")
            self._pending.pop(rid, None)
            raise Unanswered(f"server {self.address} did not answer {method} within {timeout:.0f}s")
        error, result = slot[1]
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        """Drop the connection (calls in progress fail)."""
        self._reset()

    def _reset(self) -> None:
        self._stream = None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for event, box in self._pending.values():
            box[:] = [Unanswered(f"lost connection to server {self.address}"), None]
            event.set()
        self._pending.clear()

    async def _read_loop(self, stream: trio.abc.Stream) -> None:
        reader = FrameReader()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                for frame in reader.feed(data):
                    if isinstance(frame, list) and len(frame) == 4 and frame[0] == "resp":
                        slot = self._pending.pop(frame[1], None)
                        if slot is not None:
                            slot[1][:] = [None if frame[2] is None else decode_error(frame[2]), frame[3]]
                            slot[0].set()
        except (OSError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self._stream is stream:
            self._reset()
