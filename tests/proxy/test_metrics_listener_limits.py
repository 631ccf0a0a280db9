"""The per-proxy metrics listeners under hostile clients (red-team findings 11, 12), beyond the red team's
tests: a flood that goes on while a scraper connects, a render in progress is never cut, a newcomer when
every slot is rendering is refused at once, and the trio side backs off when out of descriptors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import trio
from meshagent.proxy.metrics_http import MAX_CLIENTS, ReactorMetricsServer, _evictable, serve_trio
from meshagent.proxy.reactor import Reactor

from tests.support.wait import wait_for

HOST = "127.0.23.1"


def test_eviction_picks_the_oldest_head_then_the_oldest_send_never_a_render() -> None:
    assert _evictable([(1, "render"), (2, "send"), (3, "head"), (4, "head")]) == 3
    assert _evictable([(1, "render"), (2, "send"), (3, "send")]) == 2
    assert _evictable([(1, "render"), (2, "render")]) is None
    assert _evictable([]) is None


def _scrape(host: str, port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def reactor_server() -> Iterator[tuple[ReactorMetricsServer, Reactor]]:
    reactor = Reactor()
    server = ReactorMetricsServer(reactor, f"{HOST}:0", lambda: "x 1\n")
    thread = threading.Thread(target=reactor.run, daemon=True)
    thread.start()
    try:
        yield server, reactor
    finally:
        reactor.call_soon(server.close)
        reactor.call_soon(reactor.stop)
        thread.join(10)


def test_a_scraper_is_served_while_idle_connections_keep_arriving(
        reactor_server: tuple[ReactorMetricsServer, Reactor]) -> None:
    """An attacker keeps opening idle connections (far more than MAX_CLIENTS) in a thread while scrapes
    go on: every scrape is answered and the server never holds more than MAX_CLIENTS client descriptors."""
    server, _reactor = reactor_server
    host, port = server.address
    stop = threading.Event()
    idle: list[socket.socket] = []

    def flood() -> None:
        while not stop.is_set() and len(idle) < 1500:
            try:
                idle.append(socket.create_connection((host, port), timeout=5))
            except OSError:
                return

    attacker = threading.Thread(target=flood, daemon=True)
    before = _fds()
    attacker.start()
    try:
        wait_for(lambda: len(idle) > 3 * MAX_CLIENTS, timeout=20, what="the flood under way")
        for _ in range(10):
            assert _scrape(host, port).startswith(b"HTTP/1.1 200"), "a scrape was locked out"
        held = len(server._clients)
        assert held <= MAX_CLIENTS, held
    finally:
        stop.set()
        attacker.join(10)
        grown = _fds() - before - len(idle)
        for s in idle:
            s.close()
    assert grown <= MAX_CLIENTS + 8, f"{grown} server-side descriptors for {len(idle)} idle clients"


def test_a_render_in_progress_is_never_cut_and_a_newcomer_is_refused_when_every_slot_renders() -> None:
    """serve_trio does not evict a client whose answer is being rendered (cancelling a render could cut a
    control frame to a worker): with every slot rendering, a newcomer is closed at once instead."""
    async def main() -> None:
        release = trio.Event()
        rendering = 0

        async def render() -> str:
            nonlocal rendering
            rendering += 1
            await release.wait()
            return "x 1\n"

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_trio, f"{HOST}:0", render)
            scrapers = []
            for _ in range(MAX_CLIENTS):
                s = trio.socket.socket()
                await s.connect((host, port))
                await s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                scrapers.append(s)
            with trio.fail_after(10):
                while rendering < MAX_CLIENTS:
                    await trio.sleep(0.01)  # polling a counter the server's tasks bump, with a deadline
            newcomer = trio.socket.socket()
            await newcomer.connect((host, port))
            with trio.fail_after(5):
                assert await newcomer.recv(100) == b""  # refused at once, not parked
            newcomer.close()
            release.set()
            for s in scrapers:
                with trio.fail_after(5):
                    out = b""
                    while chunk := await s.recv(65536):
                        out += chunk
                assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"x 1\n"), out[:80]
                s.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


TRIO_CHILD = r"""
import os, resource, sys, time
import trio
from meshagent.proxy.metrics_http import serve_trio

async def main():
    async def render():
        return "x 1\n"
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_trio, sys.argv[1], render)
        print(port, flush=True)
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used - 1, used - 1))
        await trio.to_thread.run_sync(sys.stdin.readline)
        start = time.process_time()
        await trio.sleep(1.5)
        print("cpu", time.process_time() - start, flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_out_of_descriptors_the_supervisor_listener_backs_off_instead_of_spinning() -> None:
    proc = subprocess.Popen([sys.executable, "-c", TRIO_CHILD, f"{HOST}:0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection((HOST, port), timeout=5) for _ in range(3)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline().split()
        assert out and out[0] == "cpu", (out, proc.stderr.read() if proc.poll() is not None else "")
        assert float(out[1]) < 0.15, out  # a spinning accept loop burns most of the 1.5 s
        for c in clients:
            c.close()
        assert proc.wait(10) == 0
        assert proc.stderr.read().count("accept failed") == 1  # logged once per episode, not per retry
    finally:
        proc.kill()
        proc.wait(10)
