"""The SWIM + Lifeguard membership core, speaking memberlist's messages. Sans-IO: no clock, no sockets.

Inputs: `start`, `tick(now)`, `receive(now, src, data)` (one single message: type byte + body),
`merge_remote_state` (a push-pull's other side), `joined`, `stream_ping_result`, `leave`, `update_meta`.
Outputs (`gossip.outputs`): `SendPacket` (a list of single messages for one UDP packet; the runtime frames
them), `PushPull` (open a TCP exchange) and `StreamPing` (a TCP fallback ping). Member changes reach the
layer above through its `Delegate`, synchronously; what the delegate returns is passed on with our own
outputs, after them, so each input gives one list.

Behaviour follows memberlist's state.go: shuffled round-robin probes, direct ping, indirect pings with
nacks, TCP fallback, Lifeguard's self-awareness and confirmation-shrinking suspicion timeouts,
incarnation numbers and refutation, piggybacked dissemination with a retransmit limit.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, field

from . import bounds, limits, wire
from . import messages as m
from .broadcast_queue import Broadcast, BroadcastQueue
from .delegate import Delegate, MemberInfo
from .messages import NodeState
from .outputs import Output, PushPull, SendPacket, StreamPing
from .tunables import EAGER_GOSSIP_DIVISOR, GossipConfig, push_pull_scale, retransmit_limit, suspicion_timeout

Address = tuple[str, int]
__all__ = ["Output", "PushPull", "SendPacket", "StreamPing", "Swim"]  # the outputs, re-exported for callers
META_MAX_SIZE = 512  # memberlist's MetaMaxSize
# Parts per compound packet. memberlist's format allows 255, but it sizes the length table in a uint8, so
# a Go peer misreads any compound of 128 parts or more (found by the serf wire tests).
MAX_PARTS = 127
# Room kept in each packet for what the runtime wraps around it: AES-GCM (29 bytes) and the CRC header (5).
FRAMING_RESERVE = 34
# When broadcasts are left over after a packet is full, we try a compressed packet holding more of them;
# this many compressions at most per packet (the first usually fits: see Swim._lzw_ratio).
COMPRESS_TRIES = 3
# A failed probe still counts nacks for this fraction of the probe timeout after it ends (see _probe_failed).
NACK_GRACE = 0.5


@dataclass(slots=True)
class SwimMember:
    """One member as this node's SWIM core sees it (the layers above get `gossip.member.Member` values)."""

    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: NodeState
    state_change: float
    vsn: bytes = m.DEFAULT_VSN

    @property
    def address(self) -> Address:
        return ip_text(self.addr), self.port

    def info(self) -> MemberInfo:
        return MemberInfo(self.name, self.addr, self.port, self.meta, self.incarnation, self.state, self.vsn)


def _overhead(parts: int) -> int:
    """Bytes a compound of `parts` messages adds around them (type, count, a u16 length each)."""
    return 2 + 2 * parts


def ip_text(addr: bytes) -> str:
    """An address from the wire's raw bytes, as text; MessageError unless 4 or 16 bytes."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        raise m.MessageError(f"an address must be 4 or 16 bytes, got {len(addr)}") from None


def ip_bytes(ip: str) -> bytes:
    """An address as memberlist puts it on the wire (4 or 16 raw bytes)."""
    return ipaddress.ip_address(ip).packed


class Suspicion:
    """Lifeguard's suspicion timer: starts at `max`, shrinks toward `min` with each independent confirmation."""

    def __init__(self, start: float, k: int, min_timeout: float, max_timeout: float, first: str) -> None:
        self.start, self.k, self.min, self.max = start, k, min_timeout, max_timeout
        self.confirmations: set[str] = {first}
        self.n = 0
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)

    def confirm(self, who: str) -> bool:
        """Count a confirmation from a new member; True if it counted (and the deadline moved)."""
        if self.n >= self.k or who in self.confirmations:
            return False
        self.confirmations.add(who)
        self.n += 1
        frac = math.log(self.n + 1) / math.log(self.k + 1)
        self.deadline = self.start + max(self.min, self.max - (self.max - self.min) * frac)
        return True


@dataclass(slots=True)
class _Probe:
    target: str
    seq_no: int
    direct_deadline: float
    end: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    acked: bool = False
    settle_at: float = math.inf  # once failed: when its missing nacks are charged to our awareness


@dataclass(slots=True)
class _Relay:
    requester: Address
    their_seq: int
    expires: float  # memberlist's ack handler lives probe_timeout; then a nack if one was asked for
    nack: bool


@dataclass
class Swim:
    """One member's SWIM state machine."""

    config: GossipConfig
    name: str
    addr: bytes
    port: int
    delegate: Delegate
    rng: random.Random
    members: dict[str, SwimMember] = field(default_factory=dict)
    incarnation: int = 0
    awareness: int = 0
    leaving: bool = False
    unrefutable: int = 0  # alive messages about us at the top incarnation, which we cannot out-bid
    dropped_states: int = 0  # push-pull states with a claim past the bound (skipped, not merged)

    def __post_init__(self) -> None:
        self._seq = 0
        self.broadcasts = BroadcastQueue()  # our own news (alive, suspect, dead) to piggyback
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._failed_probe: _Probe | None = None  # failed, still counting late nacks
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._next_probe = self._next_gossip = self._next_push_pull = 0.0
        self._last_gossip = -math.inf  # when a gossip round last sent something (eager gossip's spacing)
        self._confirm: list[str] = []  # suspects to probe before the round robin resumes (prompt confirmation)
        self._reaped_at: dict[str, float] = {}
        self._lzw_ratio = 0.55  # compressed / raw size of our last compressed packet (alive messages: ~0.5)
        self._above: list[Output] = []  # what the delegate returned during the current input

    # ------------------------------------------------------------------------------------------ views

    def member_list(self) -> list[MemberInfo]:
        """Every member known, ourselves included."""
        return [mem.info() for mem in self.members.values()]

    def num_alive(self) -> int:
        """Members not dead or left (ourselves included)."""
        return sum(1 for mem in self.members.values() if mem.state in (NodeState.ALIVE, NodeState.SUSPECT))

    def health_score(self) -> int:
        """Lifeguard's local health: 0 is healthy; probe timing is scaled by score + 1."""
        return self.awareness

    def next_deadline(self) -> float:
        """When `tick` next has work."""
        times = [self._next_probe, self._next_gossip, self._next_push_pull]
        if self._probe is not None:
            times.append(self._probe.end if self._probe.indirect_sent else self._probe.direct_deadline)
        if self._failed_probe is not None:
            times.append(self._failed_probe.settle_at)
        times.extend(s.deadline for s in self._suspicions.values())
        times.extend(r.expires for r in self._relays.values())
        return min(times)

    # ------------------------------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Output]:
        """Become alive (incarnation 1) and schedule the periodic work."""
        self.incarnation += 1
        meta = self.delegate.node_meta(META_MAX_SIZE)
        self._alive(now, m.Alive(self.incarnation, self.name, self.addr, self.port, meta), bootstrap=True)
        self._next_probe = now + self.config.probe_interval
        self._next_gossip = now + self.config.gossip_interval
        self._next_push_pull = now + self.config.push_pull_interval
        return self._with_above([])

    def join(self, seeds: list[Address]) -> list[Output]:
        """Push-pull with each seed (join=True); the runtime reports answers through merge_remote_state."""
        return [PushPull(s, True) for s in seeds]

    def joined(self, now: float) -> None:
        """A join push-pull succeeded: bring the next periodic push-pull forward to when the join's
        broadcasts have run their course (retransmit limit x gossip interval: 1.6 s at 30 members).

        Not in memberlist. Gossip sends each alive message a limited number of times to random members, so
        in a join storm a member now and then misses a fellow joiner's alive for good and waits for the
        periodic push-pull (30 s): 21 of 200 simulated storms of 30 members with Consul's tags did.
        One early full sync with a random member completes our view, and tells that member of anyone it
        missed (it gossips them afresh). It costs one push-pull per join."""
        limit = retransmit_limit(self.config.retransmit_mult, max(1, self.num_alive()))
        self._next_push_pull = min(self._next_push_pull, now + limit * self.config.gossip_interval)

    def gossip_soon(self, now: float) -> None:
        """News was queued for gossip (by the layer above, or here): run the next gossip round now rather than
        at the next tick, but not sooner than gossip_interval / EAGER_GOSSIP_DIVISOR after the last round that
        sent anything. The runtime calls it when Serf queues a user event, query or intent, then re-arms its
        timer at `next_deadline`.

        Not in memberlist, where news waits for the next tick (up to one gossip interval at every hop). Only
        the moment changes: each broadcast is still sent retransmit-limit times and each packet is filled the
        same way; the spacing keeps a burst of news (a join storm) from becoming a burst of packets."""
        if not self.config.eager_gossip:
            return
        soonest = self._last_gossip + self.config.gossip_interval / EAGER_GOSSIP_DIVISOR
        self._next_gossip = min(self._next_gossip, max(now, soonest))

    def update_meta(self, now: float) -> list[Output]:
        """Announce new metadata (from the delegate) with a fresh incarnation."""
        self.incarnation = min(self.incarnation + 1, limits.INCARNATION_MAX)
        me = self.members[self.name]
        meta = self.delegate.node_meta(META_MAX_SIZE)
        # bootstrap=True as memberlist's UpdateNode: otherwise our own alive is taken for an accusation and
        # refuted with the old meta.
        self._alive(now, m.Alive(self.incarnation, self.name, self.addr, self.port, meta, me.vsn), bootstrap=True)
        return self._with_above([])

    def leave(self, now: float) -> list[Output]:
        """Announce a graceful leave (our own Dead); the runtime then gossips until it has gone out."""
        self.leaving = True
        self._dead(now, m.Dead(self.incarnation, self.name, self.name))
        return self._with_above(self._gossip(now))

    def gossip_now(self, now: float) -> list[Output]:
        """One gossip round at once, outside the timers (the runtime's leave repeats it until the news is out)."""
        return self._with_above(self._gossip(now))

    def leave_sent(self) -> bool:
        """Whether our leave broadcast has been sent at least a few times (or there is nobody to tell)."""
        if self.num_alive() <= 1:
            return True
        return not self.broadcasts.pending(self.name, below=2)

    def tick(self, now: float) -> list[Output]:
        """Run whatever timers are due at `now`."""
        out: list[Output] = []
        for name, s in list(self._suspicions.items()):
            if now >= s.deadline:
                del self._suspicions[name]
                mem = self.members.get(name)
                if mem is not None and mem.state == NodeState.SUSPECT:
                    self._dead(now, m.Dead(mem.incarnation, name, self.name))
        for seq, relay in list(self._relays.items()):
            if now >= relay.expires:
                del self._relays[seq]
                if relay.nack:
                    out.append(self._send(relay.requester, [m.encode(m.NackResp(relay.their_seq))]))
        failed = self._failed_probe
        if failed is not None and now >= failed.settle_at:
            self._failed_probe = None
            self._charge_missing_nacks(failed)
        probe = self._probe
        if probe is not None:
            if probe.acked:
                self._probe = None
            elif not probe.indirect_sent and now >= probe.direct_deadline:
                out.extend(self._indirect(now, probe))
            elif probe.indirect_sent and now >= probe.end:
                self._probe_failed(now, probe)
        if now >= self._next_probe:
            self._next_probe = now + self._scale(self.config.probe_interval)
            if self._probe is None:
                out.extend(self._start_probe(now))
        if now >= self._next_gossip:
            self._next_gossip = now + self.config.gossip_interval
            out.extend(self._gossip(now))
            self._reap(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_scale(self.config.push_pull_interval, self.num_alive())
            peers = [mem for mem in self.members.values() if mem.name != self.name and mem.state == NodeState.ALIVE]
            if peers:
                out.append(PushPull(self.rng.choice(peers).address, False))
        return self._with_above(out)

    def receive(self, now: float, src: Address, data: bytes) -> list[Output]:
        """Handle one single message that arrived from `src`; raises MessageError when malformed or out of
        bounds (`gossip.bounds`), and then nothing has changed."""
        msg = m.decode(data)
        _check(msg)
        out: list[Output] = []
        if isinstance(msg, m.Ping):
            if msg.node and msg.node != self.name:
                return out  # meant for a previous owner of our address
            dest = (ip_text(msg.source_addr), msg.source_port) if msg.source_addr and msg.source_port else src
            lead = [m.encode(m.AckResp(msg.seq_no, b""))]
            sender = self.members.get(msg.source_node) if msg.source_node else None
            if sender is not None and sender.state == NodeState.DEAD:
                # Not in memberlist: a member we declared dead is probing us, so it lives and is cut off no
                # more (a healed partition). Our verdict rides with the ack and it refutes at once; otherwise
                # it learns it only if a last retransmit of the news or Serf's 30 s reconnect happens by.
                lead.append(m.encode(m.Dead(sender.incarnation, sender.name, self.name)))
            out.append(self._send(dest, lead))
        elif isinstance(msg, m.IndirectPing):
            if len(self._relays) >= limits.RELAYS_MAX:
                raise m.MessageError(f"already relaying {limits.RELAYS_MAX} probes")
            seq = self._next_seq()
            requester = (ip_text(msg.source_addr), msg.source_port) if msg.source_addr and msg.source_port else src
            self._relays[seq] = _Relay(requester, msg.seq_no, now + self.config.probe_timeout, msg.nack)
            ping = m.Ping(seq, msg.node, self.addr, self.port, self.name)
            out.append(self._send((ip_text(msg.target), msg.port), [m.encode(ping)]))
        elif isinstance(msg, m.AckResp):
            out.extend(self._on_ack(now, msg.seq_no))
        elif isinstance(msg, m.NackResp):
            for probe in (self._probe, self._failed_probe):
                if probe is not None and probe.seq_no == msg.seq_no:
                    probe.nacks += 1
        elif isinstance(msg, m.Alive):
            self._alive(now, msg)
        elif isinstance(msg, m.Suspect):
            self._suspect(now, msg)
        elif isinstance(msg, m.Dead):
            self._dead(now, msg)
        elif isinstance(msg, m.UserMsg):
            self._above.extend(self.delegate.notify_msg(now, msg.payload))
        return self._with_above(out)

    def stream_ping_result(self, now: float, seq_no: int, ok: bool) -> list[Output]:
        """The outcome of a StreamPing."""
        return self._with_above(self._on_ack(now, seq_no) if ok else [])

    def local_push_pull_state(self) -> list[m.PushNodeState]:
        """Our full member list for a push-pull."""
        return [m.PushNodeState(mem.name, mem.addr, mem.port, mem.meta, mem.incarnation, int(mem.state), mem.vsn)
                for mem in self.members.values()]

    def merge_remote_state(self, now: float, nodes: list[m.PushNodeState]) -> list[Output]:
        """Merge a peer's full member list, the way memberlist's mergeState does; MessageError (and nothing
        merged) if any state in it is out of bounds."""
        bounds.push_pull(nodes)
        for r in nodes:
            if r.state != NodeState.ALIVE and r.incarnation > limits.CLAIM_INCARNATION_MAX:
                self.dropped_states += 1  # a claim nobody could refute: never acted on
                continue
            if r.state == NodeState.ALIVE:
                self._alive(now, m.Alive(r.incarnation, r.name, r.addr, r.port, r.meta, r.vsn))
            elif r.state == NodeState.LEFT:
                self._dead(now, m.Dead(r.incarnation, r.name, r.name))
            elif r.state in (NodeState.DEAD, NodeState.SUSPECT):
                # Never trust a remote dead outright: suspect it and let the probes decide.
                self._suspect(now, m.Suspect(r.incarnation, r.name, self.name))
        return self._with_above([])

    def _with_above(self, out: list[Output]) -> list[Output]:
        """Our outputs, then what the delegate returned while we handled this input (its events, replies)."""
        if self._above:
            out.extend(self._above)
            self._above = []
        return out

    # ------------------------------------------------------------------------------------------ probing

    def _scale(self, timeout: float) -> float:
        return timeout * (self.awareness + 1)

    def _apply_awareness(self, delta: int) -> None:
        self.awareness = max(0, min(self.config.awareness_max_multiplier - 1, self.awareness + delta))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        return self._seq

    def _start_probe(self, now: float) -> list[Output]:
        target = self._next_probe_target()
        if target is None:
            return []
        seq = self._next_seq()
        interval = self._scale(self.config.probe_interval)
        self._probe = _Probe(target.name, seq, now + self._scale(self.config.probe_timeout), now + interval)
        lead = [m.encode(m.Ping(seq, target.name, self.addr, self.port, self.name))]
        if target.state == NodeState.SUSPECT:
            # memberlist's probeNode: the accusation rides with the ping, so a suspect that is only slow
            # refutes as soon as it hears from us rather than when gossip happens to bring it the news.
            lead.append(m.encode(m.Suspect(target.incarnation, target.name, self.name)))
        return [self._send(target.address, lead, target)]

    def _next_probe_target(self) -> SwimMember | None:
        while self._confirm:
            mem = self.members.get(self._confirm.pop(0))
            suspicion = self._suspicions.get(mem.name) if mem is not None else None
            # Skipped if the suspicion ended or we confirmed it meanwhile (our round robin got there first).
            if mem is not None and suspicion is not None and self.name not in suspicion.confirmations:
                return mem
        for _ in range(2):
            while self._probe_index < len(self._probe_list):
                name = self._probe_list[self._probe_index]
                self._probe_index += 1
                mem = self.members.get(name)
                if mem is not None and name != self.name and mem.state in (NodeState.ALIVE, NodeState.SUSPECT):
                    return mem
            self._probe_list = [n for n in self.members if n != self.name]
            self.rng.shuffle(self._probe_list)
            self._probe_index = 0
        return None

    def _indirect(self, now: float, probe: _Probe) -> list[Output]:
        probe.indirect_sent = True
        target = self.members.get(probe.target)
        if target is None:
            self._probe = None
            return []
        out: list[Output] = []
        helpers = [mem for mem in self.members.values()
                   if mem.name not in (self.name, probe.target) and mem.state == NodeState.ALIVE]
        for helper in self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers))):
            nack = helper.vsn[1] >= 4 if len(helper.vsn) > 1 else False
            probe.expected_nacks += 1 if nack else 0
            req = m.IndirectPing(probe.seq_no, target.addr, target.port, target.name, nack,
                                 self.addr, self.port, self.name)
            out.append(self._send(helper.address, [m.encode(req)], helper))
        if not self.config.disable_tcp_pings and len(target.vsn) > 1 and target.vsn[1] >= 3:
            ping = m.Ping(probe.seq_no, target.name, self.addr, self.port, self.name)
            out.append(StreamPing(target.address, m.encode(ping), probe.seq_no))
        return out

    def _on_ack(self, now: float, seq_no: int) -> list[Output]:
        relay = self._relays.pop(seq_no, None)
        if relay is not None:
            return [self._send(relay.requester, [m.encode(m.AckResp(relay.their_seq, b""))])]
        probe = self._probe
        if probe is not None and probe.seq_no == seq_no and not probe.acked:
            probe.acked = True
            self._apply_awareness(-1)
            self._probe = None
        return []

    def _probe_failed(self, now: float, probe: _Probe) -> None:
        self._probe = None
        # Lifeguard charges each missing nack to our own health. But a relay nacks probe_timeout after our
        # indirect ping reached it, which is probe_timeout after our direct ping: at the very moment our
        # unscaled probe ends (memberlist and serf alike). Counted at that moment, every nack about a truly
        # dead member is missing, so each member that probes it slows its own probing 4x, and the next
        # failure anywhere is found late. We count nacks a little longer and charge only those still missing.
        if self._failed_probe is not None:  # only if probe_interval < 1.5 probe_timeout
            self._charge_missing_nacks(self._failed_probe)
        probe.settle_at = now + NACK_GRACE * self.config.probe_timeout
        self._failed_probe = probe
        mem = self.members.get(probe.target)
        if mem is not None and mem.state in (NodeState.ALIVE, NodeState.SUSPECT):
            # Already suspected by someone else: our own failed probe is an independent confirmation,
            # which is what shrinks the suspicion timeout (Lifeguard).
            self._suspect(now, m.Suspect(mem.incarnation, mem.name, self.name))

    def _charge_missing_nacks(self, failed: _Probe) -> None:
        """Lifeguard's cost of a failed probe to our health: one point per missing nack, or one without helpers."""
        self._apply_awareness(max(0, failed.expected_nacks - failed.nacks) if failed.expected_nacks else 1)

    # ------------------------------------------------------------------------------------------ gossip

    def _gossip(self, now: float) -> list[Output]:
        out: list[Output] = []
        candidates = [mem for mem in self.members.values() if mem.name != self.name and (
            mem.state in (NodeState.ALIVE, NodeState.SUSPECT)
            or now - mem.state_change < self.config.gossip_to_the_dead_time)]
        for mem in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            msgs, packed = self._fill([])
            if not msgs:
                break
            out.append(SendPacket(mem.address, msgs, self._wants_crc(mem), packed))
        if out:
            self._last_gossip = now
        return out

    def _send(self, dest: Address, lead: list[bytes], member: SwimMember | None = None) -> SendPacket:
        """The `lead` messages plus whatever broadcasts fit beside them."""
        msgs, packed = self._fill(lead)
        if member is None:
            member = next((mem for mem in self.members.values() if mem.address == dest), None)
        return SendPacket(dest, msgs, self._wants_crc(member), packed)

    def _fill(self, lead: list[bytes]) -> tuple[list[bytes], bytes | None]:
        """`lead` and the broadcasts that fit beside it in one packet, and the compressed form of them all
        when compressing let more broadcasts in (None: send them plain)."""
        total = self.config.udp_buffer_size - FRAMING_RESERVE
        room = total - _overhead(len(lead)) - sum(len(x) for x in lead)
        if room <= 0:
            return lead, None
        taken, rest, limit = self._broadcasts(room)
        msgs = [*lead, *taken]
        if not rest or not self.config.compress_when_full:
            return msgs, None
        return self._compress_more(msgs, rest, total, limit)

    def _compress_more(self, msgs: list[bytes], rest: list[Broadcast], total: int,
                       limit: int) -> tuple[list[bytes], bytes | None]:
        """A packet is full and our broadcasts in `rest` are left over: add as many of them as fit once the
        packet is LZW-compressed (memberlist compresses only after filling a packet, so it never gains
        room). During a join storm this carries about twice the alive messages per packet."""
        raw = _overhead(len(msgs)) + sum(len(x) for x in msgs)
        # Aim at what the last compression ratio says fits, with a margin: usually one compression does.
        target = total / self._lzw_ratio * 0.95
        extra: list[Broadcast] = []
        for b in rest:
            if len(msgs) + len(extra) >= MAX_PARTS:
                break
            if raw + len(b.msg) + 2 <= target:
                extra.append(b)
                raw += len(b.msg) + 2
        for _ in range(COMPRESS_TRIES):
            if not extra:
                break
            packed = wire.compress_message(wire.make_compound([*msgs, *(b.msg for b in extra)]))
            ratio = len(packed) / raw
            # Capped, so that one incompressible packet does not stop us from trying on the next ones.
            self._lzw_ratio = min(0.8, max(0.2, ratio))
            if len(packed) <= total:
                self.broadcasts.sent(extra, limit)
                return [*msgs, *(b.msg for b in extra)], packed
            # Too big: cut the extras to what this ratio says fits, at least one.
            target = total / ratio * 0.95
            raw -= len(extra.pop().msg) + 2
            while extra and raw > target:
                raw -= len(extra.pop().msg) + 2
        return msgs, None

    @staticmethod
    def _wants_crc(member: SwimMember | None) -> bool:
        return member is not None and len(member.vsn) > 1 and member.vsn[1] >= 5

    def _broadcasts(self, room: int) -> tuple[list[bytes], list[Broadcast], int]:
        """Fill `room` bytes: our own broadcasts and the delegate's share it, so neither starves the other.
        Returns the messages taken, our broadcasts that did not fit (in queue order), and the retransmit limit."""
        limit = retransmit_limit(self.config.retransmit_mult, max(1, self.num_alive()))
        taken: list[bytes] = []
        # The layer above (Serf: joins, leaves, user events) gets first claim on half the packet, ours get
        # the rest. memberlist gave its own broadcasts strict priority, which starved user events during
        # membership churn (memberlist#299). The delegate is asked once per packet: each answer counts as
        # a transmission, so asking twice would send the same message twice in one packet.
        used = self._take_delegate(room // 2, taken)
        rest = self.broadcasts.take(room - used, taken, limit, MAX_PARTS)
        return taken, rest, limit

    def _take_delegate(self, room: int, taken: list[bytes]) -> int:
        if room <= 3:
            return 0
        used = 0
        # Each delegate message travels as a memberlist user message: one type byte in front.
        for b in self.delegate.get_broadcasts(3, room):
            cost = len(b) + 3
            if used + cost > room or len(taken) >= MAX_PARTS:
                break
            taken.append(bytes([m.MessageType.USER]) + b)
            used += cost
        return used

    def _queue_broadcast(self, now: float, key: str | None, msg: bytes) -> None:
        self.broadcasts.queue(key, msg)
        self.gossip_soon(now)

    # ------------------------------------------------------------------------------------------ state

    def _alive(self, now: float, a: m.Alive, bootstrap: bool = False) -> None:
        if self.leaving and a.node == self.name:
            return
        mem = self.members.get(a.node)
        is_local = a.node == self.name
        fresh = mem is None
        updates_address = False
        if mem is None:
            mem = SwimMember(a.node, a.addr, a.port, a.meta, 0, NodeState.DEAD, now, a.vsn)
            self.members[a.node] = mem
            self._probe_list.insert(self.rng.randint(0, len(self._probe_list)), a.node)
        elif not is_local and (mem.addr, mem.port) != (a.addr, a.port):
            # The name moved to another address: fine once the old owner left (or has been dead long
            # enough); otherwise it is a conflict and the member we know wins.
            reclaim = self.config.dead_node_reclaim_time
            if not (mem.state == NodeState.LEFT or (mem.state == NodeState.DEAD and reclaim > 0
                                                     and now - mem.state_change > reclaim)):
                return
            updates_address = True
        if not fresh and not is_local and not updates_address and a.incarnation <= mem.incarnation:
            return
        if not fresh and is_local and a.incarnation < mem.incarnation:
            return
        self._suspicions.pop(a.node, None)
        if is_local and not bootstrap:
            if a.incarnation == mem.incarnation and a.meta == mem.meta and mem.state == NodeState.ALIVE:
                return  # our own alive coming back to us
            self._refute(now, max(a.incarnation, mem.incarnation))
            return
        was_state, old_meta, old_addr = mem.state, mem.meta, (mem.addr, mem.port)
        self._queue_broadcast(now, a.node, m.encode(a))
        mem.incarnation, mem.meta, mem.addr, mem.port, mem.vsn = a.incarnation, a.meta, a.addr, a.port, a.vsn
        if was_state != NodeState.ALIVE or fresh:
            mem.state, mem.state_change = NodeState.ALIVE, now
        if fresh or was_state in (NodeState.DEAD, NodeState.LEFT):
            self._above.extend(self.delegate.notify_join(now, mem.info()))
        elif old_meta != a.meta or old_addr != (a.addr, a.port):
            self._above.extend(self.delegate.notify_update(now, mem.info()))

    def _suspect(self, now: float, s: m.Suspect) -> None:
        mem = self.members.get(s.node)
        if mem is None or s.incarnation < mem.incarnation:
            return
        existing = self._suspicions.get(s.node)
        if existing is not None:
            if existing.confirm(s.from_node):
                self._queue_broadcast(now, s.node, m.encode(s))
            return
        if mem.state != NodeState.ALIVE:
            return
        if s.node == self.name:
            self._refute(now, s.incarnation)
            return
        self._queue_broadcast(now, s.node, m.encode(s))
        mem.incarnation, mem.state, mem.state_change = s.incarnation, NodeState.SUSPECT, now
        n = self.num_alive()
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        low = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        self._suspicions[s.node] = Suspicion(now, k, low, self.config.suspicion_max_timeout_mult * low, s.from_node)
        probing = self._probe is not None and self._probe.target == s.node
        if self.config.prompt_confirmation and s.from_node != self.name and not probing and s.node not in self._confirm:
            # Lifeguard shrinks the timeout with each independent confirmation, but round robin reaches the
            # suspect at a random point of its pass (up to n - 1 probe intervals away), so confirmations
            # trickle in and the timeout often stays long. Probing it next, once per suspicion, brings ours
            # within about one probe interval; the probe in flight and the round-robin order are left alone.
            self._confirm.append(s.node)

    def _dead(self, now: float, d: m.Dead) -> None:
        mem = self.members.get(d.node)
        if mem is None or d.incarnation < mem.incarnation:
            return
        self._suspicions.pop(d.node, None)
        if mem.state in (NodeState.DEAD, NodeState.LEFT):
            return
        if d.node == self.name and not self.leaving:
            self._refute(now, d.incarnation)
            return
        self._queue_broadcast(now, d.node, m.encode(d))
        mem.incarnation = d.incarnation
        mem.state = NodeState.LEFT if d.node == d.from_node else NodeState.DEAD
        mem.state_change = now
        self._above.extend(self.delegate.notify_leave(now, mem.info()))

    def _refute(self, now: float, accused: int) -> None:
        if max(self.incarnation, accused) >= limits.INCARNATION_MAX:
            # Only a forged alive can get here (claims are bounded well below): one more would not fit
            # memberlist's uint32, so we keep our incarnation and count it rather than overflow.
            self.unrefutable += 1
            return
        self.incarnation = max(self.incarnation, accused) + 1
        # Being accused (suspect, dead, or an alive that isn't ours) is a hint that we are the slow one.
        self._apply_awareness(1)
        me = self.members[self.name]
        me.incarnation = self.incarnation
        me.state = NodeState.ALIVE
        alive = m.Alive(self.incarnation, self.name, self.addr, self.port, me.meta, me.vsn)
        self._queue_broadcast(now, self.name, m.encode(alive))

    def _reap(self, now: float) -> None:
        """Forget members dead or left for longer than gossip_to_the_dead_time (the layer above keeps them)."""
        for name, mem in list(self.members.items()):
            if (name != self.name and mem.state in (NodeState.DEAD, NodeState.LEFT)
                    and now - mem.state_change > self.config.gossip_to_the_dead_time):
                del self.members[name]


def _check(msg: m.Message) -> None:
    """Hold a decoded message to `gossip.bounds` before the core acts on it."""
    if isinstance(msg, m.Alive):
        bounds.alive(msg)
    elif isinstance(msg, (m.Suspect, m.Dead)):
        bounds.claim(msg.node, msg.from_node, msg.incarnation)
    elif isinstance(msg, m.Ping):
        bounds.name(msg.node, "ping target", empty=True)
        bounds.name(msg.source_node, "ping source", empty=True)
        if msg.source_addr:
            bounds.address(msg.source_addr, msg.source_port)
    elif isinstance(msg, m.IndirectPing):
        bounds.name(msg.node, "probe target", empty=True)
        bounds.address(msg.target, msg.port)
        if msg.source_addr:
            bounds.address(msg.source_addr, msg.source_port)
