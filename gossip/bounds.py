"""Checks that a decoded gossip or Serf message is within `gossip.limits`; MessageError when it is not.

Decoding already holds every number to its Go type; these add what the cores rely on: addresses of 4 or
16 bytes, names and metadata of bounded size, incarnations a refutation can beat, Lamport times with room.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import limits
from . import messages as m
from . import serf_messages as sm
from .messages import MessageError, NodeState


def name(value: str, what: str = "node name", *, empty: bool = False) -> None:
    """A node name (or similar label): at most NAME_MAX bytes, and not empty unless `empty`."""
    if (not value and not empty) or len(value) > limits.NAME_MAX or len(value.encode()) > limits.NAME_MAX:
        raise MessageError(f"{what} must be 1 to {limits.NAME_MAX} bytes")


def address(addr: bytes, port: int) -> None:
    """An address as raw IPv4/IPv6 bytes and a port that fits a uint16."""
    if len(addr) not in limits.ADDR_SIZES:
        raise MessageError(f"an address must be 4 or 16 bytes, got {len(addr)}")
    if not 0 <= port <= limits.PORT_MAX:
        raise MessageError(f"port {port} is out of range")


def claim_incarnation(incarnation: int) -> None:
    """A suspect or dead claim must leave the accused room to refute it by one."""
    if not 0 <= incarnation <= limits.CLAIM_INCARNATION_MAX:
        raise MessageError(f"incarnation {incarnation} of a claim is over {limits.CLAIM_INCARNATION_MAX}")


def alive(a: m.Alive) -> None:
    """An alive message the core may store."""
    name(a.node)
    address(a.addr, a.port)
    _member_fields(a.incarnation, a.meta, a.vsn)


def claim(node: str, from_node: str, incarnation: int) -> None:
    """A suspect or dead message the core may act on."""
    name(node)
    name(from_node, "accuser name")
    claim_incarnation(incarnation)


def node_state(r: m.PushNodeState) -> None:
    """One member's state from a push-pull."""
    name(r.name)
    address(r.addr, r.port)
    _member_fields(r.incarnation, r.meta, r.vsn)
    if r.state not in tuple(NodeState):
        raise MessageError(f"unknown node state {r.state}")


def push_pull(nodes: Iterable[m.PushNodeState]) -> None:
    """A whole push-pull's node states (one bad state spoils the exchange: nothing of it is merged). A claim
    past CLAIM_INCARNATION_MAX is not a fault of the sender's here: an honest peer may hold one about a member
    an outsider pinned with a forged alive, so the core skips just that state."""
    count = 0
    for r in nodes:
        node_state(r)
        count += 1
    if count > limits.PUSH_PULL_NODES_MAX:
        raise MessageError(f"push-pull with {count} node states (limit {limits.PUSH_PULL_NODES_MAX})")


def _member_fields(incarnation: int, meta: bytes, vsn: bytes) -> None:
    if not 0 <= incarnation <= limits.INCARNATION_MAX:
        raise MessageError(f"incarnation {incarnation} is out of range")
    if len(meta) > limits.META_MAX:
        raise MessageError(f"node meta of {len(meta)} bytes is over {limits.META_MAX}")
    if len(vsn) > limits.VSN_MAX:
        raise MessageError(f"version of {len(vsn)} bytes is over {limits.VSN_MAX}")


# ------------------------------------------------------------------------------------------------ Serf


def ltime(value: int, what: str = "Lamport time") -> None:
    """A Lamport time we may witness (leaves our clock room to count on)."""
    if not 0 <= value <= limits.LTIME_MAX:
        raise MessageError(f"{what} {value} is over {limits.LTIME_MAX}")


def count(n: int, what: str) -> None:
    """A list or map in a Serf message."""
    if n > limits.SERF_LIST_MAX:
        raise MessageError(f"{what} has {n} entries (limit {limits.SERF_LIST_MAX})")


def serf_message(msg: sm.SerfMessage) -> None:
    """A Serf message the Serf core may act on (those it ignores pass unchecked)."""
    if isinstance(msg, (sm.JoinMsg, sm.LeaveMsg)):
        ltime(msg.ltime)
        name(msg.node)
    elif isinstance(msg, sm.UserEventMsg):
        ltime(msg.ltime)
        name(msg.name, "event name", empty=True)
        if len(msg.name.encode()) + len(msg.payload) > limits.USER_EVENT_MAX:
            raise MessageError(f"user event over {limits.USER_EVENT_MAX} bytes")
    elif isinstance(msg, sm.QueryMsg):
        ltime(msg.ltime)
        address(msg.addr, msg.port)
        name(msg.source_node)
        name(msg.name, "query name", empty=True)
        count(len(msg.filters), "query filters")
    elif isinstance(msg, sm.QueryResponseMsg):
        ltime(msg.ltime)
        name(msg.from_node)
    elif isinstance(msg, sm.PushPullMsg):
        serf_push_pull(msg)


def serf_push_pull(pp: sm.PushPullMsg) -> None:
    """Serf's state from a push-pull: clocks, member times, left members, the event buffer."""
    for t in (pp.ltime, pp.event_ltime, pp.query_ltime):
        ltime(t)
    count(len(pp.status_ltimes), "status times")
    count(len(pp.left_members), "left members")
    count(len(pp.events), "event slots")
    for node, t in pp.status_ltimes.items():
        name(node)
        ltime(t)
    for node in pp.left_members:
        name(node)
    events = 0
    for batch in pp.events:
        if batch is None:
            continue
        ltime(batch.ltime, "event time")
        events += len(batch.events)
        for ev in batch.events:
            if len(ev.name.encode()) + len(ev.payload) > limits.USER_EVENT_MAX:
                raise MessageError(f"user event over {limits.USER_EVENT_MAX} bytes")
    count(events, "events")
