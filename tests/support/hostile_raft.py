"""Hypothesis strategies for hostile Raft messages and :8300 frames (issue 11), shared by core and live tests.

Three layers: hostile scalars (overflowing ints, wrong types, nested junk), list-form Raft messages that are
malformed in one field or in shape, and whole frames (raft / req / sub / junk, some cut short or with a
lying length prefix). `well_formed_message` builds messages the decoder accepts, with values anywhere in
range, for feeding the core directly.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
from hypothesis import strategies as st
from meshagent.raft.entry import COMMAND, CONFIG, NOOP, Entry, Membership, Server
from meshagent.raft.messages import (
    MAX_WIRE_INT,
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_message,
)

# The values that broke real systems: overflow edges of int64/uint64, negative, just past our bound.
EDGE_INTS = [2**64 - 1, 2**63, 2**63 - 1, 2**62 + 1, MAX_WIRE_INT, -1, -(2**63), 0, 1]


def hostile_ints() -> st.SearchStrategy[Any]:
    """Integers at and beyond every edge, and things that are almost integers."""
    return st.one_of(st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**64 - 1),
                     st.floats(allow_nan=True), st.booleans())


def junk(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any msgpack-encodable value, nested."""
    scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**64 - 1),
                        st.floats(), st.text(max_size=20), st.binary(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=max_leaves)


def hostile_value() -> st.SearchStrategy[Any]:
    """A value for one field of a message: hostile ints or junk."""
    return st.one_of(hostile_ints(), junk(3), st.text(min_size=257, max_size=300))


def _terms() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 12), st.sampled_from([MAX_WIRE_INT, MAX_WIRE_INT - 1, 2**32, 2**32 + 7]),
                     st.integers(0, MAX_WIRE_INT))


def _indexes() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 40), st.sampled_from([MAX_WIRE_INT, MAX_WIRE_INT - 1]),
                     st.integers(0, MAX_WIRE_INT))


def _membership(ids: list[str]) -> st.SearchStrategy[Membership]:
    return st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True).map(
        lambda chosen: Membership(tuple(sorted((Server(i, f"{i}:8300", True) for i in chosen),
                                               key=lambda s: s.id))))


@st.composite
def _append(draw: st.DrawFn, ids: list[str]) -> AppendRequest:
    term = draw(_terms())
    prev = draw(_indexes())
    prev_term = draw(st.integers(0, term))
    n = draw(st.integers(0, 3)) if prev + 3 <= MAX_WIRE_INT else 0
    entries = []
    t = prev_term
    for i in range(n):
        t = draw(st.integers(max(t, 1), max(term, 1))) if term >= 1 else 1
        if t > term:
            break
        kind = draw(st.sampled_from([COMMAND, NOOP, CONFIG]))
        data = (msgpack.packb(draw(_membership(ids)).to_wire()) if kind == CONFIG
                else draw(st.binary(max_size=16)) if kind == COMMAND else b"")
        entries.append(Entry(prev + 1 + i, t, kind, data))
    return AppendRequest(term, draw(st.sampled_from(ids)), prev, prev_term, tuple(entries), draw(_indexes()),
                         draw(_indexes()))


@st.composite
def _snapshot(draw: st.DrawFn, ids: list[str]) -> SnapshotRequest:
    term = draw(st.integers(1, 12) | st.just(MAX_WIRE_INT))
    return SnapshotRequest(term, draw(st.sampled_from(ids)), draw(st.integers(1, MAX_WIRE_INT)),
                           draw(st.integers(1, term)), draw(_membership(ids)), draw(_indexes()),
                           draw(st.binary(max_size=32)), draw(st.booleans()), draw(_indexes()))


@st.composite
def _vote(draw: st.DrawFn, ids: list[str]) -> VoteRequest:
    term = draw(_terms())
    return VoteRequest(term, draw(st.sampled_from(ids)), draw(_indexes()), draw(st.integers(0, term)),
                       draw(st.booleans()), draw(st.booleans()))


def well_formed_message(ids: list[str]) -> st.SearchStrategy[Message]:
    """Messages the decoder accepts, with any in-range values, claiming to come from one of `ids`."""
    return st.one_of(
        _vote(ids),
        st.builds(VoteResponse, _terms(), st.booleans(), st.booleans()),
        _append(ids),
        st.builds(AppendResponse, _terms(), st.booleans(), _indexes(), _indexes()),
        _snapshot(ids),
        st.builds(SnapshotResponse, _terms(), _indexes(), _indexes(), st.booleans(), _indexes()),
        st.builds(TimeoutNow, _terms(), st.sampled_from(ids)),
    )


@st.composite
def hostile_message(draw: st.DrawFn, ids: list[str]) -> Any:
    """The list form of a message with one field (or its shape) made hostile; the decoder must refuse it."""
    wire: list[Any] = encode_message(draw(well_formed_message(ids)))
    how = draw(st.sampled_from(["field", "field", "field", "arity", "code", "entry", "junk"]))
    if how == "field":
        i = draw(st.integers(1, len(wire) - 1))
        wire[i] = draw(hostile_value())
    elif how == "arity":
        wire = wire[:-1] if draw(st.booleans()) else [*wire, draw(junk(2))]
    elif how == "code":
        wire[0] = draw(st.one_of(st.integers(8, 300), st.just(0), hostile_value()))
    elif how == "entry" and wire[0] == 3:
        wire[5] = [[draw(hostile_value()), 1, 0, b""]] if draw(st.booleans()) else [draw(junk(3))]
    else:
        return draw(junk())
    return wire


def frame(payload: Any) -> bytes:
    """A well-delimited frame around any payload."""
    body = msgpack.packb(payload, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


RPC_METHODS = ["hello", "read_index", "barrier", "add_server", "apply", "remove_peer", "nope", "", "auto_encrypt.sign"]


@st.composite
def hostile_rpc_args(draw: st.DrawFn, method: str) -> Any:
    """Arguments that must be refused: never a well-formed command for `apply`, never a valid new server."""
    if method == "apply":
        return draw(junk().filter(lambda v: not isinstance(v, bytes)))
    if method == "add_server":
        bad = draw(st.sampled_from(["id", "address", "name", "extra", "shape"]))
        args: dict[str, Any] = {"id": "fuzz-id", "address": "127.0.0.99:8300", "name": "fuzz"}
        if bad == "shape":  # a drawn dict could be a valid call
            return draw(junk().filter(lambda v: not isinstance(v, dict)))
        if bad == "extra":
            args[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in args))] = draw(junk(2))
        else:
            args[bad] = draw(st.one_of(hostile_value(), st.sampled_from(
                ["", "host:0", "host:65536", "host:-1", "ho st:80", ":80", "x" * 400 + ":1", "a\nb"])))
            if bad != "address" and isinstance(args[bad], str) and len(args[bad]) <= 128 \
                    and args[bad].isprintable() and not (bad == "id" and (" " in args[bad] or not args[bad])):
                args[bad] = 12345  # a short printable name or space-free ID is valid: keep the call invalid
        return args
    if method in ("read_index", "barrier"):
        return draw(junk().filter(lambda v: not isinstance(v, bool)))
    return draw(junk())


@st.composite
def hostile_frame(draw: st.DrawFn, members: dict[str, str]) -> bytes:
    """One frame for :8300 that a plaintext server must refuse without any persisted change.

    `members` maps the cluster's server IDs to their addresses: a Raft frame may claim a member's ID, but
    then never with its address (that one, with the current term, a plaintext cluster cannot refuse).
    """
    ids = sorted(members)
    kind = draw(st.sampled_from(["raft", "raft", "raft", "req", "req", "sub", "junk"]))
    if kind == "raft":
        src = draw(st.one_of(st.sampled_from(ids), st.sampled_from(["evil", "s9", "x" * 300]),
                             st.text(min_size=1, max_size=12)))
        address = draw(st.one_of(st.sampled_from(["10.9.9.9:8300", "127.0.0.1:8300", "nohost", ""]),
                                 st.text(max_size=12)))
        if members.get(src) == address:
            address = "203.0.113.9:8300"
        src_v: Any = draw(st.one_of(st.just(src), hostile_value())) if draw(st.integers(0, 9)) == 0 else src
        msg = draw(st.one_of(hostile_message([*ids, "evil"]),
                             well_formed_message([*ids, "evil"]).map(encode_message)))
        return frame(["raft", src_v, address, msg])
    if kind == "req":
        method = draw(st.sampled_from(RPC_METHODS))
        rid = draw(st.one_of(st.integers(0, 2**32), hostile_value()))
        return frame(["req", rid, method, draw(hostile_rpc_args(method))])
    if kind == "sub":  # a string would really subscribe (harmless, but the feed would stream to us)
        return frame(["sub", draw(hostile_value().filter(lambda v: not isinstance(v, str)))])
    return frame(draw(junk()))


class FrameFuzzer:
    """Hostile :8300 frames in bulk from one seed (plain `random`, ~20x faster than drawing from hypothesis).

    It mirrors the strategies above: well-formed messages with one field made hostile, wrong shapes, junk
    frames, RPC calls with arguments that must be refused. A Raft frame may claim a member's ID but never
    with that member's address. `killer(frame)` says whether the server will drop the connection for it.
    """

    def __init__(self, seed: int, members: dict[str, str], malformed: float = 0.5) -> None:
        self.rng = random.Random(seed)
        self.malformed = malformed  # share of Raft messages with a hostile field or shape (the decoder refuses)
        self.members = members
        self.ids = sorted(members)

    def hostile_int(self) -> Any:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(EDGE_INTS)
        if r < 0.7:
            return self.rng.randint(-(2**63), 2**64 - 1)
        if r < 0.8:
            return self.rng.choice([0.5, -0.0, float("inf"), float("nan"), 1e300])
        if r < 0.9:
            return self.rng.random() < 0.5
        return self.rng.randint(0, 50)

    def junk(self, depth: int = 2) -> Any:
        r = self.rng.random()
        if depth > 0 and r < 0.2:
            return [self.junk(depth - 1) for _ in range(self.rng.randint(0, 4))]
        if depth > 0 and r < 0.3:
            return {self.rng.choice(["id", "address", "a", ""]): self.junk(depth - 1) for _ in range(2)}
        return self.rng.choice([None, "x" * self.rng.randint(0, 300), b"\x00\xff", self.hostile_int(),
                                "s1", "127.0.0.1:8300"])

    def _small(self) -> int:
        return self.rng.choice([0, 1, 2, 5, 40, MAX_WIRE_INT, self.rng.randint(0, MAX_WIRE_INT)])

    def message(self) -> list[Any]:
        """A well-formed list-form message (values anywhere in range), then perhaps one field made hostile."""
        rng, ids = self.rng, [*self.ids, "evil"]
        term = self._small()
        who = rng.choice(ids)
        code = rng.randint(1, 7)
        if code == 1:
            wire: list[Any] = [1, term, who, self._small(), rng.randint(0, term), rng.random() < 0.5,
                               rng.random() < 0.5]
        elif code == 2:
            wire = [2, term, rng.random() < 0.5, rng.random() < 0.5]
        elif code == 3:
            prev = rng.randint(0, 50)
            t = max(term, 1)
            entries = [[prev + 1 + i, t, rng.choice([0, 2]), b"cmd"] for i in range(rng.randint(0, 3))]
            wire = [3, t, who, prev, rng.randint(0, t), entries, self._small(), self._small()]
        elif code == 4:
            wire = [4, term, rng.random() < 0.5, self._small(), self._small()]
        elif code == 5:
            t = max(term, 1)
            wire = [5, t, who, rng.randint(1, 100), rng.randint(1, t), [[i, f"{i}:8300", True] for i in self.ids],
                    self._small(), b"snapshot", rng.random() < 0.5, self._small()]
        elif code == 6:
            wire = [6, term, self._small(), self._small(), rng.random() < 0.5, self._small()]
        else:
            wire = [7, term, who]
        if rng.random() >= self.malformed:
            return wire
        how = rng.random()
        if how < 0.75:
            wire[rng.randint(1, len(wire) - 1)] = self.hostile_int() if rng.random() < 0.7 else self.junk()
        elif how < 0.83:
            wire = wire[:-1] if rng.random() < 0.5 else [*wire, self.junk(1)]
        elif how < 0.92:
            wire[0] = rng.choice([0, 8, 255, -1, 2**64 - 1, "1", None])
        elif code == 3:
            wire[5] = [[self.hostile_int(), 1, 0, b""]]
        return wire

    def raft_frame(self) -> bytes:
        rng = self.rng
        src = rng.choice([*self.ids, *self.ids, "evil", "x" * 300, ""])
        address = rng.choice(["10.9.9.9:8300", "127.0.0.1:8300", "nohost", "", "203.0.113.9:8300"])
        if self.members.get(src) == address:
            address = "203.0.113.9:8300"
        src_v: Any = self.hostile_int() if rng.random() < 0.05 else src
        return frame(["raft", src_v, address, self.message()])

    def rpc_frame(self) -> bytes:
        rng = self.rng
        method = rng.choice(RPC_METHODS)
        if method == "apply":
            args: Any = rng.choice([self.hostile_int(), None, "text", [b"x"], {"op": "kv"}])
        elif method == "add_server":
            args = {"id": "fuzz-id", "address": "127.0.0.99:8300", "name": "fuzz"}
            field = rng.choice(["id", "address", "name", "extra", "shape"])
            if field == "shape":  # junk dicts can hold a valid id and address: keep it a list
                args = [self.junk()]
            elif field == "extra":
                args["zz"] = 1
            elif field == "id":  # any printable string without spaces is a valid ID: only invalid ones here
                args["id"] = rng.choice([self.hostile_int(), None, "", "ho st", "x" * 400, ["s1"], "a\x00b"])
            elif field == "address":
                args["address"] = rng.choice([self.hostile_int(), None, "", "host", "host:0", "host:65536",
                                              "ho st:80", ":80", "x" * 400 + ":1", ["s1"]])
            else:
                args["name"] = rng.choice([self.hostile_int(), None, "x" * 200, "a\nb", ["s1"]])
        elif method in ("read_index", "barrier"):
            args = rng.choice([self.hostile_int(), None, "true", [True]])
            if isinstance(args, bool):
                args = None
        else:
            args = self.junk()
        return frame(["req", self.hostile_int() if rng.random() < 0.2 else rng.randint(0, 2**31), method, args])

    def cut(self) -> bytes:
        """Truncated msgpack behind a length that tells the truth about the cut, or a length that promises
        more than ever comes (the server waits, then the sender hangs up): one per connection."""
        body = msgpack.packb(["raft", "s0", "x:1", self.message()], use_bin_type=True)
        if self.rng.random() < 0.5:
            n = self.rng.randint(1, len(body) - 1)
            return struct.pack(">I", n) + body[:n]
        return struct.pack(">I", len(body) + self.rng.randint(1, 1000)) + body

    def frame(self) -> bytes:
        """One hostile frame: Raft (65%), RPC (30%), junk or a bad `sub` (5%)."""
        r = self.rng.random()
        if r < 0.65:
            return self.raft_frame()
        if r < 0.95:
            return self.rpc_frame()
        if r < 0.975:
            return frame(["sub", self.rng.choice([None, 1, 2**64 - 1, [], b"x"])])
        return frame(self.junk())


def killer(data: bytes) -> bool:
    """Whether a server drops the connection for this frame (it mirrors ServerListener's routing)."""
    payload = msgpack.unpackb(data[4:], raw=False)
    if not isinstance(payload, list) or not payload:
        return True
    if payload[0] == "raft" and len(payload) == 4 and isinstance(payload[1], str) and isinstance(payload[2], str):
        try:
            decode_message(payload[3])
        except ValueError:
            return True
        return False
    return not (payload[0] == "req" and len(payload) == 4 and isinstance(payload[2], str))


def is_request(data: bytes) -> bool:
    """Whether the server answers this (non-killer) frame with a "resp" frame."""
    payload = msgpack.unpackb(data[4:], raw=False)
    return isinstance(payload, list) and bool(payload) and payload[0] == "req"
