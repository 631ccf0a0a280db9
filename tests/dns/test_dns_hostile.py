"""Hostile DNS input against a real agent holding 1,000 instances of one service: big answers are fast and
bounded, an unresponsive recursor delays nothing else, EDNS version 1 gets BADVERS, TCP connections are
capped per client and closed when idle or slow."""

from __future__ import annotations

import random
import select
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.dns_flood import register_instances, srv_query, tcp_exchange, udp_exchange
from tests.support.wait import wait_for

HOST = "127.0.0.130"  # the agent
RECURSOR = "127.0.0.131"  # a UDP socket that never answers
CLIENT_A, CLIENT_B = "127.0.0.132", "127.0.0.133"  # source addresses of TCP clients
INSTANCES = 1000
SERVICE = "web.service.mesh"


@dataclass
class Big:
    """The running agent and its dead recursor."""

    agent: AgentProcess
    dead: socket.socket


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((RECURSOR, 0))
    work: Path = tmp_path_factory.mktemp("dns-hostile")
    agent = AgentProcess(host=HOST, workdir=work, args=[
        "-dev", "-client", HOST, "-bind", HOST, "-node", "dns-hostile",
        "-recursor", f"{RECURSOR}:{dead.getsockname()[1]}"])
    try:
        agent.start(timeout=30)
        register_instances(agent.http_addr, "web", INSTANCES)
        yield Big(agent, dead)
    finally:
        agent.stop()
        dead.close()


def _srv(msg: dns.message.Message) -> list[object]:
    return [rr for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rr in rrset]


def _every_target_addressed(msg: dns.message.Message) -> bool:
    names = {rrset.name.to_text().lower() for rrset in msg.additional}
    return all(rr.target.to_text().lower() in names for rr in _srv(msg))  # type: ignore[attr-defined]


def test_edns_srv_over_1000_instances_is_fast_and_bounded(big: Big) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    took: dict[str, list[float]] = {"distinct": [], "after a catalog write": []}
    for i in range(14):
        cold = i % 2 == 1
        if cold:  # the answer cache and the resolver's memo are both cold for this query
            resp = httpx.put(f"{big.agent.http_addr}/v1/kv/dns-hostile/{i}", content=b"x", timeout=10)
            assert resp.status_code == 200
        query = srv_query(SERVICE, rng, payload=4096 - i)  # mixed case: no two queries share bytes
        reply, seconds = udp_exchange(HOST, 8600, query)
        took["after a catalog write" if cold else "distinct"].append(seconds)
        msg = dns.message.from_wire(reply)
        assert len(reply) <= 4096 - i, f"seed={seed}"
        assert msg.flags & dns.flags.TC and len(_srv(msg)) >= 20 and _every_target_addressed(msg), f"seed={seed}"
    for kind, values in took.items():
        print(f"uncached EDNS SRV over {INSTANCES} instances, {kind}: median {statistics.median(values) * 1000:.1f} ms,"
              f" max {max(values) * 1000:.1f} ms")
    print(f"amplification {len(reply)}/{len(query)} bytes = {len(reply) / len(query):.0f}x")
    assert statistics.median(took["distinct"]) < 0.05, took  # was 10-28 s
    assert statistics.median(took["after a catalog write"]) < 0.1, took  # a generous bound: ~12 ms here
    # an EDNS client asking for more still gets at most 4096 bytes (amplification bound)
    huge, _ = udp_exchange(HOST, 8600, srv_query(SERVICE, rng, payload=65000))
    assert len(huge) <= 4096
    # without EDNS: 512 bytes and Consul's udp_answer_limit (3) records, TC set
    plain = dns.message.from_wire(udp_exchange(HOST, 8600, srv_query(SERVICE, rng, payload=None))[0])
    assert len(_srv(plain)) == 3 and plain.flags & dns.flags.TC and _every_target_addressed(plain)
    # TCP: up to 64 KiB, still cut in one pass with every kept SRV's address
    wire = tcp_exchange(HOST, 8600, srv_query(SERVICE, rng, payload=None))
    full = dns.message.from_wire(wire)
    assert 500 < len(_srv(full)) < INSTANCES and len(wire) <= 65535 and _every_target_addressed(full)
    out = subprocess.run(["dig", "+bufsize=4096", "+ignore", f"@{HOST}", "-p", "8600", SERVICE, "SRV"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert "status: NOERROR" in out and " tc " in out.split("flags:")[1].split(";")[0] + " "


def test_unresponsive_recursor_does_not_delay_local_answers(big: Big) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        for i in range(5):
            sock.sendto(dns.message.make_query(f"host{i}.outside.example", "A", id=100 + i).to_wire(), (HOST, 8600))
        start = time.perf_counter()
        local = dns.query.udp(dns.message.make_query("web-node-0007.node.mesh", "A"), HOST, port=8600, timeout=5)
        local_took = time.perf_counter() - start
        assert [rr.address for rrset in local.answer for rr in rrset] == ["10.1.0.8"]  # type: ignore[attr-defined]
        replies = [dns.message.from_wire(sock.recv(65535)) for _ in range(5)]
        forwarded_took = time.perf_counter() - start
    print(f"local answer behind 5 unanswered forwards: {local_took * 1000:.1f} ms; "
          f"forwards failed after {forwarded_took:.2f} s")
    assert local_took < 1.0  # the recursor timeout is 2 s: before, 5 forwards held the loop for ~10 s
    assert sorted(r.id for r in replies) == [100, 101, 102, 103, 104]
    assert all(r.rcode() == dns.rcode.SERVFAIL and r.flags & dns.flags.RA for r in replies)
    assert forwarded_took < 6.0  # forwarded concurrently: about one recursor_timeout, not five


def test_edns_version_1_gets_badvers(big: Big) -> None:
    reply = dns.query.udp(dns.message.make_query(SERVICE, "SRV", use_edns=1), HOST, port=8600, timeout=5)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0 and not reply.answer
    out = subprocess.run(["dig", "+edns=1", "+noednsnegotiation", f"@{HOST}", "-p", "8600", SERVICE, "SRV"],
                         capture_output=True, text=True, timeout=10).stdout
    assert "status: BADVERS" in out


def _connect(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((HOST, 8600))
    return sock


def _ask(sock: socket.socket) -> bytes:
    query = dns.message.make_query("web-node-0001.node.mesh", "A").to_wire()
    sock.sendall(struct.pack("!H", len(query)) + query)
    return sock.recv(65536)


def _closed_by_server(sock: socket.socket) -> bool:
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_tcp_per_client_cap_read_deadline_and_idle_timeout(big: Big) -> None:
    mine = [_connect(CLIENT_A) for _ in range(16)]
    others: list[socket.socket] = []
    try:
        for sock in mine:
            assert len(_ask(sock)) > 12  # all 16 accepted and answered
        idle_since = time.monotonic()
        over = _connect(CLIENT_A)
        others.append(over)
        wait_for(lambda: _closed_by_server(over), 5, what="the 17th connection from one client to be closed")
        other = _connect(CLIENT_B)  # another client is not affected
        others.append(other)
        assert len(_ask(other)) > 12
        slow = _connect(CLIENT_B)  # half a query, then nothing: the read deadline (2 s) closes it
        others.append(slow)
        slow.sendall(b"\x00")
        started = time.monotonic()
        wait_for(lambda: _closed_by_server(slow), 6, what="a half-sent query's connection to be closed")
        assert time.monotonic() - started < 6
        wait_for(lambda: all(_closed_by_server(s) for s in mine), 20, what="idle connections to be closed")
        idle = time.monotonic() - idle_since
        print(f"idle connections closed after {idle:.1f} s")
        assert 4 < idle < 20  # DNSLimits.tcp_idle is 8 s
        fresh = _connect(CLIENT_A)  # the client's slots are free again
        others.append(fresh)
        assert len(_ask(fresh)) > 12
    finally:
        for sock in mine + others:
            sock.close()
