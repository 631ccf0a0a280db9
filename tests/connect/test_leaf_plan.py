"""The agent's leaf schedule, pure: renewal in 60-90 % of the life from receipt, reissue after a root change,
backoff while no server signs, strictly increasing indexes, idle services forgotten."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.connect import leaf_plan
from meshagent.agent.connect.leaf_plan import IDLE_TTL, RETRY_MAX, RETRY_MIN, LeafRecord
from meshagent.agent.connect.renewal import ROOT_CHANGE_JITTER

HOUR = 3600.0


def leaf(valid_after: float, valid_before: float, index: int = 5, root: str = "r1") -> LeafRecord:
    return LeafRecord("web", "spiffe://td/ns/default/dc/dc1/svc/web", "CERT", (), "KEY", 7, valid_after,
                      valid_before, root, index)


@given(st.floats(0, 1e9), st.floats(2, 1e7), st.floats(0, 300), st.integers(0, 2**32))
def test_renewal_falls_in_60_to_90_percent_of_the_life_counted_from_receipt(now: float, life: float, skew: float,
                                                                             seed: int) -> None:
    state = leaf_plan.new_state("web", now)
    leaf_plan.signed(state, leaf(now - skew, now + life), "r1", now, random.Random(seed))
    lo, hi = now + 0.6 * life, now + 0.9 * life
    assert max(lo, now + leaf_plan.MIN_REISSUE) - 1e-6 <= state.renew_at <= max(hi, now + leaf_plan.MIN_REISSUE) + 1e-6
    assert not leaf_plan.due(state, now)
    assert leaf_plan.due(state, state.renew_at)


def test_a_backdated_short_leaf_is_not_renewed_at_once() -> None:
    # The CA backdates leaves by a minute; a 10 s test leaf must still live 6-9 s before its renewal.
    state = leaf_plan.new_state("web", 1000.0)
    leaf_plan.signed(state, leaf(940.0, 1010.0), "r1", 1000.0, random.Random(1))
    assert 1006.0 - 1e-9 <= state.renew_at <= 1009.0 + 1e-9


def test_a_leaf_received_past_its_end_is_renewed_after_the_minimum_gap_only() -> None:
    state = leaf_plan.new_state("web", 1000.0)
    leaf_plan.signed(state, leaf(0.0, 900.0), "r1", 1000.0, random.Random(1))
    assert state.renew_at == 1000.0 + leaf_plan.MIN_REISSUE


def test_indexes_strictly_increase_even_when_the_authority_repeats_one() -> None:
    state = leaf_plan.new_state("web", 0.0)
    rng = random.Random(3)
    first = leaf_plan.signed(state, leaf(0, 100, index=9), "r1", 0.0, rng)
    second = leaf_plan.signed(state, leaf(60, 160, index=9), "r1", 60.0, rng)
    third = leaf_plan.signed(state, leaf(120, 220, index=4), "r1", 120.0, rng)
    assert (first.index, second.index, third.index) == (9, 10, 11)
    assert leaf_plan.signed(leaf_plan.new_state("db", 0.0), leaf(0, 100, index=0), "r1", 0.0, rng).index == 1
    assert state.issued == 3 and third.issued_at == 120.0


def test_a_root_change_reissues_leaves_of_other_roots_within_the_jitter_window() -> None:
    rng = random.Random(4)
    for _ in range(200):
        state = leaf_plan.new_state("web", 0.0)
        leaf_plan.signed(state, leaf(0, 72 * HOUR, root="r1"), "r1", 0.0, rng)
        assert leaf_plan.root_changed(state, "r2", 100.0, rng)
        assert 100.0 <= state.renew_at <= 100.0 + ROOT_CHANGE_JITTER
    same = leaf_plan.new_state("web", 0.0)
    leaf_plan.signed(same, leaf(0, 72 * HOUR, root="r2"), "r2", 0.0, rng)
    before = same.renew_at
    assert not leaf_plan.root_changed(same, "r2", 100.0, rng)  # signed by the active root already
    assert not leaf_plan.root_changed(leaf_plan.new_state("db", 0.0), "r2", 100.0, rng)  # nothing to reissue
    assert same.renew_at == before


def test_a_leaf_signed_by_a_root_that_is_no_longer_active_is_reissued_soon() -> None:
    state = leaf_plan.new_state("web", 0.0)
    leaf_plan.signed(state, leaf(0, 72 * HOUR, root="old"), "new", 50.0, random.Random(5))
    assert 50.0 <= state.renew_at <= 50.0 + ROOT_CHANGE_JITTER


def test_failures_back_off_exponentially_with_jitter_up_to_the_cap_and_keep_the_leaf() -> None:
    state = leaf_plan.new_state("web", 0.0)
    rng = random.Random(6)
    kept = leaf_plan.signed(state, leaf(0, 100), "r1", 0.0, rng)
    delays = []
    for n in range(12):
        now = 100.0 + n * 1000.0
        delays.append(leaf_plan.failed(state, now, rng) - now)
        assert state.leaf is kept
        assert not leaf_plan.due(state, now) and leaf_plan.due(state, state.retry_at)
    for n, delay in enumerate(delays):
        nominal = min(RETRY_MAX, RETRY_MIN * 2**n)
        assert nominal / 2 <= delay <= nominal
    assert max(delays) <= RETRY_MAX
    leaf_plan.signed(state, leaf(20000, 20100), "r1", 20000.0, rng)
    assert state.failures == 0 and state.retry_at == 0.0


def test_an_unregistered_service_is_forgotten_after_the_idle_ttl_a_registered_one_never() -> None:
    state = leaf_plan.new_state("web", 0.0)
    leaf_plan.signed(state, leaf(0, 1000 * HOUR), "r1", 0.0, random.Random(7))
    assert not leaf_plan.idle(state, IDLE_TTL - 1, registered=False)
    assert leaf_plan.idle(state, IDLE_TTL, registered=False)  # at its own wake moment: no spinning on it
    assert not leaf_plan.idle(state, 10 * IDLE_TTL, registered=True)
    assert leaf_plan.next_wake(state, 0.0, registered=False) == IDLE_TTL  # before the renewal: check idleness
    assert leaf_plan.next_wake(state, 0.0, registered=True) == state.renew_at
    leaf_plan.requested(state, 50.0)
    leaf_plan.requested(state, 10.0)  # an older moment never moves it back
    assert state.last_requested == 50.0 and not leaf_plan.idle(state, IDLE_TTL + 1, registered=False)


def test_the_private_key_is_not_in_the_record_repr() -> None:
    record = leaf(0, 1)
    assert "KEY" not in repr(record) and "CERT" in repr(record)
