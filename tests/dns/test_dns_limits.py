"""Consul's answer-size rules (udp_answer_limit, a_record_limit, enable_truncate) and the EDNS cap, on an
in-process responder with real sockets."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.dns import server as server_module
from meshagent.agent.dns.limits import DNSLimits

from tests.support.dns_flood import mixed_case
from tests.support.dns_harness import Running, answers, q, register


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


def test_recursor_forwards_beyond_the_cap_get_servfail_at_once(dns_server: Callable[..., Running]) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # never answers
    config = AgentConfig(recursors=[f"127.0.0.1:{dead.getsockname()[1]}"])
    config.dns_config.recursor_timeout = 3.0
    r = dns_server(config, DNSLimits(recursive=2))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            for i in range(5):
                sock.sendto(dns.message.make_query(f"h{i}.example.org", "A", id=i).to_wire(), (r.host, r.port))
            start = time.monotonic()
            early = [dns.message.from_wire(sock.recv(512)) for _ in range(3)]
            assert time.monotonic() - start < 2.0  # the 3 beyond the cap did not wait for the upstream
            late = [dns.message.from_wire(sock.recv(512)) for _ in range(2)]
        assert all(m.rcode() == dns.rcode.SERVFAIL for m in early + late)
        assert sorted(m.id for m in early + late) == [0, 1, 2, 3, 4]
        assert r.server.stats.recursor_busy == 3
    finally:
        dead.close()


def test_answer_cache_is_bounded_in_bytes(dns_server: Callable[..., Running], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "CACHE_BYTES", 64 << 10)
    r = dns_server()
    _fill(r, 120)
    rng = random.Random(7)
    for _ in range(60):  # distinct questions (mixed case) of ~4 KB answers each: ~240 KB uncapped
        reply = q(r, mixed_case("big.service.mesh", rng), "SRV", use_edns=0, payload=4096)
        assert len(answers(reply, dns.rdatatype.SRV)) > 20
    held = r.server._cache_bytes
    assert 0 < held <= (64 << 10) + 4 * 4096, held
