"""Streamed request bodies (PUT /v1/snapshot): size cap, a deadline a trickle cannot stretch, keep-alive
after a fully read body, and a connection that closes when the handler leaves the body unread."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from meshagent.agent.http import server as http_server
from meshagent.agent.http.messages import Request, Response

from tests.support.http_client import read_response, read_until_closed
from tests.support.http_harness import ServerThread


async def count_body(request: Request) -> Response:
    """Reads a streamed body and answers its size; ?skip answers without reading it."""
    if request.body_stream is None or request.query == "skip":
        return 200, [], b"skipped"
    size = 0
    async for chunk in request.body_stream:
        size += len(chunk)
    return 200, [], b"%d" % size


@pytest.fixture
def stream_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setitem(http_server.BODY_LIMITS, "/v1/snapshot", 100_000)
    server = ServerThread(handler=count_body, read_timeout=0.5).start()
    try:
        yield server
    finally:
        server.stop()


def _connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_streamed_body_then_keep_alive(stream_server: ServerThread) -> None:
    with _connect(stream_server) as sock:
        buf = bytearray()
        sock.sendall(b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"a" * 70_000)
        assert read_response(sock, buf)[::2] == (200, b"70000")
        sock.sendall(b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n")
        assert read_response(sock, buf)[::2] == (200, b"3")


@pytest.mark.parametrize("head", [
    b"Content-Length: 200000\r\n",  # refused from the header, before the handler runs
    b"Transfer-Encoding: chunked\r\n",  # counted as it arrives
])
def test_streamed_body_over_the_cap_is_413(stream_server: ServerThread, head: bytes) -> None:
    with _connect(stream_server) as sock:
        sock.sendall(b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        if b"chunked" in head:
            for _ in range(4):
                sock.sendall(b"8000\r\n" + b"z" * 0x8000 + b"\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]


def test_a_trickled_body_is_cut(stream_server: ServerThread) -> None:
    with _connect(stream_server) as sock:
        sock.sendall(b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        reply = b""
        for _ in range(100):  # one byte every 50 ms: far below the minimum upload rate
            try:
                sock.sendall(b"x")
            except OSError:
                break
            sock.settimeout(0.05)
            try:
                reply += sock.recv(4096)
            except TimeoutError:
                continue
            if reply:
                break
        sock.settimeout(10)
        reply += read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert time.monotonic() - started < 3.0


def test_unread_body_closes_the_connection(stream_server: ServerThread) -> None:
    with _connect(stream_server) as sock:
        sock.sendall(b"PUT /v1/snapshot?skip HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"q" * 50_000
                     + b"GET /v1/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 ") == 1, reply[:300]
    assert b"connection: close" in reply.lower()
