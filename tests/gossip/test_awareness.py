"""Lifeguard's local health awareness, checked where memberlist changes it (state.go probeNode, refute).

The score runs 0..awareness_max_multiplier-1; probe interval (and so the time for indirect acks and nacks)
is multiplied by score + 1, so a node that is itself slow or cut off probes and accuses less.

memberlist's timing, kept here: a helper nacks probe_timeout after it got the indirect ping, which at an
unscaled interval lands just after the prober's deadline (Lifeguard paper, footnote 5). So nacks only count
once the prober's score has stretched its interval; the nack tests start from a score of 1.
"""

# ruff: noqa: RUF059 -- tests unpack a whole cluster so that every node has a name, used or not

from __future__ import annotations

import pytest
from meshagent.gossip import messages as m
from meshagent.gossip.membership import SendPacket, Swim
from meshagent.gossip.messages import NodeState

from tests.gossip.test_swim import CFG, PORT, cluster, probe_round


def test_a_failed_probe_without_nack_helpers_costs_one_point_up_to_the_cap() -> None:
    net, (a, b), _ = cluster(2)  # no third member, so no helper and no nack to expect
    scores = [a.health_score()]
    for _ in range(300):
        a.tick(a.next_deadline())  # nothing is delivered: every probe of n1 fails
        a.members["n1"].state = NodeState.ALIVE  # keep n1 probeable; this test is about the score only
        a._suspicions.clear()
        if a.health_score() != scores[-1]:
            scores.append(a.health_score())
    assert scores == list(range(CFG.awareness_max_multiplier))


def nacked_probe(helpers_down: int) -> Swim:
    """A prober at score 1 (interval 2 s, direct timeout 1 s) whose target is down; return it after the probe."""
    net, swims, _ = cluster(5)
    a = swims[0]
    a.awareness = 1
    target, seq = probe_round(net, a, 1.0)
    net.down.add(target)
    helpers = [s for s in swims[1:] if s.name != target]
    net.down.update(h.name for h in helpers[:helpers_down])
    net.run(2.0, a, a.tick(2.0))  # indirect pings, each asking for a nack
    net.tick(2.5)  # the live helpers nack, probe_timeout after the request
    a.stream_ping_result(2.5, seq, False)
    a.tick(3.0)  # the probe ends (the next probe it starts is not delivered: it must not earn a point back)
    assert state_of(a, target) == NodeState.SUSPECT
    return a


def test_missing_nacks_cost_one_point_each() -> None:
    assert nacked_probe(helpers_down=1).health_score() == 2
    assert nacked_probe(helpers_down=3).health_score() == 4


def test_all_nacks_received_means_the_target_is_the_problem_not_us() -> None:
    assert nacked_probe(helpers_down=0).health_score() == 1


def test_at_the_base_interval_nacks_arrive_too_late_and_count_as_missing() -> None:
    net, swims, _ = cluster(5)
    a = swims[0]
    target, seq = probe_round(net, a, 1.0)
    net.down.add(target)
    net.run(1.5, a, a.tick(1.5))
    a.tick(2.0)  # the prober's deadline; the helpers' nack timers fire at the same instant, too late
    assert a.health_score() == CFG.indirect_checks


def test_a_successful_probe_earns_a_point_back_but_never_below_zero() -> None:
    net, (a, b), _ = cluster(2)
    a.awareness = 2
    now = 0.0
    for expected in (1, 0, 0):
        now = a._next_probe
        net.run(now, a, a.tick(now))
        assert a.health_score() == expected


def test_refuting_a_suspicion_about_us_costs_a_point() -> None:
    net, (a, b), _ = cluster(2)
    b.receive(1.0, ("10.0.0.1", PORT), m.encode(m.Suspect(1, "n1", "n0")))
    assert b.health_score() == 1


@pytest.mark.parametrize("score", [0, 3, 7])
def test_the_probe_interval_is_scaled_by_score_plus_one(score: int) -> None:
    net, (a, b), _ = cluster(2)
    a.awareness = score
    outs = a.tick(1.0)
    assert any(isinstance(o, SendPacket) and isinstance(m.decode(o.messages[0]), m.Ping) for o in outs)
    assert a._next_probe == pytest.approx(1.0 + CFG.probe_interval * (score + 1))
    assert a._probe is not None and a._probe.end == pytest.approx(1.0 + CFG.probe_interval * (score + 1))


def state_of(swim: Swim, name: str) -> NodeState:
    return swim.members[name].state
