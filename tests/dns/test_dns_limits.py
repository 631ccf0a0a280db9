"""Consul's answer-size rules (udp_answer_limit, a_record_limit, enable_truncate) and the EDNS cap, on an
in-process responder with real sockets."""
# ruff: noqa: F811  (the `dns_server` fixture is imported from test_dns, then named as a parameter)

from __future__ import annotations

import socket
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rdatatype
from meshagent.agent.config.types import AgentConfig

from tests.dns.test_dns import Running, answers, dns_server, q, register  # noqa: F401


def _fill(r: Running, n: int) -> None:
    for i in range(n):
        register(r, f"node-with-a-long-name-{i:02d}", f"10.0.2.{i + 1}", f"big-{i}", name="big")


def test_udp_answer_limit_is_capped_at_8_and_tc_follows_enable_truncate(dns_server: Callable[..., Running]) -> None:
    config = AgentConfig()
    config.dns_config.udp_answer_limit = 50  # Consul caps it at 8 for 512-byte answers
    config.dns_config.enable_truncate = False
    r = dns_server(config)
    _fill(r, 12)
    plain = q(r, "big.service.mesh", "A")
    assert len(answers(plain, dns.rdatatype.A)) == 8 and not plain.flags & dns.flags.TC
    edns = q(r, "big.service.mesh", "A", use_edns=0, payload=1232)  # EDNS: the size decides, not the count
    assert len(answers(edns, dns.rdatatype.A)) == 12 and not edns.flags & dns.flags.TC


def test_a_record_limit_cuts_silently_and_spares_srv(dns_server: Callable[..., Running]) -> None:
    config = AgentConfig()
    config.dns_config.a_record_limit = 2
    r = dns_server(config)
    _fill(r, 6)
    reply = q(r, "big.service.mesh", "A", use_edns=0)
    assert len(answers(reply, dns.rdatatype.A)) == 2 and not reply.flags & dns.flags.TC
    assert len(answers(q(r, "big.service.mesh", "SRV", tcp=True), dns.rdatatype.SRV)) == 6


def test_edns_size_is_capped_at_4096(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    _fill(r, 120)
    query = dns.message.make_query("big.service.mesh", "SRV", use_edns=0, payload=65000).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (r.host, r.port))
        wire = sock.recv(65535)
    reply = dns.message.from_wire(wire)
    assert len(wire) <= 4096 and reply.flags & dns.flags.TC and reply.payload == 4096
    targets = {rr.target for rr in answers(reply, dns.rdatatype.SRV)}  # type: ignore[attr-defined]
    assert targets and targets <= {rrset.name for rrset in reply.additional}  # no SRV without its address
