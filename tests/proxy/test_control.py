"""The control protocol: framing as hostile input, the worker's reactor channel, and a real worker process
spoken to over its control socket (ready, refused snapshots, metrics, stop, EOF, bad frames)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import msgpack
import pytest
from meshagent.proxy.control import MAX_FRAME, ControlError, FrameDecoder, ReactorChannel, decode_body, encode

from tests.support.dataplane_harness import ControlledWorker, Loop, pid_alive
from tests.support.wait import wait_for


def frame_of(obj: object) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def test_frames_decode_whole_split_and_batched() -> None:
    msgs = [{"t": "metrics"}, {"t": "applied", "version": 7, "errors": ["a", "b"]}, {"t": "snapshot", "s": {"x": 1}}]
    data = b"".join(encode(m) for m in msgs)
    assert FrameDecoder().feed(data) == msgs
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):  # one byte at a time
        got += dec.feed(data[i:i + 1])
    assert got == msgs and dec.pending() == 0


@pytest.mark.parametrize(("frame", "error"), [
    (struct.pack(">I", MAX_FRAME + 1), "over the"),
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "undecodable"),
    (struct.pack(">I", 1) + b"\x05", "not a map"),
    (frame_of({"t": 5}), "unknown message type"),
    (frame_of({"t": "nope"}), "unknown message type"),
    (frame_of({1: 2}), "undecodable"),  # non-string map keys refused
])
def test_bad_frames_raise_control_error(frame: bytes, error: str) -> None:
    with pytest.raises(ControlError, match=error):
        FrameDecoder().feed(frame)


def test_an_announced_huge_frame_is_refused_before_it_arrives() -> None:
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(ControlError):
        dec.feed(struct.pack(">I", 2048))


def test_encode_refuses_an_oversized_message() -> None:
    with pytest.raises(ControlError):
        encode({"t": "metrics", "m": "x" * (MAX_FRAME + 1)})
    assert decode_body(msgpack.packb({"t": "stop"})) == {"t": "stop"}


# ---------------------------------------------------------------------- the reactor channel


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def test_channel_round_trips_large_messages_and_reports_eof(loop: Loop) -> None:
    ours, theirs = socket.socketpair()
    got: list[dict] = []
    closed: list[str] = []
    box: list[ReactorChannel] = []
    loop.call(lambda: box.append(ReactorChannel(loop.reactor, theirs, got.append, closed.append)))
    big = {"t": "metrics", "m": "y" * (3 * 1024 * 1024)}  # more than a socket buffer: partial writes
    loop.call(lambda: box[0].send(big))
    ours.settimeout(10)
    dec = FrameDecoder()
    received: list[dict] = []
    while not received:
        received += dec.feed(ours.recv(1 << 20))
    assert received == [big]
    ours.sendall(encode({"t": "stop"}) + encode({"t": "metrics"}))
    wait_for(lambda: len(got) == 2, what="two messages")
    assert got == [{"t": "stop"}, {"t": "metrics"}]
    ours.close()
    wait_for(lambda: closed, what="close on EOF")
    assert closed == ["control channel closed by the supervisor"] and box[0].closed


def test_channel_closes_on_a_bad_frame(loop: Loop) -> None:
    ours, theirs = socket.socketpair()
    got: list[dict] = []
    closed: list[str] = []
    loop.call(lambda: ReactorChannel(loop.reactor, theirs, got.append, closed.append))
    ours.sendall(encode({"t": "metrics"}) + struct.pack(">I", 3) + b"\xc1\xc1\xc1" + encode({"t": "stop"}))
    wait_for(lambda: closed, what="close on a bad frame")
    assert got == [{"t": "metrics"}] and closed[0].startswith("bad control frame")
    ours.settimeout(5)
    assert ours.recv(10) == b""  # the worker's end is closed


# ---------------------------------------------------------------------- a real worker process


class WorkerProc(ControlledWorker):
    """A worker process under our control socket (the test plays the supervisor)."""

    def wait(self) -> int:
        return self.proc.wait(20)

    def stderr(self) -> str:
        """The worker's log (after it exited)."""
        return self.proc.stderr.read().decode()  # type: ignore[union-attr]


@pytest.fixture
def worker() -> Iterator[WorkerProc]:
    w = WorkerProc()
    yield w
    w.close()


def test_worker_says_ready_refuses_hostile_snapshots_answers_metrics_and_stops(worker: WorkerProc) -> None:
    ready = worker.recv()
    assert ready["t"] == "ready" and ready["pid"] == worker.proc.pid
    worker.send({"t": "metrics"})
    assert worker.recv() == {"t": "metrics", "m": {}}  # nothing applied yet
    worker.send({"t": "snapshot", "s": {"proxy_id": "x", "version": 9, "public_port": "nope"}})
    applied = worker.recv()
    assert applied["t"] == "applied" and applied["version"] == 9
    assert len(applied["errors"]) == 1 and "snapshot refused" in applied["errors"][0]
    worker.send({"t": "snapshot", "s": ["not", "a", "map"]})
    applied = worker.recv()
    assert applied["version"] == -1 and "expected a map" in applied["errors"][0]
    worker.send({"t": "stop"})
    assert worker.wait() == 0


def test_worker_exits_when_the_supervisor_is_gone(worker: WorkerProc) -> None:
    assert worker.recv()["t"] == "ready"
    worker.sock.close()
    assert worker.wait() == 0


def test_worker_exits_on_a_bad_frame_and_says_why(worker: WorkerProc) -> None:
    assert worker.recv()["t"] == "ready"
    worker.sock.sendall(struct.pack(">I", MAX_FRAME + 1))
    assert worker.wait() == 1
    assert "bad control frame" in worker.stderr()


def test_worker_dies_with_its_parent() -> None:
    """PR_SET_PDEATHSIG: a worker whose parent is SIGKILLed exits although its control socket stays open
    (this test holds the supervisor's end, so no EOF reaches the worker)."""
    ours, theirs = socket.socketpair()
    r, w = os.pipe()
    code = (
        "import os, subprocess, sys\n"
        "fd = int(sys.argv[1])\n"
        "p = subprocess.Popen([sys.executable, '-m', 'meshagent.proxy.worker', '--control-fd', str(fd)],"
        " pass_fds=(fd,))\n"
        "os.close(fd)\n"
        f"os.write({w}, str(p.pid).encode())\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(w, theirs.fileno()),
                              stdin=subprocess.PIPE)
    os.close(w)
    theirs.close()
    pid = 0
    try:
        pid = int(os.read(r, 32))
        ours.settimeout(20)
        assert FrameDecoder().feed(ours.recv(1024))[0]["t"] == "ready"
        holder.kill()
        holder.wait()
        wait_for(lambda: not pid_alive(pid), timeout=30, what=f"worker {pid} gone after its parent died")
    finally:
        os.close(r)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if pid and pid_alive(pid):
            os.kill(pid, 9)
        ours.close()


def test_worker_outlives_the_thread_that_spawned_it() -> None:
    """The kernel sends the parent-death signal when the spawning *thread* exits (trio spawns from its
    thread cache, whose threads end when idle): the worker must stay while its parent process lives."""
    ours, theirs = socket.socketpair()
    box: list[subprocess.Popen[bytes]] = []
    tids: list[int] = []
    release = threading.Event()

    def spawn() -> None:  # lives until the worker has armed its parent-death signal, as trio's threads do
        tids.append(threading.get_native_id())
        box.append(subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--control-fd",
                                     str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL))
        release.wait(30)
    thread = threading.Thread(target=spawn)
    thread.start()
    wait_for(lambda: box, what="the worker spawned")
    theirs.close()
    proc = box[0]
    try:
        ours.settimeout(20)
        dec = FrameDecoder()
        got = dec.feed(ours.recv(65536))
        assert got[0]["t"] == "ready"  # sent after prctl(PR_SET_PDEATHSIG)
        release.set()
        thread.join()
        wait_for(lambda: not os.path.exists(f"/proc/self/task/{tids[0]}"), what="the spawning thread reaped")
        for _ in range(2):  # two round trips after the thread is gone: any signal has been handled
            ours.sendall(encode({"t": "metrics"}))
            while not [m for m in got if m["t"] == "metrics"]:
                data = ours.recv(65536)
                assert data, "the worker exited when its parent thread did"
                got += dec.feed(data)
            got = [m for m in got if m["t"] != "metrics"]
        assert proc.poll() is None
    finally:
        ours.close()
        assert proc.wait(20) == 0  # EOF: a clean exit
