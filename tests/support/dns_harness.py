"""An in-process DNS responder on a real socket for the DNS suites: start it, register instances, query it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.message
import dns.query
import trio
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import PASSING, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.dns.limits import DNSLimits
from meshagent.agent.dns.server import DNSServer
from meshagent.agent.store import CatalogStore

from tests.support.ports import free_loopback_host


@dataclass
class Running:
    """A DNS server running in a background trio thread; `call` runs a coroutine function in its loop."""

    host: str
    port: int
    server: DNSServer
    call: Callable[..., object]
    store: CatalogStore
    acl: ACLResolver | None = None


class DNSServers:
    """Starts DNS servers (each on a free loopback host, own thread) and stops them all at the end."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def __call__(self, config: AgentConfig | None = None, limits: DNSLimits | None = None, *,
                 host: str | None = None,
                 acl: Callable[[AgentConfig, CatalogStore], ACLResolver] | None = None) -> Running:
        """A started server on `host` (else a free 127.0.0.N); `acl` builds its resolver over its store."""
        config = config or AgentConfig()
        host = host or free_loopback_host((8600,))
        config.client_addr, config.ports.dns = host, 0
        store = CatalogStore()
        resolver = acl(config, store) if acl is not None else None
        server = DNSServer(config, store, limits, acl=resolver)
        ready = threading.Event()
        token_box: list[trio.lowlevel.TrioToken] = []
        cancel_box: list[trio.CancelScope] = []

        async def main() -> None:
            with trio.CancelScope() as scope:
                cancel_box.append(scope)
                token_box.append(trio.lowlevel.current_trio_token())
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
                    ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        assert ready.wait(10), "DNS server did not start"

        def call(fn: Callable[..., object], *args: object) -> object:
            return trio.from_thread.run(fn, *args, trio_token=token_box[0])  # type: ignore[arg-type]

        def stop() -> None:
            trio.from_thread.run_sync(cancel_box[0].cancel, trio_token=token_box[0])
            thread.join(10)

        self._stops.append(stop)
        assert server.bound_port is not None
        return Running(host, server.bound_port, server, call, store, resolver)

    def stop_all(self) -> None:
        """Stop every server started through this object."""
        for stop in self._stops:
            stop()


def dns_servers() -> Iterator[DNSServers]:
    """The body of the `dns_server` fixture: a starter, and every started server stopped afterwards."""
    servers = DNSServers()
    try:
        yield servers
    finally:
        servers.stop_all()


def register(r: Running, node: str, address: str, sid: str, status: str = PASSING, name: str = "db",
             tags: list[str] | None = None, svc_address: str = "", port: int = 5432,
             weights: dict[str, int] | None = None, meta: dict[str, str] | None = None) -> None:
    """Register a node with serfHealth and one service instance whose check has `status`."""
    cmd = commands.register(
        Node(node=node, address=address, meta=meta or {}),
        Service(node=node, id=sid, service=name, tags=tags or [], address=svc_address, port=port,
                weights=weights or {"Passing": 1, "Warning": 1}),
        [Check(node=node, check_id="serfHealth", status=PASSING),
         Check(node=node, check_id=f"service:{sid}", status=status, service_id=sid)])
    r.call(r.store.apply, cmd)


def q(r: Running, name: str, rdtype: str = "A", tcp: bool = False, **kw: object) -> dns.message.Message:
    """One query to the running server over UDP (or TCP)."""
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(query, r.host, port=r.port, timeout=5)
    return dns.query.udp(query, r.host, port=r.port, timeout=5)


def answers(msg: dns.message.Message, rdtype: int) -> list[object]:
    """The answer records of one type."""
    return [rr for rrset in msg.answer if rrset.rdtype == rdtype for rr in rrset]
