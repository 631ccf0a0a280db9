"""The Raft core: a pure state machine. Time and messages go in; sends, storage work and applies come out.

Callers do not carry out outputs themselves: `raft.executor` sorts each step's outputs into a `Ready`
(persist → send → apply → publish, see raft/ready.py), carries it out through the caller's I/O, and then
calls `advance()`, which reports the leader's durable log (`persisted()`) and builds the replication
messages (`flush()`, so many proposals or acknowledgements become one AppendEntries per follower).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack

from .config import RaftConfig
from .entry import COMMAND, CONFIG, NOOP, Entry, Membership, SnapshotMeta
from .messages import (
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = "follower", "pre-candidate", "candidate", "leader"

# A message whose term is this far ahead of ours is refused: real terms move by a few per election, and a
# forged huge term would otherwise burn the term space (terms stay below 2^62 on the wire) in one frame.
MAX_TERM_JUMP = 2**32
# A follower that has heard from no leader for this many election timeouts accepts AppendEntries from a
# server outside its configurations: it may have missed the entries that added today's leader (Raft thesis
# 4.2.2), and would otherwise never hear of them. A healthy cluster's followers hear their leader every
# heartbeat, so a stranger's forged AppendEntries is refused there.
STRANGER_LEADER_AFTER = 3


# ---------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Send:
    """Send `msg` to server `to`."""

    to: str
    msg: Message


@dataclass(frozen=True, slots=True)
class PersistState:
    """Make the current term and vote durable."""

    term: int
    vote: str | None


@dataclass(frozen=True, slots=True)
class AppendLog:
    """Append these entries to the durable log."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class TruncateLog:
    """Remove log entries with index >= from_index (they conflict with the leader's)."""

    from_index: int


@dataclass(frozen=True, slots=True)
class CompactLog:
    """Entries up to `upto_index` are covered by a snapshot and may be dropped."""

    upto_index: int
    upto_term: int


@dataclass(frozen=True, slots=True)
class Apply:
    """Committed entries, in order, for the state machine."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """A snapshot from the leader: save it, restore the state machine from it; reset the log if asked."""

    meta: SnapshotMeta
    data: bytes
    reset_log: bool


@dataclass(frozen=True, slots=True)
class ReadReady:
    """A linearizable read may be served once the state machine has applied `index`."""

    ctx: object
    index: int


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """A read could not be confirmed (not leader, leadership lost)."""

    ctx: object
    reason: str


@dataclass(frozen=True, slots=True)
class RoleChange:
    """This node's role, term or known leader changed."""

    role: str
    term: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class FollowerLostEntries:
    """Data loss on `server`: it had acknowledged entries up to `acknowledged` and now holds only up to `held`.

    The leader sends them again; the runtime reports it (a follower's storage lost synced bytes).
    """

    server: str
    held: int
    acknowledged: int


Output = Send | PersistState | AppendLog | TruncateLog | CompactLog | Apply | InstallSnapshot | ReadReady | \
    ReadFailed | RoleChange | FollowerLostEntries


class NotLeader(Exception):
    """Only the leader accepts this; `leader` is who is, if known."""

    def __init__(self, leader: str | None, reason: str = "not the leader") -> None:
        super().__init__(reason)
        self.leader = leader


def encode_membership(membership: Membership) -> bytes:
    """CONFIG entry data for a membership."""
    return msgpack.packb(membership.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]


def decode_membership(data: bytes) -> Membership:
    """The membership in a CONFIG entry (ValueError when malformed; the wire decoder already refused those)."""
    return Membership.decode(data)


# ---------------------------------------------------------------------------------------------- state


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower's replication."""

    next_index: int
    match_index: int = 0
    mode: str = "probe"  # probe: one append at a time; replicate: pipelined; snapshot: sending chunks
    sent: dict[int, float] = field(default_factory=dict)  # seq -> send time of unanswered messages
    last_response: float = 0.0
    acked_sent_at: float = float("-inf")  # send time of the newest message it answered (for the lease)
    acked_seq: int = 0
    snapshot_index: int = 0
    snapshot_offset: int = 0
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class ProgressView:
    """A read-only copy of the leader's view of one follower (for health checks and autopilot)."""

    match_index: int
    next_index: int
    last_response: float  # time of its newest answer (-inf-like 0.0 when none yet)
    mode: str


@dataclass(slots=True)
class _PendingRead:
    ctx: object
    index: int
    seq: int


class RaftNode:
    """One Raft server's protocol state."""

    def __init__(self, node_id: str, config: RaftConfig, rng: random.Random, now: float, *,
                 term: int = 0, vote: str | None = None, entries: list[Entry] | None = None,
                 base_index: int = 0, base_term: int = 0,
                 snapshot: SnapshotMeta | None = None, snapshot_data: bytes = b"",
                 snapshot_check: Callable[[bytes], bool] | None = None) -> None:
        self.id = node_id
        # Says whether a received snapshot's data is one the state machine can restore: a snapshot that is
        # not is refused before it is saved (it would fail every restart after).
        self._snapshot_check = snapshot_check
        self.config = config
        self._rng = rng
        self.term = term
        self.vote = vote
        self.role = FOLLOWER
        self.leader_id: str | None = None
        # The log in memory: entries after (base_index, base_term), the point compaction stopped at.
        self._log: list[Entry] = list(entries or [])
        self._base_index, self._base_term = base_index, base_term
        self._snapshot = snapshot
        self._snapshot_data = snapshot_data
        start = snapshot.index if snapshot else 0
        self.commit_index = start
        self.applied_index = start
        self._persisted_index = self.last_index
        self._configs: list[tuple[int, Membership]] = []
        self._base_membership = snapshot.membership if snapshot else Membership()
        self._base_membership_index = start
        for e in self._log:
            if e.kind == CONFIG and e.index > start:
                self._configs.append((e.index, decode_membership(e.data)))
        self.membership = self._latest_membership()
        self._known: frozenset[str] | None = None  # every server in any configuration we hold (cached)
        self._caught_up_at: int | None = None
        self.dropped = 0  # messages refused: from strangers, inconsistent claims, answers to nothing we sent
        self._progress: dict[str, Progress] = {}
        self._votes: set[str] = set()
        self._seq = 0
        self._pending_reads: list[_PendingRead] = []
        self._waiting_reads: list[object] = []  # reads that arrived before this leader committed in its term
        self._read_round_needed = False
        self._transfer: tuple[str, float] | None = None
        self._incoming: tuple[int, int, bytearray] | None = None  # snapshot being received
        self._last_leader_contact = float("-inf")
        self._started = now
        self._election_deadline = now + self._random_timeout()
        if self.membership.voters == {self.id}:
            self._election_deadline = now  # a lone voter has nobody to wait for
        self._heartbeat_due = float("inf")
        self._check_quorum_due = float("inf")

    # ------------------------------------------------------------------------------------------ log

    @property
    def last_index(self) -> int:
        """Index of the last entry in the log."""
        return self._base_index + len(self._log)

    @property
    def last_term(self) -> int:
        """Term of the last entry in the log."""
        return self._log[-1].term if self._log else self._base_term

    @property
    def is_leader(self) -> bool:
        """Whether this node leads now."""
        return self.role == LEADER

    @property
    def first_index(self) -> int:
        """Index of the first entry still held."""
        return self._base_index + 1

    @property
    def last_leader_contact(self) -> float | None:
        """When this node last heard from a leader of its term (the `now` it was given), None if never."""
        return None if self._last_leader_contact == float("-inf") else self._last_leader_contact

    @property
    def membership_index(self) -> int:
        """Log index of the configuration in effect (the latest one appended, committed or not)."""
        return self._configs[-1][0] if self._configs else self._base_membership_index

    @property
    def caught_up_index(self) -> int | None:
        """The commit index at which this node first held everything a leader had committed, since it started.

        A follower sets it when an AppendEntries leaves it committed up to the leader's commit index; a leader
        when the first entry of its term commits. The runtime serves reads as authoritative only once it has
        applied this far (until then its state machine may be older than what the cluster told clients).
        """
        return self._caught_up_at

    def progress(self) -> Mapping[str, ProgressView]:
        """The leader's view of each follower's replication (empty unless leading)."""
        return {sid: ProgressView(pr.match_index, pr.next_index, pr.last_response, pr.mode)
                for sid, pr in self._progress.items()}

    def known_servers(self) -> frozenset[str]:
        """IDs in any configuration this node holds (latest, uncommitted and the snapshot's)."""
        if self._known is None:
            self._known = self._base_membership.ids().union(*(m.ids() for _, m in self._configs))
        return self._known

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        """The newest snapshot this node holds."""
        return self._snapshot

    def term_at(self, index: int) -> int | None:
        """The term of entry `index`, or None when it is not (or no longer) known."""
        if index == self._base_index:
            return self._base_term
        if index == 0:
            return 0
        if self._base_index < index <= self.last_index:
            return self._log[index - self._base_index - 1].term
        return None

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (clipped to what is held)."""
        lo = max(lo, self._base_index + 1)
        hi = min(hi, self.last_index)
        if lo > hi:
            return []
        return self._log[lo - self._base_index - 1:hi - self._base_index]

    def membership_at(self, index: int) -> Membership:
        """The membership in force at log index `index`."""
        found = self._base_membership
        for i, m in self._configs:
            if i <= index:
                found = m
        return found

    def _latest_membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._base_membership

    def _append(self, entries: list[Entry]) -> None:
        self._log.extend(entries)
        changed = False
        for e in entries:
            if e.kind == CONFIG:
                self._configs.append((e.index, decode_membership(e.data)))
                changed = True
        if changed:
            self._membership_changed()

    def _truncate(self, from_index: int) -> None:
        del self._log[from_index - self._base_index - 1:]
        self._persisted_index = min(self._persisted_index, from_index - 1)
        before = len(self._configs)
        self._configs = [(i, m) for i, m in self._configs if i < from_index]
        if len(self._configs) != before:
            self._membership_changed()

    def _membership_changed(self) -> None:
        self.membership = self._latest_membership()
        self._known = None
        if self.role == LEADER:
            members = self.membership.ids() - {self.id}
            for sid in list(self._progress):
                if sid not in members:
                    del self._progress[sid]
            for sid in sorted(members):
                if sid not in self._progress:
                    self._progress[sid] = Progress(next_index=self.last_index + 1)

    # ------------------------------------------------------------------------------------------ helpers

    def _random_timeout(self) -> float:
        t = self.config.election_timeout
        return self._rng.uniform(t, 1.5 * t)

    def _quorum(self, voters: frozenset[str]) -> int:
        return len(voters) // 2 + 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_deadline(self) -> float:
        """The time at which `tick` has work to do."""
        if self.role == LEADER:
            if all(s.id == self.id for s in self.membership.servers):
                # Alone (-dev, a single server): nobody to heartbeat and the quorum is us, so no wake-ups
                # until an input arrives. The timers stay armed for when a second server is added.
                return float("inf")
            due = min(self._heartbeat_due, self._check_quorum_due)
            if self._transfer is not None:
                due = min(due, self._transfer[1])
            return due
        return self._election_deadline

    def _become_follower(self, now: float, term: int, leader: str | None, out: list[Output]) -> None:
        was = (self.role, self.term, self.leader_id)
        if term > self.term:
            self.term, self.vote = term, None
            out.append(PersistState(self.term, None))
        if self.role != FOLLOWER:
            self._election_deadline = now + self._random_timeout()
        self.role = FOLLOWER
        self.leader_id = leader
        self._progress.clear()
        self._transfer = None
        self._heartbeat_due = self._check_quorum_due = float("inf")
        self._fail_reads(out, "leadership lost")
        if was != (self.role, self.term, self.leader_id):
            out.append(RoleChange(self.role, self.term, self.leader_id))

    def _fail_reads(self, out: list[Output], reason: str) -> None:
        for read in self._pending_reads:
            out.append(ReadFailed(read.ctx, reason))
        for ctx in self._waiting_reads:
            out.append(ReadFailed(ctx, reason))
        self._pending_reads.clear()
        self._waiting_reads.clear()

    def _emit_apply(self, out: list[Output]) -> None:
        if self.commit_index > self.applied_index:
            batch = self.entries(self.applied_index + 1, self.commit_index)
            self.applied_index = self.commit_index
            out.append(Apply(tuple(batch)))

    # ------------------------------------------------------------------------------------------ inputs

    def bootstrap(self, membership: Membership) -> list[Output]:
        """Start a new cluster with `membership` (identical on every bootstrapper); no-op if the log is not empty.

        A server may already have voted in a later term (a faster peer bootstrapped, won, and died before
        replicating anything): it keeps that term and vote and still takes the bootstrap entry, which is
        the same entry (1, term 1) the peer wrote, so logs keep matching.
        """
        if self.last_index != 0 or self._snapshot is not None:
            return []
        entry = Entry(1, 1, CONFIG, encode_membership(membership))
        self.term = max(self.term, 1)
        self._append([entry])
        if membership.voters == {self.id}:
            self._election_deadline = float("-inf")
        return [PersistState(self.term, self.vote), AppendLog((entry,))]

    def tick(self, now: float) -> list[Output]:
        """Fire the timers that are due at `now`."""
        out: list[Output] = []
        if self.role == LEADER:
            if self._transfer is not None and now >= self._transfer[1]:
                self._transfer = None  # the target did not take over in time; carry on leading
            if self.config.check_quorum and now >= self._check_quorum_due:
                self._check_quorum_due = now + self.config.election_timeout
                if not self._quorum_active(now):
                    self._become_follower(now, self.term, None, out)
                    return out
            if now >= self._heartbeat_due:
                self._heartbeat_due = now + self.config.heartbeat_interval
                self._broadcast_heartbeat(now, out)
            return out
        if now >= self._election_deadline:
            self._election_deadline = now + self._random_timeout()
            if self.id not in self.membership.voters:
                return out  # not bootstrapped, or a non-voter: never campaign
            if self.config.pre_vote:
                self._pre_campaign(now, out)
            else:
                self._campaign(now, out, transfer=False)
        return out

    def _quorum_active(self, now: float) -> bool:
        voters = self.membership.voters
        active = 1 if self.id in voters else 0
        for sid, pr in self._progress.items():
            if sid in voters and now - pr.last_response < self.config.election_timeout:
                active += 1
        return active >= self._quorum(voters)

    def _pre_campaign(self, now: float, out: list[Output]) -> None:
        self.role = PRE_CANDIDATE
        self.leader_id = None
        self._votes = {self.id}
        out.append(RoleChange(self.role, self.term, None))
        if len(self._votes) >= self._quorum(self.membership.voters):
            self._campaign(now, out, transfer=False)
            return
        req = VoteRequest(self.term + 1, self.id, self.last_index, self.last_term, pre_vote=True)
        for sid in sorted(self.membership.voters - {self.id}):
            out.append(Send(sid, req))

    def _campaign(self, now: float, out: list[Output], transfer: bool) -> None:
        self.role = CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader_id = None
        self._votes = {self.id}
        self._election_deadline = now + self._random_timeout()
        out.append(PersistState(self.term, self.vote))
        out.append(RoleChange(self.role, self.term, None))
        if len(self._votes) >= self._quorum(self.membership.voters):
            self._become_leader(now, out)
            return
        req = VoteRequest(self.term, self.id, self.last_index, self.last_term, transfer=transfer)
        for sid in sorted(self.membership.voters - {self.id}):
            out.append(Send(sid, req))

    def _become_leader(self, now: float, out: list[Output]) -> None:
        self.role = LEADER
        self.leader_id = self.id
        self._transfer = None
        self._progress = {sid: Progress(next_index=self.last_index + 1, last_response=now)
                          for sid in sorted(self.membership.ids() - {self.id})}
        entry = Entry(self.last_index + 1, self.term, NOOP, b"")
        self._append([entry])
        out.append(AppendLog((entry,)))
        out.append(RoleChange(self.role, self.term, self.id))
        self._heartbeat_due = now + self.config.heartbeat_interval
        self._check_quorum_due = now + self.config.election_timeout
        self._maybe_commit(now, out)

    def _sticky(self, now: float) -> bool:
        """Whether this node believes in a live leader (and so refuses to help elect another)."""
        if self.role == LEADER:
            return True
        return self.leader_id is not None and now - self._last_leader_contact < self.config.election_timeout

    def receive(self, now: float, src: str, msg: Message) -> list[Output]:
        """Handle one message from server `src`; one that fails the admission checks is dropped and counted."""
        out: list[Output] = []
        if not self._admit(now, src, msg, out):
            self.dropped += 1
            return out
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                if msg.pre_vote or (not msg.transfer and self._sticky(now)):
                    self._on_vote_request(now, src, msg, out)
                    return out
                self._become_follower(now, msg.term, None, out)
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the proposed term, not the voter's
            else:
                leader = msg.leader if isinstance(msg, AppendRequest | SnapshotRequest | TimeoutNow) else None
                self._become_follower(now, msg.term, leader, out)
        elif msg.term < self.term:
            if isinstance(msg, AppendRequest):
                out.append(Send(src, AppendResponse(self.term, False, self.last_index, msg.seq)))
            elif isinstance(msg, SnapshotRequest):
                out.append(Send(src, SnapshotResponse(self.term, 0, 0, False, msg.seq)))
            elif isinstance(msg, VoteRequest):
                out.append(Send(src, VoteResponse(self.term, False, msg.pre_vote)))
            return out
        if isinstance(msg, AppendRequest):
            self._on_append(now, src, msg, out)
        elif isinstance(msg, AppendResponse):
            self._on_append_response(now, src, msg, out)
        elif isinstance(msg, VoteRequest):
            self._on_vote_request(now, src, msg, out)
        elif isinstance(msg, VoteResponse):
            self._on_vote_response(now, src, msg, out)
        elif isinstance(msg, SnapshotRequest):
            self._on_snapshot(now, src, msg, out)
        elif isinstance(msg, SnapshotResponse):
            self._on_snapshot_response(now, src, msg, out)
        elif isinstance(msg, TimeoutNow):
            if self.role != LEADER and self.id in self.membership.voters and src == self.leader_id:
                self._campaign(now, out, transfer=True)
        return out

    def admits_stranger(self, now: float, msg: Message) -> bool:
        """Whether a leader's message from outside our configurations is taken (see STRANGER_LEADER_AFTER)."""
        if not isinstance(msg, AppendRequest | SnapshotRequest) or msg.term < self.term or self.role == LEADER:
            return False
        quiet = now - max(self._last_leader_contact, self._started)
        return quiet >= STRANGER_LEADER_AFTER * self.config.election_timeout

    def _admit(self, now: float, src: str, msg: Message, out: list[Output]) -> bool:
        """Whether a (well-formed) message may be handled at all; nothing in it is trusted before this."""
        if src == self.id or msg.term > self.term + MAX_TERM_JUMP:
            return False
        if isinstance(msg, AppendRequest | SnapshotRequest | TimeoutNow):
            if msg.leader != src:
                return False
            if msg.term == self.term and self.leader_id is not None and self.leader_id != src:
                return False  # one leader per term: we already know who leads this one
        elif isinstance(msg, VoteRequest) and msg.candidate != src:
            return False
        known = self.known_servers()
        if known and src not in known and not self.admits_stranger(now, msg):
            # Not in any configuration we hold (a server being added holds none yet and accepts its leader).
            return False
        if isinstance(msg, VoteRequest | VoteResponse) and self.membership.servers and \
                src not in self.membership.voters:
            if isinstance(msg, VoteRequest):
                out.append(Send(src, VoteResponse(self.term, False, msg.pre_vote)))  # as hashicorp/raft does
            return False
        return True

    # ------------------------------------------------------------------------------------------ elections

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def _on_vote_request(self, now: float, src: str, req: VoteRequest, out: list[Output]) -> None:
        if req.pre_vote:
            grant = (req.term > self.term and self._log_up_to_date(req.last_index, req.last_term)
                     and (req.transfer or not self._sticky(now)))
            out.append(Send(src, VoteResponse(req.term if grant else self.term, grant, True)))
            return
        if req.term < self.term or (not req.transfer and self._sticky(now) and self.leader_id != req.candidate):
            out.append(Send(src, VoteResponse(self.term, False)))
            return
        grant = self.vote in (None, req.candidate) and self._log_up_to_date(req.last_index, req.last_term)
        if grant:
            if self.vote != req.candidate:
                self.vote = req.candidate
                out.append(PersistState(self.term, self.vote))
            self._election_deadline = now + self._random_timeout()
        out.append(Send(src, VoteResponse(self.term, grant)))

    def _on_vote_response(self, now: float, src: str, resp: VoteResponse, out: list[Output]) -> None:
        if src not in self.membership.voters or not resp.granted:
            return
        if resp.pre_vote and self.role == PRE_CANDIDATE and resp.term == self.term + 1:
            self._votes.add(src)
            if len(self._votes) >= self._quorum(self.membership.voters):
                self._campaign(now, out, transfer=False)
        elif not resp.pre_vote and self.role == CANDIDATE and resp.term == self.term:
            self._votes.add(src)
            if len(self._votes) >= self._quorum(self.membership.voters):
                self._become_leader(now, out)

    # ------------------------------------------------------------------------------------------ follower

    def _heard_leader(self, now: float, leader: str, out: list[Output]) -> None:
        if self.role != FOLLOWER or self.leader_id != leader:
            self._become_follower(now, self.term, leader, out)
        self._last_leader_contact = now
        self._election_deadline = now + self._random_timeout()

    def _on_append(self, now: float, src: str, req: AppendRequest, out: list[Output]) -> None:
        self._heard_leader(now, req.leader, out)
        prev_index, prev_term, entries = req.prev_index, req.prev_term, req.entries
        if prev_index < self.commit_index:
            # Our committed prefix matches the leader's (leader completeness); skip what it covers.
            skip = self.commit_index - prev_index
            entries = entries[skip:]
            prev_index = self.commit_index
            prev_term_known = self.term_at(prev_index)
            if prev_term_known is None:  # our commit index is always held; refuse rather than trust the sender
                out.append(Send(src, AppendResponse(self.term, False, self.commit_index, req.seq)))
                return
            prev_term = prev_term_known
        if self.term_at(prev_index) != prev_term:
            hint = min(prev_index - 1, self.last_index)
            # Jump back over the whole conflicting term instead of one entry per round trip.
            conflict_term = self.term_at(hint) if hint > self.commit_index else None
            while conflict_term is not None and hint - 1 > self.commit_index and \
                    self.term_at(hint - 1) == conflict_term:
                hint -= 1
            hint = max(hint, self.commit_index)
            out.append(Send(src, AppendResponse(self.term, False, hint, req.seq)))
            return
        new: list[Entry] = []
        for i, e in enumerate(entries):
            if e.index <= self.last_index:
                if self.term_at(e.index) == e.term:
                    continue
                self._truncate(e.index)
                out.append(TruncateLog(e.index))
            new = list(entries[i:])
            break
        if new:
            self._append(new)
            out.append(AppendLog(tuple(new)))
        match = prev_index + len(entries)
        if req.commit > self.commit_index:
            self.commit_index = min(req.commit, match)
            self._emit_apply(out)
        if self._caught_up_at is None and req.commit <= self.commit_index and self.term_at(req.commit) == req.term:
            # We hold all the leader had committed when it sent this, and that is all the cluster has committed:
            # its commit index is at an entry of its own term (before that, a new leader may know less).
            self._caught_up_at = self.commit_index
        out.append(Send(src, AppendResponse(self.term, True, match, req.seq)))

    def _on_snapshot(self, now: float, src: str, req: SnapshotRequest, out: list[Output]) -> None:
        self._heard_leader(now, req.leader, out)
        if req.last_index <= self.commit_index:
            self._incoming = None
            out.append(Send(src, SnapshotResponse(self.term, self.commit_index, 0, True, req.seq)))
            return
        inc = self._incoming
        if req.offset == 0 or inc is None or (inc[0], inc[1]) != (req.last_index, req.last_term):
            inc = (req.last_index, req.last_term, bytearray())
            self._incoming = inc
        buf = inc[2]
        if req.offset != len(buf):
            out.append(Send(src, SnapshotResponse(self.term, req.last_index, len(buf), False, req.seq)))
            return
        buf.extend(req.data)
        if not req.done:
            out.append(Send(src, SnapshotResponse(self.term, req.last_index, len(buf), False, req.seq)))
            return
        self._incoming = None
        if self._snapshot_check is not None and not self._snapshot_check(bytes(buf)):
            self.dropped += 1  # start over from the first chunk (a real leader's snapshot restores)
            out.append(Send(src, SnapshotResponse(self.term, req.last_index, 0, False, req.seq)))
            return
        meta = SnapshotMeta(req.last_index, req.last_term, req.membership)
        keep = self.term_at(req.last_index) == req.last_term
        if keep:
            # Entries after the snapshot may already be acknowledged to the leader: keep them.
            self._configs = [(i, m) for i, m in self._configs if i > meta.index]
        else:
            self._log = []
            self._base_index, self._base_term = meta.index, meta.term
            self._persisted_index = meta.index
            self._configs = []
        self._base_membership, self._base_membership_index = meta.membership, meta.index
        self._snapshot, self._snapshot_data = meta, bytes(buf)
        self.commit_index = max(self.commit_index, meta.index)
        self.applied_index = meta.index
        self.membership = self._latest_membership()
        self._known = None
        out.append(InstallSnapshot(meta, bytes(buf), reset_log=not keep))
        self._emit_apply(out)
        out.append(Send(src, SnapshotResponse(self.term, meta.index, len(buf), True, req.seq)))

    # ------------------------------------------------------------------------------------------ leader

    def propose(self, now: float, data: bytes) -> tuple[int, list[Output]]:
        """Append a state-machine command; returns its index (it commits later). Raises NotLeader."""
        first, out = self.propose_batch(now, [data])
        return first, out

    def propose_batch(self, now: float, commands: list[bytes]) -> tuple[int, list[Output]]:
        """Append several commands at once; returns the index of the first."""
        self._check_can_propose()
        first = self.last_index + 1
        new = [Entry(first + i, self.term, COMMAND, data) for i, data in enumerate(commands)]
        self._append(new)
        out: list[Output] = [AppendLog(tuple(new))]
        return first, out

    def _check_can_propose(self) -> None:
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer is not None:
            raise NotLeader(None, "leadership transfer in progress")

    def propose_membership(self, now: float, membership: Membership) -> tuple[int, list[Output]]:
        """Append a new configuration (one server changed at a time). Raises NotLeader or ValueError."""
        self._check_can_propose()
        if self.term_at(self.commit_index) != self.term:
            raise ValueError("the leader has not committed an entry in its term yet; retry shortly")
        if self._configs and self._configs[-1][0] > self.commit_index:
            raise ValueError("a configuration change is already in progress")
        old, new = self.membership, membership
        changed = (old.ids() ^ new.ids()) | {s.id for s in new.servers if old.get(s.id) not in (None, s)}
        if len(changed) > 1:
            raise ValueError("only one server may be added, removed or changed at a time")
        entry = Entry(self.last_index + 1, self.term, CONFIG, encode_membership(new))
        self._append([entry])
        return entry.index, [AppendLog((entry,))]

    def advance(self, now: float, persisted: bool) -> list[Output]:
        """The caller carried out the last step's outputs (`persisted`: storage work among them is durable).

        As etcd raft's Advance: a leader counts its durable log towards commitment, then the replication
        messages the step called for are built. Returns the next step's outputs (often none).
        """
        out: list[Output] = []
        if persisted and self.role == LEADER:
            out.extend(self.persisted(now, self.last_index))
        out.extend(self.flush(now))
        return out

    def persisted(self, now: float, index: int) -> list[Output]:
        """The caller made the log durable up to `index`; the leader counts itself towards commitment."""
        self._persisted_index = max(self._persisted_index, min(index, self.last_index))
        out: list[Output] = []
        if self.role == LEADER:
            self._maybe_commit(now, out)
        return out

    def _maybe_commit(self, now: float, out: list[Output]) -> None:
        voters = self.membership.voters
        if not voters:
            return
        matches = [pr.match_index for sid, pr in self._progress.items() if sid in voters]
        if self.id in voters:
            matches.append(self._persisted_index)
        quorum = self._quorum(voters)
        if len(matches) < quorum:
            return
        matches.sort(reverse=True)
        n = matches[quorum - 1]
        if n <= self.commit_index or self.term_at(n) != self.term:
            return
        self.commit_index = n
        self._emit_apply(out)
        if self._caught_up_at is None:
            self._caught_up_at = n  # the first entry of our term is committed: we hold every committed entry
        if self._waiting_reads and self.term_at(self.commit_index) == self.term:
            waiting, self._waiting_reads = self._waiting_reads, []
            for ctx in waiting:
                self._add_read(ctx, out)
        if self.id not in self.membership.ids() and not (self._configs and self._configs[-1][0] > n):
            # The configuration that removed us is committed: hand over by going quiet.
            self._become_follower(now, self.term, None, out)

    def _on_append_response(self, now: float, src: str, resp: AppendResponse, out: list[Output]) -> None:
        pr = self._progress.get(src)
        if self.role != LEADER or pr is None:
            return
        if resp.seq > self._seq or (resp.success and resp.last_index > self.last_index):
            self.dropped += 1  # an answer to nothing we sent, or a claim to hold entries we never had
            return
        stale = resp.seq < pr.acked_seq  # overtaken by a later answer: its hint is out of date
        self._record_ack(now, pr, resp.seq)
        if resp.success:
            if resp.last_index > pr.match_index:
                pr.match_index = resp.last_index
                self._maybe_commit(now, out)
            pr.next_index = max(pr.next_index, pr.match_index + 1)
            if pr.mode == "probe":
                pr.mode = "replicate"
                pr.sent.clear()
            pr.dirty = True
            if self._transfer is not None and self._transfer[0] == src and pr.match_index == self.last_index:
                out.append(Send(src, TimeoutNow(self.term, self.id)))
        elif pr.mode != "snapshot" and not stale:
            if resp.last_index < pr.match_index:
                # It lost entries it had acknowledged (a log tail cut on disk): go back to what it holds,
                # which is a prefix of what matched before.
                out.append(FollowerLostEntries(src, resp.last_index, pr.match_index))
                pr.match_index = resp.last_index
                pr.next_index = resp.last_index + 1
            else:
                pr.next_index = max(pr.match_index + 1, min(resp.last_index + 1, pr.next_index - 1))
            pr.mode = "probe"
            pr.sent.clear()
            pr.dirty = True
        self._check_reads(out)

    def _record_ack(self, now: float, pr: Progress, seq: int) -> None:
        pr.last_response = now
        sent_at = pr.sent.pop(seq, None)
        if sent_at is not None:
            pr.acked_sent_at = max(pr.acked_sent_at, sent_at)
        pr.acked_seq = max(pr.acked_seq, seq)
        # Anything sent before this answer and still unanswered was lost or reordered; the pipeline
        # carries on, and the inflight timeout catches a stall.
        for old in [s for s in pr.sent if s < seq]:
            del pr.sent[old]

    def _on_snapshot_response(self, now: float, src: str, resp: SnapshotResponse, out: list[Output]) -> None:
        pr = self._progress.get(src)
        if self.role != LEADER or pr is None:
            return
        if resp.seq > self._seq or resp.last_index > self.last_index:
            self.dropped += 1
            return
        self._record_ack(now, pr, resp.seq)
        if resp.done:
            if resp.last_index > pr.match_index:
                pr.match_index = resp.last_index
                self._maybe_commit(now, out)
            pr.next_index = pr.match_index + 1
            pr.mode = "probe"
            pr.sent.clear()
        elif pr.mode == "snapshot":
            pr.snapshot_offset = resp.offset
        pr.dirty = True
        self._check_reads(out)

    def flush(self, now: float) -> list[Output]:
        """Build the replication messages that the inputs since the last flush call for."""
        out: list[Output] = []
        if self.role != LEADER:
            return out
        if self._read_round_needed:
            self._read_round_needed = False
            self._broadcast_heartbeat(now, out)
        for sid, pr in self._progress.items():
            if pr.dirty or (pr.mode == "replicate" and pr.next_index <= self.last_index):
                pr.dirty = False
                self._replicate(now, sid, pr, out)
        return out

    def _replicate(self, now: float, sid: str, pr: Progress, out: list[Output]) -> None:
        if pr.next_index - 1 < self._base_index or pr.mode == "snapshot":
            self._send_snapshot_chunk(now, sid, pr, out)
            return
        if pr.mode == "probe":
            if pr.sent:
                return  # one probe at a time
            self._send_append(now, sid, pr, out, pr.next_index, advance=False)
            return
        while len(pr.sent) < self.config.max_inflight and pr.next_index <= self.last_index:
            self._send_append(now, sid, pr, out, pr.next_index, advance=True)

    def _send_append(self, now: float, sid: str, pr: Progress, out: list[Output], start: int,
                     advance: bool) -> None:
        prev = start - 1
        prev_term = self.term_at(prev)
        if prev_term is None:
            # Outside what we hold (our own bookkeeping never gets here): probe again from the last entry.
            pr.mode, pr.next_index, pr.match_index = "probe", self.last_index + 1, min(pr.match_index,
                                                                                          self.last_index)
            pr.dirty = True
            return
        batch = self._byte_bounded(self.entries(start, start + self.config.max_entries_per_append - 1))
        seq = self._next_seq()
        pr.sent[seq] = now
        out.append(Send(sid, AppendRequest(self.term, self.id, prev, prev_term, tuple(batch),
                                           self.commit_index, seq)))
        if advance and batch:
            pr.next_index = batch[-1].index + 1

    def _byte_bounded(self, batch: list[Entry]) -> list[Entry]:
        """The longest prefix of `batch` within max_bytes_per_append (never empty when `batch` is not)."""
        budget = self.config.max_bytes_per_append
        for i, e in enumerate(batch):
            budget -= len(e.data)
            if budget < 0 and i > 0:
                return batch[:i]
        return batch

    def _send_snapshot_chunk(self, now: float, sid: str, pr: Progress, out: list[Output]) -> None:
        snap = self._snapshot
        if snap is None:
            return
        if pr.mode != "snapshot" or pr.snapshot_index != snap.index:
            pr.mode, pr.snapshot_index, pr.snapshot_offset = "snapshot", snap.index, 0
        elif pr.sent:
            return  # one chunk at a time
        data = self._snapshot_data
        chunk = data[pr.snapshot_offset:pr.snapshot_offset + self.config.snapshot_chunk_bytes]
        done = pr.snapshot_offset + len(chunk) >= len(data)
        seq = self._next_seq()
        pr.sent[seq] = now
        out.append(Send(sid, SnapshotRequest(self.term, self.id, snap.index, snap.term, snap.membership,
                                             pr.snapshot_offset, chunk, done, seq)))

    def _broadcast_heartbeat(self, now: float, out: list[Output]) -> None:
        for sid, pr in self._progress.items():
            oldest = min(pr.sent.values(), default=None)
            if oldest is not None and now - oldest >= self.config.inflight_timeout:
                # Answers stopped coming: start again from what the follower is known to hold.
                pr.sent.clear()
                if pr.mode != "snapshot":
                    pr.mode = "probe"
                    pr.next_index = pr.match_index + 1
            elif pr.mode == "replicate" and not pr.sent and pr.next_index > pr.match_index + 1:
                # Appends beyond what it acknowledged are no longer tracked (a later answer, to a heartbeat,
                # overtook theirs) and never answered: lost. Without this the leader would wait for the next
                # proposal to notice, and an idle cluster would never commit them (found by the simulator).
                pr.mode = "probe"
                pr.next_index = pr.match_index + 1
            if pr.mode == "snapshot" or pr.next_index - 1 < self._base_index:
                self._send_snapshot_chunk(now, sid, pr, out)
                continue
            if pr.mode == "probe" and not pr.sent:
                self._send_append(now, sid, pr, out, pr.next_index, advance=False)
                continue
            # A pure heartbeat anchored at what the follower is known to hold, so that reordering with
            # pipelined appends never makes it look like a conflict.
            prev_term = self.term_at(pr.match_index)
            if prev_term is None:
                pr.mode, pr.next_index = "probe", pr.match_index + 1
                self._send_snapshot_chunk(now, sid, pr, out)
                continue
            seq = self._next_seq()
            pr.sent[seq] = now
            # It carries our whole commit index: the follower commits only up to the match point anyway, and
            # it learns how far it lags (caught_up_index).
            out.append(Send(sid, AppendRequest(self.term, self.id, pr.match_index, prev_term, (),
                                               self.commit_index, seq)))

    # ------------------------------------------------------------------------------------------ reads

    def lease_read_index(self, now: float) -> int | None:
        """The commit index if this leader's lease holds at `now` (a `default`-consistency read), else None."""
        if self.role != LEADER or self._transfer is not None or self.term_at(self.commit_index) != self.term:
            return None
        voters = self.membership.voters
        acked = [pr.acked_sent_at for sid, pr in self._progress.items() if sid in voters]
        if self.id in voters:
            acked.append(now)
        quorum = self._quorum(voters)
        if len(acked) < quorum:
            return None
        acked.sort(reverse=True)
        if acked[quorum - 1] > now - self.config.leader_lease_timeout:
            return self.commit_index
        return None

    def read_index(self, now: float, ctx: object) -> list[Output]:
        """Start a linearizable read (ReadIndex); ReadReady or ReadFailed with `ctx` comes out later."""
        out: list[Output] = []
        if self.role != LEADER:
            out.append(ReadFailed(ctx, "not the leader"))
        elif self.term_at(self.commit_index) != self.term:
            self._waiting_reads.append(ctx)
        else:
            self._add_read(ctx, out)
        return out

    def _add_read(self, ctx: object, out: list[Output]) -> None:
        voters = self.membership.voters
        if voters == {self.id}:
            out.append(ReadReady(ctx, self.commit_index))
            return
        # Any answer to a message sent after now proves we were still leader when the read arrived.
        self._pending_reads.append(_PendingRead(ctx, self.commit_index, self._seq + 1))
        self._read_round_needed = True

    def _check_reads(self, out: list[Output]) -> None:
        if not self._pending_reads:
            return
        voters = self.membership.voters
        quorum = self._quorum(voters)
        acks = sorted((pr.acked_seq for sid, pr in self._progress.items() if sid in voters), reverse=True)
        self_count = 1 if self.id in voters else 0
        need = quorum - self_count
        confirmed = acks[need - 1] if need > 0 and len(acks) >= need else (self._seq if need <= 0 else 0)
        still = []
        for read in self._pending_reads:
            if read.seq <= confirmed:
                out.append(ReadReady(read.ctx, read.index))
            else:
                still.append(read)
        self._pending_reads = still

    # ------------------------------------------------------------------------------------------ operations

    def transfer_leadership(self, now: float, target: str | None = None) -> list[Output]:
        """Hand leadership to `target` (or the most up-to-date voter). Raises NotLeader or ValueError."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        voters = self.membership.voters - {self.id}
        if target is None:
            if not voters:
                raise ValueError("no other voter to transfer leadership to")
            target = max(sorted(voters), key=lambda s: self._progress[s].match_index)
        if target not in voters:
            raise ValueError(f"{target!r} is not a voter")
        self._transfer = (target, now + self.config.election_timeout)
        out: list[Output] = []
        if self._progress[target].match_index == self.last_index:
            out.append(Send(target, TimeoutNow(self.term, self.id)))
        else:
            self._progress[target].dirty = True
        return out

    def snapshot_taken(self, index: int, data: bytes) -> list[Output]:
        """The caller saved a state-machine snapshot at applied `index`; compact the log behind it."""
        term = self.term_at(index)
        if term is None or index > self.applied_index:
            raise ValueError(f"cannot snapshot at {index}: applied {self.applied_index}, held from "
                             f"{self._base_index}")
        if self._snapshot is not None and index <= self._snapshot.index:
            return []
        self._snapshot = SnapshotMeta(index, term, self.membership_at(index))
        self._snapshot_data = data
        self._base_membership, self._base_membership_index = self._snapshot.membership, index
        self._configs = [(i, m) for i, m in self._configs if i > index]
        self._known = None
        upto = index - self.config.trailing_logs
        if upto <= self._base_index:
            return []
        upto_term = self.term_at(upto)
        assert upto_term is not None
        del self._log[:upto - self._base_index]
        self._base_index, self._base_term = upto, upto_term
        return [CompactLog(upto, upto_term)]
