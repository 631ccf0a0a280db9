"""The Serf layer over the SWIM core: tags, Lamport-clocked join/leave intents, user events, reaping.

Pure like the core: it implements `Delegate` for `Swim`, keeps Serf's member list (alive, leaving, left,
failed), and returns what it wants done as values (`gossip.outputs`: events, query replies and responses,
news to gossip soon, a changed keyring) from each input, as `Swim` does; `gossip.executor` carries them out.
Messages are Serf's own (serf/messages.go): a type
byte, then a go-msgpack map, carried inside memberlist user messages.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from . import bounds, limits
from . import serf_messages as sm
from .delegate import MemberInfo
from .keyring import Keyring, KeyringError
from .member import Member, MemberStatus, member_of
from .messages import MessageError, NodeState
from .outputs import GossipSoon, KeyringChanged, MemberEvent, QueryResponse, Reply, SerfOutput, UserEvent

RECONNECT_INTERVAL = 30.0  # Serf's ReconnectInterval: how often to try one failed member again
EVENT_BUFFER = 512  # Serf's EventBuffer: recent user events remembered per Lamport time slot
MAX_USER_EVENT = 512  # Serf's UserEventSizeLimit


Status = MemberStatus  # Serf's member status, as Consul's /v1/agent/members reports it
SerfType = sm.SerfMessageType


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

    def view(self) -> Member:
        """This member as a typed value for the layers above (a copy)."""
        return member_of(self.name, self.addr, self.port, self.tags, self.status, self.vsn)


SerfEvent = MemberEvent | UserEvent
__all__ = ["MemberEvent", "Serf", "SerfEvent", "SerfMember", "Status", "UserEvent"]
KEY_QUERIES = {sm.INSTALL_KEY_QUERY, sm.USE_KEY_QUERY, sm.REMOVE_KEY_QUERY, sm.LIST_KEYS_QUERY}


def member_tags(meta: bytes) -> dict[str, str]:
    """A member's tags from its node meta; garbage from a peer gives no tags rather than an error."""
    if not meta:
        return {}
    try:
        return sm.decode_tags(meta)
    except MessageError:
        return {}


@dataclass
class Serf:
    """Serf's state for one node; the `Delegate` of its `Swim` core."""

    name: str
    tags: dict[str, str]
    rng: random.Random
    reconnect_timeout: float = 72 * 3600.0
    tombstone_timeout: float = 24 * 3600.0
    members: dict[str, SerfMember] = field(default_factory=dict)
    leaving: bool = False
    # The gossip keyring, changed by key queries (each change returns KeyringChanged); None: no encryption.
    keyring: Keyring | None = None
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
        self._responders: dict[int, set[str]] = {}  # our open queries: who has answered, by query id
        # Outputs of the input being handled, returned at its end (`_done`). `_news`: a broadcast was queued,
        # so the input returns one GossipSoon and the news leaves in a gossip round now, not at the next tick.
        self._out: list[SerfOutput] = []
        self._news = False

    def _done(self) -> list[SerfOutput]:
        """The outputs gathered while handling one input (GossipSoon last, once)."""
        out, self._out = self._out, []
        if self._news:
            self._news = False
            out.append(GossipSoon())
        return out

    # ------------------------------------------------------------------------------------------ API

    def join_intent(self) -> list[SerfOutput]:
        """Announce our join at the current member clock (after the core joined someone)."""
        ltime = self.clock.time
        self._handle_join(ltime, self.name)
        self._broadcast(self.name, sm.encode(sm.JoinMsg(ltime, self.name)))
        return self._done()

    def leave_intent(self) -> list[SerfOutput]:
        """Announce our graceful leave (then the core leaves)."""
        self.leaving = True
        ltime = self.clock.increment()
        self._handle_leave(ltime, self.name, False)
        self._broadcast(self.name, sm.encode(sm.LeaveMsg(ltime, self.name, False)))
        return self._done()

    def force_leave(self, node: str, prune: bool = False) -> tuple[bool, list[SerfOutput]]:
        """Mark a failed member as left (and forget it with `prune`); False if unknown."""
        if node not in self.members:
            return False, []
        ltime = self.clock.increment()
        self._handle_leave(ltime, node, prune)
        self._broadcast(node, sm.encode(sm.LeaveMsg(ltime, node, prune)))
        return True, self._done()

    def intent_unsent(self) -> bool:
        """Whether an intent we queued has not been sent even once yet."""
        return any(item[0] < 1 for item in self._queue)

    def queue_depths(self) -> tuple[int, int]:
        """How many intents and user events wait to be gossiped (Consul's intent_queue, event_queue)."""
        return len(self._queue), len(self._event_queue)

    def queued_intent(self, node: str) -> bytes | None:
        """The queued intent (a join or leave message) about `node`, if any."""
        return next((msg for _, key, msg in self._queue if key == node), None)

    def user_event(self, name: str, payload: bytes, coalesce: bool = True) -> tuple[int, list[SerfOutput]]:
        """Fire a user event into the cluster (and deliver it here); its Lamport time and the outputs."""
        if len(name) + len(payload) > MAX_USER_EVENT:
            raise ValueError(f"user event exceeds the {MAX_USER_EVENT}-byte limit")
        ltime = self.event_clock.time
        self.event_clock.increment()
        msg = sm.encode(sm.UserEventMsg(ltime, name, payload, coalesce))
        self._handle_user_event(ltime, name, payload, coalesce)
        self._event_queue.append((0, msg))
        self._news = True
        return ltime, self._done()

    def query(self, name: str, payload: bytes, timeout: float) -> tuple[int, list[SerfOutput]]:
        """Broadcast a query (answered straight to us); its id and the outputs. Each responder's first answer
        comes back as a QueryResponse (ours among them) until `close_query(id)`."""
        ltime = self.query_clock.time
        self.query_clock.increment()
        qid = self.rng.getrandbits(32)
        q = sm.QueryMsg(ltime=ltime, id=qid, addr=self.addr, port=self.port, source_node=self.name,
                        timeout_ns=int(timeout * 1e9), name=name, payload=payload)
        self._responders[qid] = set()
        raw = sm.encode(q)
        self._handle_query(q)  # we answer our own query too, as Serf does
        self._query_queue.append((0, raw))
        self._news = True
        return qid, self._done()

    def close_query(self, qid: int) -> None:
        """Stop collecting answers to our query `qid` (later ones are dropped)."""
        self._responders.pop(qid, None)

    def _retransmit_limit(self) -> int:
        # As memberlist computes it, from the members alive right now (not when the message was queued:
        # a node that fires an event just after joining would otherwise send it only a handful of times).
        alive = sum(1 for mem in self.members.values() if mem.status == Status.ALIVE)
        return 4 * max(1, math.ceil(math.log10(alive + 1)))

    def reap(self, now: float) -> list[SerfOutput]:
        """Forget failed members after reconnect_timeout and left ones after tombstone_timeout."""
        limits = {Status.FAILED: self.reconnect_timeout, Status.LEFT: self.tombstone_timeout}
        for name, mem in list(self.members.items()):
            limit = limits.get(mem.status)
            if limit is not None and name != self.name and now - mem.leave_time > limit:
                del self.members[name]
                self._event("member-reap", mem)
        return self._done()

    def member_views(self) -> list[Member]:
        """Every member we know (ourselves included) as typed values."""
        return [mem.view() for mem in self.members.values()]

    def _event(self, kind: str, mem: SerfMember) -> None:
        self._out.append(MemberEvent(kind, mem.view()))

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

    def notify_msg(self, now: float, payload: bytes) -> list[SerfOutput]:
        try:
            msg = sm.decode(payload)
            bounds.serf_message(msg)
            if isinstance(msg, sm.JoinMsg):
                if self._handle_join(msg.ltime, msg.node):
                    self._broadcast(msg.node, payload)
            elif isinstance(msg, sm.LeaveMsg):
                if self._handle_leave(msg.ltime, msg.node, msg.prune):
                    self._broadcast(msg.node, payload)
            elif isinstance(msg, sm.UserEventMsg):
                if self._handle_user_event(msg.ltime, msg.name, msg.payload, msg.cc):
                    self._event_queue.append((0, payload))
                    self._news = True
            elif isinstance(msg, sm.QueryMsg):
                if self._handle_query(msg) and not msg.no_broadcast:
                    self._query_queue.append((0, payload))
                    self._news = True
            elif isinstance(msg, sm.QueryResponseMsg):
                if not msg.ack:
                    self._response(msg.id, msg.from_node, msg.payload)
        except MessageError:
            self.bad_messages += 1  # a bad message changes nothing
        return self._done()

    def _response(self, qid: int, from_node: str, payload: bytes) -> None:
        """An answer to our query `qid`: passed on once per responder while the query is open."""
        responders = self._responders.get(qid)
        if responders is not None and from_node not in responders:
            responders.add(from_node)
            self._out.append(QueryResponse(qid, from_node, payload))

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
        events = tuple(sm.UserEvents(self._recent_ltime[i], tuple(sm.UserEvent(n, p) for (n, p) in slot))
                       for i, slot in enumerate(self._recent) if slot)
        return sm.encode(sm.PushPullMsg(
            ltime=self.clock.time,
            status_ltimes={name: mem.status_ltime for name, mem in self.members.items()},
            left_members=tuple(name for name, mem in self.members.items() if mem.status == Status.LEFT),
            event_ltime=self.event_clock.time, events=events, query_ltime=self.query_clock.time))

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> list[SerfOutput]:
        try:
            pp = sm.decode(data)
            if not isinstance(pp, sm.PushPullMsg):
                raise MessageError(f"expected Serf's push-pull state, got {type(pp).__name__}")
            bounds.serf_push_pull(pp)
        except MessageError:
            self.bad_messages += 1
            return self._done()
        for clock, t in ((self.clock, pp.ltime), (self.event_clock, pp.event_ltime),
                         (self.query_clock, pp.query_ltime)):
            if t > 0:
                clock.witness(t - 1)
        left = set(pp.left_members)
        for name in left:
            self._handle_leave(pp.status_ltimes.get(name, 0), name, False)
        for name, ltime in pp.status_ltimes.items():
            if name not in left:
                self._handle_join(ltime, name)
        if join:
            # A joiner does not replay old events (Serf's default, -replay off).
            self.event_min_time = max(self.event_min_time, pp.event_ltime)
            return self._done()
        for batch in pp.events:
            if batch is None:
                continue  # an empty slot of the sender's ring buffer
            for ev in batch.events:
                self._handle_user_event(batch.ltime, ev.name, ev.payload, False)
        return self._done()

    def notify_join(self, now: float, member: MemberInfo) -> list[SerfOutput]:
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
        self._event("member-join", mem)
        return self._done()

    def notify_leave(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        mem = self.members.get(member.name)
        if mem is None:
            return []
        if mem.status == Status.LEAVING or (member.state == NodeState.LEFT and mem.status != Status.FAILED):
            mem.status = Status.LEFT
            kind = "member-leave"
        elif mem.status == Status.ALIVE:
            mem.status = Status.FAILED
            kind = "member-failed"
        else:
            return []
        mem.leave_time = now
        self._event(kind, mem)
        return self._done()

    def notify_update(self, now: float, member: MemberInfo) -> list[SerfOutput]:
        mem = self.members.get(member.name)
        if mem is None:
            return []
        mem.addr, mem.port, mem.tags = member.addr, member.port, member_tags(member.meta)
        self._event("member-update", mem)
        return self._done()

    # ------------------------------------------------------------------------------------------ intents

    def _broadcast(self, key: str, msg: bytes) -> None:
        # A newer intent about the same member replaces the older one in the queue.
        self._queue = [item for item in self._queue if item[1] != key]
        self._queue.append((0, key, msg))
        self._news = True

    def _record_intent(self, node: str, kind: SerfType, ltime: int) -> bool:
        """An intent about a member we do not know yet, kept until it shows up; True if newer (re-gossip)."""
        old = self._intents.get(node)
        if old is not None and old[1] >= ltime:
            return False
        self._intents.pop(node, None)
        if len(self._intents) >= limits.INTENTS_MAX:
            # Names nobody has seen alive yet come from anyone; keep the newest ones (dicts keep order).
            del self._intents[next(iter(self._intents))]
        self._intents[node] = (kind, ltime)
        return True

    def _handle_join(self, ltime: int, node: str) -> bool:
        self.clock.witness(ltime)
        mem = self.members.get(node)
        if mem is None:
            return self._record_intent(node, SerfType.JOIN, ltime)
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
            return self._record_intent(node, SerfType.LEAVE, ltime)
        if ltime <= mem.status_ltime:
            return False
        if node == self.name and not self.leaving:
            # Someone says we are leaving: refute with a newer join.
            self._broadcast(self.name, sm.encode(sm.JoinMsg(self.clock.increment(), self.name)))
            return False
        mem.status_ltime = ltime
        if mem.status == Status.ALIVE:
            mem.status = Status.LEAVING
            return True
        if mem.status == Status.FAILED:
            mem.status = Status.LEFT
            self._event("member-leave", mem)
            if prune:
                del self.members[node]
                self._event("member-reap", mem)
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
            if not response.ack:
                self._response(q.id, response.from_node, response.payload)
            return
        self._out.append(Reply(q.addr, q.port, sm.encode(response)))

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
        self._out.append(KeyringChanged(self.keyring.keys))
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
        self._out.append(UserEvent(ltime, name, payload, coalesce))
        return True
