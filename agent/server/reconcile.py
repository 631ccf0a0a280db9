"""Membership → catalog: the leader turns what gossip knows about each node into catalog commands.

alive  → the node is registered and its `serfHealth` check passes;
failed → `serfHealth` is critical, so every service on the node leaves DNS and `?passing`;
left   → the node and everything on it is deregistered;
reaped → (forgotten by gossip after reconnect_timeout) deregistered too.
Nodes without a `serfHealth` check were registered through the catalog API (external nodes) and are left
alone. Pure: the caller applies the commands through Raft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...gossip.member import Member, MemberStatus
from ..catalog import CRITICAL, PASSING, SERF_CHECK_ID, SERF_CHECK_NAME, Catalog, Check, Node, commands

# Gossip's member status (Serf's numbers), under the short names the rules below use.
ALIVE, LEAVING, LEFT, FAILED = MemberStatus.ALIVE, MemberStatus.LEAVING, MemberStatus.LEFT, MemberStatus.FAILED
ALIVE_OUTPUT = "Agent alive and reachable"
FAILED_OUTPUT = "Agent not live or unreachable"


@dataclass(frozen=True, slots=True)
class MemberView:
    """What the reconciler needs of a gossip member."""

    name: str
    address: str
    status: int  # a MemberStatus (an int, so tests may give Serf's numbers)
    tags: dict[str, str]

    @classmethod
    def from_member(cls, member: Member) -> MemberView:
        """From gossip's typed member."""
        return cls(member.name, member.addr, member.status, dict(member.tags))


def _serf_check(node: str, status: str) -> Check:
    return Check(node=node, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=status,
                 output=ALIVE_OUTPUT if status == PASSING else FAILED_OUTPUT, type="")


def member_commands(catalog: Catalog, member: MemberView, datacenter: str) -> list[dict[str, Any]]:
    """The commands (often none) that make the catalog agree with one member's gossip state."""
    if member.tags.get("dc", datacenter) != datacenter:
        return []
    existing = catalog.node(member.name)
    if member.status in (ALIVE, FAILED):
        wanted = PASSING if member.status == ALIVE else CRITICAL
        current = next((c for c in catalog.node_checks(member.name) if c.check_id == SERF_CHECK_ID), None)
        node = existing
        if node is None or node.address != member.address:
            # Keep what the agent registered (meta, tagged addresses) unless the address moved.
            node = Node(node=member.name, address=member.address, id=member.tags.get("id", ""),
                        datacenter=datacenter,
                        tagged_addresses={"lan": member.address, "lan_ipv4": member.address,
                                          "wan": member.address, "wan_ipv4": member.address},
                        meta=dict(existing.meta) if existing else {})
        elif current is not None and current.status == wanted:
            return []
        return [commands.register(node, checks=[_serf_check(member.name, wanted)])]
    if member.status == LEFT:
        return forget_commands(catalog, member.name)
    return []


def forget_commands(catalog: Catalog, name: str) -> list[dict[str, Any]]:
    """Deregister a node that left or was reaped, if gossip manages it."""
    if catalog.node(name) is None or not _gossip_managed(catalog, name):
        return []
    return [commands.deregister(name)]


def _gossip_managed(catalog: Catalog, node: str) -> bool:
    return any(c.check_id == SERF_CHECK_ID for c in catalog.node_checks(node))


def reap_commands(catalog: Catalog, members: set[str], may_reap: bool) -> list[dict[str, Any]]:
    """Deregister gossip-managed nodes that gossip no longer knows at all. Only once `may_reap`: this
    leader has been in the pool longer than reconnect_timeout, so absence means reaped, not unseen yet."""
    if not may_reap:
        return []
    known = {m.lower() for m in members}
    return [cmd for n in catalog.nodes() if n.node.lower() not in known for cmd in forget_commands(catalog, n.node)]
