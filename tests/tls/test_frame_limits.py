"""The server port's bounds on what one peer can make it hold: an oversized length prefix, a half-sent
frame, a silent connection, too many connections from one address (real sockets, small limits)."""

from __future__ import annotations

import struct
from typing import Any

import trio
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ServerError
from meshagent.agent.rpc.framing import pack_frame
from meshagent.agent.server.listener import Limits, ServerListener
from meshagent.raft.messages import AppendRequest, encode_message

LIMITS = Limits(max_frame=1024 * 1024, handshake_timeout=1.0, frame_deadline=0.5, idle_timeout=30.0,
                max_conns_per_ip=4)


async def _echo(method: str, args: Any) -> Any:
    if method != "echo":
        raise ServerError(f"unknown {method}")
    return args


async def _closed_by_server(stream: trio.SocketStream, within: float) -> bool:
    """True when the server closes the connection within `within` seconds."""
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def _limits() -> None:
    listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo, limits=LIMITS)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)

        # A length prefix above the cap: dropped at once, before any body is buffered.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(struct.pack(">I", LIMITS.max_frame + 1))
        assert await _closed_by_server(stream, 5)
        assert listener.bad_frames == 1

        # A frame within the cap that never completes: dropped after frame_deadline, and counted.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        frame = pack_frame(["req", 1, "echo", b"x" * 100_000])
        await stream.send_all(frame[:50_000])
        start = trio.current_time()
        assert await _closed_by_server(stream, 10)
        assert trio.current_time() - start >= LIMITS.frame_deadline * 0.9
        assert listener.bad_frames == 2

        # A frame that trickles in but completes within the deadline is served.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(frame[:10])
        await trio.sleep(0.1)  # the slow peer under test, not synchronisation
        await stream.send_all(frame[10:])
        with trio.fail_after(5):
            assert len(await stream.receive_some(200_000)) > 0
        await stream.aclose()

        # Connections per address: the cap's worth are held, the next is refused, freed slots come back.
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(LIMITS.max_conns_per_ip)]
        for s in held:
            await s.send_all(pack_frame(["req", 1, "echo", "hi"]))
            with trio.fail_after(5):
                assert await s.receive_some(100)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _closed_by_server(extra, 5)
        assert listener.refused >= 1
        for s in held:
            await s.aclose()
        with trio.fail_after(10):
            while True:  # the server sees the closes asynchronously
                try:
                    assert await RPCClient(f"127.0.0.1:{port}").call(nursery, "echo", "back", timeout=1) == "back"
                    break
                except ServerError:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def test_oversized_late_and_excess_connections_are_dropped_and_counted() -> None:
    trio.run(_limits)


async def _silent() -> None:
    limits = Limits(handshake_timeout=0.3, idle_timeout=0.5)
    listener = ServerListener("127.0.0.1", 0, lambda *a: None, _echo, limits=limits)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        # Connects and sends nothing: closed once the handshake (first byte) timeout passes.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _closed_by_server(stream, 5)
        # Sends one call, then stays idle: closed after the idle timeout.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(pack_frame(["req", 1, "echo", "x"]))
        assert await _closed_by_server(stream, 5)
        nursery.cancel_scope.cancel()


def test_silent_connections_are_closed() -> None:
    trio.run(_silent)


async def _handler_bug() -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("a bug in a handler")

    listener = ServerListener("127.0.0.1", 0, broken, _echo, limits=LIMITS)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        heartbeat = AppendRequest(term=1, leader="a", prev_index=0, prev_term=0, entries=(), commit=0, seq=1)
        await stream.send_all(pack_frame(["raft", "a", "127.0.0.1:1", encode_message(heartbeat)]))
        assert await _closed_by_server(stream, 5)
        with trio.fail_after(5):
            while listener.handler_errors < 1:  # counted just after the close the peer saw
                await trio.sleep(0.01)
        with trio.fail_after(5):
            assert await RPCClient(f"127.0.0.1:{port}").call(nursery, "echo", "alive") == "alive"
        nursery.cancel_scope.cancel()


def test_a_handler_bug_ends_one_connection_not_the_listener() -> None:
    trio.run(_handler_bug)
