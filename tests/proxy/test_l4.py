"""L4 pipes (127.0.14.3): bytes both ways in order, backpressure bounds the buffers against a peer that does
not read, half-close in each direction, an error on one side resets the other; inbound L4 keeps a client
that floods before the local application answers within bounded memory."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from meshagent.proxy.dial import plain
from meshagent.proxy.l4 import PAUSE_AT, Pipe
from meshagent.proxy.stream import READ_SIZE, READS_PER_WAKE, Stream

from tests.support.dataplane_harness import Loop
from tests.support.wait import wait_for

HOST = "127.0.14.3"
SLACK = READ_SIZE * READS_PER_WAKE  # what one wake-up may add above the pause threshold


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on HOST (real TCP: buffers and FIN/RST behave as on the wire)."""
    with socket.create_server((HOST, 0)) as lst:
        a = socket.create_connection(lst.getsockname())
        b, _ = lst.accept()
    return a, b


class Piped:
    """client ⇄ [down Stream | Pipe | up Stream] ⇄ server: the test holds `client` and `server`."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.client, down_sock = tcp_pair()
        up_sock, self.server = tcp_pair()
        self.done: list[tuple[int, int]] = []
        self.reasons: list[str | None] = []

        def build() -> tuple[Stream, Stream, Pipe]:
            down, up = plain(loop.reactor, down_sock), plain(loop.reactor, up_sock)
            pipe = Pipe(down, up, lambda rx, tx: self.done.append((rx, tx)))
            pipe.start()
            return down, up, pipe

        self.down, self.up, self.pipe = loop.call(build)
        self.max_buffered = 0

    def sample(self) -> int:
        """The larger write buffer of the two streams now (read in the loop thread)."""
        size = self.loop.call(lambda: max(self.down.buffered(), self.up.buffered()))
        self.max_buffered = max(self.max_buffered, size)
        return size


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        assert chunk, f"EOF after {got} of {n} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_bytes_both_ways_in_order_and_half_close_each_way(loop: Loop) -> None:
    p = Piped(loop)
    p.client.sendall(b"request")
    assert read_exactly(p.server, 7) == b"request"
    p.client.shutdown(socket.SHUT_WR)  # the client is done sending …
    p.server.settimeout(10)
    assert p.server.recv(10) == b""  # … the server sees EOF …
    p.server.sendall(b"answer" * 1000)  # … and can still answer in full
    p.server.shutdown(socket.SHUT_WR)
    p.client.settimeout(10)
    got = b""
    while chunk := p.client.recv(65536):
        got += chunk
    assert got == b"answer" * 1000
    wait_for(lambda: p.done == [(7, 6000)], 10, what="both sides closed cleanly")
    p.client.close()
    p.server.close()


def test_server_side_half_close_first(loop: Loop) -> None:
    p = Piped(loop)
    p.server.sendall(b"banner")
    p.server.shutdown(socket.SHUT_WR)
    assert read_exactly(p.client, 6) == b"banner"
    p.client.settimeout(10)
    assert p.client.recv(10) == b""
    p.client.sendall(b"late words")
    assert read_exactly(p.server, 10) == b"late words"
    p.client.close()
    p.server.close()


def test_backpressure_bounds_the_buffers_against_a_peer_that_does_not_read(loop: Loop) -> None:
    p = Piped(loop)
    total = 10 * 1024 * 1024
    payload = bytes(range(256)) * (total // 256)
    sender = threading.Thread(target=p.client.sendall, args=(payload,), daemon=True)
    sender.start()
    # the server does not read: the pipe must stop reading the client near PAUSE_AT
    wait_for(lambda: p.sample() > PAUSE_AT // 2, 10, what="the upstream buffer fills")
    for _ in range(20):
        p.sample()
    assert p.max_buffered <= PAUSE_AT + SLACK
    assert sender.is_alive()  # the client is blocked by TCP, not buffered by us
    got = read_exactly(p.server, total)
    assert got == payload
    sender.join(10)
    assert p.max_buffered <= PAUSE_AT + SLACK
    p.client.close()
    p.server.close()


def test_a_reset_on_one_side_closes_the_other(loop: Loop) -> None:
    p = Piped(loop)
    p.client.sendall(b"x")
    assert read_exactly(p.server, 1) == b"x"
    p.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    p.server.close()  # RST
    p.client.settimeout(10)
    try:
        assert p.client.recv(10) == b""
    except ConnectionResetError:
        pass
    wait_for(lambda: len(p.done) == 1, 10, what="pipe done")
    assert loop.call(lambda: p.down.closed and p.up.closed)
    p.client.close()


def test_an_idle_pipe_is_closed_and_a_busy_one_is_not(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshagent.proxy.l4 as l4
    monkeypatch.setattr(l4, "IDLE_TIMEOUT_S", 0.4)
    monkeypatch.setattr(l4, "IDLE_CHECK_S", 0.1)
    idle, busy = Piped(loop), Piped(loop)
    deadline = threading.Event()
    for i in range(10):  # ~1 s of traffic on `busy`, one message every 0.1 s, nothing on `idle`
        busy.client.sendall(b"%d" % i)
        assert read_exactly(busy.server, len(b"%d" % i)) == b"%d" % i
        deadline.wait(0.1)  # pacing the traffic, not synchronising: the assertions below wait on conditions
    idle.client.settimeout(10)
    assert idle.client.recv(10) == b""  # closed by the proxy
    wait_for(lambda: idle.done and loop.call(lambda: idle.down.close_reason) == "idle-timeout", 10,
             what="idle pipe closed")
    assert not loop.call(lambda: busy.down.closed)
    for p in (idle, busy):
        p.client.close()
        p.server.close()


def test_linger_close_lets_a_still_sending_peer_read_the_answer(loop: Loop) -> None:
    client, server_sock = tcp_pair()
    stream = loop.call(lambda: plain(loop.reactor, server_sock))
    stop = threading.Event()

    def flood() -> None:  # a client still sending its (huge) request when the answer comes
        try:
            while not stop.is_set():
                client.sendall(b"a" * 65536)
        except OSError:
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()

    def answer() -> None:
        stream.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
        stream.linger_close(timeout_s=5.0)

    loop.call(answer)
    client.settimeout(10)
    got = b""
    while not got.endswith(b"\r\n\r\n"):
        chunk = client.recv(1024)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 431")
    assert client.recv(10) == b""  # then our side ends cleanly (FIN, not a reset)
    stop.set()
    client.shutdown(socket.SHUT_WR)
    wait_for(lambda: loop.call(lambda: stream.closed), 10, what="closed once the peer ended")
    assert loop.call(lambda: stream.close_reason) is None
    sender.join(10)
    client.close()
