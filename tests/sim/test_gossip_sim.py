"""Seeded gossip scenarios on the simulator: convergence, detection within the suspicion bound, no false
deaths under 10 % loss, agreement after a partition heals, restarts, exact replay.

Seeds: GOSSIP_SIM_SEEDS=<n> scales every scenario's seed count (CI's default totals 500 runs);
GOSSIP_SIM_SEED=<seed> runs just that seed. A failure names its seed and the command that replays it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import pytest
from meshagent.gossip.messages import NodeState
from meshagent.gossip.serf import Status
from meshagent.gossip.tunables import GossipConfig, suspicion_timeout

from tests.sim.gossip_sim import Sim

pytestmark = pytest.mark.sim

SCALE = float(os.environ.get("GOSSIP_SIM_SEEDS", "500")) / 500


def _seeds(base: int, count: int) -> list[int]:
    one = os.environ.get("GOSSIP_SIM_SEED")
    if one is not None:
        return [int(one)]
    return [base + i for i in range(max(1, round(count * SCALE)))]


def _run(seed: int, scenario: Callable[[int], None], name: str) -> None:
    try:
        scenario(seed)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nseed {seed} failed; replay: GOSSIP_SIM_SEED={seed} "
                             f".venv/bin/pytest tests/sim/test_gossip_sim.py -k {name}") from None


def _join_all(sim: Sim) -> None:
    """Node 0 starts alone; every other joins through a random earlier node, a little apart."""
    names = list(sim.nodes)
    sim.start(names[0], [])
    for i, name in enumerate(names[1:], 1):
        sim.run_until(sim.now + sim.rng.uniform(0.0, 0.05))
        sim.start(name, [names[sim.rng.randrange(i)]])


def _settle(sim: Sim, limit: float = 40.0) -> None:
    """Run until every live node sees every other alive. A joiner's alive message goes out a limited number
    of times, so now and then a node misses it until the next push-pull (every 30 s), as in memberlist."""
    end = sim.now + limit
    while not sim.converged():
        assert sim.now < end, f"no convergence within {limit:.0f} s"
        sim.run_until(sim.now + 0.5)


def detection_bound(config: GossipConfig, n: int) -> float:
    """Worst case from a crash to every live node declaring it failed.

    Someone probes the dead node within one full probe round (n - 1 probe intervals, each up to
    probe_interval); the suspicion then takes at most suspicion_max_timeout_mult times the minimal
    timeout; the dead message then reaches everyone within a few gossip rounds (log n of them).
    """
    probe_round = (n - 1) * config.probe_interval
    suspicion = config.suspicion_max_timeout_mult * suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    spread = (math.ceil(math.log2(n)) + 4) * config.gossip_interval
    return probe_round + suspicion + spread


def scenario_converge(seed: int, n: int = 50) -> None:
    sim = Sim(seed, n)
    _join_all(sim)
    for _ in range(60):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    raise AssertionError(f"{n} nodes did not converge within 30 s of the last join")


def scenario_crash_detected(seed: int, n: int = 12) -> None:
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    victim = sim.rng.choice(list(sim.nodes))
    crashed_at = sim.now
    sim.crash(victim)
    bound = detection_bound(sim.config, n)
    declared: dict[str, float] = {}
    while sim.now < crashed_at + bound + 1:
        sim.run_until(sim.now + 0.1)
        for node in sim.live():
            if node.name not in declared and sim.status(node.name, victim) == Status.FAILED:
                declared[node.name] = sim.now - crashed_at
        if len(declared) == len(sim.live()):
            break
    missing = [x.name for x in sim.live() if x.name not in declared]
    assert not missing, f"{missing} did not declare {victim} failed within the bound {bound:.1f} s"
    assert max(declared.values()) <= bound, f"slowest detection {max(declared.values()):.1f} s > {bound:.1f} s"
    # Nobody else was harmed.
    others = [x.name for x in sim.live()]
    assert all(sim.status(a, b) == Status.ALIVE for a in others for b in others)


def scenario_loss_no_false_dead(seed: int, n: int = 10) -> None:
    sim = Sim(seed, n, loss=0.10, dup=0.02)
    _join_all(sim)
    end = sim.now + 120
    while sim.now < end:
        sim.run_until(sim.now + 0.5)
        for a in sim.live():
            for b in sim.live():
                assert sim.swim_state(a.name, b.name) != NodeState.DEAD, \
                    f"{a.name} declared live {b.name} dead at t={sim.now:.1f} under 10% loss"


def scenario_partition_heals(seed: int, n: int = 10) -> None:
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    names = list(sim.nodes)
    sim.rng.shuffle(names)
    half = set(names[: n // 2])
    sim.partition(half, set(names) - half)
    sim.run_until(sim.now + 60)  # long enough for each side to declare the other failed
    sim.heal()
    # Failed members are retried by push-pull (periodic, scaled) and Serf's reconnect; the sim runs the
    # core's periodic push-pull, which is enough to merge the views again.
    for _ in range(240):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    views = {a.name: {b.name: sim.status(a.name, b.name) for b in sim.live()} for a in sim.live()}
    raise AssertionError(f"views still differ 120 s after the partition healed: {views}")


def scenario_restart(seed: int, n: int = 8) -> None:
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    victim = sim.rng.choice(list(sim.nodes)[1:])
    sim.crash(victim)
    sim.run_until(sim.now + 40)
    assert all(sim.status(x.name, victim) == Status.FAILED for x in sim.live()), "crash not detected"
    sim.restart(victim, [next(iter(sim.nodes))])
    for _ in range(60):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    raise AssertionError(f"restarted {victim} is not alive everywhere within 30 s")


def scenario_user_event(seed: int, n: int = 20) -> None:
    sim = Sim(seed, n, loss=0.10)
    _join_all(sim)
    _settle(sim)
    sender = sim.rng.choice(list(sim.nodes))
    sim.nodes[sender].serf.user_event("deploy", f"{seed}".encode(), coalesce=False)
    fired = sim.now
    while sim.now < fired + 10:
        sim.run_until(sim.now + 0.2)
        if all(any(e.name == "deploy" for e in x.user_events) for x in sim.live() if x.name != sender):
            return
    missing = [x.name for x in sim.live() if x.name != sender and not any(e.name == "deploy" for e in x.user_events)]
    raise AssertionError(f"a user event from {sender} did not reach {missing} within 10 s under 10% loss")


@pytest.mark.parametrize("seed", _seeds(6000, 30))
def test_user_event_reaches_every_node_under_loss(seed: int) -> None:
    _run(seed, scenario_user_event, "user_event")


@pytest.mark.parametrize("seed", _seeds(1000, 10))
def test_fifty_nodes_converge_after_joins(seed: int) -> None:
    _run(seed, scenario_converge, "converge")


@pytest.mark.parametrize("seed", _seeds(2000, 120))
def test_crash_is_declared_failed_by_every_live_node_within_the_bound(seed: int) -> None:
    _run(seed, scenario_crash_detected, "crash")


@pytest.mark.parametrize("seed", _seeds(3000, 40))
def test_ten_percent_loss_never_kills_a_live_node(seed: int) -> None:
    _run(seed, scenario_loss_no_false_dead, "loss")


@pytest.mark.parametrize("seed", _seeds(4000, 30))
def test_views_agree_after_a_partition_heals(seed: int) -> None:
    _run(seed, scenario_partition_heals, "partition")


@pytest.mark.parametrize("seed", _seeds(5000, 270))
def test_restarted_node_is_alive_everywhere_again(seed: int) -> None:
    _run(seed, scenario_restart, "restart")


def test_a_seed_replays_exactly() -> None:
    def trace(seed: int) -> tuple[int, list[tuple[str, str, int]]]:
        sim = Sim(seed, 8, loss=0.05, dup=0.05)
        _join_all(sim)
        sim.run_until(20)
        sim.crash("n003")
        sim.run_until(45)
        views = [(a.name, b, int(st)) for a in sim.live() for b, st in
                 sorted((m.name, m.status) for m in a.serf.members.values())]
        return sim.messages, views

    assert trace(77) == trace(77)
    assert trace(77) != trace(78)
