"""Hosts in network namespaces on a bridge (198.18.0.0/24), so a test can cut one host's link and heal it.

Where namespaces cannot be made (no root, no `ip`), `Hosts` falls back to 127.0.0.N addresses and a cut
becomes SIGSTOP/SIGCONT of the host's process; it says so on stdout.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from .agents import free_loopback_host


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Host:
    """One host: its address and, with namespaces, the namespace name and the bridge-side link."""

    address: str
    netns: str | None = None
    link: str | None = None

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


@dataclass
class Hosts:
    """Creates hosts on demand and removes everything in `close()`."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    namespaces: bool = True
    hosts: list[Host] = field(default_factory=list)
    _bridge: str | None = None

    def __post_init__(self) -> None:
        if not self.namespaces:
            return
        bridge = f"mb{self.tag}"
        try:
            _ip("link", "add", bridge, "type", "bridge")
            self._bridge = bridge
            _ip("addr", "add", "198.18.0.1/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
        except (OSError, subprocess.SubprocessError) as exc:
            self.close()
            self.namespaces = False
            print(f"network namespaces unavailable ({exc}); falling back to 127.0.0.N and SIGSTOP for cuts")

    def add(self) -> Host:
        """A new host."""
        n = len(self.hosts) + 1
        if not self.namespaces:
            host = Host(free_loopback_host())
        else:
            ns, outside, inside = f"mn{self.tag}-{n}", f"mh{self.tag}-{n}", f"mi{self.tag}-{n}"
            address = f"198.18.0.{10 + n}"
            _ip("netns", "add", ns)
            host = Host(address, ns, outside)
            self.hosts.append(host)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", self._bridge or "", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            return host
        self.hosts.append(host)
        return host

    def cut(self, host: Host, pid: int | None = None) -> None:
        """Take the host off the network."""
        if host.link:
            _ip("link", "set", host.link, "down")
        elif pid is not None:
            os.kill(pid, 19)  # SIGSTOP: the fallback "cut"

    def heal(self, host: Host, pid: int | None = None) -> None:
        """Put it back."""
        if host.link:
            _ip("link", "set", host.link, "up")
        elif pid is not None:
            os.kill(pid, 18)  # SIGCONT

    def close(self) -> None:
        """Remove every namespace, link and the bridge (also after a failed test)."""
        for host in self.hosts:
            if host.netns:
                subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=10)
            if host.link:
                subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=10)
        self.hosts.clear()
        if self._bridge:
            subprocess.run(["ip", "link", "del", self._bridge], capture_output=True, timeout=10)
            self._bridge = None
