"""DNS load tooling shared by tests and benches: many instances registered over HTTP, distinct uncached
queries (DNS 0x20 case mixing), raw UDP/TCP exchanges that report wire sizes."""

from __future__ import annotations

import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import httpx


def instance_address(i: int) -> str:
    """Instance i's node address (10.1.x.y)."""
    return f"10.1.{i // 250}.{i % 250 + 1}"


def register_instances(http_addr: str, service: str, count: int, workers: int = 16) -> None:
    """`count` instances of `service`, each on its own node `<service>-node-NNNN`, via PUT /v1/catalog/register."""
    def one(client: httpx.Client, i: int) -> None:
        node = f"{service}-node-{i:04d}"
        body = {"Node": node, "Address": instance_address(i),
                "Service": {"ID": service, "Service": service, "Port": 8000 + i % 1000, "Tags": [f"t{i % 7}"]}}
        for _ in range(5):  # a write may meet a leader change right after start: retry a few times
            resp = client.put(f"{http_addr}/v1/catalog/register", json=body, timeout=30)
            if resp.status_code == 200:
                return
        raise AssertionError(f"register {node}: {resp.status_code} {resp.text}")

    with httpx.Client() as client, ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, client, i) for i in range(count)]:
            future.result()


def mixed_case(name: str, rng: random.Random) -> str:
    """The name with random letter case (DNS 0x20): same question, different bytes, so no cache hit."""
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def srv_query(name: str, rng: random.Random, payload: int | None = 4096) -> bytes:
    """A distinct SRV query for `name`: mixed case, random ID, EDNS0 with `payload` (None: no EDNS)."""
    query = dns.message.make_query(mixed_case(name, rng), "SRV", use_edns=0 if payload else None,
                                   payload=payload or 512)
    query.id = rng.randrange(1 << 16)
    return bytes(query.to_wire())


def udp_exchange(host: str, port: int, packet: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send one query over UDP; returns (reply wire, seconds taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        start = time.perf_counter()
        sock.sendto(packet, (host, port))
        while True:
            reply = sock.recv(65535)
            if reply[:2] == packet[:2]:
                return reply, time.perf_counter() - start


def tcp_exchange(host: str, port: int, packet: bytes, timeout: float = 5.0) -> bytes:
    """Send one length-prefixed query over TCP; returns the reply wire."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(packet)) + packet)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} bytes")
            buf += chunk
        return buf[2:]
