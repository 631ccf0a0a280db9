"""Forwarding questions outside our domain to the configured recursors, concurrently and within bounds.

Each forwarded query is its own task (the UDP loop never waits on an upstream), each upstream try has
dns_config.recursor_timeout, and at most `limit` queries are upstream at once: beyond, SERVFAIL at once.
"""

from __future__ import annotations

import logging

import dns.flags
import dns.message
import dns.rcode
import trio

log = logging.getLogger("meshagent.dns")


class Forwarder:
    """Asks recursors in order (Consul's `sequential` strategy); NOERROR or NXDOMAIN ends the search."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0  # queries answered SERVFAIL because `limit` were already upstream

    async def forward(self, packet: bytes, query: dns.message.Message, recursors: list[str], timeout: float,
                      max_size: int) -> bytes:
        """The upstream answer (TC and no records when it exceeds max_size), or SERVFAIL with RA set."""
        if self.in_flight >= self.limit:
            self.refused += 1
            return _servfail(query, max_size)
        self.in_flight += 1
        try:
            for recursor in recursors:
                host, _, port = recursor.rpartition(":") if recursor.count(":") == 1 else (recursor, "", "53")
                try:
                    reply = await _ask(host, int(port or 53), packet, timeout)
                except (OSError, ValueError, trio.TooSlowError) as exc:
                    log.debug("recursor %s failed: %s", recursor, exc)
                    continue
                if len(reply) >= 12 and (reply[3] & 0x0F) in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    return reply if len(reply) <= max_size else _truncated(query, reply)
        finally:
            self.in_flight -= 1
        return _servfail(query, max_size)


def _servfail(query: dns.message.Message, max_size: int) -> bytes:
    resp = dns.message.make_response(query, recursion_available=True)
    resp.set_rcode(dns.rcode.SERVFAIL)
    return bytes(resp.to_wire(max_size=max_size))


def _truncated(query: dns.message.Message, reply: bytes) -> bytes:
    """No records, TC set: an upstream answer never leaves us larger than the client may get over UDP."""
    resp = dns.message.make_response(query, recursion_available=True)
    resp.flags |= dns.flags.TC
    resp.set_rcode(dns.rcode.Rcode.make(reply[3] & 0x0F))
    return bytes(resp.to_wire())


async def _ask(host: str, port: int, packet: bytes, timeout: float) -> bytes:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        with trio.fail_after(timeout):
            await sock.connect((host, port))
            await sock.send(packet)
            while True:
                reply = await sock.recv(65535)
                if reply[:2] == packet[:2]:
                    return reply
