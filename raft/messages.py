"""Raft RPC messages and their msgpack-ready wire form (lists, strictly validated on the way in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .entry import CONFIG, MAX_ID_LEN, MAX_INDEX, Entry, Membership, show_value


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote; with `pre_vote` it asks "would you vote?" without anyone changing term."""

    term: int
    candidate: str
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # sent after TimeoutNow: voters ignore their leader stickiness


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """Answer to a VoteRequest."""

    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """AppendEntries (a heartbeat when `entries` is empty); `seq` lets the leader match answers to sends."""

    term: int
    leader: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    seq: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Answer to AppendEntries: on success `last_index` is the match index, otherwise a hint where to retry."""

    term: int
    success: bool
    last_index: int
    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One chunk of InstallSnapshot; `done` marks the last chunk."""

    term: int
    leader: str
    last_index: int
    last_term: int
    membership: Membership
    offset: int
    data: bytes
    done: bool
    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Answer to a snapshot chunk: `offset` is the next byte the follower expects."""

    term: int
    last_index: int
    offset: int
    done: bool
    seq: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the target starts an election at once."""

    term: int
    leader: str


Message = VoteRequest | VoteResponse | AppendRequest | AppendResponse | SnapshotRequest | SnapshotResponse | TimeoutNow

_CODES: dict[type, int] = {VoteRequest: 1, VoteResponse: 2, AppendRequest: 3, AppendResponse: 4,
                           SnapshotRequest: 5, SnapshotResponse: 6, TimeoutNow: 7}


def encode_message(msg: Message) -> list[Any]:
    """The msgpack-ready list form of a message."""
    code = _CODES[type(msg)]
    if isinstance(msg, AppendRequest):
        return [code, msg.term, msg.leader, msg.prev_index, msg.prev_term,
                [[e.index, e.term, e.kind, e.data] for e in msg.entries], msg.commit, msg.seq]
    if isinstance(msg, SnapshotRequest):
        return [code, msg.term, msg.leader, msg.last_index, msg.last_term, msg.membership.to_wire(),
                msg.offset, msg.data, msg.done, msg.seq]
    if isinstance(msg, VoteRequest):
        return [code, msg.term, msg.candidate, msg.last_index, msg.last_term, msg.pre_vote, msg.transfer]
    if isinstance(msg, VoteResponse):
        return [code, msg.term, msg.granted, msg.pre_vote]
    if isinstance(msg, AppendResponse):
        return [code, msg.term, msg.success, msg.last_index, msg.seq]
    if isinstance(msg, SnapshotResponse):
        return [code, msg.term, msg.last_index, msg.offset, msg.done, msg.seq]
    return [code, msg.term, msg.leader]


# Every number from the wire lies in [0, MAX_WIRE_INT]: far beyond anything a real cluster reaches (a term a
# second for 10^11 years), and far enough below 2^63 that a +1 never overflows msgpack or SQLite integers.
MAX_WIRE_INT = MAX_INDEX
MAX_ENTRIES = 65536       # entries in one AppendEntries (the leader sends max_entries_per_append, 1024)


def _int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= MAX_WIRE_INT:
        raise ValueError(f"expected an integer in [0, 2^62], got {show_value(v)}")
    return v


def _str(v: object, limit: int = MAX_ID_LEN) -> str:
    if not isinstance(v, str) or not v or len(v) > limit:
        raise ValueError(f"expected a non-empty string of at most {limit} characters, got {show_value(v)}")
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected a boolean, got {show_value(v)}")
    return v


def _bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return v


def _entry(raw: object) -> Entry:
    if not isinstance(raw, list) or len(raw) != 4:
        raise ValueError("an entry must be [index, term, kind, data]")
    kind = _int(raw[2])
    if kind > 2:
        raise ValueError(f"unknown entry kind {kind}")
    entry = Entry(_int(raw[0]), _int(raw[1]), kind, _bytes(raw[3]))
    if kind == CONFIG:
        Membership.decode(entry.data)  # a follower decodes it on append: refuse it here, not halfway there
    return entry


_ARITY = {1: 7, 2: 4, 3: 8, 4: 5, 5: 10, 6: 6, 7: 3}


def decode_message(raw: object) -> Message:
    """Parse the list form; raises ValueError on anything malformed, out of range or inconsistent."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("a raft message must be a non-empty list")
    code = raw[0]
    if type(code) is not int or code not in _ARITY:
        raise ValueError(f"unknown raft message type {code!r}")
    if len(raw) != _ARITY[code]:
        raise ValueError(f"raft message type {code} needs {_ARITY[code] - 1} fields, got {len(raw) - 1}")
    f = raw[1:]
    if code == 1:
        term, last_index, last_term = _int(f[0]), _int(f[2]), _int(f[3])
        if last_term > term:
            raise ValueError("a candidate's last term is never above the term it asks for")
        return VoteRequest(term, _str(f[1]), last_index, last_term, _bool(f[4]), _bool(f[5]))
    if code == 2:
        return VoteResponse(_int(f[0]), _bool(f[1]), _bool(f[2]))
    if code == 3:
        if not isinstance(f[4], list) or len(f[4]) > MAX_ENTRIES:
            raise ValueError(f"entries must be a list of at most {MAX_ENTRIES}")
        term, prev, prev_term = _int(f[0]), _int(f[2]), _int(f[3])
        entries = tuple(_entry(e) for e in f[4])
        if prev_term > term:
            raise ValueError("prev_term is never above the leader's term")
        last_term = prev_term
        for i, e in enumerate(entries):
            if e.index != prev + 1 + i:
                raise ValueError("entries are not contiguous after prev_index")
            if not last_term <= e.term <= term or e.term == 0:
                raise ValueError("entry terms must rise from prev_term and never pass the leader's term")
            last_term = e.term
        return AppendRequest(term, _str(f[1]), prev, prev_term, entries, _int(f[5]), _int(f[6]))
    if code == 4:
        return AppendResponse(_int(f[0]), _bool(f[1]), _int(f[2]), _int(f[3]))
    if code == 5:
        term, last_index, last_term = _int(f[0]), _int(f[2]), _int(f[3])
        membership = Membership.from_wire(f[4])
        if not membership.voters or last_index == 0 or not 0 < last_term <= term:
            raise ValueError("a snapshot covers at least entry 1 of a term up to the leader's, with voters")
        return SnapshotRequest(term, _str(f[1]), last_index, last_term, membership,
                               _int(f[5]), _bytes(f[6]), _bool(f[7]), _int(f[8]))
    if code == 6:
        return SnapshotResponse(_int(f[0]), _int(f[1]), _int(f[2]), _bool(f[3]), _int(f[4]))
    return TimeoutNow(_int(f[0]), _str(f[1]))
