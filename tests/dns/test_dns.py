"""DNS responder against real clients (dig, dnspython): name forms, health, rcodes, sizes, fuzz."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
from collections.abc import Callable

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from meshagent.agent.catalog import CRITICAL, WARNING
from meshagent.agent.config.types import AgentConfig

from tests.support.dns_harness import Running, answers, q, register
from tests.support.wait import wait_for


def test_service_forms_and_health(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "10.0.0.1", "db-1", tags=["primary"])
    register(r, "n2", "10.0.0.2", "db-2", tags=["replica"], status=WARNING)
    register(r, "n3", "10.0.0.3", "db-3", status=CRITICAL)
    want = {"10.0.0.1", "10.0.0.2"}
    for name in ("db.service.mesh", "DB.Service.MESH", "db.service.dc1.mesh", "db.service.dc1.dc.mesh"):
        assert {rr.address for rr in answers(q(r, name), dns.rdatatype.A)} == want, name  # type: ignore[attr-defined]
    assert {rr.address for rr in answers(q(r, "primary.db.service.mesh"), dns.rdatatype.A)} == {"10.0.0.1"}  # type: ignore[attr-defined]
    srv = q(r, "_db._tcp.service.mesh", "SRV")
    assert sorted(str(rr.target) for rr in answers(srv, dns.rdatatype.SRV)) == [  # type: ignore[attr-defined]
        "n1.node.dc1.mesh.", "n2.node.dc1.mesh."]
    assert {rrset.name.to_text() for rrset in srv.additional} == {"n1.node.dc1.mesh.", "n2.node.dc1.mesh."}
    assert [rr.target.to_text() for rr in answers(q(r, "_db._replica.service.mesh", "SRV"), dns.rdatatype.SRV)] == [  # type: ignore[attr-defined]
        "n2.node.dc1.mesh."]
    assert q(r, "db.service.dc2.mesh").rcode() == dns.rcode.NXDOMAIN


def test_only_passing_drops_warning(dns_server: Callable[..., Running]) -> None:
    config = AgentConfig()
    config.dns_config.only_passing = True
    r = dns_server(config)
    register(r, "n1", "10.0.0.1", "db-1")
    register(r, "n2", "10.0.0.2", "db-2", status=WARNING)
    assert {rr.address for rr in answers(q(r, "db.service.mesh"), dns.rdatatype.A)} == {"10.0.0.1"}  # type: ignore[attr-defined]


def test_srv_weights_and_service_address_target(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "10.0.0.1", "w1", name="web", svc_address="192.0.2.10", port=80,
             weights={"Passing": 7, "Warning": 2})
    register(r, "n2", "10.0.0.2", "w2", name="web", status=WARNING, weights={"Passing": 7, "Warning": 2})
    reply = q(r, "web.service.mesh", "SRV")
    got = {rr.target.to_text(): rr.weight for rr in answers(reply, dns.rdatatype.SRV)}  # type: ignore[attr-defined]
    assert got == {"c000020a.addr.dc1.mesh.": 7, "n2.node.dc1.mesh.": 2}
    addr = q(r, "c000020a.addr.dc1.mesh")
    assert [rr.address for rr in answers(addr, dns.rdatatype.A)] == ["192.0.2.10"]  # type: ignore[attr-defined]


def test_nxdomain_nodata_and_soa(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "10.0.0.1", "db-1")
    for name in ("nosuch.service.mesh", "nosuch.node.mesh", "what.mesh"):
        reply = q(r, name)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert reply.authority and reply.authority[0].rdtype == dns.rdatatype.SOA
    nodata = q(r, "db.service.mesh", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    register(r, "n2", "10.0.0.2", "db-2", status=CRITICAL, name="dead")
    assert q(r, "dead.service.mesh").rcode() == dns.rcode.NXDOMAIN  # all unhealthy: NXDOMAIN, not empty


def test_node_lookup_with_meta_txt(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "10.0.0.1", "db-1", meta={"rack": "r1", "rfc1035-raw": "verbatim"})
    assert [rr.address for rr in answers(q(r, "n1.node.mesh"), dns.rdatatype.A)] == ["10.0.0.1"]  # type: ignore[attr-defined]
    txt = {s.decode() for rr in answers(q(r, "n1.node.dc1.mesh", "TXT"), dns.rdatatype.TXT)
           for s in rr.strings}  # type: ignore[attr-defined]
    assert txt == {"rack=r1", "verbatim"}


def test_dig_sees_the_same_answers(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "10.0.0.1", "db-1", port=5001)
    register(r, "n2", "10.0.0.2", "db-2", port=5002)
    out = subprocess.run(["dig", "+short", f"@{r.host}", "-p", str(r.port), "db.service.mesh", "SRV"],
                         capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
    assert sorted(line for line in out if line) == ["1 1 5001 n1.node.dc1.mesh.", "1 1 5002 n2.node.dc1.mesh."]
    status = subprocess.run(["dig", f"@{r.host}", "-p", str(r.port), "nope.service.mesh"], capture_output=True,
                            text=True, timeout=10, check=True).stdout
    assert "status: NXDOMAIN" in status and "SOA" in status


def test_truncation_edns_and_tcp(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    for i in range(40):
        register(r, f"node-with-a-long-name-{i:02d}", f"10.0.1.{i}", f"big-{i}", name="big")
    plain = q(r, "big.service.mesh", "SRV")
    assert plain.flags & dns.flags.TC and len(plain.to_wire()) <= 512
    edns = q(r, "big.service.mesh", "SRV", use_edns=0, payload=4096)
    assert len(answers(edns, dns.rdatatype.SRV)) > len(answers(plain, dns.rdatatype.SRV))
    full = q(r, "big.service.mesh", "SRV", tcp=True)
    assert len(answers(full, dns.rdatatype.SRV)) == 40 and not full.flags & dns.flags.TC


def test_answers_are_shuffled_and_cache_follows_catalog(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    for i in range(5):
        register(r, f"n{i}", f"10.0.0.{i + 1}", f"db-{i}")
    orders = {tuple(rr.address for rr in answers(q(r, "db.service.mesh", use_edns=0), dns.rdatatype.A))  # type: ignore[attr-defined]
              for _ in range(50)}
    assert len(orders) > 1
    register(r, "n0", "10.0.0.1", "db-0", status=CRITICAL)
    got = {rr.address for rr in answers(q(r, "db.service.mesh", use_edns=0), dns.rdatatype.A)}  # type: ignore[attr-defined]
    assert "10.0.0.1" not in got and len(got) == 4


def test_recursors_sequential_then_servfail(dns_server: Callable[..., Running]) -> None:
    upstream = dns_server(AgentConfig(domain="example."))
    register(upstream, "www", "192.0.2.80", "x", name="site")
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound but never answers: a recursor that times out
    config = AgentConfig(recursors=[f"127.0.0.1:{dead.getsockname()[1]}", f"{upstream.host}:{upstream.port}"])
    config.dns_config.recursor_timeout = 0.5
    r = dns_server(config)
    try:
        reply = q(r, "site.service.example")
        assert [rr.address for rr in answers(reply, dns.rdatatype.A)] == ["192.0.2.80"]  # type: ignore[attr-defined]
        config.recursors = [f"127.0.0.1:{dead.getsockname()[1]}"]
        failed = q(r, "other.example")
        assert failed.rcode() == dns.rcode.SERVFAIL and failed.flags & dns.flags.RA
    finally:
        dead.close()
    plain = dns_server()
    assert q(plain, "www.example.com").rcode() == dns.rcode.REFUSED


def test_fuzz_random_and_mutated_packets(dns_server: Callable[..., Running]) -> None:
    seed = random.randrange(1 << 32)
    print(f"DNS fuzz seed={seed}")
    rng = random.Random(seed)
    r = dns_server()
    register(r, "n1", "10.0.0.1", "db-1")
    seeds = [dns.message.make_query(n, t).to_wire() for n in ("db.service.mesh", "n1.node.mesh", "x.mesh")
             for t in ("A", "SRV", "TXT", "ANY")]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    sent = 0
    for i in range(10_000):
        if rng.random() < 0.3:
            packet = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        else:
            packet = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(packet)) if packet else 0
                if op < 0.5 and packet:
                    packet[pos] = rng.randrange(256)
                elif op < 0.75:
                    del packet[pos:pos + rng.randrange(1, 8)]
                else:
                    packet[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
            packet = bytes(packet)
        if i % 10 == 0:  # a slice over TCP, including lying length prefixes
            with socket.create_connection((r.host, r.port), timeout=2) as tcp:
                tcp.sendall(struct.pack("!H", rng.choice([len(packet), len(packet) + 5, 0])) + packet)
        else:
            try:
                udp.sendto(packet, (r.host, r.port))
                sent += 1
            except BlockingIOError:
                pass
    udp.close()
    # the flood may have filled the socket buffer (in-process, the sender shares the GIL with the server):
    # UDP may drop a query then, so ask until the backlog is drained
    reply = wait_for(lambda: dns.query.udp(dns.message.make_query("db.service.mesh", "A"), r.host, port=r.port,
                                           timeout=1), 20, what="an answer after the fuzz")
    assert [rr.address for rr in answers(reply, dns.rdatatype.A)] == ["10.0.0.1"], f"seed={seed}"  # type: ignore[attr-defined]
    assert sent > 5000
