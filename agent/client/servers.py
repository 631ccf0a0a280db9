"""ServerPool: which server a client agent talks to, found through gossip tags, rotated on failure."""

from __future__ import annotations

import random
from collections.abc import Callable

from ...gossip.member import Member, MemberStatus

MembersView = Callable[[], list[Member]]


def server_addresses(members: list[Member], datacenter: str) -> list[str]:
    """"ip:port" of the alive servers of `datacenter` among gossip members (tags role=consul and port)."""
    out = []
    for m in members:
        tags = m.tags
        if m.status == MemberStatus.ALIVE and tags.get("role") == "consul" and tags.get("dc", datacenter) == datacenter:
            port = tags.get("port", "")
            if port.isdigit():
                out.append(f"{m.addr}:{port}")
    return out


class ServerPool:
    """The servers a client may use, in its order of preference; a failed one moves to the back.

    Like Consul's client, each agent shuffles the list once, so that clients spread over the servers.
    Until gossip has shown a server, the -retry-join hosts are tried on the server port.
    """

    def __init__(self, members: MembersView, datacenter: str, fallback_hosts: list[str], server_port: int,
                 rng: random.Random | None = None) -> None:
        self._members = members
        self._datacenter = datacenter
        self._fallback = [f"{host}:{server_port}" for host in fallback_hosts]
        self._rng = rng or random.Random()
        self._order: list[str] = []

    def candidates(self) -> list[str]:
        """Known servers, preferred first."""
        found = server_addresses(self._members(), self._datacenter) or self._fallback
        for addr in found:
            if addr not in self._order:
                self._order.insert(self._rng.randrange(len(self._order) + 1), addr)
        present = set(found)
        return [a for a in self._order if a in present]

    def pick(self) -> str | None:
        """The server to use now, or None when none is known."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def failed(self, address: str) -> None:
        """`address` did not answer: try the others first from now on."""
        if address in self._order:
            self._order.remove(address)
            self._order.append(address)
