"""A tiny application behind a sidecar, for the mesh acceptance suite: an HTTP/1.1 keep-alive server with
knobs, a plain TCP echo, and a control listener the test drives. Standard library only (asyncio), so it
runs as its own process inside a namespace host:

    ip netns exec <ns> python tests/support/mesh_apps.py --name web-1 --http 127.0.0.1:8080 \
        --echo 127.0.0.1:8081 --control 198.18.0.22:9080

Application paths (the mesh's traffic):
    /                   200, body "<name>\\n"
    /slow?ms=N          200 after N ms (at most 60 s)
    /status/<code>      that status code (100-599)
    /admin              200, body "admin <name>\\n" (what an L7 intention denies)
    anything, while failing is switched on: 500
Every answer carries `X-Instance: <name>` and `X-Path: <the request target as the app received it>` (what a
router's PrefixRewrite left of the path).
A burst of concurrent requests (printed as JSON), for circuit-breaker tests:
    python tests/support/mesh_apps.py burst --url http://127.0.0.1:9193/slow?ms=2000 -n 50
Control paths (on --control only, never through the mesh):
    /fail?on=1|0        switch answering 500 on or off
    /stats              JSON {"name", "served", "active", "max_active", "codes", "fail"}
    /served?since=&until=  JSON {"served": n}: mesh requests that arrived in [since, until) (CLOCK_MONOTONIC
                        seconds, the same clock in every namespace of the machine), so a test counts a window
                        exactly however late it asks
    /reset              zero the counters
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import sys
import time
from array import array
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 16 * 1024  # request line and headers
MAX_BODY = 1024 * 1024
MAX_SLOW_MS = 60_000
MAX_ARRIVALS = 2_000_000  # arrival stamps kept (16 MB)
REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


class App:
    """The state the knobs change and the counters the test reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fail = False
        self.served = 0
        self.active = 0
        self.max_active = 0
        self.codes: dict[str, int] = {}
        self.arrivals = array("d")  # monotonic arrival time of every mesh request (sorted: appended in order)

    def arrived(self) -> None:
        """Stamp one mesh request's arrival; the oldest half goes when the record is full (a test's traffic
        is far less than MAX_ARRIVALS)."""
        if len(self.arrivals) >= MAX_ARRIVALS:
            del self.arrivals[:MAX_ARRIVALS // 2]
        self.arrivals.append(time.monotonic())

    def served_between(self, since: float, until: float) -> int:
        """Mesh requests that arrived in [since, until)."""
        return bisect.bisect_left(self.arrivals, until) - bisect.bisect_left(self.arrivals, since)

    def stats(self) -> dict[str, object]:
        return {"name": self.name, "served": self.served, "active": self.active, "max_active": self.max_active,
                "codes": dict(self.codes), "fail": self.fail}

    def reset(self) -> None:
        self.served = 0
        self.max_active = self.active
        self.codes = {}

    async def app_answer(self, target: str) -> tuple[int, bytes]:
        """Status and body for a request through the mesh."""
        url = urlsplit(target)
        query = parse_qs(url.query)
        if self.fail:
            return 500, f"{self.name} failing\n".encode()
        if url.path == "/slow":
            ms = _int(query.get("ms", ["100"])[0], 0, MAX_SLOW_MS)
            await asyncio.sleep(ms / 1000)
            return 200, f"{self.name} slow {ms}\n".encode()
        if url.path.startswith("/status/"):
            return _int(url.path[len("/status/"):], 100, 599, 400), f"{self.name} status\n".encode()
        if url.path.startswith("/admin"):
            return 200, f"admin {self.name}\n".encode()
        return 200, f"{self.name}\n".encode()

    def control_answer(self, target: str) -> tuple[int, bytes]:
        """Status and body for a request to the control listener."""
        url = urlsplit(target)
        if url.path == "/fail":
            self.fail = parse_qs(url.query).get("on", ["1"])[0] == "1"
        elif url.path == "/reset":
            self.reset()
        elif url.path == "/served":
            query = parse_qs(url.query)
            try:
                since, until = float(query["since"][0]), float(query["until"][0])
            except (KeyError, ValueError):
                return 400, b"served needs since and until (monotonic seconds)\n"
            return 200, json.dumps({"served": self.served_between(since, until)}).encode()
        elif url.path != "/stats":
            return 404, b"unknown control path\n"
        return 200, json.dumps(self.stats()).encode()


def _int(text: str, low: int, high: int, default: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = default if default is not None else low
    return max(low, min(high, value))


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, lower-cased headers) of the next request; None at a clean end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ValueError("request cut short") from None
        return None
    except asyncio.LimitOverrunError:
        raise ValueError("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    headers[":version"] = parts[2]
    return parts[0], parts[1], headers


async def _serve_http(app: App, control: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            got = await _read_head(reader)
            if got is None:
                break
            method, target, headers = got
            length = _int(headers.get("content-length", "0"), 0, MAX_BODY)
            if length:
                await reader.readexactly(length)
            if control:
                code, body = app.control_answer(target)
            else:
                app.arrived()
                app.active += 1
                app.max_active = max(app.max_active, app.active)
                try:
                    code, body = await app.app_answer(target)
                finally:
                    app.active -= 1
                app.served += 1
                app.codes[str(code)] = app.codes.get(str(code), 0) + 1
            keep = headers.get("connection", "").lower() != "close" and headers[":version"] == "HTTP/1.1"
            if method == "HEAD":
                body_out = b""
            else:
                body_out = body
            writer.write(f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}\r\nContent-Type: text/plain\r\n"
                         f"Content-Length: {len(body)}\r\nX-Instance: {app.name}\r\nX-Path: {target}\r\n"
                         f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode() + body_out)
            await writer.drain()
            if not keep:
                break
    except (ValueError, ConnectionError, asyncio.IncompleteReadError):
        pass  # a broken client only loses its own connection
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _serve_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def main_async(args: argparse.Namespace) -> None:
    app = App(args.name)
    servers = []
    if args.http:
        h, p = _split(args.http)
        servers.append(await asyncio.start_server(lambda r, w: _serve_http(app, False, r, w), h, p,
                                                  limit=MAX_HEAD, backlog=1024, reuse_address=True))
    if args.echo:
        h, p = _split(args.echo)
        servers.append(await asyncio.start_server(_serve_echo, h, p, backlog=1024, reuse_address=True))
    if args.control:
        h, p = _split(args.control)
        servers.append(await asyncio.start_server(lambda r, w: _serve_http(app, True, r, w), h, p,
                                                  limit=MAX_HEAD, reuse_address=True))
    print(f"mesh_apps {args.name} listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def burst(url: str, n: int, timeout: float) -> list[dict[str, object]]:
    """`n` concurrent GETs of `url`, one connection each, started together: status, seconds, headers."""
    import http.client
    import threading
    import time

    parts = urlsplit(url)
    start = threading.Barrier(n)
    results: list[dict[str, object]] = [{} for _ in range(n)]

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        start.wait(timeout)
        t0 = time.monotonic()
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            resp.read()
            results[i] = {"code": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()}}
        except (OSError, http.client.HTTPException) as exc:
            results[i] = {"code": 0, "headers": {"x-error": repr(exc)}}
        finally:
            results[i]["seconds"] = time.monotonic() - t0
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["burst"]:
        p = argparse.ArgumentParser(prog="mesh_apps.py burst")
        p.add_argument("--url", required=True)
        p.add_argument("-n", type=int, default=50)
        p.add_argument("--timeout", type=float, default=30.0)
        a = p.parse_args(argv[1:])
        print(json.dumps(burst(a.url, max(1, min(a.n, 1000)), a.timeout)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http", help="host:port of the HTTP application")
    parser.add_argument("--echo", help="host:port of the TCP echo")
    parser.add_argument("--control", help="host:port of the control listener")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
