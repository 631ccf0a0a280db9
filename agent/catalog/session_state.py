"""Sessions (Consul's Chubby-style leases) in the catalog FSM: rows, their checks, and which KV keys each holds.

Pure: the proposer stamps `now` into commands that need time (destroy, KV lock), so every replica decides
alike. Links to nodes and checks are checked by `Catalog` (state.py), which owns those tables; implicit
invalidation (check critical, node gone, TTL) is the leader's session runner proposing `destroy`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config.duration import parse_duration

WATCH_KEY = "sessions"  # any session created or destroyed
SERF_CHECK = "serfHealth"
BEHAVIORS = ("release", "delete")
DEFAULT_LOCK_DELAY = 15.0  # seconds (Consul's default)
MAX_LOCK_DELAY = 60.0  # Consul: a lock-delay is between 0 and 60 s
MIN_TTL, MAX_TTL = 10.0, 86400.0  # Consul: TTL between 10 s and 24 h
MAX_SESSIONS = 100_000
MAX_CHECKS = 64  # per list (node checks, service checks)
MAX_NAME = 256  # session name, node name, check IDs, namespaces
MAX_TTL_TEXT = 32
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class SessionError(ValueError):
    """A session command that cannot be applied (the message names the field); the catalog turns it into a
    CommandError."""


def session_watch_key(session_id: str) -> str:
    """The watch key of one session (`GET /v1/session/info/:id`)."""
    return f"session:{session_id}"


def node_watch_key(node: str) -> str:
    """The watch key of one node's sessions (`GET /v1/session/node/:node`)."""
    return f"node-sessions:{node.lower()}"


@dataclass(slots=True)
class Session:
    """A session row (Consul's fields); never mutated in place: writes replace the row."""

    id: str
    name: str = ""
    node: str = ""
    node_checks: list[str] = field(default_factory=lambda: [SERF_CHECK])
    service_checks: list[dict[str, str]] = field(default_factory=list)  # [{"ID", "Namespace"}]
    lock_delay: float = DEFAULT_LOCK_DELAY  # seconds
    behavior: str = "release"
    ttl: str = ""  # as given ("" = none)
    create_index: int = 0
    modify_index: int = 0

    def check_ids(self) -> list[str]:
        """Every check this session is bound to (node checks, then service checks), in order."""
        return [*self.node_checks, *(c["ID"] for c in self.service_checks)]


# Aliases: inside SessionState, `list` is the method of that name.
SessionList = list[Session]
KeyList = list[str]


def ttl_seconds(ttl: str) -> float:
    """A session TTL string in seconds (0.0 for none); raises SessionError outside Consul's 10s-24h."""
    if ttl == "":
        return 0.0
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise SessionError(f"session: invalid TTL {ttl[:MAX_TTL_TEXT]!r}: {exc}") from None
    if seconds == 0.0:
        return 0.0
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise SessionError(f"Invalid Session TTL '{ttl}', must be between [10s=24h0m0s]")
    return seconds


def _text(data: Mapping[str, Any], key: str, default: str = "", limit: int = MAX_NAME) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SessionError(f"session: {key} must be a string")
    if len(value) > limit:
        raise SessionError(f"session: {key} is longer than {limit} characters")
    return value


def _check_list(data: Mapping[str, Any]) -> list[str]:
    value = data.get("node_checks", [SERF_CHECK])
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CHECKS:
        raise SessionError(f"session: node_checks must be a list of at most {MAX_CHECKS} check IDs")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_NAME:
            raise SessionError("session: node_checks entries must be non-empty check IDs")
    return list(dict.fromkeys(value))


def _service_checks(data: Mapping[str, Any]) -> list[dict[str, str]]:
    value = data.get("service_checks") or []
    if not isinstance(value, list) or len(value) > MAX_CHECKS:
        raise SessionError(f"session: service_checks must be a list of at most {MAX_CHECKS} entries")
    out: list[dict[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise SessionError("session: service_checks entries must be maps with an ID")
        cid, ns = item.get("ID"), item.get("Namespace", "") or ""
        if not isinstance(cid, str) or not cid or len(cid) > MAX_NAME:
            raise SessionError("session: service_checks ID must be a non-empty check ID")
        if not isinstance(ns, str) or len(ns) > MAX_NAME:
            raise SessionError("session: service_checks Namespace must be a string")
        out.append({"ID": cid, "Namespace": ns})
    return out


def _number(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SessionError(f"session: {key} must be a finite number")
    return float(value)


def parse_session(data: object) -> Session:
    """A session row from a command's dict, every field type- and bounds-checked (raises SessionError)."""
    if not isinstance(data, dict):
        raise SessionError("session: the session must be a map")
    sid = _text(data, "id")
    if not _UUID.fullmatch(sid):
        raise SessionError("session: id must be a lower-case UUID")
    lock_delay = _number(data, "lock_delay", DEFAULT_LOCK_DELAY)
    if not 0.0 <= lock_delay <= MAX_LOCK_DELAY:
        raise SessionError(f"session: lock_delay must be between 0 and {MAX_LOCK_DELAY:g} seconds")
    behavior = _text(data, "behavior", "release") or "release"
    if behavior not in BEHAVIORS:
        raise SessionError(f"Invalid Behavior setting '{behavior[:MAX_NAME]}'")
    ttl = _text(data, "ttl", limit=MAX_TTL_TEXT)
    ttl_seconds(ttl)
    node = _text(data, "node")
    if not node:
        raise SessionError("session: node is required")
    return Session(id=sid, name=_text(data, "name"), node=node, node_checks=_check_list(data),
                   service_checks=_service_checks(data), lock_delay=lock_delay, behavior=behavior, ttl=ttl)


def session_to_dict(session: Session) -> dict[str, Any]:
    """A row as a plain dict (commands, snapshots)."""
    return asdict(session)


def parse_now(value: object) -> float:
    """A command's `now` (unix seconds stamped by the proposer)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SessionError("now must be a finite number of seconds")
    return float(value)


class SessionState:
    """Every session, by ID and by node, the KV keys each holds, and each key's lock-delay deadline."""

    def __init__(self) -> None:
        self.index = 0  # the last index at which any session was created or destroyed
        self._sessions: dict[str, Session] = {}
        self._by_node: dict[str, set[str]] = {}  # node lower -> ids
        self._held: dict[str, set[str]] = {}  # id -> KV keys it holds (derived from KV rows; not snapshotted)
        self.lock_delay_until: dict[str, float] = {}  # key -> unix seconds before which no lock is granted

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionState):
            return NotImplemented
        return (self._sessions == other._sessions and self.lock_delay_until == other.lock_delay_until
                and self._held == other._held)

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ reads

    def get(self, session_id: str) -> Session | None:
        """One session by ID."""
        return self._sessions.get(session_id)

    def list(self) -> SessionList:
        """Every session, sorted by ID (Consul's order)."""
        return sorted(self._sessions.values(), key=lambda s: s.id)

    def for_node(self, node: str) -> SessionList:
        """The sessions of one node (case-insensitive), sorted by ID."""
        return [self._sessions[i] for i in sorted(self._by_node.get(node.lower(), ()))]

    def held_keys(self, session_id: str) -> KeyList:
        """The KV keys a session holds, sorted."""
        return sorted(self._held.get(session_id, ()))

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ writes (called by Catalog)

    def create(self, index: int, session: Session,
               check_status: Callable[[str], str | None]) -> Session:
        """Store a new session after Consul's checks; `check_status(check_id)` is the status of the check of
        that ID on the session's node (None: no such check). The node itself was checked by the caller."""
        if session.id in self._sessions:
            raise SessionError(f"session {session.id} already exists")
        if len(self._sessions) >= MAX_SESSIONS:
            raise SessionError(f"too many sessions (at most {MAX_SESSIONS})")
        for cid in session.check_ids():
            status = check_status(cid)
            if status is None:
                raise SessionError(f"Missing check '{cid}' registration")
            if status == "critical":
                raise SessionError(f"Check '{cid}' is in critical state")
        row = replace(session, create_index=index, modify_index=index)
        self._sessions[row.id] = row
        self._by_node.setdefault(row.node.lower(), set()).add(row.id)
        self.index = index
        return row

    def remove(self, index: int, session_id: str) -> Session | None:
        """Drop a session (its held keys are the caller's to release first); None if unknown."""
        row = self._sessions.pop(session_id, None)
        if row is None:
            return None
        nkey = row.node.lower()
        ids = self._by_node.get(nkey)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_node[nkey]
        self._held.pop(session_id, None)
        self.index = index
        return row

    def hold(self, session_id: str, key: str) -> None:
        """Record that `session_id` now holds `key`."""
        self._held.setdefault(session_id, set()).add(key)

    def drop(self, session_id: str, key: str) -> None:
        """Record that `session_id` no longer holds `key` (released, or the key was deleted)."""
        keys = self._held.get(session_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._held[session_id]

    def delay_lock(self, key: str, until: float) -> None:
        """No session may lock `key` before `until` (an invalidated session's lock-delay)."""
        self.lock_delay_until[key] = max(until, self.lock_delay_until.get(key, until))

    def lock_delayed(self, key: str, now: float) -> bool:
        """True while `key` is under lock-delay at `now`. A read only (passed deadlines go in `prune_delays`),
        so a lock refused inside a transaction leaves nothing to roll back."""
        return now < self.lock_delay_until.get(key, -math.inf)

    def prune_delays(self, now: float) -> None:
        """Forget lock-delays that ended before `now` (keeps the table bounded by recent invalidations)."""
        for key in [k for k, until in self.lock_delay_until.items() if until <= now]:
            del self.lock_delay_until[key]

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Sessions and lock-delays as plain data (held keys are rebuilt from the KV rows)."""
        return {"index": self.index, "sessions": [session_to_dict(s) for s in self._sessions.values()],
                "lock_delay_until": dict(self.lock_delay_until)}

    @classmethod
    def restore(cls, raw: object, holders: Iterable[tuple[str, str]] = ()) -> SessionState:
        """From `snapshot()` data (None: a snapshot from before sessions) and the KV's (session, key) pairs;
        raises SessionError on malformed data."""
        state = cls()
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SessionError("sessions: the snapshot section must be a map")
        index = raw.get("index", 0)
        rows = raw.get("sessions", [])
        delays = raw.get("lock_delay_until", {})
        if not isinstance(index, int) or not isinstance(rows, list) or not isinstance(delays, dict):
            raise SessionError("sessions: malformed snapshot section")
        state.index = index
        for data in rows:
            row = parse_session(data)
            created, modified = data.get("create_index", 0), data.get("modify_index", 0)
            if not isinstance(created, int) or not isinstance(modified, int):
                raise SessionError("sessions: indexes must be integers")
            row = replace(row, create_index=created, modify_index=modified)
            state._sessions[row.id] = row
            state._by_node.setdefault(row.node.lower(), set()).add(row.id)
        for key, until in delays.items():
            state.lock_delay_until[str(key)] = parse_now(until)
        for session_id, key in holders:
            state.hold(session_id, key)
        return state
