"""The server port survives what peers do wrong: garbage frames and reset connections (both once took the
whole server down, because the connection's nursery raised them as an ExceptionGroup)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import trio
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ServerError
from meshagent.agent.rpc.framing import pack_frame
from meshagent.agent.server.listener import ServerListener


async def _echo(method: str, args: Any) -> Any:
    if method != "echo":
        raise ServerError(f"unknown {method}")
    return args


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close → RST
    sock.close()


async def _attack() -> None:
    listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        for n, attack in enumerate((b"\x00\x00\x00\x03abc",            # undecodable frame
                                    pack_frame(["nonsense", 1]),        # unknown frame kind
                                    b"\xff\xff\xff\xff"), start=1):     # absurd length
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(attack)
            with trio.fail_after(10):
                while listener.bad_frames < n:  # the server has read it and dropped the connection
                    await trio.sleep(0.01)
            _rst(stream.socket)
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # half a frame, then a reset
        await stream.send_all(pack_frame(["req", 1, "echo", "x"])[:7])
        _rst(stream.socket)
        # A reset while the server is writing an answer.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(pack_frame(["req", 1, "echo", b"y" * 4_000_000]))
        _rst(stream.socket)
        with trio.fail_after(10):
            assert await RPCClient(f"127.0.0.1:{port}").call(nursery, "echo", "still here") == "still here"
        assert listener.bad_frames >= 3
        nursery.cancel_scope.cancel()


def test_garbage_and_resets_leave_the_listener_serving() -> None:
    trio.run(_attack)
