"""A deterministic simulator for the gossip stack (SWIM core + Serf layer), both pure.

One seeded `random.Random`, a virtual clock (an event heap), and a network that loses, delays (so
reorders) and duplicates packets per link, partitions node sets, and crashes and restarts nodes. Every
message really goes through `messages.encode/decode`. Push-pull is a reliable exchange unless the link
is cut or the peer is down; the TCP fallback ping likewise.

`Sim(seed, n).run_until(t)` advances time; the scenario functions in tests/sim/test_gossip_sim.py drive it and
check the views. A failing seed replays exactly with GOSSIP_SIM_SEED=<seed>. Every failure declaration
(Serf's member-failed, i.e. the core's alive/suspect -> dead) is logged in `Sim.failures` as it happens,
so the scenarios check "never declared" and "not before the crash" exactly rather than by sampling.

Each node's outputs are carried out by the runtime's own `GossipExecutor` (gossip/executor.py); only the I/O
beneath it (`SimIO`) is simulated, so the simulator gets every output the runtime gets: packets, push-pulls,
TCP pings, query replies and responses, keyring changes, member and user events.

`converge_rounds(n, seed, config)` is the dissemination benchmark: gossip intervals for one new fact to reach all n.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from meshagent.gossip import messages as m
from meshagent.gossip.executor import GossipExecutor
from meshagent.gossip.keyring import Keyring
from meshagent.gossip.membership import Swim
from meshagent.gossip.messages import NodeState
from meshagent.gossip.outputs import Address, Event, QueryResponse, SendPacket, StreamPing
from meshagent.gossip.serf import RECONNECT_INTERVAL, MemberEvent, Serf, Status, UserEvent
from meshagent.gossip.tunables import GossipConfig
from meshagent.gossip.wire import WireError, unpack_packet

PORT = 8301


@dataclass
class SimNode:
    """One node: its pure stack, the executor that carries out its outputs, and whether it runs."""

    name: str
    ip: str
    swim: Swim
    serf: Serf
    executor: GossipExecutor
    up: bool = True
    scheduled: float = -1.0
    user_events: list[UserEvent] = field(default_factory=list)
    member_events: list[MemberEvent] = field(default_factory=list)
    answers: dict[int, list[QueryResponse]] = field(default_factory=dict)  # our queries' answers, by id
    saved_keys: list[tuple[bytes, ...]] = field(default_factory=list)  # each keyring persisted, in order


class SimIO:
    """The simulated I/O beneath one node's executor: the seeded network, push-pull and TCP pings as events."""

    def __init__(self, sim: Sim, name: str) -> None:
        self.sim, self.name = sim, name

    @property
    def node(self) -> SimNode:
        return self.sim.nodes[self.name]

    def send_packet(self, packet: SendPacket) -> None:
        self.sim.packets += 1
        dst = self.sim.by_ip.get(packet.addr[0])
        if dst is None:
            return
        # A compressed packet is unpacked as the receiver's runtime would (the real codec).
        msgs = unpack_packet(packet.compressed) if packet.compressed is not None else packet.messages
        for msg in msgs:
            self.sim._send(self.name, dst, msg)

    def open_push_pull(self, addr: Address, join: bool) -> None:
        self.sim._push_pull(self.node, addr, join)

    def open_stream_ping(self, ping: StreamPing) -> None:
        self.sim._stream_ping(self.node, ping)

    def persist_keyring(self, keys: tuple[bytes, ...]) -> None:
        self.node.saved_keys.append(keys)

    def publish(self, event: Event) -> None:
        node = self.node
        if isinstance(event, UserEvent):
            node.user_events.append(event)
        elif isinstance(event, QueryResponse):
            node.answers.setdefault(event.id, []).append(event)
        else:
            node.member_events.append(event)
            if event.kind == "member-failed":
                self.sim.failures.append((self.sim.now, node.name, event.member.name))

    def rearm(self) -> None:
        pass  # the simulator reschedules every node's timer after each input it handles


@dataclass
class Sim:
    """The seeded world."""

    seed: int
    n: int
    loss: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.005)
    config: GossipConfig = field(default_factory=GossipConfig)
    tags: dict[str, str] = field(default_factory=lambda: {"role": "node"})  # every node's Serf tags
    record: bool = False  # log every delivered message in `trace` (for the replay test; costs memory)
    keys: tuple[bytes, ...] = ()  # every node's gossip keyring, primary first (empty: none; the sim never encrypts)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.nodes: dict[str, SimNode] = {}
        self.by_ip: dict[str, str] = {}
        self.cut: set[frozenset[str]] = set()  # pairs that cannot talk
        self.trace: list[tuple[float, str, str]] = []
        self.failures: list[tuple[float, str, str]] = []  # (time, viewer, subject) for each member-failed
        self.messages = 0
        self.packets = 0  # UDP packets sent (a compound counts once), lost ones included
        self.bad = 0  # injected packets and messages refused (WireError / MessageError), as the runtime counts them
        for i in range(self.n):
            self._make(f"n{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}")

    # ------------------------------------------------------------------------------------------ nodes

    def _make(self, name: str, ip: str) -> SimNode:
        rng = random.Random(self.rng.getrandbits(64))
        addr = bytes(int(x) for x in ip.split("."))
        keyring = Keyring(list(self.keys)) if self.keys else None
        serf = Serf(name, dict(self.tags), rng, keyring=keyring, addr=addr, port=PORT)
        swim = Swim(self.config, name, addr, PORT, serf, rng)
        node = SimNode(name, ip, swim, serf, GossipExecutor(swim, serf, SimIO(self, name)))
        self.nodes[name] = node
        self.by_ip[ip] = name
        return node

    def start(self, name: str, seeds: list[str]) -> None:
        """Start a node and push-pull with the seeds (names)."""
        node = self.nodes[name]
        node.up = True
        node.executor.start(self.now)
        for seed in seeds:
            self._push_pull(node, (self.nodes[seed].ip, PORT), True)
        self._reschedule(node)
        self._push(self.now + self.rng.uniform(0, RECONNECT_INTERVAL), "reconnect", (name, node.swim))

    def user_event(self, name: str, event: str, payload: bytes) -> None:
        """Fire a user event at `name`, as the runtime's `GossipAgent.user_event` does."""
        node = self.nodes[name]
        node.executor.user_event(self.now, event, payload, coalesce=False)
        self._reschedule(node)

    def query(self, name: str, query: str, payload: bytes = b"", timeout: float = 5.0) -> int:
        """Start a query at `name`, as the runtime's key operations do; its id. Answers, ours included, gather
        in `nodes[name].answers[id]`."""
        node = self.nodes[name]
        qid, outs = node.executor.query(query, payload, timeout)
        node.answers[qid] = []
        node.executor.carry_out(self.now, outs)
        self._reschedule(node)
        return qid

    def crash(self, name: str) -> None:
        """Stop a node at once: no leave, no more messages."""
        self.nodes[name].up = False
        self.trace.append((self.now, "crash", name))

    def restart(self, name: str, seeds: list[str]) -> None:
        """A fresh process under the same name and address (memberlist restarts at incarnation 1 and refutes)."""
        old = self.nodes[name]
        self._make(name, old.ip)
        self.trace.append((self.now, "restart", name))
        self.start(name, seeds)

    def inject(self, dst: str, packet: bytes, src: tuple[str, int] = ("10.255.0.1", 9)) -> None:
        """An outsider's raw UDP packet for `dst` (any bytes), delivered after the usual delay and handled as
        the runtime does: unframed, each message on its own, refusals counted in `bad`."""
        self._push(self.now + self.rng.uniform(*self.delay), "raw", (dst, packet, src, self.nodes[dst].swim))

    def partition(self, a: set[str], b: set[str]) -> None:
        """Cut every link between the two sets."""
        self.cut |= {frozenset((x, y)) for x in a for y in b}

    def heal(self) -> None:
        """Restore every link."""
        self.cut.clear()

    def _reachable(self, a: str, b: str) -> bool:
        return self.nodes[b].up and frozenset((a, b)) not in self.cut

    # ------------------------------------------------------------------------------------------ events

    def _push(self, at: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, data))

    def _reschedule(self, node: SimNode) -> None:
        at = node.swim.next_deadline()
        if node.up and at != node.scheduled:
            node.scheduled = at
            self._push(max(at, self.now), "tick", (node.name, node.swim, at))

    def run_until(self, t: float) -> None:
        """Process every event up to virtual time t."""
        while self.heap and self.heap[0][0] <= t:
            at, _, kind, data = heapq.heappop(self.heap)
            self.now = at
            if kind == "tick":
                name, swim, planned = data
                node = self.nodes[name]
                if not node.up or node.swim is not swim or planned != node.scheduled:
                    continue
                node.scheduled = -1.0
                node.executor.tick(self.now)
                self._reschedule(node)
            elif kind == "packet":
                src, dst, msg, swim = data
                node = self.nodes[dst]
                if not node.up or node.swim is not swim:
                    continue
                self.messages += 1
                if self.record:
                    self.trace.append((self.now, f"{src}>{dst}", msg.hex()))
                node.executor.receive(self.now, (self.nodes[src].ip, PORT), msg)
                self._reschedule(node)
            elif kind == "raw":
                self._deliver_raw(*data)
            elif kind == "call":
                data()
            elif kind == "reconnect":
                # Serf's reconnect loop: the runtime's, run here on the same schedule.
                name, swim = data
                node = self.nodes[name]
                if node.up and node.swim is swim:
                    member = node.serf.reconnect_candidate()
                    if member is not None:
                        ip = ".".join(str(b) for b in member.addr)
                        self._push_pull(node, (ip, member.port), True)
                    self._push(self.now + RECONNECT_INTERVAL, "reconnect", data)
        self.now = t

    def _deliver_raw(self, dst: str, packet: bytes, src: tuple[str, int], swim: Swim) -> None:
        node = self.nodes[dst]
        if not node.up or node.swim is not swim:
            return
        try:
            parts = unpack_packet(packet)
        except WireError:
            self.bad += 1
            return
        for part in parts:
            try:
                node.executor.receive(self.now, src, part)
            except m.MessageError:
                self.bad += 1
        self._reschedule(node)

    def _send(self, src: str, dst: str, msg: bytes) -> None:
        if not self._reachable(src, dst) or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self._push(self.now + self.rng.uniform(*self.delay), "packet", (src, dst, msg, self.nodes[dst].swim))

    def _push_pull(self, node: SimNode, addr: tuple[str, int], join: bool) -> None:
        dst_name = self.by_ip.get(addr[0])
        if dst_name is None:
            return
        src_swim = node.swim
        rtt = 2 * self.rng.uniform(*self.delay)

        def exchange() -> None:
            src, dst = self.nodes[node.name], self.nodes[dst_name]
            if src.swim is not src_swim or not src.up or not self._reachable(src.name, dst.name):
                return
            mine = (src.swim.local_push_pull_state(), src.serf.local_state(join))
            theirs = (dst.swim.local_push_pull_state(), dst.serf.local_state(join))
            dst.executor.merge(self.now, mine[0], mine[1], join)
            src.executor.merge(self.now, theirs[0], theirs[1], join)
            if join:
                src.executor.joined(self.now)
            self._reschedule(src)
            self._reschedule(dst)

        self._push(self.now + rtt, "call", exchange)

    def _stream_ping(self, node: SimNode, o: StreamPing) -> None:
        dst_name = self.by_ip.get(o.addr[0])
        ok = dst_name is not None and self._reachable(node.name, dst_name)
        swim = node.swim
        wait = 2 * self.rng.uniform(*self.delay) if ok else self.config.probe_timeout

        def result() -> None:
            if node.up and self.nodes[node.name].swim is swim:
                node.executor.stream_ping_result(self.now, o.seq_no, ok)
                self._reschedule(node)

        self._push(self.now + wait, "call", result)

    # ------------------------------------------------------------------------------------------ views

    def live(self) -> list[SimNode]:
        """Nodes that run."""
        return [n for n in self.nodes.values() if n.up]

    def status(self, viewer: str, subject: str) -> Status | None:
        """Serf's status of `subject` as `viewer` sees it (None: unknown)."""
        mem = self.nodes[viewer].serf.members.get(subject)
        return mem.status if mem else None

    def swim_state(self, viewer: str, subject: str) -> NodeState | None:
        """The SWIM core's state of `subject` as `viewer` sees it."""
        mem = self.nodes[viewer].swim.members.get(subject)
        return mem.state if mem else None

    def converged(self) -> bool:
        """Every live node sees every live node alive."""
        live = self.live()
        return all(self.status(a.name, b.name) == Status.ALIVE for a in live for b in live)


def _know_each_other(sim: Sim) -> None:
    """Hand every started node the full member list and drop what that queued: a converged cluster with nothing
    left to say about members."""
    states = []
    for node in sim.nodes.values():
        me = node.swim.members[node.name]
        states.append(m.PushNodeState(node.name, me.addr, PORT, me.meta, me.incarnation, 0, me.vsn))
    for node in sim.nodes.values():
        node.swim.merge_remote_state(sim.now, states)  # what it returns (member-join events) is dropped
        node.swim.broadcasts.clear()
        sim._reschedule(node)


def converge_rounds(n: int, seed: int, config: GossipConfig | None = None) -> tuple[float, int]:
    """Time for one new fact (a user event fired at one node) to reach all n nodes, in gossip intervals, and
    the messages delivered meanwhile. The cluster starts converged (every node merged the full member list,
    nothing left to gossip about members), the network loses nothing. Without eager gossip each interval is
    one gossip round, and log2(n) rounds is the ideal epidemic."""
    sim = Sim(seed, n, config=config or GossipConfig())
    for node in sim.nodes.values():
        node.swim.start(0.0)
    _know_each_other(sim)
    first = next(iter(sim.nodes.values()))
    sim.user_event(first.name, "fact", b"x")  # as the runtime fires it: the news leaves at once
    seen = {first.name}
    start, messages = sim.now, sim.messages
    step = sim.config.gossip_interval / 4
    limit = 10 * math.log2(max(2, n)) * sim.config.gossip_interval + 10.0
    while len(seen) < n and sim.now - start <= limit:
        sim.run_until(sim.now + step)
        seen.update(node.name for node in sim.nodes.values() if node.user_events)
    if len(seen) < n:
        raise AssertionError(f"seed {seed}: the fact reached {len(seen)} of {n} nodes in {limit:.0f} s")
    return (sim.now - start) / sim.config.gossip_interval, sim.messages - messages


def steady_sim(seed: int, n: int, config: GossipConfig | None = None, loss: float = 0.0) -> Sim:
    """n nodes that know each other, nothing left to gossip, probing in steady state: each started at a random
    moment within one probe interval (so their timers are out of phase, as in a real cluster), then handed the
    full member list, then run for 5 s."""
    sim = Sim(seed, n, loss=loss, config=config or GossipConfig())
    for node in sim.nodes.values():
        sim.run_until(sim.now + sim.rng.uniform(0, sim.config.probe_interval / n))
        node.swim.start(sim.now)
        sim._reschedule(node)
    _know_each_other(sim)
    sim.run_until(sim.now + 5.0)
    return sim


@dataclass(frozen=True)
class Detection:
    """Seconds from a crash until the first live node suspected it, and until the first and the last live node
    declared it failed."""

    suspected: float
    first: float
    last: float


def detect_crash(n: int, seed: int, config: GossipConfig | None = None) -> Detection:
    """Crash one random node of a steady cluster of n; when did the live nodes declare it failed? Raises if a
    live node is ever declared failed, or if some live node has not declared the crash within 120 s."""
    sim = steady_sim(seed, n, config)
    victim = sim.rng.choice(list(sim.nodes))
    sim.run_until(sim.now + sim.rng.uniform(0, sim.config.probe_interval))
    crashed = sim.now
    sim.crash(victim)
    live = {x.name for x in sim.live()}
    declared: dict[str, float] = {}
    suspected = math.inf
    while set(declared) != live and sim.now - crashed < 120:
        sim.run_until(sim.now + 0.01)
        if suspected == math.inf and any(sim.swim_state(x, victim) == NodeState.SUSPECT for x in live):
            suspected = sim.now - crashed  # to within the 10 ms step
        declared.update((who, t - crashed) for t, who, subject in sim.failures
                        if subject == victim and who not in declared)
    wrong = [f for f in sim.failures if f[2] != victim]
    if wrong or set(declared) != live:
        raise AssertionError(f"seed {seed}: false failures {wrong}, undeclared {sorted(live - set(declared))}")
    return Detection(suspected, min(declared.values()), max(declared.values()))


def user_event_spread(n: int, seed: int, config: GossipConfig | None = None) -> tuple[float, int]:
    """Seconds for a user event fired at a random node of a steady cluster of n to reach every node, and the
    packets sent meanwhile. Fired at a random moment, as an operator would."""
    sim = steady_sim(seed, n, config)
    sender = sim.rng.choice(list(sim.nodes))
    sim.run_until(sim.now + sim.rng.uniform(0, sim.config.probe_interval))
    fired, packets = sim.now, sim.packets
    sim.user_event(sender, "fact", b"x")
    while not all(x.user_events for x in sim.nodes.values()):
        if sim.now - fired > 30:
            raise AssertionError(f"seed {seed}: the user event did not reach every node within 30 s")
        sim.run_until(sim.now + 0.001)
    return sim.now - fired, sim.packets - packets


def quantiles(values: list[float]) -> tuple[float, float]:
    """Median and 90th percentile."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def measure(seeds: int = 50, sizes: tuple[int, ...] = (10, 30), config: GossipConfig | None = None) -> None:
    """Print detection and dissemination figures (median / p90 over `seeds` seeds) for each cluster size."""
    for n in sizes:
        det = [detect_crash(n, seed, config) for seed in range(seeds)]
        ev = [user_event_spread(n, seed, config) for seed in range(seeds)]
        rows = {"crash -> all declared failed": [d.last for d in det],
                "crash -> first declared failed": [d.first for d in det],
                "first suspected -> first declared": [d.first - d.suspected for d in det],
                "dead: first -> last declaration": [d.last - d.first for d in det],
                "user event -> all nodes": [t for t, _ in ev]}
        for label, values in rows.items():
            med, p90 = quantiles(values)
            print(f"n={n:3d} {label:34s} median {med:7.3f} s   p90 {p90:7.3f} s")
        print(f"n={n:3d} {'user event: packets meanwhile':34s} median {statistics.median(p for _, p in ev):7.0f}")


if __name__ == "__main__":
    measure()
