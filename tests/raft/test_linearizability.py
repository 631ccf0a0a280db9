"""The linearizability checker itself: hand-made histories both ways, generated histories, and its speed."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.linearizability import Op, check_history

K = "svc/web/leader"


def put(client: str, value: str, invoke: float, complete: float | None, key: str = K) -> Op:
    return Op(client, "put", key, value=value, invoke=invoke, complete=complete, result=True)


def get(client: str, result: str | None, invoke: float, complete: float | None, key: str = K) -> Op:
    return Op(client, "get", key, invoke=invoke, complete=complete, result=result)


def cas(client: str, expected: str | None, value: str, result: bool | None, invoke: float,
        complete: float | None, key: str = K) -> Op:
    return Op(client, "cas", key, value=value, expected=expected, invoke=invoke, complete=complete, result=result)


def assert_ok(ops: list[Op], **kwargs: object) -> None:
    result = check_history(ops, **kwargs)  # type: ignore[arg-type]
    assert result.ok, result.explanation
    assert result.key is None


def assert_rejected(ops: list[Op], key: str = K, **kwargs: object) -> str:
    result = check_history(ops, **kwargs)  # type: ignore[arg-type]
    assert not result.ok, f"accepted a non-linearizable history:\n{result.explanation}"
    assert result.key == key
    assert repr(key) in result.explanation
    assert "too large" not in result.explanation  # a real verdict, not a give-up
    return result.explanation


# ------------------------------------------------------------------------------------ linearizable by hand

def test_empty_history() -> None:
    assert_ok([])


def test_sequential_history() -> None:
    assert_ok([
        get("c1", None, 0, 1),
        put("c1", "a", 2, 3),
        get("c2", "a", 4, 5),
        cas("c1", "a", "b", True, 6, 7),
        cas("c2", "a", "c", False, 8, 9),
        get("c3", "b", 10, 11),
        cas("c3", None, "d", False, 12, 13),
        put("c1", "e", 14, 15),
        get("c2", "e", 16, 17),
    ])


@pytest.mark.parametrize("seen", ["a", "b"])
def test_get_overlapping_a_put_sees_old_or_new(seen: str) -> None:
    assert_ok([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, 6),
        get("c2", seen, 3, 4),
        get("c2", "b", 7, 8),
    ])


def test_reads_during_a_put_may_flip_once() -> None:
    assert_ok([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, 10),
        get("c2", "a", 3, 4),
        get("c3", "a", 3.5, 5),
        get("c2", "b", 5, 6),
        get("c3", "b", 7, 8),
    ])


def test_get_may_be_ordered_before_a_put_that_completed_during_it() -> None:
    # The put finishes before the get does, but they overlap, so the get may still see the old value.
    assert_ok([put("c1", "a", 0, 1), put("c1", "b", 2, 3), get("c2", "a", 1.5, 4)])


def test_concurrent_cas_one_winner() -> None:
    for win in ("b", "c"):
        assert_ok([
            put("c1", "a", 0, 1),
            cas("c2", "a", "b", win == "b", 2, 6),
            cas("c3", "a", "c", win == "c", 3, 5),
            get("c1", win, 7, 8),
        ])


def test_cas_on_absent_key_and_failed_cas() -> None:
    assert_ok([
        cas("c1", None, "a", True, 0, 1),
        cas("c2", None, "b", False, 2, 3),
        cas("c2", "zzz", "c", False, 4, 5),
        get("c1", "a", 6, 7),
    ])


def test_failed_cas_explained_by_a_concurrent_write() -> None:
    # cas(a->c) fails: the concurrent put b took effect first.
    assert_ok([
        put("c1", "a", 0, 1),
        put("c2", "b", 2, 5),
        cas("c3", "a", "c", False, 3, 4),
        get("c1", "b", 6, 7),
    ])


def test_unknown_outcome_put_later_visible() -> None:
    assert_ok([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, None),      # timed out
        get("c2", "a", 3, 4),
        get("c2", "a", 20, 21),
        get("c3", "b", 30, 31),        # took effect long after the client gave up
        get("c2", "b", 40, 41),
    ])


def test_unknown_outcome_put_never_visible() -> None:
    assert_ok([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, None),
        get("c2", "a", 3, 4),
        put("c1", "c", 5, 6),
        get("c2", "c", 7, 8),
        get("c3", "c", 100, 101),
    ])


def test_unknown_outcome_cas_either_way() -> None:
    base = [put("c1", "a", 0, 1), cas("c1", "a", "b", None, 2, None)]
    assert_ok([*base, get("c2", "b", 5, 6)])
    assert_ok([*base, get("c2", "a", 5, 6)])
    # ...but if it succeeds, it does so only from the expected value.
    assert_rejected([*base, put("c3", "x", 3, 4), get("c2", "b", 5, 6)])


def test_unknown_outcome_get_is_ignored() -> None:
    assert_ok([put("c1", "a", 0, 1), get("c2", "never-written", 2, None), get("c2", "a", 3, 4)])


def test_equal_timestamps_count_as_concurrent() -> None:
    assert_ok([put("c1", "a", 0, 1), put("c1", "b", 1, 2), get("c2", "a", 2, 3)])


def test_initial_values() -> None:
    history = [get("c1", "seed", 0, 1), put("c1", "a", 2, 3), get("c2", "a", 4, 5)]
    assert_ok(history, initial={K: "seed"})
    assert_rejected(history)  # the key starts absent without `initial`


def test_keys_are_independent_registers() -> None:
    assert_ok([
        put("c1", "a", 0, 1, key="x"),
        put("c2", "b", 0, 1, key="y"),
        get("c1", "b", 2, 3, key="y"),
        get("c2", "a", 2, 3, key="x"),
        get("c3", None, 2, 3, key="z"),
    ])


# -------------------------------------------------------------------------------- NOT linearizable by hand

def test_rejects_stale_read_after_completed_write() -> None:
    explanation = assert_rejected([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, 3),
        get("c2", "a", 4, 5),
    ])
    assert "get() -> 'a'" in explanation
    assert "could not be placed" in explanation


def test_rejects_read_of_value_never_written() -> None:
    explanation = assert_rejected([
        put("c1", "a", 0, 1),
        put("c2", "b", 2, 6),
        get("c3", "ghost", 3, 5),   # concurrent with a write, still impossible
    ])
    assert "'ghost'" in explanation


def test_rejects_two_successful_cas_from_the_same_value() -> None:
    assert_rejected([
        put("c1", "a", 0, 1),
        cas("c2", "a", "b", True, 2, 5),
        cas("c3", "a", "c", True, 3, 6),
    ])


def test_rejects_non_monotonic_reads() -> None:
    assert_rejected([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, 20),        # still in flight the whole time
        get("c2", "b", 3, 4),
        get("c3", "a", 5, 6),         # after someone saw b: a is gone for good
    ])


def test_rejects_non_monotonic_reads_through_unknown_write() -> None:
    assert_rejected([
        put("c1", "a", 0, 1),
        put("c1", "b", 2, None),
        get("c2", "b", 3, 4),
        get("c2", "a", 5, 6),
    ])


def test_rejects_lost_acknowledged_write() -> None:
    assert_rejected([
        put("c1", "a", 0, 1),
        put("c2", "b", 2, 3),         # acknowledged
        get("c3", "a", 4, 5),
        get("c1", "a", 6, 7),
        get("c2", "a", 8, 9),
    ])


def test_rejects_cas_false_although_value_matched_in_every_order() -> None:
    assert_rejected([
        put("c1", "a", 0, 1),
        get("c2", "a", 2, 3),
        cas("c3", "a", "b", False, 1.5, 3.5),
        get("c1", "a", 4, 5),
    ])


def test_rejects_cas_true_on_mismatch() -> None:
    assert_rejected([put("c1", "a", 0, 1), cas("c2", "x", "b", True, 2, 3)])


def test_reports_the_bad_key_among_good_ones() -> None:
    history = [
        put("c1", "a", 0, 1, key="alpha"),
        get("c2", "a", 2, 3, key="alpha"),
        put("c1", "a2", 0, 1, key="omega"),
        get("c2", "a2", 2, 3, key="omega"),
        put("c1", "m", 0, 1, key="mid"),
        put("c1", "n", 2, 3, key="mid"),
        get("c2", "m", 4, 5, key="mid"),
    ]
    assert_rejected(history, key="mid")


def test_search_limit_fails_instead_of_passing() -> None:
    # Many concurrent puts and a read of a never-written value: the search must visit many states.
    history = [put(f"c{i}", f"v{i}", 0, 10) for i in range(12)] + [get("r", "ghost", 11, 12)]
    result = check_history(history, max_states=50)
    assert not result.ok
    assert result.key == K
    assert "too large" in result.explanation
    assert_rejected(history)  # with the default bound it reaches a real verdict


def test_rejects_malformed_ops() -> None:
    with pytest.raises(ValueError):
        check_history([put("c1", "a", 5, 4)])
    with pytest.raises(ValueError):
        check_history([Op("c1", "put", K, value=None, invoke=0, complete=1)])
    with pytest.raises(ValueError):
        check_history([Op("c1", "del", K, invoke=0, complete=1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_history([cas("c1", "a", "b", None, 0, 1)])


# ---------------------------------------------------------------------------------- generated histories

@dataclass
class Step:
    client: int
    key: int
    kind: str          # put / cas / get
    gap: float         # idle time of the client before it invokes
    duration: float
    point: float       # where in [invoke, complete] the op takes effect, 0..1
    outcome: str       # known / lost-applied / lost-never (unknown outcome; took effect or not)
    cas_hits: bool     # cas: expect the current value (else some other value)


def build_history(steps: list[Step], rng: random.Random | None = None) -> list[Op]:
    """Run `steps` as a sequential execution ordered by linearization points, inside real-time intervals."""
    clocks: dict[int, float] = {}
    timed = []
    for n, s in enumerate(steps):
        invoke = clocks.get(s.client, 0.0) + s.gap
        complete = invoke + s.duration
        clocks[s.client] = complete
        timed.append((invoke + s.point * s.duration, n, invoke, complete, s))
    timed.sort(key=lambda t: (t[0], t[1]))
    state: dict[str, str | None] = {}
    written: dict[str, list[str]] = {}
    ops = []
    for _, n, invoke, complete, s in timed:
        key = f"k{s.key}"
        current = state.get(key)
        unknown = s.outcome != "known"
        applies = s.outcome != "lost-never"
        if s.kind == "get":
            op = get(f"c{s.client}", current, invoke, complete, key)
        elif s.kind == "put":
            value = f"v{n}"
            op = put(f"c{s.client}", value, invoke, complete, key)
            if applies:
                state[key] = value
                written.setdefault(key, []).append(value)
        else:
            if s.cas_hits:
                expected = current
            else:
                others = [v for v in [None, *written.get(key, []), f"never{n}"] if v != current]
                expected = others[n % len(others)] if rng is None else rng.choice(others)
            value = f"v{n}"
            ok = expected == current
            op = cas(f"c{s.client}", expected, value, ok, invoke, complete, key)
            if applies and ok:
                state[key] = value
                written.setdefault(key, []).append(value)
        if unknown:
            op = replace(op, complete=None, result=None)
        ops.append(op)
    ops.sort(key=lambda op: op.invoke)  # the checker must not rely on the input order
    return ops


def steps_strategy(keys: int = 3, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[list[Step]]:
    return st.lists(
        st.builds(
            Step,
            client=st.integers(0, 4),
            key=st.integers(0, keys - 1),
            kind=st.sampled_from(["put", "cas", "get", "get"]),
            gap=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
            duration=st.sampled_from([0.0, 1.0, 2.0, 5.0, 12.0]),
            point=st.floats(0.0, 1.0),
            outcome=st.sampled_from(["known"] * 6 + ["lost-applied", "lost-never"]),
            cas_hits=st.booleans(),
        ),
        min_size=min_size,
        max_size=max_size,
    )


@settings(max_examples=300, deadline=None)
@given(steps=steps_strategy())
def test_generated_linearizable_histories_pass(steps: list[Step]) -> None:
    assert_ok(build_history(steps))


def _definitely_overwritten(ops: list[Op], g: Op) -> list[str]:
    """Values of g's key that, in every linearization, were overwritten before g was invoked.

    Value v was written by a completed successful write w1 (its only writer: values are unique), and a
    completed successful write w2 was invoked after w1 completed and completed before g was invoked.
    """
    writes = [op for op in ops if op.key == g.key and op.complete is not None and op.kind != "get"
              and op.result is True]
    # The latest-invoked write w2 that completed before g, then every w1 that completed before w2 began.
    latest = max((w2.invoke for w2 in writes if w2.complete < g.invoke), default=None)  # type: ignore[operator]
    if latest is None:
        return []
    return sorted({w1.value for w1 in writes if w1.complete < latest})  # type: ignore[misc, operator]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                  HealthCheck.too_slow])
@given(steps=steps_strategy(keys=2, min_size=12), data=st.data())
def test_generated_history_with_a_stale_read_is_rejected(steps: list[Step], data: st.DataObject) -> None:
    ops = build_history(steps)
    targets = [(i, _definitely_overwritten(ops, op)) for i, op in enumerate(ops)
               if op.kind == "get" and op.complete is not None]
    targets = [(i, values) for i, values in targets if values]
    assume(targets)
    i, values = data.draw(st.sampled_from(targets))
    stale = data.draw(st.sampled_from(values))
    ops[i] = replace(ops[i], result=stale)
    assert_rejected(ops, key=ops[i].key)


def random_history(rng: random.Random, n: int, clients: int, keys: int = 1, lost: float = 0.02) -> list[Op]:
    steps = [
        Step(
            client=rng.randrange(clients),
            key=rng.randrange(keys),
            kind=rng.choices(["put", "cas", "get"], weights=[3, 2, 5])[0],
            gap=rng.choice([0.0, rng.uniform(0, 2)]),
            duration=rng.uniform(0.1, 10.0),
            point=rng.random(),
            outcome=rng.choices(["known", "lost-applied", "lost-never"], weights=[1 - lost, lost / 2, lost / 2])[0],
            cas_hits=rng.random() < 0.7,
        )
        for _ in range(n)
    ]
    return build_history(steps, rng)


def test_stale_read_mutation_is_found_in_a_long_history() -> None:
    rng = random.Random(7)
    ops = random_history(rng, 400, clients=6, keys=2)
    assert_ok(ops)
    mutated = 0
    for i in rng.sample(range(len(ops)), len(ops)):
        if ops[i].kind == "get" and ops[i].complete is not None:
            values = _definitely_overwritten(ops, ops[i])
            if values:
                bad = list(ops)
                bad[i] = replace(ops[i], result=rng.choice(values))
                assert_rejected(bad, key=ops[i].key)
                mutated += 1
                if mutated == 5:
                    break
    assert mutated == 5


# ---------------------------------------------------------------------- against a brute-force reference

def brute_force_linearizable(ops: list[Op], init: str | None) -> bool:
    """Try every subset of unknown-outcome ops and every order of them and the completed ops (tiny histories)."""
    ops = [op for op in ops if op.complete is not None or op.kind != "get"]
    known = [i for i, op in enumerate(ops) if op.complete is not None]
    unknown = [i for i, op in enumerate(ops) if op.complete is None]

    def precedes(a: int, b: int) -> bool:
        done = ops[a].complete
        return done is not None and done < ops[b].invoke

    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(extra)):
                if any(precedes(b, a) for x, a in enumerate(order) for b in order[x + 1:]):
                    continue
                state, legal = init, True
                for i in order:
                    op = ops[i]
                    if op.kind == "get":
                        legal = op.result == state
                    elif op.kind == "put":
                        state = op.value
                    elif op.complete is None or op.result:
                        legal = op.complete is None or state == op.expected
                        if state == op.expected:
                            state = op.value
                    else:
                        legal = state != op.expected
                    if not legal:
                        break
                if legal:
                    return True
    return False


@st.composite
def arbitrary_small_history(draw: st.DrawFn) -> list[Op]:
    """Any few ops on one key, linearizable or not; written values unique, reads/expectations of any value."""
    n = draw(st.integers(1, 6))
    values = [None, "ghost"] + [f"w{k}" for k in range(n)]
    ops = []
    for k in range(n):
        kind = draw(st.sampled_from(["put", "cas", "get"]))
        invoke = draw(st.integers(0, 8))
        complete = None if draw(st.integers(0, 4)) == 0 else invoke + draw(st.integers(0, 5))
        if kind == "put":
            ops.append(put(f"c{k}", f"w{k}", invoke, complete))
        elif kind == "cas":
            result = None if complete is None else draw(st.booleans())
            ops.append(cas(f"c{k}", draw(st.sampled_from(values)), f"w{k}", result, invoke, complete))
        else:
            ops.append(get(f"c{k}", draw(st.sampled_from(values)), invoke, complete))
    return ops


@settings(max_examples=1500, deadline=None)
@given(ops=arbitrary_small_history(), init=st.sampled_from([None, "w1", "seed"]))
def test_agrees_with_brute_force(ops: list[Op], init: str | None) -> None:
    expected = brute_force_linearizable(ops, init)
    result = check_history(ops, initial={K: init})
    assert result.ok == expected, result.explanation


# ------------------------------------------------------------------------------------------- performance

def test_two_thousand_ops_on_one_key_with_eight_clients_is_fast() -> None:
    rng = random.Random(2024)
    ops = random_history(rng, 2000, clients=8)
    assert len(ops) == 2000
    assert len({op.key for op in ops}) == 1
    assert sum(op.complete is None for op in ops) > 0
    started = time.monotonic()
    assert_ok(ops)
    elapsed = time.monotonic() - started
    assert elapsed < 20.0, f"checking 2,000 ops took {elapsed:.1f}s"

    # Rejecting is a full search of what is reachable: also bounded. A stale read near the end:
    i = next(i for i in reversed(range(len(ops))) if ops[i].kind == "get" and ops[i].complete is not None
             and _definitely_overwritten(ops, ops[i]))
    bad = list(ops)
    bad[i] = replace(ops[i], result=_definitely_overwritten(ops, ops[i])[0])
    started = time.monotonic()
    assert_rejected(bad, key="k0")
    elapsed = time.monotonic() - started
    assert elapsed < 20.0, f"rejecting 2,000 ops took {elapsed:.1f}s"
