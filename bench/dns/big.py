"""The large-answer case: uncached EDNS SRV queries for a 1,000-instance service, against a 3-instance
reference in the same run, over the wire and as event-loop time per query (issue 11)."""

from __future__ import annotations

import random
import statistics
import time

import dns.message
import trio
from meshagent.agent.catalog import PASSING, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.dns.server import DNSServer
from meshagent.agent.store import CatalogStore

from tests.support.dns_flood import srv_query, tcp_exchange, udp_exchange


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[int(len(values) * 0.99) - 1]
    return f"median {statistics.median(values) * 1000:7.2f} ms, p99 {p99 * 1000:7.2f} ms"


def over_the_wire(host: str, port: int, queries: int = 200) -> list[str]:
    """Distinct (mixed-case, so never cached) EDNS 4096 SRV queries, one at a time; latency and sizes."""
    rng = random.Random(1)
    lines = []
    for name, label in (("db.service.mesh", "3 instances (reference)"), ("web.service.mesh", "1,000 instances")):
        took, size = [], 0
        for _ in range(queries):
            query = srv_query(name, rng, payload=4096)
            reply, seconds = udp_exchange(host, port, query)
            took.append(seconds)
            size = len(reply)
        lines.append(f"  uncached EDNS SRV, {label:<24} {_ms(took)}; {size} bytes for {len(query)} "
                     f"({size / len(query):.0f}x)")
    asked = srv_query("web.service.mesh", rng, payload=65000)
    reply, _ = udp_exchange(host, port, asked)
    lines.append(f"  EDNS asking 65000 bytes, 1,000 instances: {len(reply)} bytes ({len(reply) / len(asked):.0f}x; "
                 f"before the cap: 59 KB, 1,312x)")
    tcp = tcp_exchange(host, port, srv_query("web.service.mesh", rng, payload=None))
    lines.append(f"  TCP SRV, 1,000 instances: {len(tcp)} bytes, "
                 f"{sum(map(len, dns.message.from_wire(tcp).answer))} records")
    return lines


async def _loop_time(queries: int) -> list[str]:
    store = CatalogStore()
    for i in range(1000):
        node = f"web-node-{i:04d}"
        await store.apply(commands.register(
            Node(node=node, address=f"10.1.{i // 250}.{i % 250 + 1}"),
            Service(node=node, id="web", service="web", port=8000 + i % 1000),
            [Check(node=node, check_id="serfHealth", status=PASSING)]))
    server = DNSServer(AgentConfig(), store)
    rng = random.Random(2)
    out = {"distinct question bytes": [], "after a catalog change": []}
    for i in range(queries):
        cold = i % 2 == 1
        if cold:
            await store.apply(commands.register(Node(node="churn", address=f"10.9.0.{i % 250 + 1}"), None, []))
        packet = srv_query("web.service.mesh", rng, payload=4096)
        start = time.perf_counter()
        server._answer_now(packet, tcp=False)  # what the UDP loop runs inline for a cache miss
        out["after a catalog change" if cold else "distinct question bytes"].append(time.perf_counter() - start)
    return [f"  loop time per uncached EDNS SRV query, 1,000 instances, {k}: {_ms(v)}" for k, v in out.items()]


def loop_time(queries: int = 100) -> list[str]:
    """Event-loop time an uncached 1,000-instance query costs (in-process, no socket)."""
    return trio.run(_loop_time, queries)
