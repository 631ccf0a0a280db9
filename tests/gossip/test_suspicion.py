"""Lifeguard's suspicion timer (memberlist suspicion.go) and the formulas that size it (util.go)."""

from __future__ import annotations

import math

import pytest
from meshagent.gossip.membership import Suspicion
from meshagent.gossip.tunables import LAN, LOCAL, WAN, push_pull_scale, retransmit_limit, suspicion_timeout


def test_the_timeout_starts_at_the_maximum() -> None:
    s = Suspicion(10.0, 3, 2.0, 30.0, "a")
    assert s.deadline == 40.0 and s.confirmations == {"a"} and s.n == 0


def test_without_expected_confirmations_the_minimum_applies_at_once() -> None:
    s = Suspicion(10.0, 0, 2.0, 30.0, "a")
    assert s.deadline == 12.0
    assert not s.confirm("b")  # k = 0: nothing more to count
    assert s.deadline == 12.0


@pytest.mark.parametrize(("confirmations", "timeout"), [(0, 30.0), (1, 16.0), (2, 30.0 - 28.0 * math.log(3, 4)),
                                                        (3, 2.0)])
def test_each_independent_confirmation_shrinks_the_timeout_logarithmically(confirmations: int,
                                                                           timeout: float) -> None:
    # memberlist's table: k = 3, min 2 s, max 30 s -> 30, 16, ~7.81 and 2 s after 0..3 confirmations.
    s = Suspicion(0.0, 3, 2.0, 30.0, "a")
    for i in range(confirmations):
        assert s.confirm(f"peer{i}")
    assert s.deadline == pytest.approx(timeout)


def test_repeats_the_original_accuser_and_confirmations_beyond_k_do_not_count() -> None:
    s = Suspicion(0.0, 2, 2.0, 30.0, "a")
    assert not s.confirm("a")  # the accuser itself
    assert s.confirm("b")
    assert not s.confirm("b")  # the same peer twice
    assert s.confirm("c")
    assert s.deadline == 2.0
    assert not s.confirm("d")  # k reached
    assert s.n == 2 and s.deadline == 2.0


def test_the_deadline_is_relative_to_the_start_not_to_the_confirmation() -> None:
    s = Suspicion(100.0, 3, 2.0, 30.0, "a")
    s.confirm("b")
    assert s.deadline == pytest.approx(116.0)


@pytest.mark.parametrize(("n", "scale"), [(0, 1.0), (1, 1.0), (5, 1.0), (10, 1.0), (50, 1.698), (100, 2.0),
                                          (500, 2.698), (1000, 3.0)])
def test_suspicion_timeout_grows_with_log10_of_the_cluster(n: int, scale: float) -> None:
    # memberlist truncates log10(n) to milliseconds; we keep the float, so compare to 1 ms.
    assert suspicion_timeout(3, n, 1.0) == pytest.approx(3 * scale, abs=0.003)


@pytest.mark.parametrize(("n", "limit"), [(0, 0), (1, 3), (9, 3), (10, 6), (99, 6), (100, 9), (999, 9)])
def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_one(n: int, limit: int) -> None:
    assert retransmit_limit(3, n) == limit


@pytest.mark.parametrize(("n", "mult"), [(1, 1), (32, 1), (33, 2), (64, 2), (65, 3), (128, 3), (129, 4),
                                         (1000, 6)])
def test_push_pull_interval_scales_above_32_members(n: int, mult: int) -> None:
    assert push_pull_scale(30.0, n) == 30.0 * mult


def test_lan_and_wan_profiles_hold_memberlists_values() -> None:
    assert (LAN.probe_interval, LAN.probe_timeout, LAN.indirect_checks, LAN.retransmit_mult) == (1.0, 0.5, 3, 4)
    assert (LAN.suspicion_mult, LAN.suspicion_max_timeout_mult, LAN.awareness_max_multiplier) == (4, 6, 8)
    assert (LAN.gossip_interval, LAN.gossip_nodes, LAN.gossip_to_the_dead_time) == (0.2, 3, 30.0)
    assert (LAN.push_pull_interval, LAN.tcp_timeout, LAN.udp_buffer_size, LAN.disable_tcp_pings) == (
        30.0, 10.0, 1400, False)
    assert (WAN.tcp_timeout, WAN.suspicion_mult, WAN.push_pull_interval, WAN.probe_timeout, WAN.probe_interval,
            WAN.gossip_nodes, WAN.gossip_interval, WAN.gossip_to_the_dead_time) == (
        30.0, 6, 60.0, 3.0, 5.0, 4, 0.5, 60.0)


def test_local_profile_holds_memberlists_timings() -> None:
    assert (LOCAL.tcp_timeout, LOCAL.suspicion_mult, LOCAL.push_pull_interval, LOCAL.probe_timeout,
            LOCAL.probe_interval, LOCAL.gossip_interval, LOCAL.gossip_to_the_dead_time) == (
        1.0, 3, 15.0, 0.2, 1.0, 0.1, 15.0)


def test_local_profile_checks_and_retransmits_less() -> None:
    assert (LOCAL.indirect_checks, LOCAL.retransmit_mult) == (1, 2)
