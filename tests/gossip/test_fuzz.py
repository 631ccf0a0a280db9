"""100,000 random and mutated packets at a live agent: it keeps running and its member view is unchanged."""

from __future__ import annotations

import random
import socket
import struct
import zlib
from collections.abc import Callable

import httpx
import pytest
from meshagent.gossip import messages as m
from meshagent.gossip.wire import add_crc, make_compound

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for

PACKETS = 100_000


def _seeds(target: str) -> list[bytes]:
    """Valid packets that do not change membership when delivered intact: probes, acks, user messages."""
    addr = socket.inet_aton("127.0.0.1")
    ping = m.encode(m.Ping(7, target, addr, 9, "fuzzer"))
    indirect = m.encode(m.IndirectPing(8, addr, 9, "nobody", True, addr, 9, "fuzzer"))
    ack, nack = m.encode(m.AckResp(7, b"x")), m.encode(m.NackResp(8))
    serf_event = bytes([m.MessageType.USER, 3]) + b"\x84\xa5LTime\x01\xa4Name\xa1e\xa7Payload\xa1p\xa2CC\xc2"
    stale_dead = m.encode(m.Dead(0, "nobody-known", "fuzzer"))
    return [ping, indirect, ack, nack, serf_event, stale_dead, make_compound([ping, ack]), add_crc(ping),
            add_crc(make_compound([nack, serf_event]))]


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    choice = rng.randrange(6)
    if choice == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:
        data = data[:rng.randrange(len(data) + 1)]  # truncated
    elif choice == 2:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif choice == 3:
        data = bytearray([rng.choice([14, 15, 99, 255])]) + data[1:]  # unknown type
    elif choice == 4:
        data = bytearray(bytes([m.MessageType.COMPRESS])) + bytes(rng.randrange(256) for _ in range(40))
    else:
        # A CRC header that lies, or a compound whose length table lies.
        data = bytearray(bytes([m.MessageType.HAS_CRC]) + struct.pack(">I", zlib.crc32(data) ^ 1) + data)
    return bytes(data)


@pytest.mark.slow
def test_fuzzed_packets_change_nothing(agent_factory: Callable[..., AgentProcess]) -> None:
    target = agent_factory(node="fuzz-target")
    peer = agent_factory("-retry-join", target.host, node="fuzz-peer")

    def view() -> dict[str, int]:
        return {x["Name"]: x["Status"] for x in httpx.get(f"{target.http_addr}/v1/agent/members", timeout=5).json()}

    wait_for(lambda: view() == {"fuzz-target": 1, "fuzz-peer": 1}, 20, what="the two agents to see each other")
    rng = random.Random(20261125)
    seeds = _seeds("fuzz-target")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sent = 0
    try:
        for i in range(PACKETS):
            if i % 3 == 0:
                data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
            else:
                data = _mutate(rng, rng.choice(seeds))
            sock.sendto(data, (target.host, 8301))
            sent += 1
            if i % 2000 == 0:  # let the agent keep up, so the packets are processed rather than dropped
                httpx.get(f"{target.http_addr}/v1/agent/members", timeout=10)
    finally:
        sock.close()
    assert sent == PACKETS
    assert target.proc is not None and target.proc.poll() is None, target.log()
    assert view() == {"fuzz-target": 1, "fuzz-peer": 1}
    stats = httpx.get(f"{target.http_addr}/v1/agent/self", timeout=5).json()["Stats"]["serf_lan"]
    assert int(stats["bad_packets"]) > PACKETS // 3
    assert "Traceback" not in target.log()
    assert peer.proc is not None and peer.proc.poll() is None
