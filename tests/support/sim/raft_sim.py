"""A deterministic simulator for the Raft core: virtual time, a faulty network, crashes, and a KV client load.

Everything random comes from one `random.Random(seed)`, so a seed replays exactly. Safety invariants are
checked after every step; the client history is returned for a linearizability check. Outputs go through
the runtime's own executor (raft/executor.py) over `SimIO`; besides uniform crashes between steps, a
server can crash inside a Ready: before its fsync (after a leader's early sends) or right after it (before
its sends and applies).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from meshagent.raft.config import RaftConfig
from meshagent.raft.entry import COMMAND, Entry, Membership, Server, SnapshotMeta
from meshagent.raft.executor import EXECUTOR, Executor, drive
from meshagent.raft.messages import decode_message, encode_message
from meshagent.raft.node import (
    LEADER,
    AppendLog,
    Apply,
    CompactLog,
    InstallSnapshot,
    NotLeader,
    Output,
    PersistState,
    RaftNode,
    ReadFailed,
    ReadReady,
    RoleChange,
    Send,
    TruncateLog,
)
from meshagent.raft.ready import Notice, Storage

from tests.support.linearizability import Op
from tests.support.sim.lock_workload import LockWorkload


def _addr(sid: str) -> str:
    """A simulated server's address (host:port, as the wire decoder requires)."""
    return f"{sid}:8300"


class InvariantViolation(AssertionError):
    """A Raft safety property failed."""


@dataclass
class Faults:
    """How hostile the network and the operators are."""

    loss: float = 0.05
    duplicate: float = 0.03
    min_delay: float = 0.0005
    max_delay: float = 0.015
    partition_rate: float = 0.3   # partitions per virtual second
    crash_rate: float = 0.25      # crashes per virtual second
    transfer_rate: float = 0.2    # leadership transfers per virtual second
    reconfigure_rate: float = 0.5  # membership changes per virtual second (5-server clusters)
    down_time: tuple[float, float] = (0.2, 2.0)
    # Targeted faults, drawn at each storage write of the faulty phase: a crash before the fsync (the write
    # is lost; a leader's early sends are already out) and a crash right after it (nothing sent or applied).
    # `crash_after_early_send` is drawn only when a leader's sends already left in this Ready. Off in
    # Faults(); the simulator's default (TARGETED) turns them on.
    crash_before_fsync: float = 0.0
    crash_after_early_send: float = 0.0
    crash_after_persist: float = 0.0


# What a Simulation runs with unless told otherwise (the CI seeds): the uniform faults plus the targeted ones.
TARGETED = Faults(crash_before_fsync=0.002, crash_after_early_send=0.03, crash_after_persist=0.002)


@dataclass
class Durable:
    """What survives a crash: term, vote, log, snapshot."""

    term: int = 0
    vote: str | None = None
    base_index: int = 0
    base_term: int = 0
    log: list[Entry] = field(default_factory=list)
    chain: list[bytes] = field(default_factory=list)  # prefix hash per log entry (log matching check)
    base_chain: bytes = b""
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    snapshot_chain: bytes = b""


def _link(prev: bytes, e: Entry) -> bytes:
    return hashlib.blake2b(prev + e.term.to_bytes(8, "big") + e.kind.to_bytes(1, "big") + e.data,
                           digest_size=12).digest()


class Crashed(Exception):
    """A targeted fault stopped a server in the middle of carrying out a Ready."""


class KV:
    """The simulated state machine: registers with put and compare-and-set by value."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: dict[str, Any]) -> Any:
        key = command["key"]
        if command["op"] == "put":
            self.data[key] = command["value"]
            return True
        current = self.data.get(key)
        if current == command["expected"]:
            self.data[key] = command["value"]
            return True
        return False

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data)  # type: ignore[no-any-return]

    @classmethod
    def restore(cls, data: bytes) -> KV:
        kv = cls()
        kv.data = dict(msgpack.unpackb(data)) if data else {}
        return kv

    def read(self, key: str) -> str | None:
        return self.data.get(key)


@dataclass
class PendingOp:
    op: Op
    server: str
    index: int = 0
    term: int = 0
    deadline: float = 0.0


class SimServer:
    """One server: the core, its durable state and its state machine."""

    def __init__(self, sid: str, sim: Simulation) -> None:
        self.id = sid
        self.sim = sim
        self.durable = Durable()
        self.alive = True
        self.node = self._boot()
        self.kv = sim.machine()
        self.applied_chain: dict[int, bytes] = {}
        self.io = SimIO(sim, self)
        # Client writes queued for the next step, which proposes them with its other inputs, as the
        # runtime's loop does: so a leader's Ready can hold new entries and early sends (a heartbeat) at once.
        self.proposals: list[tuple[int, bytes]] = []

    def _boot(self) -> RaftNode:
        d = self.durable
        return RaftNode(self.id, self.sim.config, random.Random(self.sim.rng.random()), self.sim.now,
                        term=d.term, vote=d.vote, entries=list(d.log), base_index=d.base_index,
                        base_term=d.base_term, snapshot=d.snapshot, snapshot_data=d.snapshot_data)

    def restart(self) -> None:
        self.alive = True
        self.proposals = []
        self.io = SimIO(self.sim, self)
        self.node = self._boot()
        d = self.durable
        self.kv = self.sim.machine(d.snapshot_data) if d.snapshot else self.sim.machine()

    def chain_at(self, index: int) -> bytes | None:
        d = self.durable
        if index == d.base_index:
            return d.base_chain
        if d.base_index < index <= d.base_index + len(d.log):
            return d.chain[index - d.base_index - 1]
        return None


class Simulation:
    """A seeded cluster run."""

    def __init__(self, seed: int, servers: int = 3, faults: Faults | None = None, clients: int = 3,
                 duration: float = 6.0, snapshot_every: int = 40, executor: Executor = EXECUTOR,
                 locks: LockWorkload | None = None) -> None:
        self.seed = seed
        # None: the register workload (put/cas/get on KV); a LockWorkload: the catalog FSM's KV locks.
        self.locks = locks
        self.executor = executor
        # Off only in tests that cut a durable log on purpose (then a commit counted on lost entries is expected).
        self.check_durable_quorum = True
        self.rng = random.Random(seed)
        self.faults = faults or TARGETED
        self.config = RaftConfig(election_timeout=0.15, heartbeat_interval=0.03, leader_lease_timeout=0.1,
                                 inflight_timeout=0.1, max_entries_per_append=8, max_inflight=4,
                                 snapshot_chunk_bytes=64, trailing_logs=10, snapshot_threshold=snapshot_every)
        self.now = 0.0
        self.duration = duration
        self.ids = [f"s{i}" for i in range(1, servers + 1)]
        self.servers = {sid: SimServer(sid, self) for sid in self.ids}
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.cut: set[frozenset[str]] = set()
        self.history: list[Op] = []
        self.pending: dict[int, PendingOp] = {}
        self.client_ids = [f"c{i}" for i in range(clients)]
        self._next_value = 0
        self.leaders_by_term: dict[int, str] = {}
        self.committed: dict[int, bytes] = {}  # index -> prefix chain hash, once any server committed it
        self.applied: dict[int, bytes] = {}
        self.steps = 0
        self.client_stop = duration
        self.stats = {"snapshots_installed": 0, "transfers": 0, "reconfigurations": 0, "elections": 0,
                      "crash_before_fsync": 0, "crash_after_persist": 0, "crash_after_early_send": 0}
        membership = Membership(tuple(Server(sid, _addr(sid)) for sid in self.ids))
        for s in self.servers.values():
            self.carry_out(s, s.node.bootstrap(membership))
        for c in self.client_ids:
            self._schedule(self.rng.uniform(0.05, 0.3), "client", c)
        self._schedule(self._exp(self.faults.partition_rate), "partition", None)
        self._schedule(self._exp(self.faults.crash_rate), "crash", None)
        self._schedule(self._exp(self.faults.transfer_rate), "transfer", None)
        if servers >= 5:
            self._schedule(self._exp(self.faults.reconfigure_rate), "reconfigure", None)

    # ------------------------------------------------------------------------------------------ plumbing

    def machine(self, data: bytes | None = None) -> Any:
        """A server's state machine: fresh, or restored from snapshot data."""
        if self.locks is not None:
            return self.locks.machine(data)
        return KV.restore(data) if data is not None else KV()

    def _exp(self, rate: float) -> float:
        return self.now + (self.rng.expovariate(rate) if rate > 0 else 1e9)

    def _schedule(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, payload))

    def _send(self, src: str, dst: str, msg: Any) -> None:
        if frozenset((src, dst)) in self.cut or self.rng.random() < self.faults.loss:
            return
        wire = msgpack.packb(encode_message(msg), use_bin_type=True)
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            delay = self.rng.uniform(self.faults.min_delay, self.faults.max_delay)
            self._schedule(self.now + delay, "msg", (src, dst, wire))

    def carry_out(self, s: SimServer, outputs: list[Output]) -> None:
        """Carry out the outputs through the shared executor; then commit bookkeeping and snapshots."""
        try:
            drive(self.executor.execute(s.node, outputs, s.io))
        except Crashed:
            return
        self._record_commit(s)
        self._maybe_snapshot(s)

    def targeted_crash(self, s: SimServer, kind: str) -> None:
        """Raise Crashed (server down) with the probability of the `kind` fault; only in the faulty phase."""
        rate: float = getattr(self.faults, kind)
        if rate <= 0 or self.steps == 0 or self.now >= self.duration or self.rng.random() >= rate:
            return
        self.stats[kind] += 1
        self._down(s)
        raise Crashed(kind)

    # ------------------------------------------------------------------------------------------ invariants

    def _on_leader(self, s: SimServer, term: int) -> None:
        self.stats["elections"] += 1
        other = self.leaders_by_term.get(term)
        if other is not None and other != s.id:
            raise InvariantViolation(f"election safety: {other} and {s.id} both lead term {term}")
        self.leaders_by_term[term] = s.id
        # Leader completeness: every committed entry is in the new leader's log (or its snapshot).
        if self.committed:
            top = max(self.committed)
            d = s.durable
            if top > d.base_index + len(d.log):
                raise InvariantViolation(f"leader completeness: {s.id} (term {term}) lacks committed {top}")
            mine = s.chain_at(top) if top >= d.base_index else None
            if mine is not None and mine != self.committed[top]:
                raise InvariantViolation(f"leader completeness: {s.id} has a different entry at {top}")

    def _record_commit(self, s: SimServer) -> None:
        c = s.node.commit_index
        if c == 0 or (c in self.committed and self.committed[c] == s.chain_at(c)):
            return
        chain = s.chain_at(c)
        if chain is None:
            return  # covered by an installed snapshot
        if s.node.role == LEADER and self.check_durable_quorum:
            self._check_durable_quorum(s, c, chain)
        known = self.committed.get(c)
        if known is not None and known != chain:
            raise InvariantViolation(f"committed entry {c} differs on {s.id}")
        self.committed[c] = chain
        # Log matching gives the same prefix, so record the committed entries below too (bounded walk).
        i = c - 1
        while i > s.durable.base_index and i not in self.committed:
            ch = s.chain_at(i)
            assert ch is not None
            self.committed[i] = ch
            i -= 1

    def _check_durable_quorum(self, s: SimServer, index: int, chain: bytes) -> None:
        """A leader commits an entry only once a quorum of its voters hold it durably (crashes can't undo it)."""
        voters = s.node.membership.voters
        holders = [v for v in sorted(voters) if self.servers[v].chain_at(index) == chain or
                   self.servers[v].durable.base_index > index]
        if len(holders) < len(voters) // 2 + 1:
            raise InvariantViolation(f"durability: {s.id} committed {index} (term {s.node.term}) but only "
                                     f"{holders} of voters {sorted(voters)} hold it durably")

    def check_log_matching(self) -> None:
        """Same (index, term) on two servers means the same prefix (via prefix hashes)."""
        seen: dict[tuple[int, int], bytes] = {}
        for s in self.servers.values():
            d = s.durable
            for e, ch in zip(d.log, d.chain, strict=True):
                other = seen.setdefault((e.index, e.term), ch)
                if other != ch:
                    raise InvariantViolation(f"log matching: entry {e.index} term {e.term} has different "
                                             f"prefixes ({s.id})")

    def _apply(self, s: SimServer, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            chain = s.chain_at(e.index)
            if chain is not None:
                first = self.applied.setdefault(e.index, chain)
                if first != chain:
                    raise InvariantViolation(f"state machine safety: {s.id} applied a different entry at {e.index}")
            if e.kind != COMMAND:
                continue
            command = msgpack.unpackb(e.data)
            result = s.kv.apply(command)
            p = self.pending.get(command["id"])
            if p is not None and p.server == s.id and p.index == e.index and p.term == e.term:
                p.op.complete = self.now
                p.op.result = result
                self.history.append(p.op)
                del self.pending[command["id"]]
                self._schedule(self.now + self.rng.uniform(0.0, 0.05), "client", p.op.client)

    def _maybe_snapshot(self, s: SimServer) -> None:
        node = s.node
        base = node.snapshot_meta.index if node.snapshot_meta else 0
        if node.applied_index - base >= self.config.snapshot_threshold:
            data = s.kv.snapshot()
            outs = node.snapshot_taken(node.applied_index, data)
            d = s.durable
            d.snapshot, d.snapshot_data = node.snapshot_meta, data
            chain = s.chain_at(node.applied_index)
            d.snapshot_chain = chain or b""
            self.carry_out(s, outs)

    # ------------------------------------------------------------------------------------------ clients

    def _client_op(self, client: str) -> None:
        if self.now > self.client_stop:
            return
        alive = [s for s in self.servers.values() if s.alive]
        if not alive:
            self._schedule(self.now + 0.1, "client", client)
            return
        leaders = [s for s in alive if s.node.role == LEADER]
        s = self.rng.choice(leaders) if leaders and self.rng.random() < 0.8 else self.rng.choice(alive)
        command: dict[str, Any] | None = None
        if self.locks is not None:
            self._next_value += 1
            oid = self._next_value
            op, command = self.locks.next_op(self.rng, client, oid, self.now)
        else:
            key = f"k{self.rng.randrange(2)}"
            kind = self.rng.choice(["put", "cas", "get", "get"])
            self._next_value += 1
            oid = self._next_value
            op = Op(client=client, kind=kind, key=key, invoke=self.now)  # type: ignore[arg-type]
        if op.kind == "get":
            self.pending[oid] = PendingOp(op, s.id, deadline=self.now + 1.0)
            if self.rng.random() < 0.3:
                idx = s.node.lease_read_index(self.now)
                if idx is not None:
                    self._read_ready(s, oid, idx)
                    return
            self.carry_out(s, s.node.read_index(self.now, oid))
            self._schedule(self.now + 1.0, "timeout", oid)
            return
        if command is None:
            op.value = f"{client}-{oid}"
            if op.kind == "cas":
                op.expected = s.kv.data.get(op.key) if self.rng.random() < 0.7 else f"nope-{oid}"
            command = {"id": oid, "op": op.kind, "key": op.key, "value": op.value, "expected": op.expected}
        if s.node.role != LEADER:
            self._schedule(self.now + self.rng.uniform(0.01, 0.05), "client", client)
            return
        self.pending[oid] = PendingOp(op, s.id, deadline=self.now + 1.0)
        self._schedule(self.now + 1.0, "timeout", oid)
        s.proposals.append((oid, msgpack.packb(command)))

    def _step(self, s: SimServer, outs: list[Output]) -> None:
        """One step of the runtime's loop: the input's outputs, the queued proposals, then the timers."""
        if s.proposals:
            queued, s.proposals = s.proposals, []
            try:
                first, more = s.node.propose_batch(self.now, [data for _, data in queued])
            except NotLeader:
                for oid, _ in queued:
                    p = self.pending.pop(oid, None)
                    if p is not None:
                        self._schedule(self.now + self.rng.uniform(0.01, 0.05), "client", p.op.client)
            else:
                for i, (oid, _) in enumerate(queued):
                    p = self.pending.get(oid)
                    if p is not None:
                        p.index, p.term = first + i, s.node.term
                outs = outs + more
        self.carry_out(s, outs + s.node.tick(self.now))

    def _read_ready(self, s: SimServer, ctx: object, index: int) -> None:
        p = self.pending.get(ctx)  # type: ignore[call-overload]
        if p is None:
            return
        if s.node.applied_index < index:
            raise InvariantViolation(f"{s.id}: read at {index} before applying it ({s.node.applied_index})")
        p.op.complete = self.now
        p.op.result = s.kv.read(p.op.key)
        self.history.append(p.op)
        del self.pending[ctx]  # type: ignore[arg-type]
        self._schedule(self.now + self.rng.uniform(0.0, 0.05), "client", p.op.client)

    def _read_failed(self, ctx: object) -> None:
        p = self.pending.pop(ctx, None)  # type: ignore[call-overload]
        if p is not None:  # a read that failed took no effect: not part of the history
            self._schedule(self.now + self.rng.uniform(0.01, 0.05), "client", p.op.client)

    def _timeout(self, oid: int) -> None:
        p = self.pending.pop(oid, None)
        if p is None:
            return
        if p.op.kind != "get":
            p.op.complete = None  # outcome unknown: it may still commit later
            self.history.append(p.op)
        self._schedule(self.now + 0.01, "client", p.op.client)

    # ------------------------------------------------------------------------------------------ faults

    def _partition(self) -> None:
        if self.now < self.duration:
            ids = list(self.ids)
            self.rng.shuffle(ids)
            side = set(ids[: self.rng.randrange(1, len(ids))])
            self.cut = {frozenset((a, b)) for a in side for b in self.ids if b not in side}
            self._schedule(self.now + self.rng.uniform(0.1, 1.5), "heal", None)
            self._schedule(self._exp(self.faults.partition_rate), "partition", None)

    def _crash(self) -> None:
        if self.now >= self.duration:
            return
        s = self.servers[self.rng.choice(self.ids)]
        if s.alive:
            self._down(s)
        self._schedule(self._exp(self.faults.crash_rate), "crash", None)

    def _down(self, s: SimServer) -> None:
        """Crash `s` (it keeps only its durable state) and schedule its restart."""
        s.alive = False
        for oid, p in list(self.pending.items()):
            if p.server == s.id and p.op.kind == "get":
                del self.pending[oid]  # a read on a crashed server never answered: drop it
                self._schedule(self.now + 0.01, "client", p.op.client)
        self._schedule(self.now + self.rng.uniform(*self.faults.down_time), "restart", s.id)

    def _transfer(self) -> None:
        if self.now >= self.duration:
            return
        self._schedule(self._exp(self.faults.transfer_rate), "transfer", None)
        leader = self.leader()
        if leader is None:
            return
        s = self.servers[leader]
        try:
            outs = s.node.transfer_leadership(self.now)
        except (NotLeader, ValueError):
            return
        self.stats["transfers"] += 1
        self.carry_out(s, outs)

    def _reconfigure(self) -> None:
        """Remove a voter, add it back as a non-voter, promote it: one server at a time."""
        if self.now >= self.duration:
            return
        self._schedule(self._exp(self.faults.reconfigure_rate), "reconfigure", None)
        leader = self.leader()
        if leader is None:
            return
        s = self.servers[leader]
        m = s.node.membership
        missing = [sid for sid in self.ids if m.get(sid) is None]
        nonvoters = [sv.id for sv in m.servers if not sv.voter]
        if nonvoters:
            new = m.with_server(Server(nonvoters[0], _addr(nonvoters[0]), True))
        elif missing:
            new = m.with_server(Server(missing[0], _addr(missing[0]), False))
        else:
            victim = self.rng.choice(sorted(m.voters - {leader}))
            new = m.without(victim)
        try:
            _, outs = s.node.propose_membership(self.now, new)
        except (NotLeader, ValueError):
            return
        self.stats["reconfigurations"] += 1
        self.carry_out(s, outs)

    # ------------------------------------------------------------------------------------------ loop

    def run(self, heal_time: float = 3.0) -> None:
        """Run the faulty phase, then a calm phase in which the cluster must make progress."""
        end = self.duration + heal_time
        self.client_stop = end - 1.0  # leave time for the last operations to finish
        self.advance(end)

    def advance(self, end: float) -> None:
        """Run events and timers up to virtual time `end`, checking the invariants on the way."""
        while self.now < end:
            due = [(s.node.next_deadline(), s.id) for s in self.servers.values() if s.alive]
            next_timer = min(due) if due else (float("inf"), "")
            next_event = self._queue[0][0] if self._queue else float("inf")
            if min(next_timer[0], next_event) > end:
                break
            self.steps += 1
            if next_timer[0] <= next_event:
                self.now = max(self.now, next_timer[0])
                s = self.servers[next_timer[1]]
                self._step(s, [])
            else:
                at, _, kind, payload = heapq.heappop(self._queue)
                self.now = max(self.now, at)
                self._event(kind, payload)
            if self.steps % 16 == 0:
                self.check_log_matching()
            if self.now >= self.duration and self.cut:
                self.cut = set()
        self.check_log_matching()

    def _event(self, kind: str, payload: Any) -> None:
        if kind == "msg":
            src, dst, wire = payload
            s = self.servers[dst]
            if not s.alive or frozenset((src, dst)) in self.cut:
                return
            msg = decode_message(msgpack.unpackb(wire, raw=False))
            self._step(s, s.node.receive(self.now, src, msg))
        elif kind == "client":
            self._client_op(payload)
        elif kind == "timeout":
            self._timeout(payload)
        elif kind == "partition":
            self._partition()
        elif kind == "heal":
            self.cut = set()
        elif kind == "crash":
            self._crash()
        elif kind == "transfer":
            self._transfer()
        elif kind == "reconfigure":
            self._reconfigure()
        elif kind == "restart":
            s = self.servers[payload]
            s.restart()
        else:  # pragma: no cover - the queue only holds the kinds above
            raise AssertionError(kind)

    def leader(self) -> str | None:
        """The current leader among live servers, if exactly one claims the highest term."""
        leaders = [s for s in self.servers.values() if s.alive and s.node.role == LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda s: s.node.term).id


class SimIO:
    """The simulator's ReadyIO for one server: storage is durable at once, sends go to the faulty network."""

    def __init__(self, sim: Simulation, s: SimServer) -> None:
        self.sim, self.s = sim, s
        self.sent_this_round = False  # messages left in this Ready already (early sends, before persist)

    def now(self) -> float:
        return self.sim.now

    async def persist(self, storage: Sequence[Storage]) -> None:
        sim, s = self.sim, self.s
        if self.sent_this_round:
            sim.targeted_crash(s, "crash_after_early_send")  # a leader's sends are out, its own copy is not
        sim.targeted_crash(s, "crash_before_fsync")
        d = s.durable
        for out in storage:
            if isinstance(out, PersistState):
                d.term, d.vote = out.term, out.vote
            elif isinstance(out, AppendLog):
                for e in out.entries:
                    if e.index != d.base_index + len(d.log) + 1:
                        raise InvariantViolation(f"{s.id}: non-contiguous append of {e.index}")
                    prev = d.chain[-1] if d.chain else d.base_chain
                    d.log.append(e)
                    d.chain.append(_link(prev, e))
            elif isinstance(out, TruncateLog):
                cut = out.from_index - d.base_index - 1
                if sim.committed.get(out.from_index) == s.chain_at(out.from_index):
                    raise InvariantViolation(f"{s.id}: truncating committed entry {out.from_index}")
                del d.log[cut:]
                del d.chain[cut:]
            elif isinstance(out, CompactLog):
                drop = out.upto_index - d.base_index
                d.base_chain = d.chain[drop - 1]
                del d.log[:drop]
                del d.chain[:drop]
                d.base_index, d.base_term = out.upto_index, out.upto_term
            else:
                sim.stats["snapshots_installed"] += 1
                d.snapshot, d.snapshot_data = out.meta, out.data
                chain = sim.committed.get(out.meta.index)
                if chain is None:
                    raise InvariantViolation(f"{s.id}: snapshot at uncommitted index {out.meta.index}")
                d.snapshot_chain = chain
                if out.reset_log:
                    d.log, d.chain = [], []
                    d.base_index, d.base_term, d.base_chain = out.meta.index, out.meta.term, chain
        sim.targeted_crash(s, "crash_after_persist")

    def send(self, sends: Sequence[Send]) -> None:
        self.sent_this_round = True
        for snd in sends:
            self.sim._send(self.s.id, snd.to, snd.msg)

    def apply(self, out: Apply) -> None:
        self.sim._apply(self.s, out.entries)

    def install_snapshot(self, out: InstallSnapshot) -> None:
        self.s.kv = self.sim.machine(out.data)

    def publish(self, out: Notice) -> None:
        sim = self.sim
        if isinstance(out, ReadReady):
            sim._read_ready(self.s, out.ctx, out.index)
        elif isinstance(out, ReadFailed):
            sim._read_failed(out.ctx)
        elif isinstance(out, RoleChange):
            if out.role == LEADER:
                sim._on_leader(self.s, out.term)

    def round_done(self) -> None:
        self.sent_this_round = False
