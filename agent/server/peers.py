"""RaftPeer: one server of the Raft configuration, as the operator API and CLI show it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftPeer:
    """A server in the configuration: Raft ID, node name, :8300 address, whether it leads and whether it votes."""

    id: str
    node: str
    address: str
    leader: bool
    voter: bool
