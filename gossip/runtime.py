"""The trio runtime for gossip: UDP and TCP on the Serf LAN port, driving `Swim` and `Serf`.

Thin on purpose: read a packet or a stream, unframe it, hand the messages to the cores through the shared
`GossipExecutor`, which carries out what comes back through this module's I/O (`GossipIO`).
Each packet, message and stream is handled in isolation: bad input, and any exception while
handling it, is counted (`bad_packets`, `bad_streams`, `handler_errors`), logged at most once per source
a minute (`BadInputLog`) and dropped; it never changes the membership view and never ends a task.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from . import messages as m
from . import serf_messages as sm
from .badlog import BadInputLog
from .executor import GossipExecutor
from .key_query import KeyQueryResult, tally
from .keyring import Keyring, save_keyring_file
from .limits import STREAM_BYTES_MAX, STREAMS_MAX
from .member import Member
from .membership import Swim, ip_bytes, ip_text
from .outputs import Address, Event, MemberEvent, QueryResponse, SendPacket, StreamPing
from .serf import RECONNECT_INTERVAL, Serf, SerfEvent, Status
from .tunables import GossipConfig
from .wire import PushPull as ReceivedPushPull
from .wire import (
    StreamReader,
    WireError,
    ack_stream,
    pack_packet,
    ping_stream,
    push_pull_stream,
    unpack_packet,
)

log = logging.getLogger("meshagent.gossip")


@dataclass
class GossipStats:
    """Counters for /v1/agent/self and the tests."""

    bad_packets: int = 0  # packets, or messages in them, dropped as malformed or out of bounds
    bad_streams: int = 0  # TCP streams dropped likewise (or too slow)
    handler_errors: int = 0  # unexpected exceptions while handling one input (a bug; the input is dropped)
    streams_refused: int = 0  # inbound streams closed at once because STREAMS_MAX were open
    packets_in: int = 0
    packets_out: int = 0


@dataclass
class GossipAgent:
    """One node's gossip: `run()` in a nursery, then `join`, `leave`, `user_event`, `members`."""

    name: str
    bind: str
    advertise: str
    port: int
    tags: dict[str, str]
    config: GossipConfig = field(default_factory=GossipConfig)
    keyring: Keyring | None = None  # None: no encryption
    keyring_path: str | None = None  # where the keyring persists (Consul: <data-dir>/serf/local.keyring)
    verify_incoming: bool = True
    verify_outgoing: bool = True
    on_event: Callable[[SerfEvent], None] | None = None
    reconnect_timeout: float = 72 * 3600.0
    stats: GossipStats = field(default_factory=GossipStats)

    def __post_init__(self) -> None:
        rng = random.Random()
        self.serf = Serf(self.name, dict(self.tags), rng, reconnect_timeout=self.reconnect_timeout,
                         keyring=self.keyring, addr=ip_bytes(self.advertise), port=self.port)
        self.swim = Swim(self.config, self.name, ip_bytes(self.advertise), self.port, self.serf, rng)
        self._sock: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._stream_pings: dict[int, Address] = {}
        self._bad_log = BadInputLog(log)
        self._streams = 0
        self._queries: dict[int, _Answers] = {}  # our open queries (key operations), by id
        self.executor = GossipExecutor(self.swim, self.serf, self)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Installed gossip keys, primary first (empty: plaintext)."""
        return self.serf.keyring.keys if self.serf.keyring else ()

    @property
    def _keyring_in(self) -> Keyring | None:
        return self.serf.keyring if self.serf.keyring else None

    @property
    def _keyring_out(self) -> Keyring | None:
        # encrypt_verify_outgoing = false: send plaintext while a live cluster is being switched over.
        return self._keyring_in if self.verify_outgoing else None

    # ------------------------------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind UDP and TCP on the LAN port and gossip until cancelled."""
        # A plain non-blocking socket: sends happen synchronously from the core's outputs, and the reader
        # drains every queued datagram per wake-up.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((self.bind, self.port))
        sock.setblocking(False)
        self._sock = sock
        listeners = await trio.open_tcp_listeners(self.port, host=self.bind)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.executor.start(trio.current_time())
            nursery.start_soon(self._udp_loop, sock)
            nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._reconnect_loop)
            task_status.started()

    async def _reconnect_loop(self) -> None:
        """Serf's reconnect: every 30 s, maybe try one failed member again (a partition may have healed)."""
        while True:
            await trio.sleep(RECONNECT_INTERVAL)
            member = self.serf.reconnect_candidate()
            if member is not None:
                await self._push_pull_quietly((ip_text(member.addr), member.port), True)

    async def _timer_loop(self) -> None:
        while True:
            with trio.move_on_at(self.swim.next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            try:
                self.executor.tick(now)
            except Exception as exc:  # a bug in the core must not end gossip; back off so it cannot spin
                self._handler_error("timer", "tick", exc)
                await trio.sleep(self.config.gossip_interval)

    async def _udp_loop(self, sock: socket.socket) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(256):
                    try:
                        data, src = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # e.g. ICMP port unreachable surfacing on Linux
                        log.debug("udp receive: %s", exc)
                        continue
                    self.stats.packets_in += 1
                    self._handle_packet(data, (src[0], src[1]))
                await trio.lowlevel.checkpoint()
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _handle_packet(self, data: bytes, src: Address) -> None:
        now = trio.current_time()
        source = f"{src[0]}:{src[1]}"
        try:
            parts = unpack_packet(data, keyring=self._keyring_in, verify_incoming=self.verify_incoming)
        except WireError as exc:
            self._bad_packet(now, source, exc)
            return
        except Exception as exc:
            self._handler_error(source, "packet", exc)
            return
        for part in parts:
            try:
                self.executor.receive(now, src, part)
            except m.MessageError as exc:
                self._bad_packet(now, source, exc)
            except Exception as exc:
                self._handler_error(source, "message", exc)
        self._wake.set()

    def _bad_packet(self, now: float, source: str, exc: Exception) -> None:
        self.stats.bad_packets += 1
        self._bad_log.report(now, source, "gossip packet", exc)

    def _handler_error(self, source: str, what: str, exc: Exception) -> None:
        """An exception nobody expected while handling one input: count it, log it (rate-limited), go on."""
        self.stats.handler_errors += 1
        if self._bad_log.report(trio.current_time(), source, f"{what} (internal error)", exc):
            log.debug("internal error handling %s from %s", what, source, exc_info=exc)

    # ------------------------------------------------------------------------------------------ GossipIO

    def send_packet(self, packet: SendPacket) -> None:
        """Frame (CRC, encryption) and send one packet."""
        self._send(pack_packet([packet.payload()], keyring=self._keyring_out, crc=packet.crc), packet.addr)

    def open_push_pull(self, addr: Address, join: bool) -> None:
        """A push-pull exchange in its own task."""
        assert self._nursery is not None
        self._nursery.start_soon(self._push_pull_quietly, addr, join)

    def open_stream_ping(self, ping: StreamPing) -> None:
        """A TCP fallback ping in its own task."""
        assert self._nursery is not None
        self._nursery.start_soon(self._stream_ping, ping)

    def persist_keyring(self, keys: tuple[bytes, ...]) -> None:
        """Save the keyring in a thread (the file write must not block gossip)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._persist_keyring)

    def publish(self, event: Event) -> None:
        """Answers go to the key operation waiting for them; events are logged and handed to `on_event`."""
        if isinstance(event, QueryResponse):
            answers = self._queries.get(event.id)
            if answers is not None:
                answers.add(event)
            return
        log.info("serf: %s", _describe(event))
        if self.on_event is not None:
            self.on_event(event)

    def rearm(self) -> None:
        """The timer loop re-arms at the core's new, earlier deadline."""
        self._wake.set()

    def _send(self, data: bytes, addr: Address) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, OSError) as exc:
            log.debug("send to %s:%d failed: %s", addr[0], addr[1], exc)
            return
        self.stats.packets_out += 1

    # ------------------------------------------------------------------------------------------ streams

    async def _read_stream(self, stream: trio.SocketStream) -> Any:
        """One stream message (decrypted, decompressed, parsed)."""
        reader = StreamReader(keyring=self._keyring_in, verify_incoming=self.verify_incoming,
                              max_bytes=STREAM_BYTES_MAX)
        with trio.fail_after(self.config.tcp_timeout):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return reader.eof()
                message = reader.feed(chunk)
                if message is not None:
                    return message

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._streams >= STREAMS_MAX:
                # Each stream may hold up to STREAM_BYTES_MAX for tcp_timeout: bound how many at once.
                self.stats.streams_refused += 1
                return
            self._streams += 1
            source = _peer(stream)
            try:
                message = await self._read_stream(stream)
                await self._answer_stream(stream, message)
            except (WireError, m.MessageError, trio.TooSlowError) as exc:
                self.stats.bad_streams += 1
                self._bad_log.report(trio.current_time(), source, "gossip stream", exc)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception as exc:
                self._handler_error(source, "stream", exc)
            finally:
                self._streams -= 1

    async def _answer_stream(self, stream: trio.SocketStream, message: Any) -> None:
        now = trio.current_time()
        if isinstance(message, ReceivedPushPull):
            reply = push_pull_stream(self.swim.local_push_pull_state(), self.serf.local_state(message.join),
                                     join=message.join, keyring=self._keyring_out)
            await stream.send_all(reply)
            self._merge(now, list(message.nodes), message.user_state, message.join)
        elif isinstance(message, m.Ping):
            if not message.node or message.node == self.name:
                await stream.send_all(ack_stream(m.AckResp(message.seq_no, b""), keyring=self._keyring_out))
        elif isinstance(message, m.UserMsg):
            self.executor.user_message(now, message.payload)
        else:
            raise WireError(f"unexpected stream message {type(message).__name__}")

    def _merge(self, now: float, nodes: list[m.PushNodeState], user: bytes, join: bool) -> None:
        self.executor.merge(now, nodes, user, join)
        self._wake.set()

    async def push_pull(self, addr: Address, join: bool) -> None:
        """One push-pull exchange with `addr`; raises OSError / WireError / MessageError on failure."""
        with trio.fail_after(self.config.tcp_timeout):
            stream = await trio.open_tcp_stream(addr[0], addr[1])
        async with stream:
            await stream.send_all(push_pull_stream(self.swim.local_push_pull_state(), self.serf.local_state(join),
                                                   join=join, keyring=self._keyring_out))
            answer = await self._read_stream(stream)
        if isinstance(answer, m.ErrResp):
            raise WireError(f"the peer refused the push-pull: {answer.error}")
        if not isinstance(answer, ReceivedPushPull):
            raise WireError(f"expected a push-pull answer, got {type(answer).__name__}")
        self._merge(trio.current_time(), list(answer.nodes), answer.user_state, join)

    async def _push_pull_quietly(self, addr: Address, join: bool) -> None:
        try:
            await self.push_pull(addr, join)
        except (OSError, WireError, m.MessageError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.debug("push-pull with %s:%d failed: %s", addr[0], addr[1], exc)
        except Exception as exc:
            self._handler_error(f"{addr[0]}:{addr[1]}", "push-pull", exc)

    async def _stream_ping(self, o: StreamPing) -> None:
        ok = False
        try:
            with trio.fail_after(self.config.probe_timeout * 2):
                stream = await trio.open_tcp_stream(o.addr[0], o.addr[1])
                async with stream:
                    ping = m.decode(o.ping)
                    assert isinstance(ping, m.Ping)
                    await stream.send_all(ping_stream(ping, keyring=self._keyring_out))
                    ack = await self._read_stream(stream)
                    ok = isinstance(ack, m.AckResp) and ack.seq_no == o.seq_no
        except (OSError, WireError, m.MessageError, trio.TooSlowError, trio.BrokenResourceError):
            ok = False
        except Exception as exc:
            self._handler_error(f"{o.addr[0]}:{o.addr[1]}", "stream ping", exc)
        try:
            self.executor.stream_ping_result(trio.current_time(), o.seq_no, ok)
        except Exception as exc:
            self._handler_error(f"{o.addr[0]}:{o.addr[1]}", "stream ping result", exc)
        self._wake.set()

    # ------------------------------------------------------------------------------------------ API

    async def join(self, addrs: Sequence[str]) -> int:
        """Push-pull with each address ("host" or "host:port"); how many answered. Announces our join."""
        ok = 0
        for addr in addrs:
            host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "")
            target = (host or addr, int(port) if port else self.port)
            try:
                await self.push_pull(target, True)
                ok += 1
            except (OSError, WireError, m.MessageError, trio.TooSlowError, ValueError) as exc:
                log.warning("failed to join %s: %s", addr, exc)
        if ok:
            self.executor.joined(trio.current_time())
            self._wake.set()
        return ok

    async def leave(self, timeout: float = 5.0) -> None:
        """Graceful leave: Serf's leave intent, then memberlist's, each given time to spread."""
        self.executor.leave_intent(trio.current_time())
        with trio.move_on_after(timeout / 2):
            while self.serf.intent_unsent() and self.swim.num_alive() > 1:
                now = trio.current_time()
                self.executor.carry_out(now, self.swim.tick(now))
                await trio.sleep(self.config.gossip_interval / 2)
        now = trio.current_time()
        self.executor.carry_out(now, self.swim.leave(now))
        # Beyond memberlist: tell every live member directly, once. Gossip alone reaches only three random
        # members per round, some of them possibly dead, and then this process is gone; the bench saw a
        # leave show up as a failure (and "left" only 9-28 s later) when those few packets missed.
        self._announce_leave()
        with trio.move_on_after(timeout / 2):
            while not self.swim.leave_sent():
                now = trio.current_time()
                self.executor.carry_out(now, self.swim.gossip_now(now))
                await trio.sleep(self.config.gossip_interval / 2)

    def _announce_leave(self) -> None:
        intent = self.serf.queued_intent(self.name)
        dead = m.encode(m.Dead(self.swim.incarnation, self.name, self.name))
        messages = [dead] if intent is None else [bytes([m.MessageType.USER]) + intent, dead]
        for mem in list(self.swim.members.values()):
            if mem.name != self.name and mem.state in (m.NodeState.ALIVE, m.NodeState.SUSPECT):
                self._send(pack_packet(messages, keyring=self._keyring_out), mem.address)

    def user_event(self, name: str, payload: bytes, coalesce: bool = True) -> int:
        """Fire a user event; its Lamport time."""
        ltime = self.executor.user_event(trio.current_time(), name, payload, coalesce)
        self._wake.set()
        return ltime

    async def _persist_keyring(self) -> None:
        if self.keyring_path is None or self.serf.keyring is None:
            return
        try:
            await trio.to_thread.run_sync(save_keyring_file, self.keyring_path, self.serf.keyring)
        except OSError as exc:
            log.error("cannot save the keyring to %s: %s", self.keyring_path, exc)

    async def key_operation(self, name: str, key: bytes = b"") -> KeyQueryResult:
        """Run a Serf key query across the cluster and tally the answers (the LAN pool's keyring report)."""
        alive = sum(1 for mem in self.serf.members.values() if mem.status == Status.ALIVE)
        timeout = self.config.gossip_interval * 16 * max(1, math.ceil(math.log10(alive + 1)))
        payload = sm.key_request_payload(key) if name != sm.LIST_KEYS_QUERY else b""
        now = trio.current_time()
        qid, outs = self.executor.query(name, payload, timeout)
        collected = self._queries[qid] = _Answers(alive)
        try:
            self.executor.carry_out(now, outs)  # our own answer is among them
            self._wake.set()
            with trio.move_on_after(timeout):
                await collected.all_in.wait()
        finally:
            del self._queries[qid]
            self.serf.close_query(qid)
        return tally(collected.answers, alive, self.tags.get("dc", "dc1"))

    def force_leave(self, node: str, prune: bool = False) -> bool:
        """Mark a failed node left (and forget it with prune)."""
        return self.executor.force_leave(trio.current_time(), node, prune)

    def stats_view(self) -> dict[str, str]:
        """Consul's serf_lan figures (strings), plus our counters of dropped input."""
        by_status = [mem.status for mem in self.serf.members.values()]
        intents, events = self.serf.queue_depths()
        return {"members": str(len(by_status)), "failed": str(by_status.count(Status.FAILED)),
                "left": str(by_status.count(Status.LEFT)), "health_score": str(self.swim.health_score()),
                "member_time": str(self.serf.clock.time), "event_time": str(self.serf.event_clock.time),
                "query_time": str(self.serf.query_clock.time), "encrypted": str(bool(self.keys)).lower(),
                "intent_queue": str(intents), "event_queue": str(events),
                "bad_packets": str(self.stats.bad_packets + self.serf.bad_messages),
                "bad_streams": str(self.stats.bad_streams), "handler_errors": str(self.stats.handler_errors),
                "streams_refused": str(self.stats.streams_refused),
                "packets_in": str(self.stats.packets_in), "packets_out": str(self.stats.packets_out)}

    def counters(self) -> dict[str, int]:
        """Counters of dropped and refused input, for /v1/agent/metrics (`meshagent.gossip.<name>`)."""
        return {"bad_packets": self.stats.bad_packets + self.serf.bad_messages,
                "bad_streams": self.stats.bad_streams, "handler_errors": self.stats.handler_errors,
                "streams_refused": self.stats.streams_refused, "unrefutable": self.swim.unrefutable,
                "dropped_states": self.swim.dropped_states,
                "packets_in": self.stats.packets_in, "packets_out": self.stats.packets_out}

    def members(self) -> list[Member]:
        """Every member we know, ourselves included (Consul's JSON is agent/http/render.py's job)."""
        return self.executor.members()


class _Answers:
    """The answers to one of our queries, and an event set once `expected` have come in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.answers: list[QueryResponse] = []
        self.all_in = trio.Event()

    def add(self, answer: QueryResponse) -> None:
        self.answers.append(answer)
        if len(self.answers) >= self.expected:
            self.all_in.set()




def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"{host}:{port}"


def _describe(event: SerfEvent) -> str:
    if isinstance(event, MemberEvent):
        return f"{event.kind}: {event.member.name} {event.member.addr}"
    return f"user event {event.name}"
