"""The one free-port helper: which 127.0.0.N (or a suite's 127.X.Y.N) addresses have the agent's ports free, and
ephemeral ports."""

from __future__ import annotations

import os
import socket

AGENT_PORTS = (8500, 8600, 8300, 8301)  # HTTP, DNS, server RPC, Serf LAN: Consul's defaults, which tests keep
_next_host = 10 + (os.getpid() * 7) % 200  # per-process start: parallel runs rarely probe the same address


def port_free(host: str, port: int) -> bool:
    """Whether `port` is free on `host` for both TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def ports_free(host: str, ports: tuple[int, ...] = AGENT_PORTS) -> bool:
    """Whether every one of `ports` is free on `host` (TCP and UDP)."""
    return all(port_free(host, p) for p in ports)


def free_loopback_host(ports: tuple[int, ...] = AGENT_PORTS) -> str:
    """A 127.0.0.N (N in 10..249, round robin) on which the given TCP and UDP ports are free."""
    global _next_host
    for _ in range(250):
        _next_host = 10 + (_next_host - 9) % 240
        host = f"127.0.0.{_next_host}"
        if ports_free(host, ports):
            return host
    raise RuntimeError("no free 127.0.0.N address found")


def free_hosts(n: int, first: int, last: int, ports: tuple[int, ...] = AGENT_PORTS) -> list[str]:
    """The first `n` addresses 127.0.0.N, N from `first` to `last` (a suite's own range; first > last counts
    down), whose ports are free."""
    step = 1 if last >= first else -1
    found = [f"127.0.0.{i}" for i in range(first, last + step, step) if ports_free(f"127.0.0.{i}", ports)][:n]
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} of {n} addresses in 127.0.0.{first}-{last} have ports {ports} free")
    return found


def free_host_in(subnet: str, first: int = 1, last: int = 249, ports: tuple[int, ...] = AGENT_PORTS) -> str:
    """The first `subnet`.N (a suite's own range, e.g. "127.0.44"), N from `first` to `last`, on which `ports`
    are free."""
    for n in range(first, last + 1):
        if ports_free(f"{subnet}.{n}", ports):
            return f"{subnet}.{n}"
    raise RuntimeError(f"no {subnet}.N (N {first}-{last}) has ports {ports} free")


def free_ports(n: int = 1, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports the kernel hands out as free on `host` (all held open at once, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
