"""Run a DNSServer over a store holding 3 healthy `db` instances (the benchmark's meshagent side), and
optionally N instances of `web` (argv[3]) for the large-answer case."""

from __future__ import annotations

import sys

import trio
from meshagent.agent.catalog import PASSING, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.dns.server import DNSServer
from meshagent.agent.store import CatalogStore


async def main(host: str, port: int, big: int) -> None:
    store = CatalogStore()
    for i in range(3):
        node = f"db{i}"
        await store.apply(commands.register(
            Node(node=node, address=f"10.0.0.{i + 1}"),
            Service(node=node, id="db", service="db", port=5432),
            [Check(node=node, check_id="serfHealth", status=PASSING),
             Check(node=node, check_id="service:db", status=PASSING, service_id="db")]))
    for i in range(big):
        node = f"web-node-{i:04d}"
        await store.apply(commands.register(
            Node(node=node, address=f"10.1.{i // 250}.{i % 250 + 1}"),
            Service(node=node, id="web", service="web", port=8000 + i % 1000),
            [Check(node=node, check_id="serfHealth", status=PASSING)]))
    config = AgentConfig(client_addr=host)
    config.ports.dns = port
    async with trio.open_nursery() as nursery:
        await nursery.start(DNSServer(config, store).run)
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
