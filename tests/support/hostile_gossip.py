"""Hypothesis strategies for hostile gossip: memberlist and Serf messages, packets, push-pull streams.

"Hostile" messages have at least one field out of range, of the wrong type or shape, so a correct receiver
drops every one of them (the live fuzz relies on that: nothing it sends may change membership). "Any"
messages mix valid and hostile fields, for property tests of the cores' invariants. `targets` are names of
real nodes, so that claims name them. `draw_many` pre-generates examples in bulk with a printed seed.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgpack
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from meshagent.gossip import limits, lzw
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm

T = TypeVar("T")
Strategy = st.SearchStrategy

U64_MAX = (1 << 64) - 1
# The acceptance packet of issue 11: a dead message at incarnation 2^64-1 (and its variants).
OVERFLOW_INCARNATIONS = (U64_MAX, 1 << 32, -1, (1 << 63) - 1)


def pack(obj: Any) -> bytes:
    """msgpack as go-msgpack writes it (old spec: str and bytes both raw)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=False)
    return packed


def overflow_claim(kind: m.MessageType, node: str, incarnation: int, addr: bytes = b"\x7f\x00\x00\x01",
                   port: int = 8301) -> bytes:
    """A suspect, dead or alive message about `node` at `incarnation` (any int msgpack can carry)."""
    body: dict[str, Any] = {"Incarnation": incarnation, "Node": node}
    if kind == m.MessageType.ALIVE:
        body.update({"Addr": addr, "Port": port, "Meta": b"", "Vsn": m.DEFAULT_VSN})
    else:
        body["From"] = "mallory"
    return bytes([kind]) + pack(body)


def serf_intent(kind: sm.SerfMessageType, node: str, ltime: int) -> bytes:
    """A Serf join or leave intent about `node` at `ltime`, as a memberlist user message."""
    body: dict[str, Any] = {"LTime": ltime, "Node": node}
    if kind == sm.SerfMessageType.LEAVE:
        body["Prune"] = False
    return bytes([m.MessageType.USER, kind]) + pack(body)


# ------------------------------------------------------------------------------------------------ values

_WIDTH = {"uint": (1 << 63) - 1, "u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFF_FFFF, "u64": U64_MAX,
          "i64": (1 << 63) - 1}

# Never empty: an empty list or map is a valid value of a container field.
_wrong_scalar = st.one_of(st.floats(allow_nan=True), st.lists(st.integers(0, 9), min_size=1, max_size=3),
                          st.dictionaries(st.integers(0, 9), st.integers(0, 9), min_size=1, max_size=2))
_bad_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"a\xed\xa0\x80", b"\xfe\xfe\xff"])


@functools.cache
def _name(targets: Sequence[str]) -> Strategy[str]:
    names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
    return st.one_of(st.sampled_from(list(targets)), names) if targets else names


@functools.cache
def _valid(kind: str, go: str, targets: Sequence[str]) -> Strategy[Any]:
    """A value of the right Go type (not always a sensible one)."""
    if kind in _WIDTH:
        top = _WIDTH[kind]
        edges = [0, 1, top, top - 1, 1 << 31, (1 << 31) + 1, 0xFFFF_FFFF, limits.LTIME_MAX]
        lo = -(1 << 63) if kind == "i64" else 0
        return st.one_of(st.integers(lo, min(top, 1 << 20)), st.sampled_from([e for e in edges if lo <= e <= top]))
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        return _name(targets) if go in ("Node", "From", "Name", "SourceNode") else st.text(max_size=16)
    if kind == "bytes":
        if go in ("Addr", "Target", "SourceAddr", "IP"):
            return st.sampled_from([b"\x7f\x00\x00\x01", bytes(16), b"\x7f\x00\x00\x32"])
        if go == "Vsn":
            return st.just(m.DEFAULT_VSN)
        return st.binary(max_size=24)
    if kind == "[]str":
        return st.lists(_name(targets), max_size=4)
    if kind == "[]bytes":
        return st.lists(st.binary(max_size=8), max_size=3)
    if kind == "map[str]str":
        return st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
    if kind == "map[str]u64":
        return st.dictionaries(_name(targets), st.integers(0, 1 << 20), max_size=4)
    if kind == "[]userEvent":
        return st.lists(st.fixed_dictionaries({"Name": st.text(max_size=6), "Payload": st.binary(max_size=6)}),
                        max_size=3)
    if kind == "[]*userEvents":
        batch = st.fixed_dictionaries({"LTime": st.integers(0, 1 << 20), "Events": _valid("[]userEvent", "", ())})
        return st.lists(st.one_of(st.none(), batch), max_size=4)
    raise AssertionError(kind)


@functools.cache
def _semantic(owner: str, go: str, kind: str) -> Strategy[Any] | None:
    """A value of the right Go type that the cores must still refuse (None: no such value for this field)."""
    claim = owner in ("Suspect", "Dead")
    if go == "Incarnation" and claim:
        return st.integers(limits.CLAIM_INCARNATION_MAX + 1, limits.INCARNATION_MAX)
    if go in ("LTime", "EventLTime", "QueryLTime") and kind == "u64":
        return st.one_of(st.just(U64_MAX), st.integers(limits.LTIME_MAX + 1, U64_MAX))
    if go in ("Node", "From", "Name", "SourceNode") and owner not in ("Ping", "IndirectPing", "ErrResp",
                                                                       "UserEvent", "KeyResponseMsg"):
        return st.integers(limits.NAME_MAX + 1, limits.NAME_MAX + 40).map(lambda n: "n" * n)
    if go in ("Addr", "Target") and owner in ("Alive", "IndirectPing", "PushNodeState", "QueryMsg"):
        return st.binary(min_size=0, max_size=20).filter(lambda b: len(b) not in limits.ADDR_SIZES)
    if go == "Meta" and owner in ("Alive", "PushNodeState"):
        return st.binary(min_size=limits.META_MAX + 1, max_size=limits.META_MAX + 40)
    if go == "Vsn" and owner in ("Alive", "PushNodeState"):
        return st.binary(min_size=limits.VSN_MAX + 1, max_size=limits.VSN_MAX + 8)
    if go == "State" and owner == "PushNodeState":
        return st.integers(4, 1 << 20)
    if go == "StatusLTimes":
        return st.dictionaries(st.text(min_size=1, max_size=4), st.integers(limits.LTIME_MAX + 1, U64_MAX),
                               min_size=1, max_size=3)
    return None


@functools.cache
def _hostile(owner: str, go: str, kind: str) -> Strategy[Any]:
    """A value no receiver may take for this field: wrong type, out of the Go range, or refused by bounds."""
    options: list[Strategy[Any]] = [_wrong_scalar]
    if kind in _WIDTH:
        top = _WIDTH[kind]
        big = U64_MAX
        lo = -(1 << 63) if kind == "i64" else 0
        if top < big:
            options.append(st.integers(top + 1, big))
        if lo == 0:
            options.append(st.integers(-(1 << 63), -1))
        options.append(st.sampled_from([b"1", True, False, 1.5]))
    elif kind == "bool":
        options.append(st.sampled_from([0, 1, b"true", 2]))
    elif kind == "str":
        options.append(_bad_utf8)
        options.append(st.integers(0, 9))
    elif kind == "bytes":
        options.append(st.sampled_from([0, 7, True]))
    else:  # containers
        options.append(st.sampled_from([7, True, b"x"]))
        if kind.startswith("map"):
            options.append(st.just({1: 2}))
        else:
            options.append(st.just([{"x": 1}, 3]) if "user" in kind else st.just([1, [2]]))
    semantic = _semantic(owner, go, kind)
    if semantic is not None:
        options.insert(0, semantic)
    return st.one_of(options)


def _fields(cls: type[Any]) -> list[tuple[str, str, bool]]:
    """(Go name, kind, required) for a memberlist or Serf message class (Serf fields are never required)."""
    out = []
    for spec in cls.GO:
        if len(spec) == 4:  # memberlist: attr, go, kind, omitempty
            attr, go, kind, _ = spec
            out.append((go, kind, not _has_default(cls, attr)))
        else:
            _, go, kind = spec
            out.append((go, kind, False))
    return out


def _has_default(cls: type[Any], attr: str) -> bool:
    return any(f.name == attr and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
               for f in dataclasses.fields(cls))


@st.composite
def body_map(draw: st.DrawFn, cls: type[Any], targets: Sequence[str] = (), hostile: bool = True) -> Any:
    """A msgpack-ready body for `cls`: with `hostile`, at least one field the receiver must refuse."""
    targets = tuple(targets)
    fields = _fields(cls)
    body: dict[str, Any] = {go: draw(_valid(kind, go, targets)) for go, kind, _ in fields}
    if not hostile:
        for go, kind, _ in fields:
            if draw(st.integers(0, 9)) == 0:
                body[go] = draw(_hostile(cls.__name__, go, kind))
        return body
    shape = draw(st.integers(0, 9))
    required = [go for go, _, req in fields if req]
    if shape == 0:
        return draw(st.one_of(st.integers(-(1 << 63), U64_MAX), st.text(max_size=4),
                              st.lists(st.integers(0, 3), max_size=3)))
    if shape == 1 and required:
        del body[draw(st.sampled_from(required))]
        return body
    for index in draw(st.lists(st.integers(0, len(fields) - 1), min_size=1, max_size=2, unique=True)):
        go, kind, _ = fields[index]
        body[go] = draw(_hostile(cls.__name__, go, kind))
    return body


_PACKET_CLASSES: list[type[Any]] = [m.Ping, m.IndirectPing, m.AckResp, m.NackResp, m.ErrResp, m.Suspect, m.Alive,
                                    m.Dead]
_SERF_CLASSES: list[type[Any]] = [sm.LeaveMsg, sm.JoinMsg, sm.PushPullMsg, sm.UserEventMsg, sm.QueryMsg,
                                  sm.QueryResponseMsg, sm.KeyRequestMsg, sm.KeyResponseMsg]
_CAN_BE_HARMLESS = (m.AckResp, m.NackResp, m.ErrResp)  # no field a receiver stores: always droppable


def _always_hostile(cls: type[Any]) -> bool:
    return cls not in _CAN_BE_HARMLESS


@st.composite
def memberlist_message(draw: st.DrawFn, targets: Sequence[str] = (), hostile: bool = True) -> bytes:
    """One single memberlist message (type byte + body); hostile ones are refused by a correct receiver."""
    if draw(st.integers(0, 5)) == 0:
        return bytes([m.MessageType.USER]) + draw(serf_message(targets, hostile))
    cls = draw(st.sampled_from(_PACKET_CLASSES))
    data = bytes([cls.TYPE]) + pack(draw(body_map(cls, targets, hostile)))
    if hostile and draw(st.integers(0, 7)) == 0:
        cut = draw(st.integers(1, max(1, len(data) - 1)))
        data = data[:cut] if draw(st.booleans()) else data + b"\xc1" * cut  # truncated, or trailing junk
    return data


@st.composite
def serf_message(draw: st.DrawFn, targets: Sequence[str] = (), hostile: bool = True) -> bytes:
    """One Serf message (Serf type byte + body)."""
    if hostile and draw(st.integers(0, 9)) == 0:
        return bytes([draw(st.sampled_from([6, 9, 10, 99, 255]))]) + draw(st.binary(max_size=16))
    cls = draw(st.sampled_from(_SERF_CLASSES))
    return bytes([cls.TYPE]) + pack(draw(body_map(cls, targets, hostile)))


@st.composite
def node_state(draw: st.DrawFn, targets: Sequence[str] = (), hostile: bool = True) -> Any:
    """One push-pull node-state map."""
    return draw(body_map(m.PushNodeState, targets, hostile))


# ------------------------------------------------------------------------------------------------ framings


def compound(parts: Sequence[bytes]) -> bytes:
    """A compound message with a truthful length table (parts cut to 65535 bytes)."""
    parts = [p[:0xFFFF] for p in parts][:255]
    lengths = struct.pack(f">{len(parts)}H", *map(len, parts))
    return bytes([m.MessageType.COMPOUND, len(parts)]) + lengths + b"".join(parts)


def compressed(payload: bytes, algo: int = 0) -> bytes:
    """A compress message (type 9) holding `payload` LZW-compressed."""
    return bytes([m.MessageType.COMPRESS]) + pack({"Algo": algo, "Buf": lzw.compress(payload)})


def with_crc(payload: bytes, lie: bool = False) -> bytes:
    """`payload` behind a hasCrc header (a wrong CRC if `lie`)."""
    return bytes([m.MessageType.HAS_CRC]) + struct.pack(">I", zlib.crc32(payload) ^ int(lie)) + payload


@st.composite
def lzw_garbage(draw: st.DrawFn) -> bytes:
    """LZW input a decoder must refuse or bound: random codes, truncated streams, a code bomb."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    good = lzw.compress(draw(st.binary(min_size=1, max_size=64)))
    if kind == 1:
        return good[: draw(st.integers(0, max(0, len(good) - 1)))]
    if kind == 2:
        data = bytearray(good)
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    return _BOMBS[draw(st.integers(0, len(_BOMBS) - 1))]  # highly compressible: expands a lot


_BOMBS = [lzw.compress(bytes(n)) for n in (5_000, 60_000)]


@st.composite
def packet(draw: st.DrawFn, targets: Sequence[str] = (), hostile: bool = True) -> bytes:
    """A UDP packet: hostile messages in memberlist's framings (compound, compress, CRC), or broken framing."""
    msgs = draw(st.lists(memberlist_message(targets, hostile), min_size=1, max_size=4))
    frame = draw(st.integers(0, 9))
    if frame <= 2:
        payload = msgs[0]
    elif frame <= 4:
        payload = compound(msgs)
    elif frame == 5:
        payload = compressed(compound(msgs) if len(msgs) > 1 else msgs[0])
    elif frame == 6:  # a lying length table
        body = compound(msgs)
        payload = body[:2] + bytes([0xFF, 0xFF]) + body[4:] if len(body) > 4 else body
    elif frame == 7:
        algo = draw(st.sampled_from([0, 1, -1, 2**40]))
        payload = bytes([m.MessageType.COMPRESS]) + pack({"Algo": algo, "Buf": draw(lzw_garbage())})
    elif frame == 8:  # nested deeper than anyone sends
        payload = msgs[0]
        for _ in range(draw(st.integers(5, 12))):
            payload = compound([payload])
    else:
        payload = bytes([draw(st.sampled_from([m.MessageType.ENCRYPT, m.MessageType.HAS_CRC, 14, 200]))]) + \
            draw(st.binary(max_size=60))
    if draw(st.integers(0, 3)) == 0:
        payload = with_crc(payload, lie=draw(st.booleans()))
    return payload


@st.composite
def push_pull_stream(draw: st.DrawFn, targets: Sequence[str] = ()) -> bytes:
    """A plaintext TCP push-pull stream that a correct receiver must refuse as a whole."""
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a header that lies about its sizes
        header = {"Nodes": draw(st.sampled_from([-1, 1 << 40, limits.PUSH_PULL_NODES_MAX + 1, 2**63 - 1])),
                  "UserStateLen": draw(st.sampled_from([0, -5, 1 << 33])), "Join": False}
        return bytes([m.MessageType.PUSH_PULL]) + pack(header)
    good = draw(st.lists(node_state(targets, hostile=False), max_size=3))
    if kind == 1:  # no node states, a hostile Serf state
        user = draw(serf_message(targets, True))
        return bytes([m.MessageType.PUSH_PULL]) + pack({"Nodes": 0, "UserStateLen": len(user), "Join": False}) + user
    bad = draw(node_state(targets, hostile=True))
    nodes = [*good, bad]
    nodes = draw(st.permutations(nodes))
    user = draw(st.one_of(st.just(b""), serf_message(targets, False)))
    head = {"Nodes": len(nodes), "UserStateLen": len(user), "Join": draw(st.booleans())}
    data = bytes([m.MessageType.PUSH_PULL]) + pack(head) + b"".join(pack(n) for n in nodes) + user
    if kind == 3:
        data = data[: draw(st.integers(1, len(data) - 1))]  # cut short: the reader must time out or refuse
    if kind == 4:
        data = compressed(data)
    return data


# ------------------------------------------------------------------------------------------------ bulk


def draw_many(strategy: Strategy[T], n: int, seed_value: int) -> list[T]:
    """Up to `n` examples of `strategy`, the same for the same seed (no shrinking, no database)."""
    out: list[T] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(strategy)
    def collect(example: T) -> None:
        out.append(example)

    collect()
    return out


def expand(pieces: Sequence[bytes], n: int, rng_seed: int,
           frame: Callable[[list[bytes]], bytes] = compound) -> list[bytes]:
    """`n` packets from `pieces`: each piece alone, then compounds of 2-4 pieces chosen by a seeded RNG."""
    rng = random.Random(rng_seed)
    out = list(pieces[:n])
    while len(out) < n:
        parts = [rng.choice(pieces) for _ in range(rng.randint(2, 4))]
        out.append(frame(parts) if len(b"".join(parts)) < 60_000 else parts[0])
    return out
