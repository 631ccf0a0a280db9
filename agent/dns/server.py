"""DNS responder on UDP and TCP: a response cache in front of the resolver, and a socket-draining UDP loop.

A full dnspython parse and build costs ~0.5 ms; the cache (keyed on the packet after its ID, flushed when the
catalog index moves) answers repeat questions by patching the 2-byte ID into stored bytes. Each wake-up of
the UDP loop drains every queued datagram before sleeping again.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import trio

from ..config.types import AgentConfig
from ..store import CatalogStore
from .resolve import Answer, CatalogRef, OutsideDomain, Resolver, build_response

log = logging.getLogger("meshagent.dns")

PLAIN_UDP_MAX = 512
TCP_MAX = 65535
VARIANTS = 4  # cached shuffles per question
CACHE_MAX = 10_000
TCP_IDLE = 10.0


@dataclass(slots=True)
class DNSStats:
    """Counters, exported by /v1/agent/metrics."""

    queries: int = 0
    stale_queries: int = 0  # answered from a client's catalog replica while no server fed it
    cache_hits: int = 0
    formerr: int = 0
    dropped: int = 0
    servfail: int = 0
    recursed: int = 0


@dataclass(slots=True)
class _Cached:
    variants: list[bytes]
    next: int = 0
    hits: int = field(default=0)


class DNSServer:
    """Serves the catalog over DNS on (client_addr, ports.dns); `bound_port` is set once listening."""

    def __init__(self, config: AgentConfig, store: CatalogStore) -> None:
        self.config = config
        self.store = store
        self.resolver = Resolver(config, CatalogRef(store))
        self.stats = DNSStats()
        self.bound_port: int | None = None
        self._cache: dict[bytes, _Cached] = {}
        self._cache_index = -1

    # ------------------------------------------------------------------ sockets

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind UDP and TCP on the same port (0 picks one), report it, and serve until cancelled."""
        host, port = self.config.client_addr, self.config.ports.dns
        udp, tcp = self._bind_pair(host, port)
        self.bound_port = udp.getsockname()[1]
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_loop, udp)
                nursery.start_soon(trio.serve_listeners, self._tcp_conn, [listener])
                log.info("DNS listening on %s:%d (udp, tcp)", host, self.bound_port)
                task_status.started(self.bound_port)
        finally:
            udp.close()

    @staticmethod
    def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.setblocking(False)
            try:
                udp.bind((host, port))
                chosen = udp.getsockname()[1]
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, chosen))
                tcp.listen(128)
                return udp, tcp
            except OSError as exc:
                udp.close()
                if port != 0 or exc.errno != errno.EADDRINUSE:
                    raise OSError(exc.errno, f"DNS cannot listen on {host}:{port}: {exc.strerror}") from None
        raise OSError(errno.EADDRINUSE, f"DNS found no free port pair on {host}")

    async def _udp_loop(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    packet, addr = sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # e.g. ICMP errors surfaced on the socket; nothing to answer
                reply = self._answer_cached(packet, tcp=False)
                if reply is None:
                    reply = await self._answer_slow(packet, tcp=False)
                if reply:
                    try:
                        sock.sendto(reply, addr)
                    except OSError:
                        self.stats.dropped += 1  # full send buffer: UDP may drop, the client retries

    async def _tcp_conn(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                    with trio.move_on_after(TCP_IDLE) as idle:
                        data = await stream.receive_some(65536)
                    if idle.cancelled_caught or not data:
                        return
                    buf += data
                size = struct.unpack("!H", buf[:2])[0]
                packet, buf = buf[2:2 + size], buf[2 + size:]
                reply = self._answer_cached(packet, tcp=True) or await self._answer_slow(packet, tcp=True)
                if reply is None:
                    return
                await stream.send_all(struct.pack("!H", len(reply)) + reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            await stream.aclose()

    # ------------------------------------------------------------------ answering

    def _answer_cached(self, packet: bytes, tcp: bool) -> bytes | None:
        """The fast path: a stored answer for the same question bytes, with this query's ID."""
        self.stats.queries += 1
        if len(packet) < 12:
            self.stats.dropped += 1
            return b""  # too short to answer at all: drop (b"" is falsy but not None)
        if self.store.stale_since is not None and self._too_stale():
            return self._error_reply(packet, dns.rcode.SERVFAIL)
        if not getattr(self.store.replicator, "caught_up", True):
            # A server not caught up with a leader since it started may hold an empty or older catalog:
            # no NXDOMAIN or empty answer from it as if authoritative (issue 11).
            self.stats.servfail += 1
            return self._error_reply(packet, dns.rcode.SERVFAIL)
        index = self.store.catalog.last_index
        if index != self._cache_index:
            self._cache.clear()
            self._cache_index = index
        entry = self._cache.get((b"T" if tcp else b"U") + packet[2:])
        if entry is None:
            return None
        self.stats.cache_hits += 1
        wire = entry.variants[entry.next]
        entry.next = (entry.next + 1) % len(entry.variants)
        return packet[:2] + wire[2:]

    def _too_stale(self) -> bool:
        """A client whose replica lost its server answers from it for up to dns_config.max_stale (counted);
        after that, SERVFAIL says the data can no longer be vouched for."""
        assert self.store.stale_since is not None
        if trio.current_time() - self.store.stale_since > self.config.dns_config.max_stale:
            self.stats.servfail += 1
            return True
        self.stats.stale_queries += 1
        return False

    async def _answer_slow(self, packet: bytes, tcp: bool) -> bytes | None:
        try:
            return await self._answer(packet, tcp)
        except Exception:
            log.exception("DNS query failed; answering SERVFAIL")
            self.stats.servfail += 1
            return self._error_reply(packet, dns.rcode.SERVFAIL)

    def _error_reply(self, packet: bytes, rcode: int) -> bytes | None:
        """A header-only reply (same ID, QR set) for packets we cannot parse."""
        if len(packet) < 12:
            return None
        ident, flags = struct.unpack("!HH", packet[:4])
        flags = 0x8000 | (flags & 0x7900) | rcode  # QR, keep opcode + RD
        return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)

    async def _answer(self, packet: bytes, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(packet)
        except (dns.exception.DNSException, ValueError, IndexError, struct.error, UnicodeError):
            self.stats.formerr += 1
            return self._error_reply(packet, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR:
            self.stats.dropped += 1
            return None  # a response sent to us: never answer (reflection loops)
        if query.opcode() != dns.opcode.QUERY:
            return self._error_reply(packet, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            self.stats.formerr += 1
            return self._error_reply(packet, dns.rcode.FORMERR)
        question = query.question[0]
        max_size = TCP_MAX if tcp else max(PLAIN_UDP_MAX, query.payload if query.edns >= 0 else PLAIN_UDP_MAX)
        try:
            ans = self.resolver.resolve(question.name, question.rdtype)
        except OutsideDomain:
            return await self._recurse(packet, query, max_size)
        recursion = bool(self.config.recursors)
        if not tcp and query.edns < 0 and len(ans.answer) > self.config.dns_config.udp_answer_limit > 0:
            # Consul's non-EDNS UDP answer limit; TC tells the client to ask again over TCP.
            wire, _ = build_response(query, _limited(ans, self.config.dns_config.udp_answer_limit),
                                     max_size, recursion)
            wires = [_set_tc(wire)]
        else:
            wires = [build_response(query, ans, max_size, recursion)[0]]
        if ans.shufflable and len(ans.answer) > 1:
            for _ in range(VARIANTS - 1):
                shuffled = Answer(ans.rcode, random.sample(ans.answer, len(ans.answer)), ans.additional,
                                  ans.authority)
                limit = self.config.dns_config.udp_answer_limit
                if not tcp and query.edns < 0 and len(shuffled.answer) > limit > 0:
                    wires.append(_set_tc(build_response(query, _limited(shuffled, limit), max_size, recursion)[0]))
                else:
                    wires.append(build_response(query, shuffled, max_size, recursion)[0])
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        cached = _Cached(wires)
        self._cache[(b"T" if tcp else b"U") + packet[2:]] = cached
        cached.next = 1 % len(wires)
        return packet[:2] + wires[0][2:]

    async def _recurse(self, packet: bytes, query: dns.message.Message, max_size: int) -> bytes | None:
        recursors = self.config.recursors
        if not recursors:
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.REFUSED)
            return bytes(resp.to_wire(max_size=max_size))
        self.stats.recursed += 1
        timeout = self.config.dns_config.recursor_timeout
        for recursor in recursors:
            host, _, port = recursor.rpartition(":") if recursor.count(":") == 1 else (recursor, "", "53")
            try:
                reply = await self._ask(host, int(port or 53), packet, timeout)
            except (OSError, ValueError, trio.TooSlowError) as exc:
                log.debug("recursor %s failed: %s", recursor, exc)
                continue
            if len(reply) >= 4 and (reply[3] & 0x0F) in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return reply
        resp = dns.message.make_response(query, recursion_available=True)
        resp.set_rcode(dns.rcode.SERVFAIL)
        self.stats.servfail += 1
        return bytes(resp.to_wire(max_size=max_size))

    @staticmethod
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


def _limited(ans: Answer, limit: int) -> Answer:
    keep = ans.answer[:limit]
    targets = {str(rr.target) for rrset in keep for rr in rrset if hasattr(rr, "target")}
    extra = [r for r in ans.additional if str(r.name) in targets] if targets else []
    return Answer(ans.rcode, keep, extra, ans.authority, ans.shufflable)


def _set_tc(wire: bytes) -> bytes:
    return wire[:2] + bytes([wire[2] | 0x02]) + wire[3:]
