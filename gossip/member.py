"""The typed member gossip hands to the layers above: a `Member` value with a `MemberStatus`.

Consul's JSON shape of a member (/v1/agent/members) is the HTTP layer's business (agent/http/render.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum


class MemberStatus(IntEnum):
    """Serf's member status; the values are Serf's numbers (a Go int on the wire and in Consul's JSON)."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


@dataclass(frozen=True, slots=True)
class Member:
    """One gossip member as Serf sees it, at one moment (a copy: later changes do not show through)."""

    name: str
    addr: str
    port: int
    tags: Mapping[str, str]
    status: MemberStatus
    # ProtocolMin, ProtocolMax, ProtocolCur, DelegateMin, DelegateMax, DelegateCur (memberlist's vsn).
    vsn: tuple[int, int, int, int, int, int] = (1, 5, 2, 2, 5, 4)

    @property
    def alive(self) -> bool:
        """Whether the member is alive (not leaving, left or failed)."""
        return self.status == MemberStatus.ALIVE


def member_of(name: str, addr: bytes, port: int, tags: Mapping[str, str], status: MemberStatus,
              vsn: bytes) -> Member:
    """A `Member` from Serf's raw view (address as 4 or 16 wire bytes, vsn padded to six numbers)."""
    v = (list(vsn) + [0] * 6)[:6]
    # IPv4 by hand: a join storm makes one Member per join event, and ipaddress is the slow part of that.
    text = f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}" if len(addr) == 4 else str(ipaddress.ip_address(addr))
    return Member(name, text, port, dict(tags), status, (v[0], v[1], v[2], v[3], v[4], v[5]))
