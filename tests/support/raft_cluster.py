"""A Raft cluster of real server processes, one per host (network namespace or 127.0.0.N)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from .agents import AgentProcess
from .netns import Host, Hosts
from .wait import wait_for


class Cluster:
    """N servers, each on its own host, all cleaned up at the end."""

    def __init__(self, tmp: Path, n: int, hosts: Hosts, extra: tuple[str, ...] = (), name: str = "s") -> None:
        self.hosts = hosts
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.members: list[tuple[Host, AgentProcess]] = []
        addrs = [hosts.add() for _ in range(n)]
        for i, host in enumerate(addrs):
            joins = [a for h in addrs if h is not host for a in ("-retry-join", h.address)]
            args = ["-server", "-bootstrap-expect", str(n), "-data-dir", str(tmp / f"{name}{i}"), "-node", f"{name}{i}",
                    "-bind", host.address, "-client", host.address, *joins, *extra]
            self.members.append((host, AgentProcess(host=host.address, args=args, workdir=tmp,
                                                    prefix=host.prefix)))
        for _, agent in self.members:
            agent.start(wait=False)
        for _, agent in self.members:
            agent.wait_ready(30)

    def state(self, agent: AgentProcess) -> str:
        try:
            stats = httpx.get(f"{agent.http_addr}/v1/agent/self", timeout=1).json()["Stats"]["raft"]
            return str(stats["state"])
        except (httpx.HTTPError, KeyError, ValueError):
            return "down"

    def leaders(self) -> list[AgentProcess]:
        return [a for _, a in self.members if a.proc and a.proc.poll() is None and self.state(a) == "leader"]

    def wait_one_leader(self, timeout: float = 30) -> AgentProcess:
        wait_for(lambda: len(self.leaders()) == 1, timeout, what="exactly one leader")
        return self.leaders()[0]

    def stop(self) -> None:
        for _, agent in self.members:
            if agent.proc and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGCONT)
            agent.kill()
