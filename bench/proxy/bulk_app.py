"""The bulk application of the proxy benchmark: `GET /bulk` answers SIZE bytes with `os.sendfile` from a memfd
(the kernel copies, not Python), any other path a small 200; HTTP/1.1 keep-alive, a thread per connection.

    python bench/proxy/bulk_app.py HOST PORT SIZE

Prints `READY` once listening. Request heads over 16 KiB close the connection.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

MAX_HEAD = 16 * 1024
SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def make_body(size: int) -> int:
    """A memfd holding `size` bytes (a random MiB repeated: no run of zeros a layer could shortcut)."""
    fd = os.memfd_create("bench-bulk")
    chunk = os.urandom(1 << 20)
    left = size
    while left > 0:
        left -= os.write(fd, chunk[:left])
    return fd


def serve(conn: socket.socket, body_fd: int, size: int) -> None:
    """Answer every request on `conn` until the peer closes or asks to."""
    head_bulk = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data or len(buf) + len(data) > MAX_HEAD:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            if head.startswith(b"GET /bulk "):
                conn.sendall(head_bulk)
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), body_fd, offset, size - offset)
            else:
                conn.sendall(SMALL)
            if b"\nconnection: close" in head.lower():
                return


def main() -> None:
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    body_fd = make_body(size)
    listener = socket.create_server((host, port), backlog=512)
    print("READY", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_guarded, args=(conn, body_fd, size), daemon=True).start()


def _guarded(conn: socket.socket, body_fd: int, size: int) -> None:
    try:
        serve(conn, body_fd, size)
    except OSError:  # the peer went away mid-answer: its problem, not the app's
        pass


if __name__ == "__main__":
    main()
