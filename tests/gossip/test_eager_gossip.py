"""Eager gossip from the layer above: Serf returns GossipSoon with each newly queued broadcast, the executor turns
it into `Swim.gossip_soon` and re-arms the runtime's timer, so a user event leaves now, not at the next tick."""

from __future__ import annotations

import random

import trio
import trio.testing
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.membership import ip_bytes
from meshagent.gossip.outputs import GossipSoon
from meshagent.gossip.runtime import GossipAgent
from meshagent.gossip.serf import Serf
from meshagent.gossip.tunables import GossipConfig
from meshagent.gossip.wire import unpack_packet


def fresh_serf() -> Serf:
    return Serf("a", {}, random.Random(1))


def test_what_serf_queues_for_gossip_is_news_and_a_repeat_is_not() -> None:
    serf = fresh_serf()
    assert GossipSoon() not in serf.reap(0.0)  # a fresh Serf has no news
    _, outs = serf.user_event("deploy", b"v1", coalesce=False)
    assert GossipSoon() in outs
    relayed = sm.encode(sm.UserEventMsg(7, "deploy", b"v2", False))
    outs = serf.notify_msg(1.0, relayed)  # new to us: relayed onwards, so news
    assert GossipSoon() in outs
    outs = serf.notify_msg(1.1, relayed)  # the same event again: nothing queued
    assert GossipSoon() not in outs
    for queue in (serf.join_intent, serf.leave_intent):
        outs = queue()
        assert GossipSoon() in outs
    _, outs = serf.query("_serf_ping", b"", 1.0)
    assert GossipSoon() in outs
    serf.get_broadcasts(3, 1400)  # handing out queued messages is not news (none is left over for the next input)
    outs = serf.notify_msg(1.2, relayed)
    assert GossipSoon() not in outs


def user_messages(data: bytes) -> list[bytes]:
    return [part for part in unpack_packet(data) if part[0] == m.MessageType.USER]


def test_the_runtime_sends_a_user_event_at_once_and_the_next_within_the_spacing() -> None:
    """On the trio runtime with a virtual clock. Regular rounds come every 200 ms; an event fired between two
    of them goes out at the very moment it is fired, and a second one fired right after waits only for the
    spacing (20 ms), which means the timer loop re-armed at the earlier deadline."""
    config = GossipConfig()
    spacing = config.gossip_interval / 10

    async def scenario() -> None:
        agent = GossipAgent("a", "127.0.0.1", "127.0.0.1", 0, {}, config=config)
        sent: list[tuple[float, bytes]] = []
        got = {b"v1": trio.Event(), b"v2": trio.Event()}

        def record(data: bytes, addr: tuple[str, int]) -> None:
            sent.append((trio.current_time(), data))
            for payload, event in got.items():
                if any(payload in part for part in user_messages(data)):
                    event.set()

        agent._send = record  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            start = trio.current_time()
            # One peer; what its arrival queued is dropped, so only the events have anything to say.
            peer = m.PushNodeState("b", ip_bytes("127.0.0.2"), 7946, b"", 1, int(m.NodeState.ALIVE))
            agent._merge(start, [peer], b"", False)
            agent.swim.broadcasts.clear()
            await trio.sleep_until(start + 1.5 * config.gossip_interval)  # between two regular rounds
            fired = trio.current_time()
            agent.user_event("deploy", b"v1", coalesce=False)
            with trio.fail_after(config.gossip_interval):
                await got[b"v1"].wait()
            first = min(t for t, data in sent if any(b"v1" in x for x in user_messages(data)))
            assert first == fired
            agent.user_event("deploy", b"v2", coalesce=False)
            with trio.fail_after(config.gossip_interval):
                await got[b"v2"].wait()
            second = min(t for t, data in sent if any(b"v2" in x for x in user_messages(data)))
            assert abs(second - (fired + spacing)) < 1e-9, (second - fired)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
