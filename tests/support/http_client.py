"""Raw-socket HTTP/1.1 reading for tests that must see exactly what a server sent (framing, closes)."""

from __future__ import annotations

import socket


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """Read one response (content-length framed) from sock, keeping extra bytes in buf."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full response; got {bytes(buf)!r}")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        rest += data
    body, extra = rest[:length], rest[length:]
    buf[:] = extra
    return status, headers, body


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data
