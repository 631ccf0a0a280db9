"""Raft timing and batching knobs, in one place with their meaning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Every tunable of the Raft core. Times are seconds; defaults suit a LAN (Consul's raft_multiplier 1)."""

    # A follower (or candidate) that hears no leader for a random time in [T, 1.5T) starts an election.
    # (Not [T, 2T) as in the Raft paper: with pre-vote, split votes are rare enough on 3-5 servers, and
    # the narrower spread keeps failover under 2T, heartbeat gap and vote round included.)
    # Consul's production advice (raft_multiplier 1) gives 1 s.
    election_timeout: float = 1.0
    # How often an idle leader sends AppendEntries, so followers keep their election timer from firing.
    heartbeat_interval: float = 0.1
    # A leader serves `default` reads from its own state only while a quorum acknowledged it within this
    # time. It must stay below election_timeout: followers refuse to vote for anyone else for that long.
    leader_lease_timeout: float = 0.5
    # Entries per AppendEntries; bigger batches amortise per-message cost, smaller ones bound latency.
    max_entries_per_append: int = 1024
    # Entry bytes per AppendEntries (at least one entry is always sent): keeps every append far below the
    # transport's frame cap (16 MiB for peers it cannot verify), whatever the entries hold.
    max_bytes_per_append: int = 4 * 1024 * 1024
    # AppendEntries a leader keeps in flight per follower before waiting for answers (pipelining).
    max_inflight: int = 16
    # A pipelined follower that answers nothing for this long is probed again from its match index.
    inflight_timeout: float = 0.5
    # InstallSnapshot chunk size in bytes.
    snapshot_chunk_bytes: int = 256 * 1024
    # Candidates first ask whether they could win (pre-vote), so a partitioned node rejoining with a
    # high term cannot depose a healthy leader.
    pre_vote: bool = True
    # A leader that hears from no quorum for an election timeout steps down.
    check_quorum: bool = True
    # Entries kept in the log behind a snapshot so that slightly lagging followers need no snapshot.
    trailing_logs: int = 10000
    # Applied entries since the last snapshot that trigger a new one (the runtime's decision).
    snapshot_threshold: int = 16384
