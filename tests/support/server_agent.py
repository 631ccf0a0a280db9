"""A single-server `meshagent agent -server` process on this suite's 127.0.0.160-189, for tests that need
the real Raft write path and a data dir of their choosing."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

HOSTS = [f"127.0.0.{n}" for n in range(160, 190)]


def start_server_agent(workdir: Path, data_dir: Path, name: str) -> AgentProcess:
    """Start a bootstrapped single server with its data in `data_dir` and wait until it leads."""
    host = next((h for h in HOSTS if ports_free(h)), None)
    if host is None:
        raise RuntimeError("no free address in 127.0.0.160-189")
    args = ["-server", "-bootstrap-expect", "1", "-data-dir", str(data_dir), "-client", host, "-bind", host,
            "-node", name]
    agent = AgentProcess(host=host, args=args, workdir=workdir).start()
    try:
        wait_for(lambda: httpx.get(f"{agent.http_addr}/v1/status/leader", timeout=2).json(), 20,
                 what=f"{name} to lead")
    except BaseException:
        agent.stop()
        raise
    return agent
