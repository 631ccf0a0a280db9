"""HTTPServer: keep-alive, pipelining, limits, timeouts and malformed input, over raw sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from meshagent.agent.http.messages import Request, Response

from tests.support.http_client import read_response, read_until_closed
from tests.support.http_harness import ServerThread


async def echo(request: Request) -> Response:
    """Echo handler: reflects method, path, query and body; /boom raises."""
    if request.path == "/boom":
        raise RuntimeError("handler exploded with a secret")
    body = f"{request.method} {request.path} {request.query} ".encode() + request.body
    return 200, [(b"content-type", b"text/plain")], body


@pytest.fixture
def echo_server() -> Iterator[ServerThread]:
    server = ServerThread(handler=echo, max_body=1024, read_timeout=0.5, idle_timeout=1.0,
                          max_conns_per_client=4).start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def test_reports_bound_port(echo_server: ServerThread) -> None:
    assert echo_server.port > 0
    assert echo_server.server.bound_port == echo_server.port


def test_keep_alive_serves_several_requests_on_one_connection(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    for i in range(5):
        sock.sendall(f"GET /x{i}?a=1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, body = read_response(sock, buf)
        assert status == 200 and body == f"GET /x{i} a=1 ".encode()
        assert "connection" not in headers and "date" in headers


def test_pipelined_requests_answered_in_order(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    reqs = b"".join(f"PUT /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nb{i:02d}".encode()
                    for i in range(10))
    sock.sendall(reqs)
    for i in range(10):
        status, _, body = read_response(sock, buf)
        assert (status, body) == (200, f"PUT /p{i}  b{i:02d}".encode())


def test_chunked_body(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"PUT /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert read_response(sock, buf)[2] == b"PUT /c  abcdefg"


def test_content_length_over_limit_is_413_without_reading_body(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n")
    status, headers, body = read_response(sock, buf)
    assert status == 413 and headers["connection"] == "close" and b"1024" in body


def test_content_length_at_limit_is_accepted(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"PUT /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n" + b"v" * 1024)
    status, _, body = read_response(sock, buf)
    assert status == 200 and body.endswith(b"v" * 1024)


def test_chunked_body_over_limit_is_413(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    chunk = b"200\r\n" + b"z" * 512 + b"\r\n"
    sock.sendall(b"PUT /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert read_response(sock, buf)[0] == 413


def test_expect_100_continue(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"PUT /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = read_response(sock, buf)
    assert status == 100
    sock.sendall(b"hi")
    assert read_response(sock, buf)[2] == b"PUT /e  hi"


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: t\r\n\r\n",
    b"\x00\x01\x02\xff\r\n\r\n",
])
def test_malformed_requests_get_a_one_line_400(echo_server: ServerThread, raw: bytes) -> None:
    sock = connect(echo_server)
    sock.sendall(raw)
    out = read_until_closed(sock)
    expected = b"HTTP/1.1 505 " if b"HTTP/9.9" in raw else b"HTTP/1.1 400 "
    assert out.startswith(expected), out[:100]
    body = out.partition(b"\r\n\r\n")[2]
    assert body.count(b"\n") == 1 and b"Traceback" not in out
    # and the server still answers
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"GET /alive HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock, buf)[0] == 200


def test_oversized_headers_get_431(echo_server: ServerThread) -> None:
    sock = connect(echo_server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    out = read_until_closed(sock)
    assert out.startswith(b"HTTP/1.1 431 ")


def test_handler_crash_is_a_500_without_details(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = read_response(sock, buf)
    assert status == 500 and body == b"Internal error\n"
    # the same keep-alive connection keeps working
    sock.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock, buf)[0] == 200


def test_head_has_no_body(echo_server: ServerThread) -> None:
    sock, _buf = connect(echo_server), bytearray()
    sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.settimeout(5)
    data = b""
    while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"GET /g  "):
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length: 9" in first.lower() and rest.startswith(b"HTTP/1.1 200")


def test_connection_close_and_http10_close(echo_server: ServerThread) -> None:
    for raw in (b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n"):
        sock = connect(echo_server)
        sock.sendall(raw)
        out = read_until_closed(sock)  # returns only because the server closed
        assert out.startswith(b"HTTP/1.1 200") and b"connection: close" in out.lower()


def test_partial_request_times_out(echo_server: ServerThread) -> None:
    sock = connect(echo_server)
    start = time.monotonic()
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n")  # never finished
    assert read_until_closed(sock) == b""
    assert time.monotonic() - start < 4


def test_slow_drip_cannot_extend_the_read_deadline(echo_server: ServerThread) -> None:
    sock = connect(echo_server)
    start = time.monotonic()
    closed = False
    for ch in b"GET /drip HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 40:
        try:
            sock.sendall(bytes([ch]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        sock.settimeout(0.1)
        try:
            if sock.recv(1) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    assert closed and time.monotonic() - start < 4


def test_idle_keep_alive_connection_is_closed(echo_server: ServerThread) -> None:
    sock, buf = connect(echo_server), bytearray()
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock, buf)[0] == 200
    start = time.monotonic()
    assert read_until_closed(sock) == b""
    assert 0.5 < time.monotonic() - start < 4


def test_too_many_connections_from_one_client(echo_server: ServerThread) -> None:
    socks = [connect(echo_server) for _ in range(4)]
    for sock in socks:  # make sure all four are being served
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
    extra = connect(echo_server)
    assert read_until_closed(extra).startswith(b"HTTP/1.1 429 ")
    socks[0].close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot becomes usable
        sock = connect(echo_server)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            if read_response(sock, bytearray())[0] == 200:
                break
        except ConnectionError:
            pass
        assert time.monotonic() < deadline, "slot never freed"
