"""DNS under ACLs (issue 15): the responder answers as the agent's `default` token (else anonymous); what it may
not read is NXDOMAIN, as a name that does not exist. A real DNSServer on 127.0.44.N, queried with dnspython,
with the agent's real ACLResolver over its catalog: policies and tokens are written with the FSM's acl_*
commands, so the resolver's cache_key (the ACL index) and the DNS response cache meet as in the agent."""

from __future__ import annotations

from dataclasses import replace

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from meshagent.agent.acl.identity import ACLIdentity
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import PASSING, Check, Node, Service, commands
from meshagent.agent.config.types import ACLConfig, AgentConfig
from meshagent.agent.store import CatalogStore

from tests.support.acl_objects import grant, policy_of
from tests.support.dns_harness import DNSServers, Running
from tests.support.ports import free_host_in

DNS_READ = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
DNS_SECRET = "5b0f1d2e-3c4a-4b5c-8d6e-7f8091a2b3c4"


class CountingResolver(ACLResolver):
    """The real resolver, counting how often DNS asks it (ACLs off must never ask)."""

    def __init__(self, config: AgentConfig, store: CatalogStore) -> None:
        super().__init__(config, store)
        self.calls = 0

    def resolve(self, secret: str | None) -> ACLIdentity:
        self.calls += 1
        return super().resolve(secret)


def start(servers: DNSServers, rules: str | None = DNS_READ, enabled: bool = True) -> Running:
    """A DNS server with ACLs on under default deny, web on n1 and n2, db on n1, and (unless `rules` is
    None) a default token holding `rules`; without one it answers as the anonymous token (no policy)."""
    config = AgentConfig(acl=ACLConfig(enabled=enabled, default_policy="deny"))
    run = servers(config, host=free_host_in("127.0.44", ports=(8600,)), acl=CountingResolver)
    apply(run, commands.acl_init(""))
    if rules is not None:
        apply(run, *grant("dns", rules, DNS_SECRET))
        assert run.acl is not None
        run.acl.tokens.default = DNS_SECRET
    for name, node, address in (("web", "n1", "10.1.0.1"), ("web", "n2", "10.1.0.2"), ("db", "n1", "10.1.0.1")):
        svc = Service(node=node, id=f"{name}-{node}", service=name, port=80)
        check = Check(node=node, check_id=f"c-{name}-{node}", name="c", status=PASSING, service_id=f"{name}-{node}")
        apply(run, commands.register(Node(node=node, address=address, datacenter="dc1"), svc, [check]))
    return run


def apply(run: Running, *cmds: dict[str, object]) -> None:
    """Write through the store in the server's own trio loop (as the agent's writes arrive)."""
    for cmd in cmds:
        run.call(run.store.apply, cmd)


def set_rules(run: Running, rules: str) -> None:
    """Change the default token's policy (the ACL index moves; the catalog's service index does not)."""
    apply(run, commands.acl_policy_set(replace(policy_of("dns", ""), rules=rules)))


def _ask(run: Running, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(query, run.host, port=run.port, timeout=3)


def _addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if rrset.rdtype == dns.rdatatype.A)


def test_default_deny_without_a_policy_hides_services_and_nodes(dns_server: DNSServers) -> None:
    run = start(dns_server, rules=None)  # no default token: the anonymous token, which has no policy
    for name in ("web.service.mesh.", "n1.node.mesh.", "web.connect.mesh."):
        reply = _ask(run, name)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert not reply.answer
    # the same answer over TCP and for SRV: nothing tells a hidden name from a missing one
    assert _ask(run, "web.service.mesh.", "SRV", tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert _ask(run, "nope.service.mesh.").rcode() == dns.rcode.NXDOMAIN


def test_a_service_read_policy_answers_service_lookups_and_node_read_gates_node_lookups(
        dns_server: DNSServers) -> None:
    run = start(dns_server, DNS_READ)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n2.node.mesh.")) == ["10.1.0.2"]
    # service:read alone answers service lookups (issue 15's acceptance; Consul also wants node:read per
    # instance); node lookups still need node:read
    set_rules(run, 'service_prefix "" { policy = "read" }\nnode "n1" { policy = "read" }\n')
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n1.node.mesh.")) == ["10.1.0.1"]
    assert _ask(run, "n2.node.mesh.").rcode() == dns.rcode.NXDOMAIN
    set_rules(run, 'service_prefix "" { policy = "read" }\n')
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _ask(run, "n1.node.mesh.").rcode() == dns.rcode.NXDOMAIN
    # one service denied by an exact rule, the other still answered
    set_rules(run, DNS_READ + 'service "db" { policy = "deny" }\n')
    assert _ask(run, "db.service.mesh.").rcode() == dns.rcode.NXDOMAIN
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]


def test_cached_answers_follow_the_default_tokens_identity(dns_server: DNSServers) -> None:
    run = start(dns_server, DNS_READ)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    hits = run.server.stats.cache_hits
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert run.server.stats.cache_hits == hits + 1  # same identity, same catalog: served from the cache
    set_rules(run, "")  # the policy changed (a new cache_key) with the catalog index unchanged: no stale answer
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.NXDOMAIN
    token = next(t for t in run.store.catalog.acl.tokens() if t.secret_id == DNS_SECRET)
    apply(run, commands.acl_token_delete(token.accessor_id))  # the default token is gone: SERVFAIL, never an answer
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.SERVFAIL
    apply(run, commands.acl_token_set(token))  # back (its policy still grants nothing)
    assert _ask(run, "web.service.mesh.").rcode() == dns.rcode.NXDOMAIN
    set_rules(run, DNS_READ)
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]


def test_acls_off_never_resolves_a_token(dns_server: DNSServers) -> None:
    run = start(dns_server, rules="", enabled=False)  # a default token granting nothing: ACLs off ignore it
    assert _addresses(_ask(run, "web.service.mesh.")) == ["10.1.0.1", "10.1.0.2"]
    assert _addresses(_ask(run, "n1.node.mesh.")) == ["10.1.0.1"]
    assert isinstance(run.acl, CountingResolver) and run.acl.calls == 0
