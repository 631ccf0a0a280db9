"""Hosts from a fixed 127.0.0.N range (a suite's own addresses), shaped like `netns.Hosts` for `Cluster`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .netns import Host
from .ports import AGENT_PORTS, ports_free


@dataclass
class LoopbackRange:
    """Hands out free 127.0.0.N addresses with N in [first, last]; nothing to clean up."""

    first: int
    last: int
    hosts: list[Host] = field(default_factory=list)
    namespaces: bool = False

    def add(self) -> Host:
        """The next address in the range whose agent ports are free."""
        taken = {h.address for h in self.hosts}
        for n in range(self.first, self.last + 1):
            address = f"127.0.0.{n}"
            if address not in taken and ports_free(address, AGENT_PORTS):
                host = Host(address)
                self.hosts.append(host)
                return host
        raise RuntimeError(f"no free address in 127.0.0.{self.first}-{self.last}")

    def close(self) -> None:
        """Nothing to remove (loopback addresses)."""
