"""Seeded HTTP fuzzing: random and mutated requests over raw sockets, with per-response invariants."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from urllib.parse import quote

PATHS = [
    "/v1/agent/self", "/v1/agent/members", "/v1/agent/services", "/v1/agent/checks",
    "/v1/agent/service/web", "/v1/agent/health/service/name/web", "/v1/agent/health/service/id/web",
    "/v1/catalog/services", "/v1/catalog/service/web", "/v1/catalog/nodes", "/v1/catalog/node/n1",
    "/v1/catalog/datacenters", "/v1/health/service/web", "/v1/health/checks/web", "/v1/health/node/n1",
    "/v1/health/state/any", "/v1/health/state/critical", "/v1/kv/fuzz/a", "/v1/kv/fuzz/", "/v1/kv/",
    "/v1/status/leader", "/v1/status/peers", "/v1/agent/check/pass/nope", "/v1/agent/service/deregister/nope",
    "/v1/agent/maintenance", "/v1/agent/service/maintenance/nope", "/v1/agent/check/update/nope",
    "/v1/agent/service/register", "/v1/agent/check/register", "/", "/v1", "/v1/", "/ui/", "/v1/kv",
]
PARAMS = [
    "index=1&wait=10ms", "index=999999", "index=-1", "index=abc", "wait=10ms", "wait=1x", "wait=", "stale",
    "consistent", "pretty", "passing", "passing=false", "passing=maybe", "tag=primary", "recurse", "keys",
    "separator=/",
    "raw", "cas=0", "cas=1", "cas=x", "flags=3", "flags=18446744073709551616", "dc=dc1", "dc=zz",
    "filter=" + quote("Service.Service == web"), "filter=" + quote('"a" in Service.Tags'),
    "filter=" + quote("((("), "filter=" + quote("Checks.Status != passing or not Node.Meta.x == y"),
    "filter=" + quote("ServiceName == web"), "node-meta=rack:r1", "node-meta=bad", "enable=true",
    "enable=false", "enable=perhaps", "reason=x", "note=hi", "replace-existing-checks", "format=text",
    "%ff=%fe", "a=%zz", "&&&", "=",
]
METHODS = ["GET", "GET", "GET", "PUT", "PUT", "DELETE", "POST", "HEAD", "OPTIONS", "PATCH", "BREW", "get"]
BODIES = [b"", b"value", b"{}", b'{"Name": "web"}', b'{"Name": 1}', b"[]", b"null", b'{"Status": "passing"}',
          b'{"Name": "fz", "Check": {"TTL": "10s"}}', b"\xff\xfe", b"{" * 50, b'{"Name": "' + b"x" * 300 + b'"}']
ALLOWED_STATUS = {100, 200, 400, 404, 405, 413, 429, 431, 503, 505}


def valid_request(rng: random.Random, tokens: tuple[bytes, ...] = (), paths: list[str] = PATHS) -> bytes:
    method = rng.choice(METHODS)
    path = rng.choice(paths)
    query = "&".join(rng.sample(PARAMS, rng.randint(0, 3)))
    target = path + ("?" + query if query else "")
    body = rng.choice(BODIES)
    headers = [b"Host: fuzz"]
    if rng.random() < 0.2:
        body_bytes = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:3], body[3:]) if c) + b"0\r\n\r\n"
        headers.append(b"Transfer-Encoding: chunked")
    else:
        body_bytes = body
        if body or method in ("PUT", "POST"):
            headers.append(b"Content-Length: %d" % len(body))
    if rng.random() < 0.1:
        headers.append(b"X-Consul-Token: " + bytes(rng.randrange(33, 127) for _ in range(8)))
    if tokens and rng.random() < 0.7:  # ACL runs: a token from the caller's set, as a header or ?token=
        token = rng.choice(tokens)
        if rng.random() < 0.7:
            headers.append(b"X-Consul-Token: " + token)
        else:
            target += ("&" if "?" in target else "?") + "token=" + token.decode()
    return f"{method} {target} HTTP/1.1\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n" + body_bytes


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # insert random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:  # truncate
            del buf[pos:]
        elif op == 3:  # duplicate a slice
            end = min(len(buf), pos + rng.randint(1, 40))
            buf[pos:pos] = buf[pos:end]
        elif op == 4:  # inject a header line
            buf[pos:pos] = rng.choice([b"\r\nContent-Length: 99999999\r\n", b"\r\nTransfer-Encoding: chunked\r\n",
                                       b"\r\nContent-Length: 5\r\nContent-Length: 6\r\n", b"\r\n: empty\r\n",
                                       b"\r\nExpect: 100-continue\r\n", b"\r\nConnection: close\r\n"])
        elif op == 5:  # special characters in the target
            buf[pos:pos] = rng.choice([b"%", b"%00", b"%c3%28", b"..", b"//", b" ", b"?", b"#", b"\t", b"\x00"])
        elif op == 6:  # long junk
            buf[pos:pos] = bytes([rng.choice(b"aZ/?=&%.")]) * rng.randint(100, 20000)
        else:  # delete a slice
            del buf[pos:pos + rng.randint(1, 20)]
    return bytes(buf)


def random_junk(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def case(rng: random.Random, tokens: tuple[bytes, ...] = (), paths: list[str] = PATHS) -> bytes:
    """One connection's worth of bytes: 1-3 requests, valid, mutated or junk."""
    parts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        r = rng.random()
        if r < 0.45:
            parts.append(valid_request(rng, tokens, paths))
        elif r < 0.92:
            parts.append(mutate(rng, valid_request(rng, tokens, paths)))
        else:
            parts.append(random_junk(rng))
    return b"".join(parts)


@dataclass
class FuzzReport:
    """What the fuzz run saw."""

    cases: int = 0
    responses: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _responses(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Split a byte stream of content-length framed responses (HEAD responses have no body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"incomplete response head: {data[:80]!r}")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 "):
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if status == 100:
            length = 0
        # A HEAD answer announces a length but carries no body: if what follows is another status line,
        # treat this one as bodiless.
        if rest[:9] == b"HTTP/1.1 " and length and not rest[length:length + 9].startswith(b"HTTP/1.1 ") \
                and len(rest) != length:
            length = 0
        out.append((status, head, rest[:length]))
        data = rest[length:]
    return out


def run_fuzz(host: str, port: int, seed: int, count: int, timeout: float = 10.0, *, tokens: tuple[bytes, ...] = (),
             paths: list[str] = PATHS, allowed: frozenset[int] | set[int] = ALLOWED_STATUS) -> FuzzReport:
    """Send `count` fuzz requests (in fewer connections) and check every answer's invariants. ACL runs pass
    `tokens` (presented on most requests), more `paths` and 403 among the `allowed` statuses."""
    rng = random.Random(seed)
    report = FuzzReport()
    sent = 0
    while sent < count:
        data = case(rng, tokens, paths)
        n_requests = max(1, data.count(b" HTTP/1.1\r\n"))
        sent += n_requests
        report.cases += 1
        with socket.create_connection((host, port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may close early (413, 431) while we are still sending
            received = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                except TimeoutError:
                    report.problems.append(f"case {report.cases}: no answer within {timeout}s to {data[:120]!r}")
                    break
                if not chunk:
                    break
                received += chunk
        if b"Traceback" in received or b'File "' in received:
            report.problems.append(f"case {report.cases}: traceback text in response to {data[:120]!r}")
        try:
            responses = _responses(received)
        except ValueError as exc:
            report.problems.append(f"case {report.cases}: unparseable answer ({exc}) to {data[:120]!r}")
            continue
        for status, _head, body in responses:
            report.responses += 1
            report.statuses[status] = report.statuses.get(status, 0) + 1
            # Consul answers an unknown ?dc= with 500 "No path to datacenter" (bodiless for HEAD).
            no_dc = status == 500 and (body == b"No path to datacenter\n" or (
                body == b"" and b"HEAD " in data and b"dc=" in data))
            if status not in allowed and not no_dc:
                report.problems.append(f"case {report.cases}: status {status} {body[:100]!r} for {data[:160]!r}")
            # agent/health answers 429/503 with a JSON body (pretty-printed with ?pretty): not an error text.
            if status >= 400 and body.count(b"\n") > 1 and not body.lstrip().startswith((b"[", b"{")):
                report.problems.append(f"case {report.cases}: multi-line error body {body[:200]!r}")
    return report
