"""PeerLinks: one outgoing Raft link per other server, kept in step with the configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ...raft.entry import Membership, valid_address
from ...raft.messages import Message
from .peer_link import PeerLink

if TYPE_CHECKING:
    from ..tls.policy import RPCTLS

MAX_STRANGER_LINKS = 8  # links to servers outside our (empty) configuration: a leader adding us, a bootstrap


class PeerLinks:
    """The links of one server, by peer ID; their tasks run in the server's nursery."""

    def __init__(self, my_id: str, my_address: str, tls: Callable[[], RPCTLS | None]) -> None:
        self.my_id = my_id
        self.my_address = my_address  # updated by the server once its port is bound
        self._tls = tls  # read when a link starts: the agent sets :8300's TLS policy after construction
        self.nursery: trio.Nursery | None = None
        self.synced_to: Membership | None = None  # the configuration the links were last synced to
        self._links: dict[str, PeerLink] = {}
        self._strangers = 0

    def send(self, to: str, msg: Message) -> None:
        """Queue a Raft message to `to` (dropped when there is no link: Raft retransmits)."""
        link = self._links.get(to)
        if link is not None:
            link.send(msg)

    def has(self, peer_id: str) -> bool:
        """Whether there is a link to `peer_id`."""
        return peer_id in self._links

    def sync(self, membership: Membership) -> None:
        """One link per other member of `membership` (a moved member gets a new one)."""
        if self.nursery is None:
            return
        self.synced_to = membership
        for s in membership.servers:
            if s.id != self.my_id and (s.id not in self._links or self._links[s.id].address != s.address):
                self._start(s.id, s.address)

    def answer_stranger(self, peer_id: str, address: str, member_address: str | None) -> bool:
        """A link to a peer that wrote to us before we had one (a leader adding us, a fresh bootstrap),
        at its configured address or the one it gave; False when refused (bad address, too many strangers)."""
        if self.nursery is None:
            return True
        if member_address is None and (not valid_address(address) or self._strangers >= MAX_STRANGER_LINKS):
            return False
        self._strangers += member_address is None
        self._start(peer_id, member_address or address)
        return True

    def _start(self, peer_id: str, address: str) -> None:
        assert self.nursery is not None
        link = PeerLink(address, self.my_id, self.my_address, self._tls())
        self._links[peer_id] = link
        self.nursery.start_soon(link.run)
