"""Raft under the seeded simulator: safety after every step, a linearizable client history at the end."""

from __future__ import annotations

import os

import pytest

from tests.sim.raft_sim import Simulation
from tests.support.linearizability import check_history

# CI runs 1,000 seeds (3- and 5-server clusters alternate); RAFT_SIM_SEEDS=N runs more, RAFT_SIM_SEED=S one.
SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "1000"))
ONLY = os.environ.get("RAFT_SIM_SEED")
CHUNK = 50


def run_seed(seed: int) -> Simulation:
    """Run one seed; raises with the seed and a replay command in the message on any failure."""
    servers = 3 if seed % 2 == 0 else 5
    sim = Simulation(seed, servers=servers)
    replay = f"replay: RAFT_SIM_SEED={seed} pytest tests/sim/test_raft_sim.py"
    try:
        sim.run()
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} ({servers} servers): {exc}\n{replay}") from exc
    result = check_history(sim.history)
    assert result.ok, f"seed {seed} ({servers} servers): history not linearizable\n{result.explanation}\n{replay}"
    assert sim.leader() is not None, f"seed {seed}: no leader after the calm phase\n{replay}"
    done = [op for op in sim.history if op.complete is not None and op.complete > sim.duration]
    assert done, f"seed {seed}: no client operation completed after the faults stopped\n{replay}"
    return sim


@pytest.mark.sim
@pytest.mark.parametrize("chunk", [int(ONLY)] if ONLY else range(0, SEEDS, CHUNK))
def test_raft_safety_and_linearizability(chunk: int) -> None:
    seeds = [chunk] if ONLY else range(chunk, min(chunk + CHUNK, SEEDS))
    for seed in seeds:
        run_seed(seed)


@pytest.mark.sim
def test_a_seed_replays_exactly() -> None:
    first, second = Simulation(7, servers=5), Simulation(7, servers=5)
    first.run()
    second.run()
    trace = [(o.client, o.kind, o.key, o.value, o.invoke, o.complete, o.result) for o in first.history]
    assert trace == [(o.client, o.kind, o.key, o.value, o.invoke, o.complete, o.result) for o in second.history]
    assert first.steps == second.steps and first.stats == second.stats


@pytest.mark.sim
def test_faults_exercise_every_mechanism() -> None:
    """Across a few seeds the simulator really elects, transfers, reconfigures and installs snapshots."""
    totals = {"snapshots_installed": 0, "transfers": 0, "reconfigurations": 0, "elections": 0}
    for seed in range(1, 21, 2):
        sim = run_seed(seed)
        for key in totals:
            totals[key] += sim.stats[key]
    assert all(v > 0 for v in totals.values()), totals
