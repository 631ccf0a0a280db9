"""The catalog feed's frames on :8300, shared by the server that sends them and the client replica that reads them.

A client sends ["sub", node_name]; from then on the connection carries, server to client only:
  ["snap", catalog_index, snapshot]                the whole catalog (first, and after every restore)
  ["cmd", catalog_index, command]                  one applied catalog command, in apply order
  ["beat", catalog_index, leader_known, last_contact_ms]   every HEARTBEAT_INTERVAL, so silence means loss
"""

from __future__ import annotations

from .framing import pack_frame

HEARTBEAT_INTERVAL = 1.0


def subscribe_frame(node_name: str) -> bytes:
    """A client's subscription."""
    return pack_frame(["sub", node_name])


def snapshot_frame(index: int, snapshot: bytes) -> bytes:
    """The whole catalog at `index`."""
    return pack_frame(["snap", index, snapshot])


def command_frame(index: int, command: bytes) -> bytes:
    """One applied command at `index`."""
    return pack_frame(["cmd", index, command])


def heartbeat_frame(index: int, leader_known: bool, last_contact_ms: int) -> bytes:
    """A heartbeat with the catalog index and the server's view of the leader."""
    return pack_frame(["beat", index, leader_known, last_contact_ms])
