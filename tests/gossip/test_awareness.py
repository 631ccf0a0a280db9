"""Lifeguard's local health awareness, checked where memberlist changes it (state.go probeNode, refute).

The score runs 0..awareness_max_multiplier-1; probe interval (and so the time for indirect acks and nacks)
is multiplied by score + 1, so a node that is itself slow or cut off probes and accuses less.

A helper nacks probe_timeout after it got the indirect ping (memberlist's timing, kept): at an unscaled
interval that is the very moment the prober's probe ends (Lifeguard paper, footnote 5). memberlist counts
nacks at that moment, so all of them are missing whenever the target is really dead. We keep counting for
NACK_GRACE x probe_timeout after a failed probe and charge only the nacks still missing then.
"""

# ruff: noqa: RUF059 -- tests unpack a whole cluster so that every node has a name, used or not

from __future__ import annotations

import pytest
from meshagent.gossip import messages as m
from meshagent.gossip.membership import NACK_GRACE, SendPacket, Swim
from meshagent.gossip.messages import NodeState

from tests.support.gossip_harness import CFG, PORT, cluster, probe_round


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
    assert a.health_score() == 1  # not yet charged: late nacks may still come
    a.tick(3.0 + NACK_GRACE * CFG.probe_timeout)
    return a


def test_missing_nacks_cost_one_point_each() -> None:
    assert nacked_probe(helpers_down=1).health_score() == 2
    assert nacked_probe(helpers_down=3).health_score() == 4


def test_all_nacks_received_means_the_target_is_the_problem_not_us() -> None:
    assert nacked_probe(helpers_down=0).health_score() == 1


def base_interval_probe(helpers_down: int) -> Swim:
    """A prober at score 0 whose target is down; its probe ends at 2.0 s, when the helpers' nack timers fire."""
    net, swims, _ = cluster(5)
    a = swims[0]
    target, seq = probe_round(net, a, 1.0)
    net.down.add(target)
    net.down.update([s.name for s in swims[1:] if s.name != target][:helpers_down])
    net.run(1.5, a, a.tick(1.5))
    net.run(2.0, a, a.tick(2.0))  # the probe ends first ...
    net.run(2.0, a, a.tick(2.0))  # (and a runtime may wake again at once) ...
    net.tick(2.0, *(s for s in swims[1:]))  # ... then the nacks arrive, at the same instant
    assert a._probe is None or a._probe.seq_no != seq
    a.tick(2.0 + NACK_GRACE * CFG.probe_timeout)
    return a


def test_at_the_base_interval_nacks_just_after_the_deadline_still_count() -> None:
    assert base_interval_probe(helpers_down=0).health_score() == 0


def test_at_the_base_interval_nacks_still_missing_after_the_grace_are_charged() -> None:
    assert base_interval_probe(helpers_down=2).health_score() == 2


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
