"""The Serf layer over the SWIM core: tags, Lamport-clocked join/leave intents, user events, reaping.

Pure like the core: it implements `Delegate` for `Swim`, keeps Serf's member list (alive, leaving, left,
failed), and hands out what happened as `SerfEvent`s. Messages are Serf's own (serf/messages.go): a type
byte, then a go-msgpack map, carried inside memberlist user messages.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from . import serf_messages as sm
from .delegate import MemberInfo
from .keyring import Keyring, KeyringError
from .messages import MessageError, NodeState

RECONNECT_INTERVAL = 30.0  # Serf's ReconnectInterval: how often to try one failed member again
EVENT_BUFFER = 512  # Serf's EventBuffer: recent user events remembered per Lamport time slot
MAX_USER_EVENT = 512  # Serf's UserEventSizeLimit


class SerfType(IntEnum):
    """Serf's message type byte (messages.go)."""

    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


class Status(IntEnum):
    """Serf's member status, as Consul's /v1/agent/members reports it."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


class LamportClock:
    """A Lamport clock: increment for our own events, witness everyone else's."""

    def __init__(self) -> None:
        self.time = 0

    def increment(self) -> int:
        self.time += 1
        return self.time

    def witness(self, t: int) -> None:
        if t >= self.time:
            self.time = t + 1


@dataclass(slots=True)
class SerfMember:
    """A member in Serf's view."""

    name: str
    addr: bytes
    port: int
    tags: dict[str, str]
    status: Status
    vsn: bytes
    status_ltime: int = 0
    leave_time: float = 0.0


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """member-join, member-leave, member-failed, member-update, member-reap."""

    kind: str
    member: SerfMember


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A user event delivered here (once per Lamport time, name and payload)."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool


@dataclass(frozen=True, slots=True)
class QueryReply:
    """Send `message` (an encoded Serf message) straight to addr:port as a memberlist user message."""

    addr: bytes
    port: int
    message: bytes


SerfEvent = MemberEvent | UserEvent
KEY_QUERIES = {sm.INSTALL_KEY_QUERY, sm.USE_KEY_QUERY, sm.REMOVE_KEY_QUERY, sm.LIST_KEYS_QUERY}


def member_tags(meta: bytes) -> dict[str, str]:
    """A member's tags from its node meta; garbage from a peer gives no tags rather than an error."""
    if not meta:
        return {}
    try:
        return sm.decode_tags(meta)
    except MessageError:
        return {}


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def encode(kind: SerfType, body: dict[str, Any]) -> bytes:
    """One Serf message: type byte + go-msgpack map."""
    packed: bytes = msgpack.packb(body, use_bin_type=False)
    return bytes([kind]) + packed


def decode(data: bytes) -> tuple[SerfType, dict[str, Any]]:
    """A Serf message's type and its map with str keys (values left raw); MessageError when malformed."""
    if not data:
        raise MessageError("empty serf message")
    try:
        kind = SerfType(data[0])
    except ValueError:
        raise MessageError(f"unknown serf message type {data[0]}") from None
    try:
        raw = msgpack.unpackb(data[1:], raw=True, strict_map_key=False)
    except Exception as exc:
        raise MessageError(f"bad serf message: {exc}") from exc
    if not isinstance(raw, dict):
        raise MessageError("serf message body is not a map")
    return kind, {_s(k): v for k, v in raw.items()}


def _uint(body: dict[str, Any], key: str) -> int:
    v = body.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise MessageError(f"serf field {key} must be an unsigned integer")
    return v


def _text(body: dict[str, Any], key: str) -> str:
    v = body.get(key, b"")
    if not isinstance(v, bytes | str):
        raise MessageError(f"serf field {key} must be a string")
    return _s(v)


def _raw(body: dict[str, Any], key: str) -> bytes:
    v = body.get(key) or b""
    if isinstance(v, str):
        v = v.encode()
    if not isinstance(v, bytes):
        raise MessageError(f"serf field {key} must be bytes")
    return v


@dataclass
class Serf:
    """Serf's state for one node; the `Delegate` of its `Swim` core."""

    name: str
    tags: dict[str, str]
    rng: random.Random
    reconnect_timeout: float = 72 * 3600.0
    tombstone_timeout: float = 24 * 3600.0
    members: dict[str, SerfMember] = field(default_factory=dict)
    events: list[SerfEvent] = field(default_factory=list)
    leaving: bool = False
    # The gossip keyring, changed by key queries; None when encryption is off. `keyring_changed` tells the
    # runtime to persist it.
    keyring: Keyring | None = None
    keyring_changed: bool = False
    addr: bytes = b""
    port: int = 0

    def __post_init__(self) -> None:
        self.clock = LamportClock()
        self.event_clock = LamportClock()
        self.query_clock = LamportClock()
        self.clock.increment()  # Serf starts its member clock at 1
        self._queue: list[tuple[int, str | None, bytes]] = []  # (transmits, intent key, message)
        self._event_queue: list[tuple[int, bytes]] = []
        self._recent: list[dict[tuple[str, bytes], None] | None] = [None] * EVENT_BUFFER
        self._recent_ltime = [-1] * EVENT_BUFFER
        self._intents: dict[str, tuple[SerfType, int]] = {}  # intents for members not known yet
        self.event_min_time = 0
        self.bad_messages = 0
        self._query_queue: list[tuple[int, bytes]] = []
        self._seen_queries: dict[tuple[int, int], None] = {}
        self.replies: list[QueryReply] = []  # for the runtime to send
        self.query_answers: dict[int, list[sm.QueryResponseMsg]] = {}  # our queries' answers, by id

    # ------------------------------------------------------------------------------------------ API

    def join_intent(self) -> None:
        """Announce our join at the current member clock (after the core joined someone)."""
        ltime = self.clock.time
        self._handle_join(ltime, self.name)
        self._broadcast(self.name, encode(SerfType.JOIN, {"LTime": ltime, "Node": self.name}))

    def leave_intent(self) -> None:
        """Announce our graceful leave (then the core leaves)."""
        self.leaving = True
        ltime = self.clock.increment()
        self._handle_leave(ltime, self.name, False)
        self._broadcast(self.name, encode(SerfType.LEAVE, {"LTime": ltime, "Node": self.name, "Prune": False}))

    def force_leave(self, node: str, prune: bool = False) -> bool:
        """Mark a failed member as left (and forget it with `prune`); False if unknown."""
        if node not in self.members:
            return False
        ltime = self.clock.increment()
        self._handle_leave(ltime, node, prune)
        self._broadcast(node, encode(SerfType.LEAVE, {"LTime": ltime, "Node": node, "Prune": prune}))
        return True

    def user_event(self, name: str, payload: bytes, coalesce: bool = True) -> int:
        """Fire a user event into the cluster (and deliver it here); its Lamport time."""
        if len(name) + len(payload) > MAX_USER_EVENT:
            raise ValueError(f"user event exceeds the {MAX_USER_EVENT}-byte limit")
        ltime = self.event_clock.time
        self.event_clock.increment()
        msg = encode(SerfType.USER_EVENT, {"LTime": ltime, "Name": name, "Payload": payload, "CC": coalesce})
        self._handle_user_event(ltime, name, payload, coalesce)
        self._event_queue.append((0, msg))
        return ltime

    def query(self, name: str, payload: bytes, timeout: float) -> int:
        """Broadcast a query (answered straight to us); its id. Answers gather in `query_answers[id]`."""
        ltime = self.query_clock.time
        self.query_clock.increment()
        qid = self.rng.getrandbits(32)
        q = sm.QueryMsg(ltime=ltime, id=qid, addr=self.addr, port=self.port, source_node=self.name,
                        timeout_ns=int(timeout * 1e9), name=name, payload=payload)
        self.query_answers[qid] = []
        raw = sm.encode(q)
        self._handle_query(q)  # we answer our own query too, as Serf does
        self._query_queue.append((0, raw))
        return qid

    def take_events(self) -> list[SerfEvent]:
        """What happened since the last call."""
        out, self.events = self.events, []
        return out

    def _retransmit_limit(self) -> int:
        # As memberlist computes it, from the members alive right now (not when the message was queued:
        # a node that fires an event just after joining would otherwise send it only a handful of times).
        alive = sum(1 for mem in self.members.values() if mem.status == Status.ALIVE)
        return 4 * max(1, math.ceil(math.log10(alive + 1)))

    def reap(self, now: float) -> None:
        """Forget failed members after reconnect_timeout and left ones after tombstone_timeout."""
        for name, mem in list(self.members.items()):
            limit = {Status.FAILED: self.reconnect_timeout, Status.LEFT: self.tombstone_timeout}.get(mem.status)
            if limit is not None and name != self.name and now - mem.leave_time > limit:
                del self.members[name]
                self.events.append(MemberEvent("member-reap", mem))

    def reconnect_candidate(self) -> SerfMember | None:
        """A failed member to try again, with Serf's probability (failed / alive)."""
        failed = [mem for mem in self.members.values() if mem.status == Status.FAILED]
        alive = sum(1 for mem in self.members.values() if mem.status == Status.ALIVE)
        if not failed or self.rng.random() > len(failed) / max(1, alive):
            return None
        return self.rng.choice(failed)

    # ------------------------------------------------------------------------------------------ Delegate

    def node_meta(self, limit: int) -> bytes:
        meta = sm.encode_tags(self.tags)
        if len(meta) > limit:
            raise ValueError(f"encoded tags are {len(meta)} bytes, over the {limit}-byte limit")
        return meta

    def notify_msg(self, now: float, payload: bytes) -> None:
        try:
            kind, body = decode(payload)
            if kind == SerfType.JOIN:
                ltime, node = _uint(body, "LTime"), _text(body, "Node")
                if self._handle_join(ltime, node):
                    self._broadcast(node, payload)
            elif kind == SerfType.LEAVE:
                ltime, node = _uint(body, "LTime"), _text(body, "Node")
                if self._handle_leave(ltime, node, bool(body.get("Prune", False))):
                    self._broadcast(node, payload)
            elif kind == SerfType.USER_EVENT:
                ltime, name = _uint(body, "LTime"), _text(body, "Name")
                if self._handle_user_event(ltime, name, _raw(body, "Payload"), bool(body.get("CC", False))):
                    self._event_queue.append((0, payload))
            elif kind == SerfType.QUERY:
                q = sm.decode(payload)
                if isinstance(q, sm.QueryMsg) and self._handle_query(q) and not q.no_broadcast:
                    self._query_queue.append((0, payload))
            elif kind == SerfType.QUERY_RESPONSE:
                r = sm.decode(payload)
                if isinstance(r, sm.QueryResponseMsg) and r.id in self.query_answers and not r.ack:
                    answers = self.query_answers[r.id]
                    if all(a.from_node != r.from_node for a in answers):
                        answers.append(r)
        except MessageError:
            self.bad_messages += 1  # a bad message changes nothing
            return

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        used = 0
        if not (self._queue or self._event_queue or self._query_queue):
            return out
        max_sends = self._retransmit_limit()
        for queue_name in ("_queue", "_event_queue", "_query_queue"):
            queue = getattr(self, queue_name)
            queue.sort(key=lambda item: item[0])
            keep = []
            for item in queue:
                msg = item[-1]
                if used + len(msg) + overhead <= limit:
                    out.append(msg)
                    used += len(msg) + overhead
                    item = (item[0] + 1, *item[1:])
                if item[0] < max_sends:
                    keep.append(item)
            setattr(self, queue_name, keep)
        return out

    def local_state(self, join: bool) -> bytes:
        events = [{"LTime": self._recent_ltime[i], "Events": [{"Name": n, "Payload": p} for (n, p) in slot]}
                  for i, slot in enumerate(self._recent) if slot]
        body = {
            "LTime": self.clock.time,
            "StatusLTimes": {name: mem.status_ltime for name, mem in self.members.items()},
            "LeftMembers": [name for name, mem in self.members.items() if mem.status == Status.LEFT],
            "EventLTime": self.event_clock.time,
            "Events": events,
            "QueryLTime": self.query_clock.time,
        }
        return encode(SerfType.PUSH_PULL, body)

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> None:
        try:
            kind, body = decode(data)
            if kind != SerfType.PUSH_PULL:
                return
            for clock, key in ((self.clock, "LTime"), (self.event_clock, "EventLTime"),
                               (self.query_clock, "QueryLTime")):
                t = _uint(body, key)
                if t > 0:
                    clock.witness(t - 1)
            status = body.get("StatusLTimes") or {}
            left = {_s(n) for n in (body.get("LeftMembers") or []) if isinstance(n, bytes | str)}
            if not isinstance(status, dict):
                raise MessageError("StatusLTimes must be a map")
            ltimes = {_s(k): v for k, v in status.items() if isinstance(v, int) and not isinstance(v, bool)}
            for name in left:
                self._handle_leave(ltimes.get(name, 0), name, False)
            for name, ltime in ltimes.items():
                if name not in left:
                    self._handle_join(ltime, name)
            if join:
                # A joiner does not replay old events (Serf's default, -replay off).
                self.event_min_time = max(self.event_min_time, _uint(body, "EventLTime"))
                return
            for batch in body.get("Events") or []:
                if not isinstance(batch, dict):
                    continue
                b = {_s(k): v for k, v in batch.items()}
                for ev in b.get("Events") or []:
                    if isinstance(ev, dict):
                        e = {_s(k): v for k, v in ev.items()}
                        self._handle_user_event(_uint(b, "LTime"), _text(e, "Name"), _raw(e, "Payload"), False)
        except MessageError:
            self.bad_messages += 1

    def notify_join(self, now: float, member: MemberInfo) -> None:
        tags = member_tags(member.meta)
        mem = self.members.get(member.name)
        if mem is None:
            mem = SerfMember(member.name, member.addr, member.port, tags, Status.ALIVE, member.vsn)
            self.members[member.name] = mem
            intent = self._intents.pop(member.name, None)
            if intent is not None:
                kind, ltime = intent
                mem.status_ltime = ltime
                if kind == SerfType.LEAVE:
                    mem.status = Status.LEAVING
        else:
            mem.addr, mem.port, mem.tags, mem.vsn = member.addr, member.port, tags, member.vsn
            mem.status = Status.ALIVE
        self.events.append(MemberEvent("member-join", mem))

    def notify_leave(self, now: float, member: MemberInfo) -> None:
        mem = self.members.get(member.name)
        if mem is None:
            return
        if mem.status == Status.LEAVING or (member.state == NodeState.LEFT and mem.status != Status.FAILED):
            mem.status = Status.LEFT
            kind = "member-leave"
        elif mem.status == Status.ALIVE:
            mem.status = Status.FAILED
            kind = "member-failed"
        else:
            return
        mem.leave_time = now
        self.events.append(MemberEvent(kind, mem))

    def notify_update(self, now: float, member: MemberInfo) -> None:
        mem = self.members.get(member.name)
        if mem is None:
            return
        mem.addr, mem.port, mem.tags = member.addr, member.port, member_tags(member.meta)
        self.events.append(MemberEvent("member-update", mem))

    # ------------------------------------------------------------------------------------------ intents

    def _broadcast(self, key: str, msg: bytes) -> None:
        # A newer intent about the same member replaces the older one in the queue.
        self._queue = [item for item in self._queue if item[1] != key]
        self._queue.append((0, key, msg))

    def _handle_join(self, ltime: int, node: str) -> bool:
        self.clock.witness(ltime)
        mem = self.members.get(node)
        if mem is None:
            old = self._intents.get(node)
            if old is not None and old[1] >= ltime:
                return False
            self._intents[node] = (SerfType.JOIN, ltime)
            return True
        if ltime <= mem.status_ltime:
            return False
        mem.status_ltime = ltime
        if mem.status == Status.LEAVING:
            mem.status = Status.ALIVE
        return True

    def _handle_leave(self, ltime: int, node: str, prune: bool) -> bool:
        self.clock.witness(ltime)
        mem = self.members.get(node)
        if mem is None:
            old = self._intents.get(node)
            if old is not None and old[1] >= ltime:
                return False
            self._intents[node] = (SerfType.LEAVE, ltime)
            return True
        if ltime <= mem.status_ltime:
            return False
        if node == self.name and not self.leaving:
            # Someone says we are leaving: refute with a newer join.
            self._broadcast(self.name, encode(SerfType.JOIN, {"LTime": self.clock.increment(), "Node": self.name}))
            return False
        mem.status_ltime = ltime
        if mem.status == Status.ALIVE:
            mem.status = Status.LEAVING
            return True
        if mem.status == Status.FAILED:
            mem.status = Status.LEFT
            self.events.append(MemberEvent("member-leave", mem))
            if prune:
                del self.members[node]
                self.events.append(MemberEvent("member-reap", mem))
            return True
        return False

    def _handle_query(self, q: sm.QueryMsg) -> bool:
        """Process a query once (by Lamport time and id); True if it was new (so it is re-gossiped)."""
        self.query_clock.witness(q.ltime)
        key = (q.ltime, q.id)
        if key in self._seen_queries:
            return False
        self._seen_queries[key] = None
        if len(self._seen_queries) > 4096:
            self._seen_queries.pop(next(iter(self._seen_queries)))
        if not self._query_for_us(q):
            return True
        if q.ack:
            self._reply(q, sm.QueryResponseMsg(ltime=q.ltime, id=q.id, from_node=self.name, flags=sm.QUERY_FLAG_ACK))
        answer: bytes | None = None
        if q.name == sm.PING_QUERY:
            answer = b""
        elif q.name in KEY_QUERIES:
            answer = sm.encode(self._key_query(q))
        if answer is not None:
            self._reply(q, sm.QueryResponseMsg(ltime=q.ltime, id=q.id, from_node=self.name, payload=answer))
        return True

    def _query_for_us(self, q: sm.QueryMsg) -> bool:
        for raw in q.filters:
            try:
                f = sm.decode_filter(raw)
            except MessageError:
                return False
            if isinstance(f, sm.NodeFilter) and self.name not in f.nodes:
                return False
        return True

    def _reply(self, q: sm.QueryMsg, response: sm.QueryResponseMsg) -> None:
        if q.source_node == self.name:
            answers = self.query_answers.get(q.id)
            if answers is not None and not response.ack:
                answers.append(response)
            return
        self.replies.append(QueryReply(q.addr, q.port, sm.encode(response)))

    def _key_query(self, q: sm.QueryMsg) -> sm.KeyResponseMsg:
        """Serf's key manager, on this node: install, use, remove or list gossip keys."""
        if self.keyring is None:
            return sm.KeyResponseMsg(result=False, message="Keyring is empty (encryption not enabled)")
        if q.name == sm.LIST_KEYS_QUERY:
            keys = self.keyring.to_base64()
            return sm.KeyResponseMsg(result=True, keys=tuple(keys), primary_key=keys[0] if keys else "")
        try:
            request = sm.decode(q.payload)
            if not isinstance(request, sm.KeyRequestMsg):
                raise MessageError("not a key request")
            key = request.key
            if q.name == sm.INSTALL_KEY_QUERY:
                self.keyring.install(key)
            elif q.name == sm.USE_KEY_QUERY:
                self.keyring.use(key)
            else:
                self.keyring.remove(key)
        except (MessageError, KeyringError) as exc:
            return sm.KeyResponseMsg(result=False, message=str(exc))
        self.keyring_changed = True
        return sm.KeyResponseMsg(result=True)

    def _handle_user_event(self, ltime: int, name: str, payload: bytes, coalesce: bool) -> bool:
        self.event_clock.witness(ltime)
        if ltime < self.event_min_time:
            return False
        now_t = self.event_clock.time
        if now_t > EVENT_BUFFER and ltime < now_t - EVENT_BUFFER:
            return False
        slot = ltime % EVENT_BUFFER
        if self._recent_ltime[slot] != ltime or self._recent[slot] is None:
            self._recent_ltime[slot] = ltime
            self._recent[slot] = {}
        seen = self._recent[slot]
        assert seen is not None
        if (name, payload) in seen:
            return False
        seen[(name, payload)] = None
        self.events.append(UserEvent(ltime, name, payload, coalesce))
        return True
