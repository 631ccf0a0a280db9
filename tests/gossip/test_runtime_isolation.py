"""The gossip runtime handles each input in isolation (issue 11): an exception while handling one packet drops
that packet only, and inbound streams beyond STREAMS_MAX are closed at once. Real sockets on 127.0.0.7x."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
from meshagent.gossip import limits
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.runtime import GossipAgent
from meshagent.gossip.serf import SerfEvent, UserEvent

from tests.support.ports import port_free
from tests.support.wait import wait_for_async

PORT = 8301


def _host() -> str:
    for i in range(70, 78):
        if port_free(f"127.0.0.{i}", PORT):
            return f"127.0.0.{i}"
    pytest.fail("no free address in 127.0.0.70-77 (something else holds the gossip port)")


def _run(test: Callable[[GossipAgent, str], Awaitable[None]], on_event: Callable[[SerfEvent], None] | None = None,
         ) -> None:
    host = _host()

    async def main() -> None:
        agent = GossipAgent(name="iso", bind=host, advertise=host, port=PORT, tags={}, on_event=on_event)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await test(agent, host)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _event(ltime: int, name: str) -> bytes:
    return bytes([m.MessageType.USER]) + sm.encode(sm.UserEventMsg(ltime, name, b"", False))


def test_an_exception_while_handling_one_packet_drops_only_that_packet() -> None:
    seen: list[str] = []

    def on_event(event: SerfEvent) -> None:
        if isinstance(event, UserEvent):
            seen.append(event.name)
            if event.name == "boom":
                raise RuntimeError("a bug in an event handler")

    async def test(agent: GossipAgent, host: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(_event(1, "boom"), (host, PORT))
            await wait_for_async(lambda: agent.stats.handler_errors == 1)
            sock.sendto(_event(2, "fine"), (host, PORT))
            await wait_for_async(lambda: "fine" in seen)
        assert seen == ["boom", "fine"] and agent.stats.handler_errors == 1

    _run(test, on_event)


def test_streams_beyond_the_cap_are_closed_at_once() -> None:
    async def test(agent: GossipAgent, host: str) -> None:
        held = [await trio.open_tcp_stream(host, PORT) for _ in range(limits.STREAMS_MAX)]
        try:
            await wait_for_async(lambda: agent._streams == limits.STREAMS_MAX)
            extra = await trio.open_tcp_stream(host, PORT)
            with trio.fail_after(5):
                assert await extra.receive_some(10) == b""  # closed by the agent, not after tcp_timeout
            await extra.aclose()
            assert agent.stats.streams_refused == 1
        finally:
            for stream in held:
                await stream.aclose()
        await wait_for_async(lambda: agent._streams == 0)

    _run(test)
