"""Every SWIM tunable in one object, with memberlist's LAN defaults, and the formulas that scale them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """memberlist's DefaultLANConfig; times in seconds."""

    # How often a member probes one other member (round robin over a shuffled list), and how long it
    # waits for the direct ack before asking others to probe indirectly. Both are scaled up by local
    # health awareness when this node itself looks slow.
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    # How many members are asked to probe indirectly after a missed direct ack.
    indirect_checks: int = 3
    # A broadcast is sent retransmit_mult * ceil(log10(n + 1)) times before it is dropped from the queue.
    retransmit_mult: int = 4
    # Suspicion timeout = suspicion_mult * max(1, log10(n)) * probe_interval at the least; it starts at
    # suspicion_max_timeout_mult times that and shrinks as independent members confirm the suspicion.
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    # Local health awareness: the multiplier on probe interval and timeout goes up to this (exclusive).
    awareness_max_multiplier: int = 8
    # Piggyback broadcasts to gossip_nodes random members every gossip_interval; dead members still get
    # gossip for gossip_to_the_dead_time so they can learn they were declared dead and refute.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    # Full state exchange over TCP with one random member this often (scaled up for large clusters).
    push_pull_interval: float = 30.0
    # Timeout for TCP exchanges (push-pull, TCP fallback ping).
    tcp_timeout: float = 10.0
    # Largest UDP payload we build; compound messages are packed up to this.
    udp_buffer_size: int = 1400
    # Not in memberlist: when broadcasts are left over after a packet is full, compress the packet (LZW, as
    # memberlist's compress message) and fit more of them. memberlist compresses every packet after filling
    # it, which saves bytes but never carries more news.
    compress_when_full: bool = True
    # Not in memberlist: a member that hears of a new suspicion from someone else probes the suspect next,
    # out of its round-robin turn. Its failed probe is an independent confirmation (which shrinks everyone's
    # suspicion timeout) within about one probe interval instead of whenever round robin comes around; a
    # live suspect gets the suspicion with the ping and refutes at once. One extra ping per member per
    # suspicion.
    prompt_confirmation: bool = True
    # Not in memberlist: newly queued news (ours or the layer above's) goes out in a gossip round at once
    # instead of at the next gossip_interval tick, but rounds that send anything are never closer together
    # than gossip_interval / EAGER_GOSSIP_DIVISOR. Retransmit limit and packet size are unchanged.
    eager_gossip: bool = True
    # Disable the TCP ping sent alongside indirect probes.
    disable_tcp_pings: bool = False
    # A dead member's name may be taken by a new address after this long (0: never while known).
    dead_node_reclaim_time: float = 0.0


LAN = GossipConfig()
WAN = replace(LAN, probe_interval=5.0, probe_timeout=3.0, suspicion_mult=6, gossip_interval=0.5, gossip_nodes=4,
              gossip_to_the_dead_time=60.0, push_pull_interval=60.0, tcp_timeout=30.0)
LOCAL = replace(LAN, indirect_checks=1, retransmit_mult=2, probe_interval=1.0, probe_timeout=0.2, suspicion_mult=3,
                gossip_interval=0.1, gossip_to_the_dead_time=15.0, push_pull_interval=15.0, tcp_timeout=1.0)

_PUSH_PULL_SCALE_THRESHOLD = 32
# With eager_gossip, gossip rounds are at least gossip_interval / this apart: ten times memberlist's round
# rate at most, and only while news keeps arriving.
EAGER_GOSSIP_DIVISOR = 10


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one broadcast is sent in a cluster of n members."""
    return mult * math.ceil(math.log10(n + 1))


def suspicion_timeout(mult: int, n: int, interval: float) -> float:
    """The shortest suspicion timeout for n members (all confirmations in)."""
    return mult * max(1.0, math.log10(max(1, n))) * interval


def push_pull_scale(interval: float, n: int) -> float:
    """Push-pull interval grown logarithmically above 32 members, so full syncs don't swamp big clusters."""
    if n <= _PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(_PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return interval * multiplier
