"""DNS under ACLs (issue 15): the responder answers as the agent's `default` token; what it may not read is
NXDOMAIN, as a name that does not exist. A real DNSServer on 127.0.44.N, queried with dnspython.

The resolver here is a stand-in with ACLResolver's interface (`enabled`, `resolve(None)` memoised per policy
version, as the real one memoises per ACL index) built from the real rule parser and Authorizer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trio
from meshagent.agent.acl.authorizer import Authorizer
from meshagent.agent.acl.identity import ACLIdentity
from meshagent.agent.acl.rules import parse_rules
from meshagent.agent.catalog import PASSING, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.dns.server import DNSServer
from meshagent.agent.rpc.errors import ACLNotFound
from meshagent.agent.store import CatalogStore

from tests.support.ports import port_free

DNS_READ = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


class StandInACL:
    """ACLResolver's face for DNS: `enabled`, `resolve(None)` -> the default token's identity."""

    def __init__(self, rules: str = "", default_allow: bool = False) -> None:
        self.enabled = True
        self.resolves = 0
        self.missing = False
        self.set(rules, default_allow)

    def set(self, rules: str, default_allow: bool = False) -> None:
        self.version = getattr(self, "version", 0) + 1
        self.identity = ACLIdentity(accessor_id="00000000-0000-0000-0000-000000000002",
                                    authorizer=Authorizer([parse_rules(rules)], default_allow),
                                    cache_key=f"anonymous@{self.version}")

    def resolve(self, secret: str | None) -> ACLIdentity:
        assert secret is None  # DNS always asks for the default token
        self.resolves += 1
        if self.missing:
            raise ACLNotFound()
        return self.identity


@dataclass
class Running:
    host: str
    port: int
    server: DNSServer
    store: CatalogStore
    acl: StandInACL
    call: Callable[..., object]


def _host() -> str:
    for n in range(1, 250):
        host = f"127.0.44.{n}"
        if port_free(host, 8600):
            return host
    raise AssertionError("no free 127.0.44.N address")


@pytest.fixture
def dns_acl() -> Iterator[Callable[[StandInACL], Running]]:
    stops: list[Callable[[], None]] = []

    def start(acl: StandInACL) -> Running:
        config = AgentConfig()
        config.client_addr, config.ports.dns = _host(), 0
        store = CatalogStore()
        server = DNSServer(config, store, acl=acl)  # type: ignore[arg-type]  # the stand-in has its face
        ready = threading.Event()
        box: list[object] = []

        async def main() -> None:
            with trio.CancelScope() as scope:
                box.extend([scope, trio.lowlevel.current_trio_token()])
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
                    ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        assert ready.wait(10), "DNS server did not start"
        scope, token = box

        def call(fn: Callable[..., object], *args: object) -> object:
            return trio.from_thread.run(fn, *args, trio_token=token)  # type: ignore[arg-type]

        def stop() -> None:
            trio.from_thread.run_sync(scope.cancel, trio_token=token)  # type: ignore[attr-defined,arg-type]
            thread.join(10)

        stops.append(stop)
        assert server.bound_port is not None
        run = Running(config.client_addr, server.bound_port, server, store, acl, call)
        for name, node, address in (("web", "n1", "10.1.0.1"), ("web", "n2", "10.1.0.2"),
                                    ("db", "n1", "10.1.0.1")):
            n = Node(node=node, address=address, datacenter="dc1")
            svc = Service(node=node, id=f"{name}-{node}", service=name, port=80)
            check = Check(node=node, check_id=f"c-{name}-{node}", name="c", status=PASSING,
                          service_id=f"{name}-{node}")
            call(store.apply, commands.register(n, svc, [check]))
        return run

    yield start
    for stop in stops:
        stop()


def _ask(run: Running, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(query, run.host, port=run.port, timeout=3)


def _addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if rrset.rdtype == dns.rdatatype.A)


def test_default_deny_without_a_policy_hides_services_and_nodes(dns_acl: Callable[[StandInACL], Running]) -> None:
    run = dns_acl(StandInACL(""))
    for name in ("web.service.mesh.", "n1.node.mesh.", "web.connect.mesh."):
        reply = _ask(run, name)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert not reply.answer
    # the same answer over TCP and for SRV: nothing tells a hidden name from a missing one
    assert _ask(run, "web.service.mesh.", "SRV", tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert _ask(run, "nope.service.mesh.").rcode() == dns.rcode.NXDOMAIN


def test_a_service_read_policy_answers_service_lookups_and_node_read_gates_node_lookups(
        dns_acl: Callable[[StandInACL], Running]) -> None:
    acl = StandInACL(DNS_READ)
    run = dns_acl(acl)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n2.node.mesh.")) == ["10.1.0.2"]
    # service:read alone answers service lookups (issue 15's acceptance; Consul also wants node:read per
    # instance); node lookups still need node:read
    acl.set('service_prefix "" { policy = "read" }\nnode "n1" { policy = "read" }\n')
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n1.node.mesh.")) == ["10.1.0.1"]
    assert _ask(run, "n2.node.mesh.").rcode() == dns.rcode.NXDOMAIN
    acl.set('service_prefix "" { policy = "read" }\n')
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _ask(run, "n1.node.mesh.").rcode() == dns.rcode.NXDOMAIN
    # one service denied by an exact rule, the other still answered
    acl.set(DNS_READ + 'service "db" { policy = "deny" }\n')
    assert _ask(run, "db.service.mesh.").rcode() == dns.rcode.NXDOMAIN
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]


def test_cached_answers_follow_the_default_tokens_identity(dns_acl: Callable[[StandInACL], Running]) -> None:
    acl = StandInACL(DNS_READ)
    run = dns_acl(acl)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    hits = run.server.stats.cache_hits
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert run.server.stats.cache_hits == hits + 1  # same identity, same catalog: served from the cache
    acl.set("")  # the policy changed (a new cache_key) with the catalog index unchanged: no stale answer
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.NXDOMAIN
    acl.missing = True  # the default token no longer exists: SERVFAIL, never an answer
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.SERVFAIL
    acl.missing = False
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.NXDOMAIN


def test_acls_off_never_resolves_a_token(dns_acl: Callable[[StandInACL], Running]) -> None:
    acl = StandInACL("")
    acl.enabled = False
    run = dns_acl(acl)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n1.node.mesh.")) == ["10.1.0.1"]
    assert acl.resolves == 0
