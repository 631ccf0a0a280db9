"""Bounds on every number, size and count that gossip takes from the wire, each with why.

A value outside them makes its message a bad one: dropped and counted, never stored or re-gossiped.
The Go types (memberlist, Serf) set the outer bounds; the rest keep room for our own arithmetic.
"""

from __future__ import annotations

# memberlist's incarnation is a uint32: nothing above can be sent to a Go peer, so nothing above is taken.
INCARNATION_MAX = 0xFFFF_FFFF
# A suspect or dead claim above this is dropped: the accused must always be able to out-bid an accusation
# by one (a claim at INCARNATION_MAX could never be refuted). Refutation only ever adds one to a claim, and
# nobody counts 2^31 refutations, so this leaves the whole useful range and half of the type as headroom.
CLAIM_INCARNATION_MAX = 1 << 31
PORT_MAX = 0xFFFF  # memberlist's ports are uint16
ADDR_SIZES = (4, 16)  # an address is raw IPv4 or IPv6 bytes
NAME_MAX = 512  # node names (Consul warns from 64; memberlist has no bound, so the bound is generous)
META_MAX = 512  # memberlist's MetaMaxSize: a larger alive is dropped, as memberlist drops it
VSN_MAX = 16  # memberlist sends 6 version bytes
# Serf's Lamport clocks are uint64; witnessing t sets ours to t + 1, and each event adds one. Times above
# this are dropped, which leaves 2^62 steps of headroom below the type's end (no clock reaches that).
LTIME_MAX = 1 << 62
PUSH_PULL_NODES_MAX = 16_384  # node states in one push-pull: far above any LAN pool we expect
SERF_LIST_MAX = 16_384  # status times, left members, event slots, filters in one Serf message
INTENTS_MAX = 4_096  # join/leave intents kept for members not known yet (the oldest go first)
RELAYS_MAX = 1_024  # indirect probes we relay at once (each lives one probe timeout)
STREAMS_MAX = 32  # inbound TCP streams handled at once; more are closed at once and counted
# One inbound stream message. memberlist allows 20 MiB (maxPushStateBytes); a push-pull of 16,384 members
# with Consul's tags is ~5 MiB, and 32 streams x 8 MiB bounds what half-sent streams can make us hold.
STREAM_BYTES_MAX = 8 * 1024 * 1024
USER_EVENT_MAX = 9 * 1024  # Serf's largest allowed UserEventSizeLimit: name and payload of one event
