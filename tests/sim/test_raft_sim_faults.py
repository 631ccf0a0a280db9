"""The simulator runs the runtime's executor, and its targeted faults catch an ordering bug that uniform crashes miss.

The planted bug: every message of a step leaves before the step's fsync, a follower's append acknowledgement
(and a vote) included. Uniform crashes fall between steps, when the write is already durable, so they cannot
see it; a crash between the send and the fsync can.
"""

from __future__ import annotations

import pytest
from meshagent.raft.executor import Executor, ReadyIO, Suspended, drive
from meshagent.raft.ready import Ready

from tests.support.linearizability import check_history
from tests.support.sim.raft_sim import TARGETED, Faults, Simulation

SEEDS = range(12)  # the first seeds of the CI run (tests/sim/test_raft_sim.py), same cluster sizes
UNIFORM_ONLY = Faults()  # crashes between steps only


class AcksBeforeFsync(Executor):
    """The planted bug: all sends go out before the fsync, as if every node were a leader sending early."""

    async def carry_out(self, ready: Ready, io: ReadyIO) -> None:
        await super().carry_out(Ready(ready.early_sends + ready.sends, ready.persist, (), ready.apply,
                                      ready.publish), io)


def failures(faults: Faults, executor: Executor) -> list[str]:
    """The seeds of SEEDS on which the simulator reports a safety or linearizability failure."""
    found = []
    for seed in SEEDS:
        sim = Simulation(seed, servers=3 if seed % 2 == 0 else 5, faults=faults, executor=executor)
        try:
            sim.run()
        except AssertionError as exc:
            found.append(f"{seed}: {exc}")
            continue
        if not check_history(sim.history).ok:
            found.append(f"{seed}: history not linearizable")
    return found


@pytest.mark.sim
def test_targeted_faults_catch_an_acknowledgement_sent_before_its_fsync() -> None:
    caught = failures(TARGETED, AcksBeforeFsync())
    missed = failures(UNIFORM_ONLY, AcksBeforeFsync())
    assert caught, "the targeted faults did not catch the planted bug in the CI seeds"
    assert not missed, f"uniform crashes alone caught the planted bug, so the comparison shows nothing: {missed}"


@pytest.mark.sim
def test_the_targeted_faults_fire_and_the_correct_executor_survives_them() -> None:
    """Both targeted faults happen in the CI seeds, and the real executor keeps every invariant through them."""
    totals = {"crash_before_fsync": 0, "crash_after_early_send": 0, "crash_after_persist": 0}
    for seed in range(6):
        sim = Simulation(seed, servers=3 if seed % 2 == 0 else 5)
        sim.run()
        assert check_history(sim.history).ok, f"seed {seed}: history not linearizable"
        for key in totals:
            totals[key] += sim.stats[key]
    assert all(v > 0 for v in totals.values()), totals


@pytest.mark.sim
def test_a_leader_crashes_between_its_early_sends_and_its_fsync_and_safety_holds() -> None:
    """The early-send path is simulated: a leader's step holds new entries and a heartbeat, the heartbeat
    leaves, the leader crashes before its fsync; with that fault made frequent, every invariant still holds."""
    often = Faults(crash_after_early_send=0.2)
    early_crashes = 0
    for seed in range(3):
        sim = Simulation(seed, servers=3, faults=often)
        sim.run()
        assert check_history(sim.history).ok, f"seed {seed}: history not linearizable"
        early_crashes += sim.stats["crash_after_early_send"]
    assert early_crashes > 0


def test_simulated_io_must_not_suspend() -> None:
    """drive() runs a coroutine that never suspends, and refuses one that does (a simulator bug)."""
    class Yield:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield

    async def completes() -> int:
        return 7

    async def suspends() -> None:
        await Yield()

    assert drive(completes()) == 7
    with pytest.raises(Suspended):
        drive(suspends())
