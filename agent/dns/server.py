"""DNS responder on UDP and TCP: a response cache in front of the resolver, and a socket-draining UDP loop.

A full dnspython parse and build costs ~0.5 ms; the cache (keyed on the packet after its ID, flushed when the
catalog index moves) answers repeat questions by patching the 2-byte ID into stored bytes. Each wake-up of
the UDP loop drains every queued datagram before sleeping again, yielding to other tasks after 2 ms of
uncached answers. A miss is answered inline when that is cheap (one render, ~0.5 ms even for 1,000
instances over UDP); what must wait (a recursor, a large TCP render in a worker thread) runs in its own task,
at most DNSLimits.pending at once, so an upstream that never answers delays no other query.
"""

from __future__ import annotations

import errno
import functools
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import trio

from ..config.types import AgentConfig
from ..store import CatalogStore
from .limits import DNSLimits
from .recurse import Forwarder
from .render import badvers, render, size_limit, udp_count_limit
from .resolve import Answer, CatalogRef, OutsideDomain, Resolver

if TYPE_CHECKING:
    from ..acl.authorizer import Authorizer
    from ..acl.resolver import ACLResolver

log = logging.getLogger("meshagent.dns")
_OPEN: tuple[Authorizer | None, str] = (None, "")  # ACLs off: nothing filtered, nothing added to cache keys

_Later = Callable[[], Awaitable[bytes | None]]

VARIANTS = 4  # cached shuffles per question
CACHE_MAX = 10_000
CACHE_BYTES = 32 << 20  # distinct questions for a big service (0x20 case, TCP) must not grow memory unbounded
YIELD_AFTER = 0.002  # seconds of uncached answers in one wake-up before other tasks get a turn


class RaftProgress(Protocol):
    """What the DNS server asks of a Raft server: whether it has caught up with a leader since it started."""

    @property
    def caught_up(self) -> bool: ...


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
    tcp_refused: int = 0  # TCP connections closed at once: per-client or total cap reached
    badvers: int = 0  # queries with an EDNS version above 0
    recursor_busy: int = 0  # forwards answered SERVFAIL at once: DNSLimits.recursive were upstream already


@dataclass(slots=True)
class _Cached:
    variants: list[bytes]
    next: int = 0
    hits: int = field(default=0)
    more: Callable[[], bytes] | None = None  # renders one more shuffle; None once VARIANTS are cached


class DNSServer:
    """Serves the catalog over DNS on (client_addr, ports.dns); `bound_port` is set once listening."""

    def __init__(self, config: AgentConfig, store: CatalogStore, limits: DNSLimits | None = None,
                 server: RaftProgress | None = None, acl: ACLResolver | None = None) -> None:
        self.config = config
        self.store = store
        # With ACLs on, DNS answers as the agent's `default` token (Consul): resolved per query (the resolver
        # memoises), its cache_key joins the response cache's generation.
        self.acl = acl
        self._acl_failing = False  # the default token did not resolve: logged once until it does
        self._server = server  # a server's Raft progress; None on clients and -dev (always authoritative)
        self.limits = limits or DNSLimits()
        self.resolver = Resolver(config, CatalogRef(store))
        self.stats = DNSStats()
        self.bound_port: int | None = None
        self._cache: dict[bytes, _Cached] = {}
        self._cache_index = -1  # the catalog index and ACL cache key the cache was built at
        self._cache_acl = ""
        self._cache_bytes = 0  # wire bytes held by the cache (recounted from 0 whenever it is found empty)
        self._slots = trio.Semaphore(self.limits.pending)
        self._forwarder = Forwarder(self.limits.recursive)
        self._render_threads = trio.CapacityLimiter(1)  # big renders take turns: the GIL runs one anyway
        self._rng = random.Random()  # shared by the loop and the render thread: each draw holds the GIL
        self._tcp_clients: Counter[str] = Counter()
        self._tcp_open = 0

    # ------------------------------------------------------------------ sockets

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind UDP and TCP on the same port (0 picks one), report it, and serve until cancelled."""
        host, port = self.config.client_addr, self.config.ports.dns
        udp, tcp = self._bind_pair(host, port)
        self.bound_port = udp.getsockname()[1]
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_loop, udp, nursery)
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

    async def _udp_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            since = time.perf_counter()
            while True:
                try:
                    packet, addr = sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # e.g. ICMP errors surfaced on the socket; nothing to answer
                cached = self._answer_cached(packet, tcp=False)
                if cached is not None:
                    if cached:
                        self._send(sock, cached, addr)
                    continue
                reply = self._answer_now(packet, tcp=False)
                if callable(reply):
                    # at the cap, stop reading: the kernel's socket buffer queues (and drops) for us
                    await self._slots.acquire()
                    nursery.start_soon(self._udp_later, sock, packet, addr, reply)
                elif reply:
                    self._send(sock, reply, addr)
                if time.perf_counter() - since > YIELD_AFTER:
                    # uncached answers cost up to a few ms each: a queue of them must not hold Raft and the rest
                    await trio.lowlevel.checkpoint()
                    since = time.perf_counter()

    def _send(self, sock: socket.socket, reply: bytes, addr: tuple[str, int]) -> None:
        try:
            sock.sendto(reply, addr)
        except OSError:
            self.stats.dropped += 1  # full send buffer: UDP may drop, the client retries

    async def _udp_later(self, sock: socket.socket, packet: bytes, addr: tuple[str, int], later: _Later) -> None:
        try:
            reply = await self._finish(packet, later)
        finally:
            self._slots.release()
        if reply:
            self._send(sock, reply, addr)

    async def _tcp_conn(self, stream: trio.SocketStream) -> None:
        try:
            client = str(stream.socket.getpeername()[0])
        except OSError:
            client = ""
        if self._tcp_open >= self.limits.tcp_total or self._tcp_clients[client] >= self.limits.tcp_per_client:
            self.stats.tcp_refused += 1
            await stream.aclose()
            return
        self._tcp_open += 1
        self._tcp_clients[client] += 1
        try:
            await self._tcp_serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            self._tcp_open -= 1
            self._tcp_clients[client] -= 1
            if self._tcp_clients[client] <= 0:
                del self._tcp_clients[client]
            await stream.aclose()

    async def _tcp_serve(self, stream: trio.SocketStream) -> None:
        """Length-prefixed queries, one at a time: tcp_idle to start the next one, tcp_read to finish it."""
        buf = bytearray()
        while True:
            deadline = trio.current_time() + (self.limits.tcp_read if buf else self.limits.tcp_idle)
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                with trio.move_on_at(deadline) as timer:
                    data = await stream.receive_some(65536)
                if timer.cancelled_caught or not data:
                    return
                if not buf:  # the query has begun: it must now complete within tcp_read
                    deadline = min(deadline, trio.current_time() + self.limits.tcp_read)
                buf += data
            size = struct.unpack("!H", buf[:2])[0]
            packet, buf = bytes(buf[2:2 + size]), buf[2 + size:]
            reply = self._answer_cached(packet, tcp=True)
            if reply is None:
                reply = await self._answer_slow(packet, tcp=True)
            if not reply:
                return
            with trio.move_on_after(self.limits.tcp_write) as timer:
                await stream.send_all(struct.pack("!H", len(reply)) + reply)
            if timer.cancelled_caught:
                return  # a client that does not read its answers holds nothing

    # ------------------------------------------------------------------ answering

    def _answer_cached(self, packet: bytes, tcp: bool) -> bytes | None:
        """The fast path: a stored answer for the same question bytes, with this query's ID."""
        self.stats.queries += 1
        if len(packet) < 12:
            self.stats.dropped += 1
            return b""  # too short to answer at all: drop (b"" is falsy but not None)
        if self.store.stale_since is not None and self._too_stale():
            return self._error_reply(packet, dns.rcode.SERVFAIL)
        if self._server is not None and not self._server.caught_up:
            # A server not caught up with a leader since it started may hold an empty or older catalog:
            # no NXDOMAIN or empty answer from it as if authoritative (issue 11).
            self.stats.servfail += 1
            return self._error_reply(packet, dns.rcode.SERVFAIL)
        acl_key = ""
        if self.acl is not None and self.acl.enabled:  # inline: ACLs off costs one attribute test per query
            view = self._acl_view()
            if view is None:
                self.stats.servfail += 1
                return self._error_reply(packet, dns.rcode.SERVFAIL)
            acl_key = view[1]
        index = self.store.catalog.last_index
        if index != self._cache_index or acl_key != self._cache_acl:
            self._cache.clear()
            self._cache_index, self._cache_acl = index, acl_key
        entry = self._cache.get((b"T" if tcp else b"U") + packet[2:])
        if entry is None:
            return None
        self.stats.cache_hits += 1
        if entry.more is not None:
            wire = self._another_variant(entry)
            self._cache_bytes += len(wire)
            return packet[:2] + wire[2:]
        wire = entry.variants[entry.next]
        entry.next = (entry.next + 1) % len(entry.variants)
        return packet[:2] + wire[2:]

    @staticmethod
    def _another_variant(entry: _Cached) -> bytes:
        """Shuffles are rendered one per hit (a question asked once costs one render, not VARIANTS)."""
        assert entry.more is not None
        try:
            entry.variants.append(entry.more())
        except Exception:
            log.exception("DNS: rendering another shuffle failed; serving the ones cached")
            entry.more = None
            return entry.variants[0]
        if len(entry.variants) >= VARIANTS:
            entry.more = None
        return entry.variants[-1]

    def _acl_view(self) -> tuple[Authorizer | None, str] | None:
        """(authorizer, cache key) DNS answers as: the `default` token's, or _OPEN with ACLs off; None when
        it cannot be resolved (the default token is unknown: SERVFAIL, as Consul's failed lookup)."""
        acl = self.acl
        if acl is None or not acl.enabled:
            return _OPEN
        try:
            identity = acl.resolve(None)
        except Exception as exc:  # ACLNotFound (a default token that does not exist), or a resolver fault
            if not self._acl_failing:
                self._acl_failing = True
                log.error("DNS: the agent's default ACL token does not resolve (%s); answering SERVFAIL",
                          type(exc).__name__)
            return None
        if self._acl_failing:
            self._acl_failing = False
            log.info("DNS: the agent's default ACL token resolves again")
        if not identity.enabled:
            return _OPEN
        return identity.authorizer, identity.cache_key or f"{identity.accessor_id}@{self.store.catalog.last_index}"

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
        reply = self._answer_now(packet, tcp)
        return await self._finish(packet, reply) if callable(reply) else reply

    def _answer_now(self, packet: bytes, tcp: bool) -> bytes | _Later | None:
        """An uncached answer, or the work that must wait (a recursor, a large render) as a coroutine
        function, to be awaited in its own task."""
        try:
            return self._answer(packet, tcp)
        except Exception:
            return self._failed(packet)

    async def _finish(self, packet: bytes, later: _Later) -> bytes | None:
        try:
            return await later()
        except Exception:
            return self._failed(packet)

    def _failed(self, packet: bytes) -> bytes | None:
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

    def _answer(self, packet: bytes, tcp: bool) -> bytes | _Later | None:
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
        if query.edns > 0:
            self.stats.badvers += 1
            return badvers(query)
        question = query.question[0]
        max_size = size_limit(query, tcp)
        view = self._acl_view()
        if view is None:
            self.stats.servfail += 1
            return self._error_reply(packet, dns.rcode.SERVFAIL)
        gen = (self.store.catalog.last_index, view[1])
        try:
            ans = self.resolver.resolve(question.name, question.rdtype, view[0], view[1])
        except OutsideDomain:
            return functools.partial(self._recurse, packet, query, max_size)
        count_limit = 0 if tcp else udp_count_limit(max_size, self.config.dns_config.udp_answer_limit)
        variants = VARIANTS if ans.shufflable and len(ans.endpoints) > 1 else 1
        args = (query, ans, max_size, count_limit, variants)
        if min(len(ans.endpoints), max_size // 16) > self.limits.inline_records:
            return functools.partial(self._render_in_thread, packet, tcp, gen, args)
        more = functools.partial(self._render_one, query, ans, max_size, count_limit) if variants > 1 else None
        return self._keep(packet, tcp, gen, [self._render_one(query, ans, max_size, count_limit)], more)

    async def _render_in_thread(self, packet: bytes, tcp: bool, gen: tuple[int, str],
                                args: tuple[Any, ...]) -> bytes:
        wires = await trio.to_thread.run_sync(self._render_variants, *args, limiter=self._render_threads)
        return self._keep(packet, tcp, gen, wires)

    def _keep(self, packet: bytes, tcp: bool, gen: tuple[int, str], wires: list[bytes],
              more: Callable[[], bytes] | None = None) -> bytes:
        """Cache the answer's variants (unless the catalog or the ACL view moved while rendering) and return
        the first."""
        if (self._cache_index, self._cache_acl) == gen and self.store.catalog.last_index == gen[0]:
            if not self._cache:
                self._cache_bytes = 0
            if len(self._cache) >= CACHE_MAX or self._cache_bytes > CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            self._cache_bytes += sum(map(len, wires))
            cached = _Cached(wires, more=more)
            self._cache[(b"T" if tcp else b"U") + packet[2:]] = cached
            cached.next = 1 % len(wires)
        return packet[:2] + wires[0][2:]

    def _render_variants(self, query: dns.message.Message, ans: Answer, max_size: int, count_limit: int,
                         variants: int) -> list[bytes]:
        """`variants` shuffles of a large answer, rendered at once in a worker thread (plain values only)."""
        return [self._render_one(query, ans, max_size, count_limit) for _ in range(variants)]

    def _render_one(self, query: dns.message.Message, ans: Answer, max_size: int, count_limit: int) -> bytes:
        """The answer (shuffled when its order is free), cut to the limits in one pass."""
        return render(query, ans, max_size, recursion=bool(self.config.recursors), count_limit=count_limit,
                      set_tc=self.config.dns_config.enable_truncate, shuffle=ans.shufflable,
                      rng=self._rng)[0]

    async def _recurse(self, packet: bytes, query: dns.message.Message, max_size: int) -> bytes | None:
        recursors = self.config.recursors
        if not recursors:
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.REFUSED)
            return bytes(resp.to_wire(max_size=max_size))
        self.stats.recursed += 1
        reply = await self._forwarder.forward(packet, query, list(recursors),
                                              self.config.dns_config.recursor_timeout, max_size)
        self.stats.recursor_busy = self._forwarder.refused
        if len(reply) >= 4 and reply[3] & 0x0F == dns.rcode.SERVFAIL:
            self.stats.servfail += 1
        return reply
