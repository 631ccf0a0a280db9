"""HTTP API benchmark: throughput of `GET /v1/health/service/db?passing` (100 instances) and the delay from
a KV write to the wake-up of 100 blocked queries.

    .venv/bin/python bench/http/run.py [--duration 10] [--connections 16] [--rounds 20]

Load generator: `wrk` (Debian package). If it is missing this script installs it with
`apt-get install -y wrk` first (needs root and the Debian mirror) and says so.

Reference, measured in the same run: a minimal trio + h11 keep-alive server answering the very same JSON
bytes (bench/http/serve.py ref). It is the floor of this stack (trio sockets + h11 framing, no routing,
no catalog, no JSON); the ratio api/ref is the cost of our API layer. A C server such as nginx would
measure wrk, not our code, on a 2-core box.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)
from wrk_tool import ensure_wrk, wrk_summary  # noqa: E402  (bench/wrk_tool.py)

PY = sys.executable
URL_PATH = "/v1/health/service/db?passing"


class Server:
    """A bench/http/serve.py subprocess, stopped by PID."""

    def __init__(self, mode: str, instances: int) -> None:
        self.proc = subprocess.Popen([PY, str(HERE / "serve.py"), mode, "--instances", str(instances)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            sys.exit(f"{mode} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_wrk(wrk: str, port: int, duration: int, connections: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}{URL_PATH}"
    # A short warm-up so the first measured second is not the process's cold start.
    subprocess.run([wrk, "-t1", f"-c{connections}", "-d1s", url], check=True, capture_output=True)
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    return wrk_summary(out)


# ---------------------------------------------------------------------- blocking wake-up


async def _read_response(stream: trio.SocketStream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head, re.I)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def _request(stream: trio.SocketStream, method: str, target: str, body: bytes = b"") -> bytes:
    await stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
                          .encode() + body)
    return await _read_response(stream)


async def wakeup_rounds(port: int, waiters: int, rounds: int) -> tuple[list[float], list[float]]:
    """Per round: park `waiters` blocking GETs on one key, write it, time every wake-up from the write."""
    delays: list[float] = []
    writes: list[float] = []
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(waiters)]
    control = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        for r in range(rounds):
            resp = await _request(control, "PUT", "/v1/kv/bench/key", f"round {r}".encode())
            assert resp.startswith(b"HTTP/1.1 200"), resp[:80]
            head = await _request(control, "GET", "/v1/kv/bench/key")
            index = int(re.search(rb"x-consul-index: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            arrivals: list[float] = []

            async def waiter(stream: trio.SocketStream, arrivals: list[float] = arrivals) -> None:
                resp = await _read_response(stream)
                arrivals.append(time.perf_counter())
                assert resp.startswith(b"HTTP/1.1 200"), resp[:80]

            async with trio.open_nursery() as nursery:
                target = f"/v1/kv/bench/key?index={index}&wait=60s".encode()
                for stream in streams:
                    await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
                    nursery.start_soon(waiter, stream)
                with trio.fail_after(10):  # all parked, by the server's own count
                    while True:
                        waiting = await _request(control, "GET", "/bench/waiting")
                        if int(waiting.rpartition(b"\r\n\r\n")[2] or b"0") >= waiters:
                            break
                        await trio.sleep(0.01)
                t0 = time.perf_counter()
                await _request(control, "PUT", "/v1/kv/bench/key", b"changed")
                writes.append(time.perf_counter() - t0)
            delays.extend(a - t0 for a in arrivals)
    finally:
        for stream in [*streams, control]:
            await stream.aclose()
    return delays, writes


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--waiters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine_info()}")
    wrk = ensure_wrk()
    print(f"load generator: {subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.splitlines()[0]}"
          f"  (-t1 -c{args.connections} -d{args.duration}s, keep-alive)")

    results = {}
    for mode in ("api", "ref"):
        server = Server(mode, args.instances)
        try:
            results[mode] = run_wrk(wrk, server.port, args.duration, args.connections)
            if mode == "api":
                delays, writes = trio.run(wakeup_rounds, server.port, args.waiters, args.rounds)
        finally:
            server.stop()
    api, ref = results["api"], results["ref"]
    ratio = float(api["rps"]) / float(ref["rps"])
    print(f"\nGET {URL_PATH}  ({args.instances} instances, all passing)")
    print(f"  meshagent API      : {float(api['rps']):9.0f} req/s   p50 {api['50%']:>8}  p99 {api['99%']:>8}"
          f"   errors: {api['errors']}")
    print(f"  reference (h11)    : {float(ref['rps']):9.0f} req/s   p50 {ref['50%']:>8}  p99 {ref['99%']:>8}"
          f"   errors: {ref['errors']}")
    print(f"  ratio api/reference: {ratio:.2f}")
    print(f"\nKV write -> wake-up of {args.waiters} blocked GET /v1/kv/bench/key?index= "
          f"({args.rounds} rounds, {len(delays)} wake-ups)")
    print(f"  wake-up delay p50 {pct(delays, 50) * 1000:.2f} ms   p99 {pct(delays, 99) * 1000:.2f} ms   "
          f"max {max(delays) * 1000:.2f} ms")
    print(f"  the write itself (PUT round trip) median {statistics.median(writes) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
