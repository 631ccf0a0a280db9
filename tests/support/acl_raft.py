"""In-process Raft servers with ACLs on (default deny) on real :8300 sockets, for the RPC ACL suites: each
server resolves tokens from its own FSM with the agent's ACLResolver, as a server agent does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.config.types import ACLConfig, AgentConfig
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from .ports import free_ports, port_free
from .wait import wait_for_async


def common_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (the servers share one :8300-like port); skips the test if none."""
    for _ in range(20):
        port = free_ports(1, hosts[0])[0]
        if all(port_free(h, port) for h in hosts[1:]):
            return port
    pytest.skip(f"no port free on all of {', '.join(hosts)}")


def acl_servers(hosts: list[str], name: str) -> list[RaftServer]:
    """One server per host (bootstrap_expect = all of them, no data dir), each with `endpoints.acl` set: an
    ACLResolver under default deny over its own store, on trio's clock. Start each with `nursery.start(s.run)`."""
    port = common_port(hosts)
    servers = []
    for i, host in enumerate(hosts):
        store = CatalogStore()
        server = RaftServer(node_id=str(uuid.uuid4()), node_name=f"{name}-{i}", bind=host, advertise=host,
                            port=port, data_dir=None, store=store, bootstrap_expect=len(hosts),
                            join=[h for h in hosts if h != host])
        store.replicator = server
        config = AgentConfig(node_name=f"{name}-{i}", acl=ACLConfig(enabled=True, default_policy="deny"))
        server.endpoints.acl = ACLResolver(config, store, clock=trio.current_time)
        servers.append(server)
    return servers


@asynccontextmanager
async def running(servers: list[RaftServer],
                  also: Iterable[Callable[..., Awaitable[Any]]] = ()) -> AsyncIterator[list[RaftServer]]:
    """Run `servers` (and each of `also`, started with nursery.start) until one of them leads; stop them all
    on leaving."""
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        for run in also:
            await nursery.start(run)
        await wait_for_async(lambda: sum(s.is_leader() for s in servers) == 1, 15, what="one leader")
        yield servers
        nursery.cancel_scope.cancel()
