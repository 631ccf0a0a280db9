"""What held against the attack and must stay so: a real agent with 10,000 idle connections and 1,000
parked blocking queries still answers at once, and one write wakes every blocked query."""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.server_agent import HOSTS

IDLE = 10_000
BLOCKED = 1_000
PER_SOURCE = 200  # the agent's per-client-address cap (Consul's http_max_conns_per_client)


def _sources(first: int, count: int) -> list[str]:
    """Client source addresses, 127.160.0.N: nobody's agent listens there."""
    return [f"127.160.0.{first + i}" for i in range(count)]


def _connect(host: str, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, 8500))
    return sock


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_idle_connections_and_blocking_queries_do_not_stall_the_agent(tmp_path: Path) -> None:
    host = next(h for h in reversed(HOSTS) if ports_free(h))
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "load"],
                         workdir=tmp_path).start()
    socks: list[socket.socket] = []
    try:
        assert agent.proc is not None
        http = httpx.Client(base_url=agent.http_addr, timeout=10)
        assert http.put("/v1/kv/wake", content=b"0").json() is True
        index = int(http.get("/v1/kv/wake").headers["x-consul-index"])
        rss_before = _rss_mib(agent.proc.pid)
        for source in _sources(1, IDLE // PER_SOURCE):
            socks.extend(_connect(host, source) for _ in range(PER_SOURCE))
        started = time.monotonic()
        assert http.get("/v1/agent/self").status_code == 200
        assert time.monotonic() - started < 2.0

        blocked = [_connect(host, source) for source in _sources(100, BLOCKED // PER_SOURCE)
                   for _ in range(PER_SOURCE)]
        socks.extend(blocked)
        request = b"GET /v1/kv/wake?index=%d&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n" % index
        for sock in blocked:
            sock.sendall(request)
        started = time.monotonic()
        assert http.get("/v1/kv/wake").status_code == 200  # still prompt with every query parked
        assert time.monotonic() - started < 2.0
        rss_growth = _rss_mib(agent.proc.pid) - rss_before

        assert http.put("/v1/kv/wake", content=b"1").json() is True
        woken, sel = 0, selectors.DefaultSelector()
        for sock in blocked:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while woken < BLOCKED and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                assert data.startswith(b"HTTP/1.1 200 "), data[:200]
                sel.unregister(key.fileobj)
                woken += 1
        assert woken == BLOCKED, f"{woken} of {BLOCKED} blocked queries answered after the write"
        print(f"RSS growth with {IDLE} idle + {BLOCKED} blocked connections: {rss_growth:.0f} MiB")
        assert rss_growth < 256, f"{rss_growth:.0f} MiB for {IDLE + BLOCKED} connections"
    finally:
        agent.kill()  # before closing: 11,000 hang-ups would take the agent seconds to wind down
        for sock in socks:
            sock.close()
