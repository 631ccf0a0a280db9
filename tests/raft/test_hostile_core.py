"""Issue 11 on the Raft core: hostile and forged-but-well-formed messages never crash it, never overflow
what it sends, and messages from strangers change nothing."""

from __future__ import annotations

import copy
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.raft.config import RaftConfig
from meshagent.raft.entry import CONFIG, Entry, Membership, Server
from meshagent.raft.messages import (
    MAX_WIRE_INT,
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_message,
)
from meshagent.raft.node import (
    LEADER,
    STRANGER_LEADER_AFTER,
    AppendLog,
    InstallSnapshot,
    PersistState,
    RaftNode,
    Send,
)

from tests.support.hostile_raft import hostile_message, junk, well_formed_message
from tests.support.sim.raft_sim import Faults, Simulation

IDS = ["s1", "s2", "s3"]
CALM = Faults(loss=0.0, duplicate=0.0, partition_rate=0.0, crash_rate=0.0, transfer_rate=0.0, reconfigure_rate=0.0)


def _cluster() -> tuple[RaftNode, RaftNode, float]:
    """A leader and a follower of a settled 3-server simulated cluster with a few commands committed."""
    sim = Simulation(3, servers=3, faults=CALM, duration=1.0, snapshot_every=100_000)
    sim.client_stop = 0.8
    sim.advance(1.0)
    leader = sim.leader()
    assert leader is not None
    follower = next(sid for sid in IDS if sid != leader)
    return sim.servers[leader].node, sim.servers[follower].node, sim.now


LEADER_NODE, FOLLOWER_NODE, NOW = _cluster()


def _state(node: RaftNode) -> tuple[Any, ...]:
    return (node.term, node.vote, node.role, node.leader_id, node.last_index, node.commit_index, node.membership)


def _check_outputs(node: RaftNode, outs: list[Any]) -> None:
    for o in outs:
        if isinstance(o, Send):  # whatever the core sends must pass our own decoder (no overflow, no junk)
            assert decode_message(msgpack.unpackb(msgpack.packb(encode_message(o.msg)), raw=False)) == o.msg
        if isinstance(o, PersistState):
            assert 0 <= o.term <= MAX_WIRE_INT
    assert 0 <= node.term <= MAX_WIRE_INT
    assert node.applied_index <= node.commit_index <= node.last_index


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_message(IDS))
def test_the_decoder_refuses_hostile_messages_or_returns_in_range_values(raw: Any) -> None:
    try:
        msg = decode_message(raw)
    except ValueError:
        return
    assert decode_message(encode_message(msg)) == msg
    assert 0 <= msg.term <= MAX_WIRE_INT


@settings(max_examples=300, deadline=None)
@given(junk(12))
def test_the_decoder_refuses_junk_with_value_error_only(raw: Any) -> None:
    try:
        decode_message(raw)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["leader", "follower"]),
       st.lists(st.tuples(st.sampled_from([*IDS, "evil"]), well_formed_message([*IDS, "evil"])), min_size=1,
                max_size=6))
def test_the_core_survives_forged_well_formed_messages(who: str, msgs: list[tuple[str, Message]]) -> None:
    node = copy.deepcopy(LEADER_NODE if who == "leader" else FOLLOWER_NODE)
    now = NOW
    for src, msg in msgs:
        now += 0.01
        before = _state(node)
        stranger = src not in node.known_servers() and not node.admits_stranger(now, msg)
        outs = node.receive(now, src, msg)
        outs += node.tick(now) + node.flush(now)
        if node.role == LEADER:
            outs += node.persisted(now, node.last_index)
        _check_outputs(node, outs)
        if stranger or src == node.id:
            assert _state(node) == before, f"a message from {src} changed state"
            assert not any(isinstance(o, PersistState | AppendLog) for o in outs)
        assert node.term <= before[0] + 2**32


def test_a_forged_vote_request_with_an_overflowing_term_never_reaches_the_core() -> None:
    with pytest.raises(ValueError):
        decode_message([1, 2**64 - 1, "s2", 5, 1, False, True])
    node = copy.deepcopy(FOLLOWER_NODE)
    term = node.term
    # In range but absurdly far ahead: refused, nothing persisted.
    outs = node.receive(NOW + 0.01, "s2" if node.id != "s2" else "s1",
                        VoteRequest(MAX_WIRE_INT, "s2" if node.id != "s2" else "s1", 10**6, 5, False, True))
    assert node.term == term and not any(isinstance(o, PersistState) for o in outs)


def test_a_forged_append_response_beyond_the_leaders_log_is_ignored() -> None:
    node = copy.deepcopy(LEADER_NODE)
    peer = next(sid for sid in IDS if sid != node.id)
    match = node._progress[peer].match_index
    for resp in (AppendResponse(node.term, True, node.last_index + 1000, 1),
                 AppendResponse(node.term, True, node.last_index, 10**9),  # a seq never sent
                 AppendResponse(node.term, False, MAX_WIRE_INT, 1)):
        node.receive(NOW + 0.01, peer, resp)
        outs = node.flush(NOW + 0.01) + node.tick(NOW + 0.05)
        _check_outputs(node, outs)
    assert node.role == LEADER and node._progress[peer].match_index <= max(match, node.last_index)


def test_strangers_and_non_voters() -> None:
    node = copy.deepcopy(FOLLOWER_NODE)
    leader = node.leader_id
    assert leader is not None
    # A stranger claiming leadership of the next term: dropped.
    assert node.receive(NOW, "evil", AppendRequest(node.term + 1, "evil", 0, 0, (), 0, 1)) == []
    # A member claiming to be someone else: dropped.
    other = next(sid for sid in IDS if sid not in (node.id, leader))
    assert node.receive(NOW, other, AppendRequest(node.term, leader, 0, 0, (), 0, 1)) == []
    # A second leader for a term that has one: dropped.
    assert node.receive(NOW, other, AppendRequest(node.term, other, 0, 0, (), 0, 1)) == []
    assert node.leader_id == leader and node.dropped == 3
    # A non-voter asking for a vote is refused without a term change (hashicorp/raft does the same).
    node.membership = node.membership.with_server(Server(other, f"{other}:8300", False))
    outs = node.receive(NOW, other, VoteRequest(node.term + 5, other, 10**6, node.term, False, True))
    assert [o.msg for o in outs if isinstance(o, Send)] == [VoteResponse(node.term, False, False)]
    assert not any(isinstance(o, PersistState) for o in outs)


def test_a_server_being_added_accepts_its_leaders_first_append() -> None:
    fresh = RaftNode("s9", RaftConfig(), random.Random(1), 0.0)
    assert fresh.known_servers() == frozenset()
    membership = Membership((Server("s1", "s1:8300"), Server("s9", "s9:8300", False)))
    entry_data = msgpack.packb(membership.to_wire())
    outs = fresh.receive(0.1, "s1", AppendRequest(3, "s1", 0, 0, (Entry(1, 3, CONFIG, entry_data),), 1, 1))
    assert any(isinstance(o, AppendLog) for o in outs) and fresh.membership == membership
    assert fresh.caught_up_index == 1


def test_a_snapshot_the_state_machine_cannot_restore_is_refused_before_it_is_saved() -> None:
    membership = Membership(tuple(Server(i, f"{i}:8300") for i in IDS))
    for check, installed in ((lambda data: data == b"good", False), (lambda data: True, True)):
        node = RaftNode("s2", RaftConfig(), random.Random(1), 0.0, snapshot_check=check)
        outs = node.receive(0.1, "s1", SnapshotRequest(4, "s1", 50, 3, membership, 0, b"junk", True, 1))
        assert any(isinstance(o, InstallSnapshot) for o in outs) == installed
        assert (node.commit_index == 50) == installed


def test_a_follower_that_missed_its_new_leaders_configuration_accepts_it_once_leaderless_for_long() -> None:
    """Raft thesis 4.2.2: refusing every stranger would strand a follower that missed the entries adding
    today's leader. It takes one only after STRANGER_LEADER_AFTER election timeouts without a leader."""
    node = copy.deepcopy(FOLLOWER_NODE)
    heard = NOW
    append = AppendRequest(node.term + 1, "s4", node.last_index, node.last_term, (), node.commit_index, 1)
    quiet = STRANGER_LEADER_AFTER * node.config.election_timeout
    assert node.receive(heard + quiet / 2, "s4", append) == [] and node.leader_id != "s4"
    later = heard + quiet + 0.01
    outs = node.receive(later, "s4", append)
    assert node.leader_id == "s4" and node.term == append.term
    assert [o.msg.success for o in outs if isinstance(o, Send)] == [True]
