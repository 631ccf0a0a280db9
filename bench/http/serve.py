"""Benchmark server process: the real /v1 API over a catalog with N `db` instances, or a reference server.

    python bench/http/serve.py api  [--instances 100]   # HTTPServer + API + CatalogStore
    python bench/http/serve.py ref  [--instances 100]   # minimal trio+h11 loop serving the same bytes

Prints `PORT <n>` once listening. The api mode also answers `GET /bench/waiting` with the number of
blocked queries, so the load generator knows when all of its blocking queries are parked.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import h11
import trio
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import PASSING, SERF_CHECK_ID, SERF_CHECK_NAME, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.http.api import API
from meshagent.agent.http.messages import Request, Response
from meshagent.agent.http.server import HTTPServer
from meshagent.agent.store import CatalogStore

BENCH_PATH = "/v1/health/service/db"
BENCH_QUERY = "passing"


class BenchAgent:
    """The slice of AgentView (agent/http/view.py) the benchmark's reads use (no local services, no checks,
    no gossip or Raft)."""

    def __init__(self) -> None:
        self.config = AgentConfig(node_name="bench", dev=True)
        self.node_name = "bench"
        self.node_id = str(uuid.uuid4())
        self.datacenter = "dc1"
        self.advertise_addr = "127.0.0.1"
        self.store = CatalogStore()
        self.acl = ACLResolver(self.config, self.store)  # ACLs off (the default): everything allowed
        self.local: Any = None
        self.server = None
        self.gossip = None

    def members(self) -> list[Any]:
        return []

    def leader_status(self) -> tuple[bool, int]:
        return True, 0  # no Raft: leads itself, as -dev does


async def populate(store: CatalogStore, instances: int) -> None:
    """N nodes, each with serfHealth and one passing `db` instance with a service check."""
    for i in range(instances):
        name = f"node-{i:03d}"
        addr = f"10.0.{i // 250}.{i % 250 + 1}"
        node = Node(node=name, address=addr, datacenter="dc1", id=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                    tagged_addresses={"lan": addr, "wan": addr}, meta={"rack": f"r{i % 4}"})
        svc = Service(node=name, id=f"db-{i}", service="db", tags=["primary" if i == 0 else "replica"],
                      port=5432, meta={"version": "15"})
        checks = [Check(node=name, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=PASSING),
                  Check(node=name, check_id=f"service:db-{i}", name="db tcp", status=PASSING,
                        service_id=f"db-{i}", type="tcp", output="TCP connect: Success")]
        await store.apply(commands.register(node, svc, checks))


async def run_api(instances: int) -> None:
    agent = BenchAgent()
    await populate(agent.store, instances)
    api = API(agent)

    async def handler(request: Request) -> Response:
        if request.path == "/bench/waiting":
            return 200, [], str(agent.store.hub.waiting).encode()
        return await api(request)

    server = HTTPServer(handler, "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        print(f"PORT {port}", flush=True)


async def reference_body(instances: int) -> bytes:
    """The exact bytes the API answers for the benchmark request."""
    agent = BenchAgent()
    await populate(agent.store, instances)
    _, _, body = await API(agent)(Request("GET", BENCH_PATH, BENCH_QUERY, [], b""))
    return body


async def run_ref(instances: int) -> None:
    """The smallest correct keep-alive h11 server: parse, answer fixed bytes, next cycle."""
    body = await reference_body(instances)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def connection(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    continue
                if isinstance(event, h11.EndOfMessage):
                    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers))
                                          + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.ProtocolError, trio.BrokenResourceError):
            return
        finally:
            await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(connection, listeners)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["api", "ref"])
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args()
    try:
        trio.run(run_api if args.mode == "api" else run_ref, args.instances)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
