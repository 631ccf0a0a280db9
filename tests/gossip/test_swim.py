"""The SWIM core driven by hand: two to four `Swim` objects, packets carried by a tiny in-memory wire.

Each test states the memberlist rule it checks (state.go: aliveNode, suspectNode, deadNode, refute,
probeNode, mergeState; memberlist.go: Leave, UpdateNode). Four of them
(ping + suspect to a suspect target, awareness on every refutation, update_meta, the LOCAL profile) found
differences from memberlist that are now fixed.
"""

# ruff: noqa: RUF059 -- tests unpack a whole cluster so that every node has a name, used or not

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from meshagent.gossip import messages as m
from meshagent.gossip.membership import FRAMING_RESERVE, Output, PushPull, SendPacket, StreamPing, Swim, ip_bytes
from meshagent.gossip.messages import NodeState
from meshagent.gossip.tunables import retransmit_limit, suspicion_timeout
from meshagent.gossip.wire import unpack_packet

from tests.support.gossip_harness import CFG, PORT, Net, Rec, cluster, probe_round, state

# ---------------------------------------------------------------------------------------------- start / join


def test_start_makes_us_alive_at_incarnation_one_and_notifies_our_own_join() -> None:
    net = Net()
    a, rec = net.add("a", 1, meta=b"tags")
    assert [(x.name, x.state, x.incarnation, x.meta) for x in a.member_list()] == [("a", NodeState.ALIVE, 1, b"tags")]
    assert rec.events == [("join", "a", NodeState.ALIVE)]  # memberlist's setAlive notifies the local join too
    assert a.num_alive() == 1 and a.health_score() == 0
    assert a.next_deadline() == pytest.approx(CFG.gossip_interval)  # the earliest periodic timer


def test_join_asks_for_a_push_pull_with_every_seed_and_the_exchange_makes_both_alive() -> None:
    net = Net()
    a, ra = net.add("a", 1)
    b, rb = net.add("b", 2)
    assert a.join([("10.0.0.2", PORT), ("10.0.0.3", PORT)]) == [PushPull(("10.0.0.2", PORT), True),
                                                                PushPull(("10.0.0.3", PORT), True)]
    net.push_pull(0.1, a, b, True)
    assert state(a, "b") == state(b, "a") == NodeState.ALIVE
    assert ra.about("b") == [("join", NodeState.ALIVE)] and rb.about("a") == [("join", NodeState.ALIVE)]
    net.push_pull(0.2, a, b, False)  # a second exchange changes nothing and notifies nothing
    assert ra.about("b") == [("join", NodeState.ALIVE)] and rb.about("a") == [("join", NodeState.ALIVE)]


def test_a_new_alive_is_gossiped_onwards() -> None:
    net, (a, b, c), _ = cluster(3)
    d, _ = net.add("d", 4)
    net.push_pull(1.0, d, a, True)
    net.tick(1.2, a)  # a gossips the news about d to the others
    assert state(b, "d") == state(c, "d") == NodeState.ALIVE


# ---------------------------------------------------------------------------------------------- probes


def test_a_ping_is_acked_with_its_sequence_number_to_the_source_address() -> None:
    net, (a, b), _ = cluster(2)
    ping = m.Ping(77, "n1", ip_bytes("10.0.0.9"), 9999, "a")
    outs = b.receive(1.0, ("10.0.0.1", PORT), m.encode(ping))
    assert len(outs) == 1 and isinstance(outs[0], SendPacket)
    assert outs[0].addr == ("10.0.0.9", 9999)  # SourceAddr/SourcePort win over the packet's source
    assert m.decode(outs[0].messages[0]) == m.AckResp(77, b"")


def test_a_ping_for_another_node_name_is_ignored() -> None:
    """Our address may have belonged to another node: a probe meant for it must not be acked by us."""
    net, (a, b), _ = cluster(2)
    assert b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Ping(5, "someone-else"))) == []


def test_probe_targets_go_round_robin_over_a_shuffled_list_skipping_the_dead() -> None:
    net, swims, _ = cluster(6)
    a = swims[0]
    net.down.add("n5")
    a.members["n5"].state = NodeState.DEAD  # as if declared dead earlier: never probed
    now, seen = 0.0, []
    for _ in range(8):
        now += CFG.probe_interval
        target, _ = probe_round(net, a, now)
        seen.append(target)
        a._probe = None  # the probe goes unanswered; end it quietly so suspicion stays out of this test
    others = {"n1", "n2", "n3", "n4"}
    assert set(seen[:4]) == others and set(seen[4:]) == others  # each pass covers everyone once


def test_an_acked_probe_ends_without_suspicion() -> None:
    net, (a, b, c), _ = cluster(3)
    outs = a.tick(1.0)
    net.run(1.0, a, outs)
    net.tick(1.6, a)
    net.tick(2.0, a)
    assert all(state(a, x) == NodeState.ALIVE for x in ("n1", "n2"))
    assert not any(isinstance(msg, m.IndirectPing) for _, _, msg in net.sent)


def test_a_missed_ack_sends_indirect_pings_asking_for_nacks_and_a_tcp_ping() -> None:
    net, swims, _ = cluster(5)
    a = swims[0]
    target, seq = probe_round(net, a, 1.0)
    outs = a.tick(1.0 + CFG.probe_timeout)
    indirect = [(o.addr, m.decode(o.messages[0])) for o in outs if isinstance(o, SendPacket)]
    assert len(indirect) == CFG.indirect_checks  # three of the four others, never the target
    for addr, msg in indirect:
        assert isinstance(msg, m.IndirectPing)
        assert (msg.seq_no, msg.node, msg.nack, msg.source_node) == (seq, target, True, "n0")
        assert net.nodes[addr].name not in ("n0", target)
    tcp = [o for o in outs if isinstance(o, StreamPing)]
    assert len(tcp) == 1 and tcp[0].seq_no == seq
    assert tcp[0].addr == net.addr(next(s for s in swims if s.name == target))
    assert m.decode(tcp[0].ping) == m.Ping(seq, target, ip_bytes("10.0.0.1"), PORT, "n0")


def test_an_indirect_ack_is_relayed_and_the_probe_succeeds() -> None:
    net, swims, _ = cluster(4)
    a = swims[0]
    target, seq = probe_round(net, a, 1.0)  # the direct ping is lost
    net.run(1.5, a, a.tick(1.5))  # indirect pings go out and are answered through the helpers
    relayed = [msg for src, dst, msg in net.sent if dst == "n0" and isinstance(msg, m.AckResp)]
    assert relayed and all(x.seq_no == seq for x in relayed)
    net.tick(2.0, a)
    assert state(a, target) == NodeState.ALIVE


def test_a_helper_sends_a_nack_when_the_target_stays_silent() -> None:
    net, (a, b, c), _ = cluster(3)
    net.down.add("n2")
    req = m.IndirectPing(9, ip_bytes("10.0.0.3"), PORT, "n2", True, ip_bytes("10.0.0.1"), PORT, "a")
    outs = b.receive(1.0, ("10.0.0.1", PORT), m.encode(req))
    assert [m.decode(o.messages[0]).TYPE for o in outs if isinstance(o, SendPacket)] == [m.MessageType.PING]
    assert b.next_deadline() <= 1.0 + CFG.probe_timeout
    nacks = [o for o in b.tick(1.0 + CFG.probe_timeout) if isinstance(o, SendPacket) and o.addr == ("10.0.0.1", PORT)]
    assert [m.decode(o.messages[0]) for o in nacks] == [m.NackResp(9)]


def test_a_tcp_fallback_ack_saves_the_probe() -> None:
    net, (a, b, c), _ = cluster(3)
    net.down.update({"n1", "n2"})  # UDP dead both ways; only TCP gets through
    target, seq = probe_round(net, a, 1.0)
    a.tick(1.5)
    a.stream_ping_result(1.6, seq, True)
    a.tick(2.0)
    assert state(a, target) == NodeState.ALIVE


def test_a_failed_probe_suspects_and_the_suspicion_ends_in_dead() -> None:
    net, (a, b), (ra, _) = cluster(2)
    net.down.add("n1")
    target, seq = probe_round(net, a, 1.0)
    a.tick(1.5)
    a.stream_ping_result(1.6, seq, False)
    a.tick(2.0)
    assert state(a, "n1") == NodeState.SUSPECT
    assert ra.about("n1") == [("join", NodeState.ALIVE)]  # suspect is not a leave
    # Two members, so k = 0: the minimum timeout applies at once (suspicionNode's n - 2 < k rule).
    timeout = suspicion_timeout(CFG.suspicion_mult, 2, CFG.probe_interval)
    a.tick(2.0 + timeout - 0.01)
    assert state(a, "n1") == NodeState.SUSPECT
    a.tick(2.0 + timeout)
    assert state(a, "n1") == NodeState.DEAD
    assert ra.about("n1") == [("join", NodeState.ALIVE), ("leave", NodeState.DEAD)]


def test_a_probe_of_a_suspect_node_carries_the_suspicion_so_it_can_refute() -> None:
    net, swims, _ = cluster(2)
    a = swims[0]
    a.receive(0.5, ("10.0.0.2", PORT), m.encode(m.Suspect(1, "n1", "x")))
    a.broadcasts.clear()  # drop what is queued, so only the probe itself could carry the suspicion
    outs = a.tick(1.0)
    probe = next(o for o in outs if isinstance(o, SendPacket) and o.addr == ("10.0.0.2", PORT))
    assert isinstance(m.decode(probe.messages[0]), m.Ping)  # the ping leads, as in memberlist's compound
    assert m.Suspect(1, "n1", "n0") in [m.decode(x) for x in probe.messages]  # the target's incarnation, from us


def test_a_slow_suspect_refutes_as_soon_as_a_probe_reaches_it() -> None:
    """Nothing else tells n1 that it is suspected (n0's queue is cleared): the probe alone does. The ack went
    out before the suspicion was read, so the refutation follows in n1's next gossip round."""
    net, swims, _ = cluster(3)
    a, b = swims[0], swims[1]
    a.receive(0.5, ("10.0.0.3", PORT), m.encode(m.Suspect(1, "n1", "n2")))
    a.broadcasts.clear()
    a._probe_list, a._probe_index = ["n1"], 0  # n1 is probed next, whatever the shuffle says
    net.run(1.0, a, a.tick(1.0))
    assert b.incarnation == 2
    net.tick(1.0, b)
    assert (state(a, "n1"), a.members["n1"].incarnation) == (NodeState.ALIVE, 2)


def test_a_member_we_declared_dead_that_probes_us_hears_it_with_the_ack_and_refutes() -> None:
    """A healed partition: n1 was declared dead by n0 and nothing is left in anyone's queue to tell it so.
    n1's next probe of n0 brings back the verdict with the ack; n1 refutes, and n0 sees it alive again."""
    net, swims, _ = cluster(3)
    a, b = swims[0], swims[1]
    a.receive(0.5, net.addr(swims[2]), m.encode(m.Dead(1, "n1", "n2")))
    assert state(a, "n1") == NodeState.DEAD
    for swim in swims:
        swim.broadcasts.clear()
    b._probe_list, b._probe_index = ["n0"], 0
    net.run(1.0, b, b.tick(1.0))
    assert b.incarnation == 2
    net.tick(1.0, b)  # the refutation goes out with b's next gossip round
    assert (state(a, "n1"), a.members["n1"].incarnation) == (NodeState.ALIVE, 2)


def test_a_probe_from_a_live_member_gets_a_plain_ack() -> None:
    net, swims, _ = cluster(3)
    b = swims[1]
    for swim in swims:
        swim.broadcasts.clear()
    b._probe_list, b._probe_index = ["n0"], 0
    net.run(1.0, b, b.tick(1.0))
    acks = [msgs for src, dst, msgs in net.sent if src == "n0" and dst == "n1"]
    assert acks and all(isinstance(x, m.AckResp) for x in acks) and b.incarnation == 1


def probe_order(net: Net, a: Swim, start: float, count: int) -> list[str]:
    """The targets of `a`'s next `count` probes from `start` on, each when it is due and ended quietly (no ack,
    no suspicion) so that only the choice of target is seen."""
    targets = []
    for _ in range(count):
        start = max(start, a._next_probe)
        target, _ = probe_round(net, a, start)
        targets.append(target)
        a._probe = None
    return targets


def test_a_suspicion_heard_from_another_member_puts_the_suspect_first_then_round_robin_resumes() -> None:
    """Prompt confirmation: whichever member round robin would probe next, a member that someone else just
    suspected is probed first, once (a further confirmation gives it no second turn), and round robin then
    carries on exactly where it was."""
    net, swims, _ = cluster(5)
    names = [s.name for s in swims[1:]]
    usual = probe_order(net, swims[0], 1.0, len(names))
    assert sorted(usual) == names
    for victim in names:
        net, swims, _ = cluster(5)
        a = swims[0]
        accuser, other = [x for x in names if x != victim][:2]
        a.receive(0.5, ("10.0.0.2", PORT), m.encode(m.Suspect(1, victim, accuser)))
        a.receive(0.6, ("10.0.0.3", PORT), m.encode(m.Suspect(1, victim, other)))  # a confirmation
        assert probe_order(net, a, 1.0, len(names) + 1) == [victim, *usual]


def test_our_own_suspicion_gives_no_extra_probe() -> None:
    """A suspicion we start ourselves (here from a push-pull's remote state) confirms nothing when we probe."""
    net, swims, _ = cluster(5)
    usual = probe_order(net, swims[0], 1.0, 4)
    net, swims, _ = cluster(5)
    a = swims[0]
    a.merge_remote_state(0.5, [m.PushNodeState(usual[2], ip_bytes("10.0.0.9"), PORT, b"", 1, NodeState.SUSPECT)])
    assert state(a, usual[2]) == NodeState.SUSPECT
    assert probe_order(net, a, 1.0, 4) == usual


def test_a_probe_in_flight_is_not_disturbed_by_prompt_confirmation() -> None:
    net, swims, _ = cluster(5)
    usual = probe_order(net, swims[0], 1.0, 4)
    net, swims, _ = cluster(5)
    a = swims[0]
    net.down.add(usual[0])
    assert probe_round(net, a, 1.0)[0] == usual[0]  # in flight, and it will fail
    victim = usual[2]
    a.receive(1.1, ("10.0.0.2", PORT), m.encode(m.Suspect(1, victim, usual[1])))
    victim_addr = net.addr(next(s for s in swims if s.name == victim))
    outs = a.tick(1.5)  # the probe in flight moves on to indirect pings; the suspect waits its turn
    assert not any(isinstance(o, SendPacket) and o.addr == victim_addr and isinstance(m.decode(o.messages[0]), m.Ping)
                   for o in outs)
    a.stream_ping_result(1.6, 1, False)
    assert probe_order(net, a, 2.0, 4) == [victim, *usual[1:]]
    assert state(a, usual[0]) == NodeState.SUSPECT  # the probe in flight ran its course


def test_our_failed_prompt_probe_confirms_the_suspicion_and_is_gossiped_at_once() -> None:
    """The point of probing promptly: our confirmation (which shrinks the timeout) goes out within one probe."""
    net, swims, _ = cluster(5)
    a = swims[0]
    victim = swims[3].name
    net.down.add(victim)
    a.receive(0.5, ("10.0.0.2", PORT), m.encode(m.Suspect(1, victim, "n1")))
    net.run(0.5, a, a.tick(0.5))  # the suspicion's own gossip round
    assert probe_round(net, a, 1.0)[0] == victim
    net.run(1.5, a, a.tick(1.5))
    net.run(2.0, a, a.tick(2.0))  # the probe fails: our confirmation is queued and gossiped in the same tick
    confirmations = [(dst, msg) for src, dst, msg in net.sent if src == "n0" and msg == m.Suspect(1, victim, "n0")]
    assert confirmations, "our failed probe confirmed the suspicion and gossiped it"
    assert a._suspicions[victim].n == 1


# ---------------------------------------------------------------------------------------------- alive rules


def test_alive_needs_a_newer_incarnation_and_meta_changes_notify_update() -> None:
    net, (a, b), (ra, _) = cluster(2)
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Alive(1, "n1", ip_bytes("10.0.0.2"), PORT, b"new")))
    assert a.members["n1"].meta == b""  # same incarnation: ignored
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Alive(2, "n1", ip_bytes("10.0.0.2"), PORT, b"new")))
    assert (a.members["n1"].meta, a.members["n1"].incarnation) == (b"new", 2)
    assert ra.about("n1") == [("join", NodeState.ALIVE), ("update", NodeState.ALIVE)]
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Alive(3, "n1", ip_bytes("10.0.0.2"), PORT, b"new")))
    assert len(ra.about("n1")) == 2  # a newer incarnation with the same meta notifies nothing


def test_an_alive_from_another_address_is_a_conflict_unless_the_old_owner_left() -> None:
    net, (a, b), (ra, _) = cluster(2)
    a.receive(1.0, ("10.0.0.9", PORT), m.encode(m.Alive(5, "n1", ip_bytes("10.0.0.9"), PORT)))
    assert (a.members["n1"].addr, a.members["n1"].incarnation) == (ip_bytes("10.0.0.2"), 1)
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Dead(1, "n1", "n1")))  # n1 leaves
    a.receive(2.0, ("10.0.0.9", PORT), m.encode(m.Alive(1, "n1", ip_bytes("10.0.0.9"), PORT)))
    assert (a.members["n1"].addr, a.members["n1"].state) == (ip_bytes("10.0.0.9"), NodeState.ALIVE)
    assert ra.about("n1")[-2:] == [("leave", NodeState.LEFT), ("join", NodeState.ALIVE)]


def test_alive_clears_a_suspicion_and_a_dead_member_can_come_back() -> None:
    net, (a, b, c), (ra, _, _) = cluster(3)
    a.receive(1.0, ("10.0.0.3", PORT), m.encode(m.Suspect(1, "n1", "n2")))
    assert state(a, "n1") == NodeState.SUSPECT
    a.receive(1.1, ("10.0.0.2", PORT), m.encode(m.Alive(2, "n1", ip_bytes("10.0.0.2"), PORT)))
    assert state(a, "n1") == NodeState.ALIVE
    a.tick(100.0)  # the old suspicion timer is gone: nothing turns n1 dead
    assert state(a, "n1") == NodeState.ALIVE
    a.receive(101.0, ("10.0.0.3", PORT), m.encode(m.Dead(2, "n1", "n2")))
    a.receive(102.0, ("10.0.0.2", PORT), m.encode(m.Alive(3, "n1", ip_bytes("10.0.0.2"), PORT)))
    assert ra.about("n1") == [("join", NodeState.ALIVE), ("leave", NodeState.DEAD), ("join", NodeState.ALIVE)]


# ---------------------------------------------------------------------------------------------- suspect / dead


def test_suspect_and_dead_with_an_old_incarnation_are_ignored() -> None:
    net, (a, b), _ = cluster(2)
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Alive(4, "n1", ip_bytes("10.0.0.2"), PORT)))
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Suspect(3, "n1", "x")))
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Dead(3, "n1", "x")))
    assert state(a, "n1") == NodeState.ALIVE
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Suspect(1, "nobody", "x")))  # unknown: ignored
    assert "nobody" not in a.members


def test_dead_from_the_node_itself_is_left_and_from_others_is_dead() -> None:
    net, (a, b, c), (ra, _, _) = cluster(3)
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Dead(1, "n1", "n1")))
    a.receive(1.0, ("10.0.0.3", PORT), m.encode(m.Dead(1, "n2", "n1")))
    assert (state(a, "n1"), state(a, "n2")) == (NodeState.LEFT, NodeState.DEAD)
    assert ra.about("n1")[-1] == ("leave", NodeState.LEFT) and ra.about("n2")[-1] == ("leave", NodeState.DEAD)
    a.receive(1.0, ("10.0.0.3", PORT), m.encode(m.Dead(1, "n1", "n2")))
    assert state(a, "n1") == NodeState.LEFT and len(ra.about("n1")) == 2  # already gone: nothing changes


def test_suspicion_about_ourselves_is_refuted_past_the_accusers_incarnation() -> None:
    net, (a, b), _ = cluster(2)
    b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Suspect(7, "n1", "n0")))
    assert state(b, "n1") == NodeState.ALIVE and b.members["n1"].incarnation == 8
    net.tick(1.2, b)  # the refutation is gossiped
    assert (state(a, "n1"), a.members["n1"].incarnation) == (NodeState.ALIVE, 8)


def test_dead_about_ourselves_is_refuted_unless_we_are_leaving() -> None:
    net, (a, b), (_, rb) = cluster(2)
    b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Dead(3, "n1", "n0")))
    assert state(b, "n1") == NodeState.ALIVE and b.members["n1"].incarnation == 4
    assert rb.about("n1") == [("join", NodeState.ALIVE)]


def test_refuting_a_dead_message_lowers_our_health() -> None:
    net, (a, b), _ = cluster(2)
    b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Dead(3, "n1", "n0")))
    assert b.health_score() == 1


def test_suspicion_confirmations_are_regossiped_once_per_new_accuser() -> None:
    net, swims, _ = cluster(6)
    a = swims[0]
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.Suspect(1, "n5", "n1")))
    a.broadcasts.clear()
    a.receive(1.0, ("10.0.0.3", PORT), m.encode(m.Suspect(1, "n5", "n2")))
    a.receive(1.0, ("10.0.0.3", PORT), m.encode(m.Suspect(1, "n5", "n2")))  # a duplicate is no confirmation
    assert [m.decode(b.msg) for b in a.broadcasts] == [m.Suspect(1, "n5", "n2")]


# ---------------------------------------------------------------------------------------------- push-pull merge


def test_merge_trusts_alive_and_left_but_only_suspects_a_remote_dead() -> None:
    net, (a, b, c, d), (ra, _, _, _) = cluster(4)
    remote = [m.PushNodeState("n1", ip_bytes("10.0.0.2"), PORT, b"", 1, NodeState.DEAD),
              m.PushNodeState("n2", ip_bytes("10.0.0.3"), PORT, b"", 1, NodeState.LEFT),
              m.PushNodeState("n3", ip_bytes("10.0.0.4"), PORT, b"", 1, NodeState.SUSPECT),
              m.PushNodeState("n9", ip_bytes("10.0.0.10"), PORT, b"m", 3, NodeState.ALIVE)]
    a.merge_remote_state(1.0, remote)
    assert [state(a, x) for x in ("n1", "n2", "n3", "n9")] == [NodeState.SUSPECT, NodeState.LEFT,
                                                             NodeState.SUSPECT, NodeState.ALIVE]
    assert ra.about("n9") == [("join", NodeState.ALIVE)] and ra.about("n2")[-1] == ("leave", NodeState.LEFT)
    # A left member stays left when a later exchange says it is dead.
    a.merge_remote_state(2.0, [m.PushNodeState("n2", ip_bytes("10.0.0.3"), PORT, b"", 1, NodeState.DEAD)])
    assert state(a, "n2") == NodeState.LEFT


def test_a_restarted_node_starts_at_incarnation_one_and_refutes_the_old_view() -> None:
    net, (a, b), _ = cluster(2)
    b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Suspect(5, "n1", "n0")))  # n1 at incarnation 6 now
    net.tick(1.2, b)
    assert a.members["n1"].incarnation == 6
    net.down.add("n1")
    fresh = Swim(CFG, "n1", ip_bytes("10.0.0.2"), PORT, Rec(), random.Random(9))
    fresh.start(50.0)
    assert fresh.members["n1"].incarnation == 1
    net.nodes[("10.0.0.2", PORT)] = fresh
    net.down.discard("n1")
    net.push_pull(50.0, fresh, a, True)  # a's view says n1 is alive at 6: the fresh process outbids it
    assert fresh.members["n1"].incarnation == 7
    net.tick(50.2, fresh)
    assert (a.members["n1"].incarnation, state(a, "n1")) == (7, NodeState.ALIVE)


# ---------------------------------------------------------------------------------------------- leave, meta


def test_leave_broadcasts_our_own_dead_and_reports_when_it_has_gone_out() -> None:
    net, (a, b, c), (ra, rb, _) = cluster(3)
    outs = a.leave(5.0)
    assert state(a, "n0") == NodeState.LEFT and ra.about("n0")[-1] == ("leave", NodeState.LEFT)
    sent = [m.decode(x) for o in outs if isinstance(o, SendPacket) for x in o.messages]
    assert m.Dead(1, "n0", "n0") in sent
    net.run(5.0, a, outs)
    assert state(b, "n0") == NodeState.LEFT and rb.about("n0")[-1] == ("leave", NodeState.LEFT)
    for i in range(1, 20):
        if a.leave_sent():
            break
        net.tick(5.0 + i * CFG.gossip_interval, a)
    assert a.leave_sent()
    # An alive about us still in flight must not bring us back.
    a.receive(9.0, ("10.0.0.2", PORT), m.encode(m.Alive(9, "n0", ip_bytes("10.0.0.1"), PORT)))
    assert state(a, "n0") == NodeState.LEFT


def test_leave_alone_is_sent_at_once() -> None:
    net = Net()
    a, _ = net.add("a", 1)
    a.leave(1.0)
    assert a.leave_sent()


def test_update_meta_announces_the_new_meta_at_the_next_incarnation() -> None:
    net, (a, b), (_, rb) = cluster(2)
    a.delegate.meta = b"v2"  # type: ignore[attr-defined]
    a.update_meta(2.0)
    assert (a.members["n0"].meta, a.members["n0"].incarnation) == (b"v2", 2)
    net.tick(2.2, a)
    assert (b.members["n0"].meta, b.members["n0"].incarnation) == (b"v2", 2)
    assert rb.about("n0")[-1] == ("update", NodeState.ALIVE)


# ---------------------------------------------------------------------------------------------- eager gossip


def gossiped(outs: list[Output], msg: m.Message) -> int:
    """In how many of these packets `msg` rides."""
    return sum(1 for o in outs if isinstance(o, SendPacket) and m.encode(msg) in o.messages)


def test_news_goes_out_at_once_and_rounds_stay_a_tenth_of_a_gossip_interval_apart() -> None:
    net, swims, _ = cluster(4)
    a = swims[0]
    net.tick(1.0, a)  # a regular round (the joins' news) at 1.0
    a.broadcasts.clear()
    assert a.next_deadline() == pytest.approx(1.0 + CFG.gossip_interval)
    nine = m.Alive(1, "n9", ip_bytes("10.0.0.10"), PORT)
    a.receive(1.05, ("10.0.0.2", PORT), m.encode(nine))
    assert a.next_deadline() == 1.05  # not 1.2
    assert gossiped(a.tick(1.05), nine) == CFG.gossip_nodes
    eight = m.Alive(1, "n8", ip_bytes("10.0.0.11"), PORT)
    a.receive(1.051, ("10.0.0.2", PORT), m.encode(eight))
    spacing = CFG.gossip_interval / 10
    assert a.next_deadline() == pytest.approx(1.05 + spacing)  # rate-limited, still well before 1.25
    assert gossiped(a.tick(1.05 + spacing / 2), eight) == 0
    assert gossiped(a.tick(1.05 + spacing), eight) == CFG.gossip_nodes
    # Then the regular pace again, and what changes nothing (a repeat, a ping) brings nothing forward.
    a.receive(1.1, ("10.0.0.2", PORT), m.encode(nine))
    a.receive(1.1, ("10.0.0.2", PORT), m.encode(m.Ping(7, "n0")))
    assert a.next_deadline() == pytest.approx(1.05 + spacing + CFG.gossip_interval)


def test_the_layer_above_brings_the_next_round_forward_with_gossip_soon() -> None:
    net, swims, _ = cluster(2)
    a = swims[0]
    net.tick(1.0, a)
    a.broadcasts.clear()
    a.gossip_soon(1.1)  # e.g. Serf queued a user event; the round has nothing of ours to send, but runs
    assert a.next_deadline() == 1.1
    assert a.tick(1.1) == [] and a.next_deadline() == pytest.approx(1.1 + CFG.gossip_interval)
    a.gossip_soon(1.15)  # an empty round set no spacing: at once again
    assert a.next_deadline() == 1.15


def test_eager_gossip_keeps_the_retransmit_limit() -> None:
    """Only the moment of a round changes: a broadcast is sent retransmit-limit times in all, probes included."""
    net, swims, _ = cluster(4)
    a = swims[0]
    net.tick(1.0, a)
    a.broadcasts.clear()
    nine = m.Alive(1, "n9", ip_bytes("10.0.0.10"), PORT)
    a.receive(1.05, ("10.0.0.2", PORT), m.encode(nine))
    sent = 0
    now = 1.05
    while now < 10.0:
        sent += gossiped(a.tick(now), nine)
        now = a.next_deadline()
    assert sent == retransmit_limit(CFG.retransmit_mult, a.num_alive())


def test_without_eager_gossip_news_waits_for_the_tick() -> None:
    net, swims, _ = cluster(2)
    a = swims[0]
    a.config = replace(CFG, eager_gossip=False)
    net.tick(1.0, a)
    a.receive(1.05, ("10.0.0.2", PORT), m.encode(m.Alive(1, "n9", ip_bytes("10.0.0.10"), PORT)))
    assert a.next_deadline() == pytest.approx(1.0 + CFG.gossip_interval)


# ---------------------------------------------------------------------------------------------- packets


def test_every_packet_fits_the_udp_buffer_and_the_compound_limit() -> None:
    net, (a, b), _ = cluster(2)
    for i in range(400):  # far more news than one packet carries
        a.receive(0.5, ("10.0.0.2", PORT), m.encode(m.Alive(1, f"member-{i:04d}-" + "x" * (i % 40),
                                                             bytes([10, 1, i // 250, i % 250 + 1]), PORT)))
    now = 0.5
    packets: list[SendPacket] = []
    for _ in range(30):
        now += CFG.gossip_interval
        packets += [o for o in a.tick(now) if isinstance(o, SendPacket)]
    packets += [o for o in b.receive(now, ("10.0.0.1", PORT), m.encode(m.Ping(1, "n1")))
                if isinstance(o, SendPacket)]
    assert len(packets) > 10
    for p in packets:
        assert 1 <= len(p.messages) <= 127
        # What goes on the wire (compressed when that let more news in) fits, and unpacks to the messages.
        assert len(p.payload()) <= CFG.udp_buffer_size - FRAMING_RESERVE
        assert unpack_packet(p.payload()) == p.messages


def test_user_messages_reach_the_delegate_without_the_type_byte() -> None:
    net, (a, b), (ra, _) = cluster(2)
    a.receive(1.0, ("10.0.0.2", PORT), m.encode(m.UserMsg(b"\x05hello")))
    assert ra.user == [b"\x05hello"]


def test_a_malformed_message_raises_message_error() -> None:
    net, (a, b), _ = cluster(2)
    with pytest.raises(m.MessageError):
        a.receive(1.0, ("10.0.0.2", PORT), b"\x04\xc1")
