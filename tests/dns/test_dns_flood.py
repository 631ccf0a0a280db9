"""A 3-server cluster's leader keeps its leadership through a flood of uncached DNS and HTTP queries
(issue 11: 300 instances and one EDNS query used to freeze the leader for 1.5 s and cost it leadership)."""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import httpx
import pytest

from tests.support.dns_flood import register_instances, srv_query, tcp_exchange
from tests.support.loopback_range import LoopbackRange
from tests.support.raft_cluster import Cluster
from tests.support.wait import wait_for

FIRST, LAST = 134, 159  # this suite's 127.0.0.N range (130-133: test_dns_hostile)
INSTANCES = 1000
DNS_RATE, HTTP_RATE, WRITE_RATE, SECONDS = 50, 10, 2, 10  # per second; HTTP: health queries with distinct filters


def _raft(http_addr: str) -> dict[str, str]:
    return dict(httpx.get(f"{http_addr}/v1/agent/self", timeout=5).json()["Stats"]["raft"])


def _paced(rate: int, seconds: int, act: Callable[[int], object]) -> None:
    start = time.monotonic()
    for i in range(rate * seconds):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a load generator, not synchronisation
        act(i)


@pytest.mark.slow
def test_leader_keeps_leadership_through_uncached_dns_and_http_flood(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, LoopbackRange(FIRST, LAST), name="flood")  # type: ignore[arg-type]
    try:
        leader = cluster.wait_one_leader(30)
        register_instances(leader.http_addr, "web", INSTANCES)
        probe = srv_query("web.service.mesh", random.Random(0), payload=None)
        wait_for(lambda: sum(map(len, dns.message.from_wire(tcp_exchange(leader.host, 8600, probe)).answer)) > 500, 30,
                 what="the leader's DNS to serve the instances")
        before = _raft(leader.http_addr)
        seed = random.randrange(1 << 32)
        print(f"seed={seed}")
        rng = random.Random(seed)
        sent: dict[int, float] = {}
        answered: dict[int, float] = {}
        http_status: list[int] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.5)
        give_up = [float("inf")]  # set when sending ends: late answers have 10 s more

        def receive() -> None:
            while len(answered) < DNS_RATE * SECONDS and time.monotonic() < give_up[0]:
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    continue
                msg = dns.message.from_wire(reply)
                if msg.answer and len(reply) <= 4096 and msg.flags & dns.flags.TC:
                    answered[msg.id] = time.monotonic() - sent[msg.id]

        def ask(i: int) -> None:
            packet = bytearray(srv_query("web.service.mesh", rng, payload=1232 + i % 2000))
            packet[:2] = i.to_bytes(2, "big")  # the id says which query this answers
            sent[i] = time.monotonic()
            sock.sendto(bytes(packet), (leader.host, 8600))

        def http_flood() -> None:
            with httpx.Client(timeout=10) as client:
                def one(i: int) -> None:
                    resp = client.get(f"{leader.http_addr}/v1/health/service/web",
                                      params={"filter": f"Service.Port == {8000 + i}"})
                    http_status.append(resp.status_code if len(resp.json()) == 1 else -resp.status_code)
                _paced(HTTP_RATE, SECONDS, one)

        def writes() -> None:  # the catalog index moves: no cached answer, no memoized instances survive
            with httpx.Client(timeout=10) as client:
                _paced(WRITE_RATE, SECONDS, lambda i: client.put(f"{leader.http_addr}/v1/kv/flood/{i}", content=b"x"))

        threads = [threading.Thread(target=f) for f in (receive, http_flood, writes)]
        for t in threads:
            t.start()
        try:
            _paced(DNS_RATE, SECONDS, ask)
        finally:
            give_up[0] = time.monotonic() + 10
            for t in threads:
                t.join(30)
            sock.close()
        after = [_raft(agent.http_addr) for _, agent in cluster.members]
        took = sorted(answered.values())
        if took:
            print(f"{len(answered)}/{len(sent)} DNS answers: median {statistics.median(took) * 1000:.1f} ms, "
                  f"p99 {took[int(len(took) * 0.99) - 1] * 1000:.1f} ms; HTTP {len(http_status)} answers")
        assert len(answered) == len(sent) == DNS_RATE * SECONDS, f"seed={seed}"
        assert http_status == [200] * (HTTP_RATE * SECONDS)
        assert [a["term"] for a in after] == [before["term"]] * 3, (before, after)
        assert {a["leader_addr"] for a in after} == {before["leader_addr"]}
        assert cluster.leaders() == [leader]
    finally:
        cluster.stop()
