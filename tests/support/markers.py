"""Which tests `make test-fast` leaves out, beyond those their own files mark `slow`, `sim` or `cluster`.

Measured with `pytest --durations=0` on 2026-12-04 (a loaded 2-core machine: 2-4x a quiet one): every test
over ~4 s there (~1.5 s quiet) is `slow`, and the suites that drive other processes end to end (the
agent's HTTP clients, Debian's serf), so that test-fast stays under 90 s (109 s measured before these
last ones at load ~2.5). The owners of these files may
move the mark into them; tests/test_markers.py fails when a name here no longer matches a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ALL = "*"  # every test of the module

SLOW_TESTS: dict[str, set[str]] = {
    "integration/test_single_node.py": {  # real agents, restarts, `make dev` in a copy of the repo (120 s)
        "test_readme_make_dev_starts_a_working_agent",
        "test_restart_with_data_dir_keeps_api_services_kv_and_ttl_status",
        "test_dig_and_dnspython_return_exactly_passing_instances",
        "test_broken_service_file_is_named_by_validate_start_and_reload",
        "test_second_agent_on_same_data_dir_is_refused"},
    "raft/test_hostile_core.py": {"test_the_decoder_refuses_hostile_messages_or_returns_in_range_values",
                                  "test_the_core_survives_forged_well_formed_messages"},
    "raft/test_linearizability.py": {"test_agrees_with_brute_force",
                                     "test_generated_history_with_a_stale_read_is_rejected",
                                     "test_generated_linearizable_histories_pass"},
    "raft/test_large_writes.py": {ALL},  # a 3-server cluster
    "raft/test_batching.py": {"test_pipelined_writes_share_entries_but_keep_their_own_answers_and_indexes"},
    "http/test_fuzz.py": {"test_fuzz_10000_requests"},
    "http/test_e2e_agent.py": {ALL},  # a real agent process and its clients, end to end
    "http/test_snapshot_archive.py": {"test_fuzz_mutated_archive", "test_fuzz_mutated_tar_inside_valid_gzip"},
    "http/test_snapshot_upload.py": {"test_a_restore_too_large_for_one_raft_frame_is_refused_unread"},
    "http/test_filter.py": {"test_parse_of_rendered_expression_evaluates_like_the_reference"},
    "gossip/test_hostile_live.py": {ALL},  # a live 3-server cluster
    "gossip/test_agent_gossip_config.py": {"test_coalesced_events_reach_the_handler_once_per_name"},
    "gossip/test_wire_against_serf.py": {ALL},  # interop with Debian's serf process, 2 s waits for drops
    "gossip/test_wire.py": {"test_fuzz_readers_only_raise_wire_errors"},
    "gossip/test_serf_messages.py": {"test_random_bytes_only_raise_message_error"},
    "gossip/test_hostile_cores.py": {"test_any_mix_of_valid_and_hostile_input_keeps_the_invariants"},
    "dns/test_dns_hostile.py": {"test_tcp_per_client_cap_read_deadline_and_idle_timeout",
                                "test_edns_srv_over_1000_instances_is_fast_and_bounded"},
    "dns/test_dns.py": {"test_fuzz_random_and_mutated_packets"},
    "dns/test_dns_limits.py": {"test_recursor_forwards_beyond_the_cap_get_servfail_at_once"},
}


def mark_slow(item: pytest.Item) -> None:
    """Add the `slow` mark to `item` when SLOW_TESTS lists it."""
    try:
        rel = item.path.relative_to(TESTS).as_posix()
    except ValueError:
        return
    names = SLOW_TESTS.get(rel)
    if names and (ALL in names or getattr(item, "originalname", item.name) in names):
        item.add_marker(pytest.mark.slow)
