"""The pure autopilot planner: its decisions from typed inputs, and driven by the Raft simulator."""

from __future__ import annotations

from meshagent.agent.server.autopilot import (
    AutopilotConfig,
    Plan,
    Promote,
    RemoveDead,
    healthy,
    plan,
)
from meshagent.raft.entry import Membership, Server
from meshagent.raft.node import LEADER, ProgressView

from tests.support.sim.raft_sim import Faults, Simulation

CONFIG = AutopilotConfig(healthy_within=1.0, stabilization_time=10.0, dead_server_after=10.0)
CALM = Faults(loss=0.0, duplicate=0.0, partition_rate=0.0, crash_rate=0.0, transfer_rate=0.0, reconfigure_rate=0.0)


def _membership(*servers: tuple[str, bool]) -> Membership:
    return Membership(tuple(Server(sid, f"{sid}:8300", voter) for sid, voter in servers))


def _heard(**last_response: float) -> dict[str, ProgressView]:
    return {sid: ProgressView(10, 11, at, "replicate") for sid, at in last_response.items()}


def test_a_healthy_nonvoter_is_promoted_only_after_stabilization() -> None:
    m = _membership(("s1", True), ("s2", True), ("s3", False))
    first = plan("s1", m, _heard(s2=100.0, s3=100.0), {}, 100.0, CONFIG)
    assert first == Plan(None, {"s3": 100.0})
    early = plan("s1", m, _heard(s2=109.5, s3=109.5), first.nonvoter_since, 109.9, CONFIG)
    assert early.decision is None
    due = plan("s1", m, _heard(s2=110.0, s3=110.0), early.nonvoter_since, 110.0, CONFIG)
    assert due.decision == Promote(Server("s3", "s3:8300", True))
    assert due.apply_to(m) == _membership(("s1", True), ("s2", True), ("s3", True))


def test_an_unhealthy_nonvoter_restarts_its_stabilization() -> None:
    m = _membership(("s1", True), ("s3", False))
    silent = plan("s1", m, _heard(s3=100.0), {"s3": 95.0}, 102.0, CONFIG)
    assert silent == Plan(None, {"s3": 102.0})
    back = plan("s1", m, _heard(s3=111.5), silent.nonvoter_since, 111.5, CONFIG)
    assert back.decision is None  # 9.5 s since it came back, not 16.5 s since it was first seen
    assert plan("s1", m, _heard(s3=112.0), back.nonvoter_since, 112.0, CONFIG).decision is not None


def test_a_dead_voter_is_removed_first_when_a_replacement_is_healthy() -> None:
    m = _membership(("s1", True), ("s2", True), ("s3", True), ("s4", False))
    heard = _heard(s2=100.0, s3=89.0, s4=100.0)
    p = plan("s1", m, heard, {"s4": 0.0}, 100.0, CONFIG)  # s4 stable for long, but s3 is dead: remove first
    assert p.decision == RemoveDead("s3", "s4")
    assert p.apply_to(m) == _membership(("s1", True), ("s2", True), ("s4", False))
    # Silent for less than dead_server_after: not dead yet, so the replacement is promoted instead.
    assert plan("s1", m, _heard(s2=100.0, s3=91.0, s4=100.0), {"s4": 0.0}, 100.0, CONFIG).decision == \
        Promote(Server("s4", "s4:8300", True))


def test_no_replacement_means_no_removal_and_the_leader_is_never_touched() -> None:
    m = _membership(("s1", False), ("s2", True), ("s3", True))  # s1 leads while being removed/demoted
    assert plan("s1", m, _heard(s2=0.0, s3=100.0), {}, 100.0, CONFIG) == Plan(None, {})
    # A non-voter the leader does not replicate to (no progress) is not healthy.
    m2 = _membership(("s1", True), ("s2", True), ("s5", False))
    assert not healthy({}, "s5", 0.0, 1.0)
    assert plan("s1", m2, _heard(s2=100.0), {}, 100.0, CONFIG) == Plan(None, {"s5": 100.0})


def test_the_simulator_drives_the_planner_a_dead_voter_is_replaced_and_the_replacement_promoted() -> None:
    """A 4-server simulated cluster: s4 becomes a non-voter, a voter dies for good; autopilot (the planner,
    run once a virtual second on the leader) removes the dead voter, then promotes s4 after stabilization."""
    sim = Simulation(5, servers=4, faults=CALM, clients=1, duration=60.0, snapshot_every=100_000)
    config = AutopilotConfig(healthy_within=sim.config.election_timeout)
    sim.advance(1.0)

    def change(to: Membership) -> None:
        leader = sim.leader()
        assert leader is not None
        s = sim.servers[leader]
        index, outs = s.node.propose_membership(sim.now, to)
        sim.carry_out(s, outs)
        deadline = sim.now + 2.0
        while s.node.commit_index < index and sim.now < deadline:
            sim.advance(sim.now + 0.05)
        assert s.node.commit_index >= index, "the configuration change did not commit"

    leader = sim.leader()
    assert leader is not None
    m = sim.servers[leader].node.membership
    change(m.without("s4"))
    change(m.without("s4").with_server(Server("s4", "s4:8300", False)))
    victim = next(sid for sid in ("s1", "s2", "s3") if sid != leader)
    sim.servers[victim].alive = False  # for good: never restarted

    decisions: list[tuple[float, object]] = []
    since: dict[str, float] = {}
    while sim.now < 40.0 and len(decisions) < 2:
        sim.advance(sim.now + 1.0)
        lead = sim.servers[sim.leader() or leader]
        node = lead.node
        assert node.role == LEADER
        p = plan(node.id, node.membership, node.progress(), since, sim.now, config)
        since = dict(p.nonvoter_since)
        if p.decision is not None:
            decisions.append((sim.now, p.decision))
            change(p.apply_to(node.membership))
    assert [d for _, d in decisions] == [RemoveDead(victim, "s4"), Promote(Server("s4", "s4:8300", True))]
    removed_at, promoted_at = decisions[0][0], decisions[1][0]
    assert removed_at >= 1.0 + config.dead_server_after
    assert promoted_at - removed_at >= 1.0  # one decision per round
    final = sim.servers[leader].node.membership
    assert final.voters == {"s1", "s2", "s3", "s4"} - {victim}
    sim.check_log_matching()
