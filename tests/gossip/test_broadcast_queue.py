"""Piggybacked dissemination: the queue itself (gossip/broadcast_queue.py, memberlist queue.go's
TransmitLimitedQueue), then as the SWIM core uses it.

Each broadcast goes out at most retransmit_mult * ceil(log10(n + 1)) times; the least-transmitted go first
and, among equals, the newest; a newer broadcast about the same member replaces the older one; a packet is
filled to the byte budget. And, unlike memberlist (issue #299), the delegate's user broadcasts share every
packet with membership news, so a storm of one never starves the other.

Also unlike memberlist: a full packet with broadcasts still waiting goes out LZW-compressed with more of
them in it (`compress_when_full`). The queue tests run with that off (QUIET), so that they see memberlist's
queue; the last tests turn it on.
"""

from __future__ import annotations

import random
from dataclasses import replace

from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.broadcast_queue import PART_OVERHEAD, BroadcastQueue
from meshagent.gossip.membership import FRAMING_RESERVE, SendPacket, Swim
from meshagent.gossip.tunables import GossipConfig, retransmit_limit
from meshagent.gossip.wire import make_compound, unpack_packet

from tests.support.gossip_harness import PORT, Rec

# ---------------------------------------------------------------------------------------------- the queue alone


def test_the_queue_sends_each_broadcast_limit_times_then_drops_it() -> None:
    q = BroadcastQueue()
    q.queue("a", b"alive-a")
    sent = []
    for _ in range(10):
        taken: list[bytes] = []
        q.take(1000, taken, limit=3, max_parts=127)
        sent += taken
    assert sent == [b"alive-a"] * 3 and len(q) == 0


def test_the_queue_takes_least_transmitted_first_and_newest_first_among_equals() -> None:
    q = BroadcastQueue()
    q.queue("a", b"a")
    first: list[bytes] = []
    q.take(1000, first, limit=9, max_parts=127)
    q.queue("b", b"b")
    q.queue("c", b"c")
    order: list[bytes] = []
    for _ in range(5):
        q.take(len(b"x") + PART_OVERHEAD, order, limit=9, max_parts=127)  # room for exactly one
    assert first == [b"a"] and order == [b"c", b"b", b"c", b"b", b"a"]


def test_a_newer_broadcast_about_the_same_key_replaces_the_older_and_keyless_ones_stay() -> None:
    q = BroadcastQueue()
    q.queue("x", b"alive-x")
    q.queue(None, b"user-1")
    q.queue("x", b"suspect-x")
    q.queue(None, b"user-2")
    assert sorted(b.msg for b in q) == [b"suspect-x", b"user-1", b"user-2"]


def test_a_broadcast_too_big_is_skipped_and_returned_as_left_over_without_blocking_smaller_ones() -> None:
    q = BroadcastQueue()
    q.queue("s1", b"s" * 10)
    q.queue("big", b"b" * 100)
    q.queue("s2", b"t" * 10)
    taken: list[bytes] = []
    rest = q.take(2 * (10 + PART_OVERHEAD) + 5, taken, limit=4, max_parts=127)
    assert taken == [b"t" * 10, b"s" * 10] and [b.key for b in rest] == ["big"]
    q.sent(rest, limit=4)  # sent after all (the core's compressed packet): counted like the others
    assert {b.key: b.transmits for b in q} == {"s1": 1, "big": 1, "s2": 1}


def test_the_queue_stops_at_the_part_limit_and_tells_whether_a_key_is_still_pending() -> None:
    q = BroadcastQueue()
    for i in range(5):
        q.queue(f"m{i}", b"x")
    taken = [b"lead"]
    q.take(1000, taken, limit=2, max_parts=3)
    assert len(taken) == 3
    assert q.pending("m0", below=1) and not q.pending("m4", below=1) and q.pending("m4", below=2)
    assert not q.pending("nobody", below=9)


# ---------------------------------------------------------------------------------------------- in the SWIM core

QUIET = replace(GossipConfig(), probe_interval=1e6, push_pull_interval=1e6, gossip_nodes=1, compress_when_full=False)


def alive(name: str, inc: int = 1, last: int = 9) -> m.Alive:
    return m.Alive(inc, name, bytes([10, 0, 1, last]), PORT)


def one_peer(config: GossipConfig = QUIET, rec: Rec | None = None) -> Swim:
    """A node that knows one peer, with the news of that join already spread."""
    swim = Swim(config, "me", bytes([10, 0, 0, 1]), PORT, rec or Rec(), random.Random(3))
    swim.start(0.0)
    swim.receive(0.0, ("10.0.0.2", PORT), m.encode(m.Alive(1, "peer", bytes([10, 0, 0, 2]), PORT)))
    swim.broadcasts.clear()
    return swim


def rounds(swim: Swim, count: int) -> list[list[m.Message]]:
    """The messages of every packet sent over the next `count` gossip rounds (the only timer due)."""
    out: list[list[m.Message]] = []
    for _ in range(count):
        for o in swim.tick(swim.next_deadline()):
            if isinstance(o, SendPacket):
                out.append([m.decode(x) for x in o.messages])
    return out


def test_each_broadcast_goes_out_retransmit_limit_times_then_is_dropped() -> None:
    swim = one_peer()
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("news")))  # now 3 alive members
    sent = [msg for packet in rounds(swim, 40) for msg in packet]
    assert sent.count(alive("news")) == retransmit_limit(QUIET.retransmit_mult, 3) == 4


def test_least_transmitted_first_and_newest_first_among_equals() -> None:
    one = len(m.encode(alive("aaa")))
    swim = one_peer(replace(QUIET, udp_buffer_size=FRAMING_RESERVE + 2 + one + 2))  # exactly one per packet
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("aaa", last=1)))
    assert rounds(swim, 1) == [[alive("aaa", last=1)]]
    swim.receive(1.3, ("10.0.0.2", PORT), m.encode(alive("bbb", last=2)))
    swim.receive(1.3, ("10.0.0.2", PORT), m.encode(alive("ccc", last=3)))
    order = [packet[0].node for packet in rounds(swim, 5)]  # type: ignore[union-attr]
    assert order == ["ccc", "bbb", "ccc", "bbb", "aaa"]


def test_a_newer_broadcast_about_a_member_replaces_the_older_one() -> None:
    swim = one_peer()
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("x")))
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Suspect(1, "x", "peer")))
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("y")))
    sent = [msg for packet in rounds(swim, 1) for msg in packet]
    assert m.Suspect(1, "x", "peer") in sent and alive("y") in sent and alive("x") not in sent


def test_a_broadcast_too_big_for_what_is_left_is_skipped_not_blocking_smaller_ones() -> None:
    small = len(m.encode(alive("s")))
    big = alive("b" * 200)
    swim = one_peer(replace(QUIET, udp_buffer_size=FRAMING_RESERVE + 2 + 2 * (small + 2) + 10))
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("s1", last=1)))
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(big))  # newest, so first in line, but does not fit
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("s2", last=2)))
    packets = rounds(swim, 1)
    assert packets == [[alive("s2", last=2), alive("s1", last=1)]]


class UserQueue(Rec):
    """A delegate with its own transmit-limited queue of user messages, as Serf has."""

    def __init__(self, messages: list[bytes], limit: int) -> None:
        super().__init__()
        self.pending = {msg: 0 for msg in messages}
        self.limit = limit

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out, used = [], 0
        for msg, sent in sorted(self.pending.items(), key=lambda kv: kv[1]):
            if used + len(msg) + overhead > limit:
                continue
            out.append(msg)
            used += len(msg) + overhead
            self.pending[msg] = sent + 1
        self.pending = {k: v for k, v in self.pending.items() if v < self.limit}
        return out


def test_a_user_broadcast_rides_in_every_packet_of_a_membership_storm_until_its_limit() -> None:
    event = b"\x06user-event:deploy"
    rec = UserQueue([event], limit=5)
    swim = one_peer(replace(QUIET, gossip_nodes=3), rec)
    for i in range(300):  # 300 joins at once: many packets' worth of membership news
        swim.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Alive(1, f"joiner-{i:03d}-" + "x" * 24,
                                                                bytes([10, 1, i // 250, i % 250 + 1]), PORT)))
    packets = rounds(swim, 10)
    assert len(packets) > 5
    with_event = [i for i, p in enumerate(packets) if m.UserMsg(event) in p]
    assert with_event == list(range(5))  # the first five packets, one copy each, despite the storm
    assert all(sum(isinstance(x, m.Alive) for x in p) >= 10 for p in packets)  # and membership news flows
    for p in packets:
        assert 2 + sum(len(m.encode(x)) + 2 for x in p) <= QUIET.udp_buffer_size - FRAMING_RESERVE


def test_a_storm_of_user_broadcasts_does_not_starve_membership_news() -> None:
    rec = UserQueue([bytes([7]) + f"event-{i:04d}".encode() * 4 for i in range(500)], limit=4)
    swim = one_peer(replace(QUIET, gossip_nodes=3), rec)
    swim.receive(1.0, ("10.0.0.2", PORT), m.encode(alive("joiner")))
    packets = rounds(swim, 2)
    assert all(any(isinstance(x, m.UserMsg) for x in p) for p in packets)
    assert sum(p.count(alive("joiner")) for p in packets) >= 3  # the join goes out in the storm's first packets
    for p in packets:
        assert 2 + sum(len(m.encode(x)) + 2 for x in p) <= QUIET.udp_buffer_size - FRAMING_RESERVE


# ---------------------------------------------------------------------------------------------- compression

# Consul's tags, as an agent gossips them: they make an alive message about 240 bytes, five to a packet.
CONSUL_TAGS = {"role": "consul", "dc": "dc1", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "build": "0.1.0",
               "segment": "", "port": "8300", "bootstrap": "1", "raft_vsn": "3", "wan_join_port": "8302"}


def consul_alive(i: int) -> m.Alive:
    tags = {**CONSUL_TAGS, "id": f"{i:08x}-{i * 7919 % 65536:04x}-4{i % 4096:03x}-8000-{i * 104729:012x}"}
    return m.Alive(1, f"node-{i:03d}", bytes([10, 1, i // 250, i % 250 + 1]), PORT, sm.encode_tags(tags))


def sent_packets(swim: Swim, count: int) -> list[SendPacket]:
    out: list[SendPacket] = []
    for _ in range(count):
        out += [o for o in swim.tick(swim.next_deadline()) if isinstance(o, SendPacket)]
    return out


def test_a_full_packet_with_news_left_over_goes_out_compressed_with_more_of_it() -> None:
    config = replace(QUIET, compress_when_full=True)
    swim = one_peer(config)
    news = [consul_alive(i) for i in range(29)]  # a join storm's worth for one seed
    for a in news:
        swim.receive(1.0, ("10.0.0.2", PORT), m.encode(a))
    budget = config.udp_buffer_size - FRAMING_RESERVE
    plain_fit = (budget - 2) // (len(m.encode(news[0])) + 2)
    first = sent_packets(swim, 1)[0]
    assert first.compressed is not None
    assert len(first.compressed) <= budget  # what goes on the wire fits the packet
    assert unpack_packet(first.compressed) == first.messages  # and holds exactly the messages listed
    assert len(make_compound(first.messages)) > budget  # which would not have fitted plainly
    assert len(first.messages) >= 2 * plain_fit - 1  # about twice as many (LZW halves these messages)


def test_compressed_packets_keep_the_retransmit_count() -> None:
    swim = one_peer(replace(QUIET, compress_when_full=True))
    news = [consul_alive(i) for i in range(29)]
    for a in news:
        swim.receive(1.0, ("10.0.0.2", PORT), m.encode(a))
    packets = sent_packets(swim, 200)
    assert any(p.compressed is not None for p in packets)
    sent = [m.decode(x) for p in packets for x in p.messages]
    limit = retransmit_limit(QUIET.retransmit_mult, 31)
    assert all(sent.count(a) == limit for a in news)  # each exactly its limit, compressed or not
    assert list(swim.broadcasts) == []


def test_nothing_is_compressed_when_everything_fits() -> None:
    swim = one_peer(replace(QUIET, compress_when_full=True))
    for i in range(3):
        swim.receive(1.0, ("10.0.0.2", PORT), m.encode(consul_alive(i)))
    packets = sent_packets(swim, 20)
    assert packets and all(p.compressed is None for p in packets)  # no LZW work while the queue is short


def test_incompressible_news_goes_out_plain_and_does_not_stop_later_compression() -> None:
    swim = one_peer(replace(QUIET, compress_when_full=True))
    rng = random.Random(11)
    noise = [m.Alive(1, f"noise-{i:02d}", bytes([10, 2, 0, i + 1]), PORT, rng.randbytes(220)) for i in range(20)]
    for a in noise:
        swim.receive(1.0, ("10.0.0.2", PORT), m.encode(a))
    budget = QUIET.udp_buffer_size - FRAMING_RESERVE
    packets = sent_packets(swim, 60)
    assert all(len(p.payload()) <= budget for p in packets)
    sent = [m.decode(x) for p in packets for x in p.messages]
    assert all(sent.count(a) == retransmit_limit(QUIET.retransmit_mult, 22) for a in noise)
    # Compressible news afterwards is packed compressed again: more than the five a plain packet holds at
    # once, and from the next packet on (aimed with the ratio just measured) about twice that.
    for i in range(29):
        swim.receive(20.0, ("10.0.0.2", PORT), m.encode(consul_alive(i)))
    later = sent_packets(swim, 2)
    assert all(p.compressed is not None for p in later)
    assert len(later[0].messages) > 5 and len(later[1].messages) >= 9
