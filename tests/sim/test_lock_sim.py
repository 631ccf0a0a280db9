"""KV locks (`?acquire=`/`?release=`) under the seeded Raft simulator: the real catalog FSM replicated through
crashes, partitions and snapshots, and the client history checked linearizable against the lock model."""

from __future__ import annotations

import os

import pytest
from meshagent.agent.catalog.state import Catalog

from tests.support.lock_linearizability import LockOp, check_lock_history
from tests.support.sim.lock_workload import LockWorkload
from tests.support.sim.raft_sim import Simulation

# CI runs 24 seeds (~0.3 s each, ~230 lock operations per seed; snapshots installed, crashes, transfers);
# LOCK_SIM_SEEDS=N runs more, LOCK_SIM_SEED=S one.
SEEDS = int(os.environ.get("LOCK_SIM_SEEDS", "24"))
ONLY = os.environ.get("LOCK_SIM_SEED")
CHUNK = 12


def run_seed(seed: int) -> Simulation:
    servers = 3 if seed % 2 == 0 else 5
    sim = Simulation(seed, servers=servers, locks=LockWorkload([f"c{i}" for i in range(3)]))
    replay = f"replay: LOCK_SIM_SEED={seed} pytest tests/sim/test_lock_sim.py"
    try:
        sim.run()
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} ({servers} servers): {exc}\n{replay}") from exc
    result = check_lock_history(sim.history)  # type: ignore[arg-type]
    assert result.ok, f"seed {seed} ({servers} servers): lock history not linearizable\n{result.explanation}\n{replay}"
    return sim


@pytest.mark.sim
@pytest.mark.parametrize("chunk", [int(ONLY)] if ONLY else range(0, SEEDS, CHUNK))
def test_lock_histories_are_linearizable(chunk: int) -> None:
    seeds = [chunk] if ONLY else range(chunk, min(chunk + CHUNK, SEEDS))
    acquired = 0
    for seed in seeds:
        sim = run_seed(seed)
        acquired += sum(1 for op in sim.history if op.kind == "acquire" and op.result is True)  # type: ignore[comparison-overlap]
    assert acquired > 0, "no acquire succeeded: the workload tests nothing"


@pytest.mark.sim
def test_a_broken_lock_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug (acquire ignores another session's hold) makes some seed's history non-linearizable."""
    def lock_ignoring_holder(self: Catalog, index: int, key: str, cmd: dict[str, object]) -> bool:
        old = self.kv_get(key)
        if old is not None and old.session and old.session != cmd["session"]:
            self._kv_put(old.__class__(key=key, value=old.value, flags=0, lock_index=old.lock_index + 1,
                                       session=str(cmd["session"]), create_index=old.create_index,
                                       modify_index=index))
            return True
        return original(self, index, key, cmd)

    original = Catalog._kv_lock
    monkeypatch.setattr(Catalog, "_kv_lock", lock_ignoring_holder)
    caught = []
    for seed in range(6):
        sim = Simulation(seed, servers=3, locks=LockWorkload(["c0", "c1", "c2"]))
        sim.run()
        caught.append(not check_lock_history(sim.history).ok)  # type: ignore[arg-type]
    assert all(caught), caught


def op(client: str, kind: str, invoke: float, complete: float | None, result: object,
       value: str = "v", key: str = "k") -> LockOp:
    return LockOp(client=client, kind=kind, key=key, value=value, invoke=invoke,  # type: ignore[arg-type]
                  complete=complete, result=result, session=f"s-{client}")


@pytest.mark.parametrize("history, ok", [
    # Two holders at once: never linearizable.
    ([op("a", "acquire", 0, 1, True), op("b", "acquire", 2, 3, True)], False),
    # ... unless a's release (unknown outcome) took effect in between.
    ([op("a", "acquire", 0, 1, True), op("a", "release", 1.5, None, None), op("b", "acquire", 2, 3, True)], True),
    # Concurrent acquires: one wins, the other sees the key held.
    ([op("a", "acquire", 0, 2, False), op("b", "acquire", 1, 3, True)], True),
    # A read of a holder, then a stale read of the free key: not linearizable.
    ([op("a", "acquire", 0, 1, True, "x"), op("b", "get", 2, 3, ("x", "s-a", 1)), op("b", "get", 4, 5, None)],
     False),
    # LockIndex counts acquisitions by a new holder, not re-acquires by the same one.
    ([op("a", "acquire", 0, 1, True, "x"), op("a", "acquire", 2, 3, True, "y"), op("a", "release", 4, 5, True, "z"),
      op("b", "acquire", 6, 7, True, "w"), op("c", "get", 8, 9, ("w", "s-b", 2))], True),
    ([op("a", "acquire", 0, 1, True, "x"), op("a", "acquire", 2, 3, True, "y"), op("c", "get", 4, 5, ("y", "s-a", 2))],
     False),
    # A release by a non-holder fails; answered True it is a violation.
    ([op("a", "acquire", 0, 1, True), op("b", "release", 2, 3, True)], False),
])
def test_the_checker_accepts_and_refuses(history: list[LockOp], ok: bool) -> None:
    assert check_lock_history(history).ok is ok
