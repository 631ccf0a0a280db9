"""Hostile gossip fed to the cores (SWIM + Serf), the framings and LZW: only the documented error escapes,
nothing out of range is stored, and a hostile message changes nothing at all (issue 11)."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.gossip import limits, lzw
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.badlog import BadInputLog
from meshagent.gossip.membership import SendPacket, Swim, ip_bytes
from meshagent.gossip.messages import MessageError, NodeState
from meshagent.gossip.outputs import MemberEvent, SerfOutput, UserEvent
from meshagent.gossip.serf import Serf
from meshagent.gossip.tunables import GossipConfig
from meshagent.gossip.wire import PushPull, StreamReader, WireError, pack_packet, unpack_packet

from tests.support import hostile_gossip as h

NAMES = ("n0", "n1", "n2")
HOSTILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CountingSerf(Serf):
    """Serf counting the events it returns (member and user events), so a snapshot can tell none happened."""

    events_out = 0

    def _done(self) -> list[SerfOutput]:
        out = super()._done()
        self.events_out += sum(isinstance(o, (MemberEvent, UserEvent)) for o in out)
        return out


def cluster() -> Swim:
    """Node n0's cores, knowing n1 and n2 alive (Serf intents and clocks a little advanced)."""
    rng = random.Random(1)
    serf = CountingSerf("n0", {"role": "node"}, rng, addr=ip_bytes("127.0.0.1"), port=8301)
    swim = Swim(GossipConfig(), "n0", ip_bytes("127.0.0.1"), 8301, serf, rng)
    swim.start(0.0)
    for i, name in enumerate(NAMES[1:], start=2):
        swim.receive(0.1, ("127.0.0.1", 8301), m.encode(m.Alive(3, name, ip_bytes(f"127.0.0.{i}"), 8301, b"")))
        serf.notify_msg(0.1, sm.encode(sm.JoinMsg(5, name)))
    serf.events_out = 0
    return swim


def snapshot(swim: Swim) -> Any:
    """Everything a message could change that matters: members, incarnations, Serf's view and clocks."""
    serf = swim.delegate
    assert isinstance(serf, CountingSerf)
    return ([(x.name, x.addr, x.port, x.meta, x.incarnation, x.state, x.vsn) for x in swim.members.values()],
            swim.incarnation, sorted(swim._suspicions),
            [(x.name, x.status, x.status_ltime, x.tags) for x in serf.members.values()],
            serf.clock.time, serf.event_clock.time, serf.query_clock.time, dict(serf._intents), serf.events_out)


def check_invariants(swim: Swim) -> None:
    """No value out of range is stored, and what we would send is encodable."""
    serf = swim.delegate
    assert isinstance(serf, Serf)
    assert 0 < swim.incarnation <= limits.INCARNATION_MAX
    assert swim.members["n0"].state == NodeState.ALIVE
    for mem in swim.members.values():
        assert 0 <= mem.incarnation <= limits.INCARNATION_MAX
        assert len(mem.addr) in limits.ADDR_SIZES and 0 <= mem.port <= limits.PORT_MAX
        assert len(mem.meta) <= limits.META_MAX and len(mem.vsn) <= limits.VSN_MAX
        assert 0 < len(mem.name.encode()) <= limits.NAME_MAX
    for clock in (serf.clock, serf.event_clock, serf.query_clock):
        assert clock.time <= limits.LTIME_MAX + 1_000
    assert len(serf._intents) <= limits.INTENTS_MAX
    assert len(swim._relays) <= limits.RELAYS_MAX
    for node in swim.local_push_pull_state():
        m.pack_body(node)
    sm.decode(serf.local_state(False))


def test_the_overflow_dead_packet_is_dropped_and_changes_nothing() -> None:
    swim = cluster()
    before = snapshot(swim)
    for inc in (*h.OVERFLOW_INCARNATIONS, limits.INCARNATION_MAX, limits.CLAIM_INCARNATION_MAX + 1):
        for kind in (m.MessageType.DEAD, m.MessageType.SUSPECT):
            for node in NAMES:
                with pytest.raises(MessageError):
                    swim.receive(1.0, ("127.0.0.9", 1), h.overflow_claim(kind, node, inc))
    assert snapshot(swim) == before
    check_invariants(swim)


def test_a_claim_at_the_bound_is_refuted_within_the_type() -> None:
    swim = cluster()
    swim.receive(1.0, ("127.0.0.9", 1), h.overflow_claim(m.MessageType.DEAD, "n0", limits.CLAIM_INCARNATION_MAX))
    assert swim.incarnation == limits.CLAIM_INCARNATION_MAX + 1
    check_invariants(swim)


def test_a_forged_alive_at_the_top_is_not_refuted_and_not_overflowed() -> None:
    swim = cluster()
    swim.receive(1.0, ("127.0.0.9", 1), h.overflow_claim(m.MessageType.ALIVE, "n0", limits.INCARNATION_MAX,
                                                         addr=ip_bytes("127.0.0.1")))
    assert swim.unrefutable == 1 and swim.incarnation == 1
    check_invariants(swim)


def test_serf_intents_at_the_top_lamport_time_are_dropped() -> None:
    swim = cluster()
    serf = swim.delegate
    assert isinstance(serf, Serf)
    before = snapshot(swim)
    for kind in (sm.SerfMessageType.JOIN, sm.SerfMessageType.LEAVE):
        for ltime in (h.U64_MAX, limits.LTIME_MAX + 1):
            for node in (*NAMES, "stranger"):
                swim.receive(1.0, ("127.0.0.9", 1), h.serf_intent(kind, node, ltime))
    assert serf.bad_messages == 16
    assert snapshot(swim) == before


@HOSTILE
@given(h.memberlist_message(NAMES, hostile=True))
def test_hostile_messages_are_refused_and_change_nothing(data: bytes) -> None:
    swim = cluster()
    serf = swim.delegate
    assert isinstance(serf, Serf)
    before = snapshot(swim)
    try:
        swim.receive(1.0, ("127.0.0.9", 1), data)
        refused = serf.bad_messages == 1 or data[0] in (m.MessageType.ACK_RESP, m.MessageType.NACK_RESP,
                                                        m.MessageType.ERR)
    except MessageError:
        refused = True
    assert refused, data
    assert snapshot(swim) == before
    check_invariants(swim)


@HOSTILE
@given(h.packet(NAMES, hostile=True))
def test_hostile_packets_unframe_or_fail_with_wire_error_only(data: bytes) -> None:
    swim = cluster()
    before = snapshot(swim)
    try:
        parts = unpack_packet(data)
    except WireError:
        return
    for part in parts:
        try:
            swim.receive(1.0, ("127.0.0.9", 1), part)
        except MessageError:
            pass
    assert snapshot(swim) == before
    check_invariants(swim)


@HOSTILE
@given(h.push_pull_stream(NAMES), st.integers(1, 64))
def test_hostile_push_pull_streams_merge_nothing(data: bytes, chunk: int) -> None:
    swim = cluster()
    serf = swim.delegate
    assert isinstance(serf, Serf)
    before = snapshot(swim)
    reader = StreamReader(max_bytes=1 << 20)
    try:
        result = None
        for i in range(0, len(data), chunk):
            result = reader.feed(data[i:i + chunk])
        result = reader.eof()
        assert isinstance(result, PushPull), result
        try:
            swim.merge_remote_state(1.0, list(result.nodes))
            serf.merge_remote_state(1.0, result.user_state, result.join)
            assert serf.bad_messages == 1  # the hostile part was the Serf state
        except MessageError:
            pass
    except WireError:
        pass
    assert snapshot(swim) == before
    check_invariants(swim)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["msg", "packet", "tick", "pushpull"]),
                          h.memberlist_message(NAMES, hostile=False),
                          st.lists(h.node_state(NAMES, hostile=False), max_size=3)), max_size=25))
def test_any_mix_of_valid_and_hostile_input_keeps_the_invariants(steps: list[tuple[str, bytes, list[Any]]]) -> None:
    swim = cluster()
    now = 1.0
    for kind, data, states in steps:
        now += 0.3
        outs: list[Any] = []
        try:
            if kind == "msg":
                outs = swim.receive(now, ("127.0.0.9", 1), data)
            elif kind == "packet":
                for part in unpack_packet(data):
                    outs += swim.receive(now, ("127.0.0.9", 1), part)
            elif kind == "pushpull":
                outs = swim.merge_remote_state(now, _decoded(states))
            else:
                outs = swim.tick(now)
        except (MessageError, WireError):
            pass
        for out in outs:
            if isinstance(out, SendPacket):
                pack_packet([out.payload()], crc=out.crc)
        check_invariants(swim)


def _decoded(states: list[Any]) -> list[m.PushNodeState]:
    """The node states that decode (a push-pull with an undecodable one never reaches the core)."""
    out = []
    for raw in states:
        try:
            out.append(m.from_map(m.PushNodeState, m.unpack_body(h.pack(raw))))
        except MessageError:
            pass
    return out


@settings(max_examples=100, deadline=None)
@given(h.lzw_garbage())
def test_lzw_garbage_fails_with_value_error_or_stays_bounded(data: bytes) -> None:
    try:
        out = lzw.decompress(data, 100_000)
    except ValueError:
        return
    assert len(out) <= 100_000


def test_bad_input_log_names_each_source_once_a_minute_and_caps_the_total(caplog: pytest.LogCaptureFixture) -> None:
    log = BadInputLog(logging.getLogger("test.badlog"), every=60.0, burst=5)
    with caplog.at_level(logging.WARNING, "test.badlog"):
        logged = [log.report(1.0, "10.0.0.1:1", "packet", ValueError("x")) for _ in range(100)]
        assert logged.count(True) == 1
        spoofed = [log.report(2.0, f"10.0.0.{i}:1", "packet", ValueError("x")) for i in range(2, 1000)]
        assert spoofed.count(True) == 4  # the burst cap: 5 lines a minute in all
        assert log.report(70.0, "10.0.0.1:1", "packet", ValueError("x"))
    assert len(caplog.records) == 1 + 4 + 2  # the two minutes' lines and one "N more were not logged"


def test_a_push_pull_skips_only_a_claim_past_the_bound() -> None:
    # An honest peer can hold such a claim (about a member an outsider pinned at the top with a forged alive):
    # its exchange must still merge, without acting on the claim.
    swim = cluster()
    dead = m.PushNodeState("n1", ip_bytes("127.0.0.2"), 8301, b"", limits.CLAIM_INCARNATION_MAX + 1,
                           NodeState.DEAD)
    new = m.PushNodeState("n3", ip_bytes("127.0.0.4"), 8301, b"", 1, NodeState.ALIVE)
    swim.merge_remote_state(1.0, [dead, new])
    assert swim.dropped_states == 1
    assert swim.members["n1"].state == NodeState.ALIVE and swim.members["n1"].incarnation == 3
    assert swim.members["n3"].state == NodeState.ALIVE
    check_invariants(swim)
