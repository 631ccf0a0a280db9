"""gossip.wire: memberlist packet and stream framing, limits, and a fuzz of both readers."""

from __future__ import annotations

import random
import struct
import zlib

import msgpack
import pytest
from meshagent.gossip import lzw, wire
from meshagent.gossip import messages as m
from meshagent.gossip.keyring import Keyring, decrypt, encrypt
from meshagent.gossip.messages import MessageError
from meshagent.gossip.wire import StreamReader, WireError

KEY, OTHER = bytes(range(32)), bytes(range(1, 17))
PING = m.encode(m.Ping(seq_no=1, node="s1"))
ACK = m.encode(m.AckResp(seq_no=1, payload=b"coords"))
ALIVE = m.encode(m.Alive(incarnation=3, node="n2", addr=b"\x7f\x00\x00\x02", port=7946, meta=b"\xff\x80"))
NODE = m.PushNodeState(name="n1", addr=b"\x7f\x00\x00\x01", port=7946, meta=b"\xff\x80", incarnation=1, state=0)


# ------------------------------------------------------------------------------------------------ UDP


def test_single_message_travels_bare() -> None:
    assert wire.pack_packet([PING]) == PING
    assert wire.unpack_packet(PING) == [PING]


def test_compound_layout() -> None:
    packet = wire.pack_packet([PING, ACK])
    assert packet[:2] == b"\x07\x02"
    assert struct.unpack(">HH", packet[2:6]) == (len(PING), len(ACK))
    assert packet[6:] == PING + ACK
    assert wire.unpack_packet(packet) == [PING, ACK]


def test_truncated_compound_yields_the_parts_that_fit() -> None:
    packet = wire.make_compound([PING, ACK, ALIVE])
    parts, truncated = wire.split_compound(packet[1:-1])
    assert [bytes(p) for p in parts] == [PING, ACK] and truncated == 1
    assert wire.unpack_packet(packet[: 8 + len(PING)]) == [PING]
    with pytest.raises(WireError, match="length table"):
        wire.unpack_packet(packet[:5])
    with pytest.raises(WireError, match="part count"):
        wire.unpack_packet(b"\x07")


def test_make_compound_limits() -> None:
    with pytest.raises(WireError):
        wire.make_compound([PING] * 256)
    with pytest.raises(WireError):
        wire.make_compound([b"\x08" + b"x" * 70_000])
    with pytest.raises(WireError, match="1 to 65535"):
        wire.make_compound([PING, b""])  # would crash a memberlist 0.2 receiver
    assert wire.unpack_packet(wire.make_compound([PING] * 255)) == [PING] * 255


def test_crc_header() -> None:
    packet = wire.pack_packet([PING, ACK], crc=True)
    body = wire.make_compound([PING, ACK])
    assert packet == b"\x0c" + struct.pack(">I", zlib.crc32(body)) + body
    assert wire.unpack_packet(packet) == [PING, ACK]
    broken = packet[:-1] + bytes([packet[-1] ^ 1])
    with pytest.raises(WireError, match="CRC"):
        wire.unpack_packet(broken)
    with pytest.raises(WireError, match="CRC"):
        wire.unpack_packet(b"\x0c\x00\x00")


def test_compression_only_when_smaller() -> None:
    assert wire.pack_packet([PING], compress=True) == PING  # too small to gain
    msgs = [ALIVE] * 10
    packet = wire.pack_packet(msgs, compress=True)
    assert packet[0] == m.MessageType.COMPRESS and len(packet) < len(wire.make_compound(msgs))
    raw = msgpack.unpackb(packet[1:], raw=True)
    assert set(raw) == {b"Algo", b"Buf"} and raw[b"Algo"] == 0
    assert wire.unpack_packet(packet) == msgs


def test_layers_in_memberlist_order() -> None:
    ring = Keyring([KEY])
    msgs = [ALIVE] * 10
    packet = wire.pack_packet(msgs, keyring=ring, crc=True, compress=True)
    plain = decrypt([KEY], packet, b"")  # UDP: no additional data
    assert plain[0] == m.MessageType.HAS_CRC and plain[5] == m.MessageType.COMPRESS
    assert wire.unpack_packet(packet, keyring=ring) == msgs


def test_nested_compound_and_compress() -> None:
    inner = wire.compress_message(wire.make_compound([PING, ACK]))
    packet = wire.make_compound([ALIVE, inner, wire.make_compound([PING])])
    assert wire.unpack_packet(packet) == [ALIVE, PING, ACK, PING]


def test_nesting_depth_limited() -> None:
    packet = PING
    for _ in range(wire.MAX_NESTING + 1):
        packet = wire.make_compound([packet])
    with pytest.raises(WireError, match="nested"):
        wire.unpack_packet(packet)


def test_leaves_pass_through_for_decode() -> None:
    parts = [PING, b"", b"\x63junk"]
    packet = b"\x07\x03" + struct.pack(">3H", *map(len, parts)) + b"".join(parts)
    leaves = wire.unpack_packet(packet)
    assert leaves == [PING, b"", b"\x63junk"]
    with pytest.raises(MessageError):
        m.decode(leaves[1])


def test_decompression_bomb_in_packet() -> None:
    bomb = wire.compress_message(b"\x08" + b"\0" * 3_000_000)
    assert len(bomb) < 65_000
    with pytest.raises(WireError, match="exceeds"):
        wire.unpack_packet(bomb)
    many = wire.make_compound([wire.compress_message(b"\x08" + b"\0" * 400_000)] * 3)
    with pytest.raises(WireError, match="exceeds"):
        wire.unpack_packet(many)


def test_bad_compress_messages() -> None:
    for body in (b"\x92\x00\x00", msgpack.packb({"Algo": 1, "Buf": b""}), msgpack.packb({"Algo": 0, "Buf": 5}),
                 msgpack.packb({"Algo": 0, "Buf": b"\x00"}), b"\xc1"):
        with pytest.raises(WireError):
            wire.unpack_packet(b"\x09" + body)


def test_encrypted_packets() -> None:
    ring = Keyring([KEY])
    packet = wire.pack_packet([PING], keyring=ring)
    assert packet[0] == 1 and len(packet) == len(PING) + wire.ENCRYPT_OVERHEAD
    assert wire.unpack_packet(packet, keyring=Keyring([OTHER, KEY])) == [PING]
    with pytest.raises(WireError, match="decrypt"):
        wire.unpack_packet(packet, keyring=Keyring([OTHER]))
    with pytest.raises(WireError, match="decrypt"):
        wire.unpack_packet(PING, keyring=ring)
    # verify_incoming off: what does not decrypt is taken as plaintext (rolling encryption out).
    assert wire.unpack_packet(PING, keyring=ring, verify_incoming=False) == [PING]
    # Version 0 (PKCS#7) senders are still understood.
    assert wire.unpack_packet(encrypt(KEY, PING, version=0), keyring=ring) == [PING]


def test_empty_packet() -> None:
    with pytest.raises(WireError):
        wire.unpack_packet(b"")
    with pytest.raises(WireError):
        wire.pack_packet([])


def test_split_for_packets_respects_budget_and_order() -> None:
    msgs = [bytes([8]) + bytes([i]) * (i * 7 % 300) for i in range(60)]
    groups = wire.split_for_packets(msgs, 1400)
    assert [x for g in groups for x in g] == msgs
    for group in groups:
        size = len(group[0]) if len(group) == 1 else len(wire.make_compound(group))
        assert size <= 1400
        assert wire.unpack_packet(wire.pack_packet(group)) == group
    assert len(groups) < len(msgs) // 3


def test_split_for_packets_part_limit_and_oversize() -> None:
    tiny = [b"\x08"] * 300
    assert [len(g) for g in wire.split_for_packets(tiny, 65_000)] == [127, 127, 46]
    assert [len(g) for g in wire.split_for_packets(tiny, 65_000, max_parts=255)] == [255, 45]
    big = b"\x08" + b"x" * 2000
    assert wire.split_for_packets([PING, big, PING], 1400) == [[PING], [big], [PING]]
    budget = 1400 - wire.packet_overhead(keyring=Keyring([KEY]), crc=True)
    assert budget == 1400 - 5 - 29


# ------------------------------------------------------------------------------------------------ TCP


def _read_all(data: bytes, reader: StreamReader, chunk: int = 1) -> wire.StreamMessage:
    result = None
    for i in range(0, len(data), chunk):
        result = reader.feed(data[i : i + chunk])
        if result is not None:
            break
    return reader.eof() if result is None else result


def test_push_pull_stream_layout() -> None:
    data = wire.push_pull_stream([NODE, NODE], b"\x02user", join=True)
    assert data[0] == m.MessageType.PUSH_PULL
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(data[1:])
    assert unpacker.unpack() == {b"Nodes": 2, b"UserStateLen": 5, b"Join": True}
    assert unpacker.unpack()[b"Name"] == b"n1"
    assert data.endswith(b"\x02user")


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize(("ring", "compress"), [(None, False), (None, True), (Keyring([KEY]), False),
                                                (Keyring([KEY]), True)])
def test_push_pull_round_trip(chunk: int, ring: Keyring | None, compress: bool) -> None:
    data = wire.push_pull_stream([NODE] * 3, b"\x02state", join=False, keyring=ring, compress=compress)
    reader = StreamReader(keyring=ring)
    result = _read_all(data + b"trailing ignored", reader, chunk)
    assert result == wire.PushPull(join=False, nodes=(NODE,) * 3, user_state=b"\x02state")
    assert (reader.encrypted, reader.compressed) == (ring is not None, compress)


def test_stream_encryption_layout() -> None:
    ring = Keyring([KEY])
    data = wire.ping_stream(m.Ping(seq_no=5, node="s1"), keyring=ring)
    body = m.encode(m.Ping(seq_no=5, node="s1"))
    assert data[0] == m.MessageType.ENCRYPT
    assert struct.unpack(">I", data[1:5])[0] == len(data) - 5 == len(body) + 29
    assert decrypt([KEY], data[5:], data[:5]) == body  # additional data: type byte + length
    with pytest.raises(Exception):  # noqa: B017 - the tag covers the header
        decrypt([KEY], data[5:], b"")


def test_other_stream_messages() -> None:
    ring = Keyring([KEY])
    ping = m.Ping(seq_no=9, node="s1", source_node="me")
    assert _read_all(wire.ping_stream(ping, compress=True), StreamReader()) == ping
    ack = m.AckResp(seq_no=9)
    assert _read_all(wire.ack_stream(ack, keyring=ring), StreamReader(keyring=ring)) == ack
    assert _read_all(wire.err_stream("boom"), StreamReader()) == m.ErrResp(error="boom")
    msg = wire.user_msg_stream(b"\x03serf", keyring=ring, compress=True)
    assert _read_all(msg, StreamReader(keyring=ring), 3) == m.UserMsg(payload=b"\x03serf")
    assert wire.user_msg_stream(b"xy")[1:] == msgpack.packb({"UserMsgLen": 2}) + b"xy"


def test_stream_encryption_policy() -> None:
    ring = Keyring([KEY])
    plain = wire.ping_stream(m.Ping(seq_no=1, node="x"))
    sealed = wire.ping_stream(m.Ping(seq_no=1, node="x"), keyring=ring)
    with pytest.raises(WireError, match="not encrypted"):
        StreamReader(keyring=ring).feed(plain)
    with pytest.raises(WireError, match="not configured"):
        StreamReader().feed(sealed)
    with pytest.raises(WireError, match="decrypt"):
        StreamReader(keyring=Keyring([OTHER])).feed(sealed)
    assert StreamReader(keyring=ring, verify_incoming=False).feed(plain) == m.Ping(seq_no=1, node="x")


def test_stream_limits() -> None:
    with pytest.raises(WireError, match="larger than the limit"):
        StreamReader(keyring=Keyring([KEY])).feed(b"\x0a" + struct.pack(">I", wire.MAX_PUSH_STATE_BYTES + 1))
    header = b"\x06" + msgpack.packb({"Nodes": 0, "UserStateLen": 50, "Join": False})
    with pytest.raises(WireError, match="more than"):
        StreamReader(max_bytes=40).feed(header)
    reader = StreamReader(max_bytes=1000)
    reader.feed(b"\x06" + msgpack.packb({"Nodes": 0, "UserStateLen": 900, "Join": False}))
    with pytest.raises(WireError, match="limit"):
        reader.feed(b"x" * 2000)
    user = b"\x08" + msgpack.packb({"UserMsgLen": 10**9})
    with pytest.raises(WireError, match="limit"):
        StreamReader().feed(user)
    bomb = wire.frame_stream(b"\x08" + msgpack.packb({"UserMsgLen": 1}) + b"\0" * 200_000, compress=True)
    with pytest.raises(WireError, match="exceeds"):
        StreamReader(max_bytes=100_000).feed(bomb)


def test_stream_errors() -> None:
    with pytest.raises(WireError, match="unexpected message type"):
        StreamReader().feed(ALIVE)
    with pytest.raises(WireError, match="closed empty"):
        StreamReader().eof()
    reader = StreamReader()
    assert reader.feed(wire.push_pull_stream([NODE], b"abc", join=True)[:-1]) is None
    with pytest.raises(WireError, match="before a complete"):
        reader.eof()
    with pytest.raises(WireError, match="truncated"):
        StreamReader(keyring=Keyring([KEY])).feed(
            wire.frame_stream(b"\x06" + msgpack.packb({"Nodes": 1, "UserStateLen": 0, "Join": False}),
                              keyring=Keyring([KEY])))
    with pytest.raises(WireError):
        StreamReader().feed(b"\x06\x81\xa5Nodes\xff")
    # A compressed stream may not hold another compressed message.
    twice = wire.compress_message(wire.compress_message(wire.ping_stream(m.Ping(1, "x"))))
    with pytest.raises(WireError):
        StreamReader().feed(twice)


def test_stream_lzw_matches_module() -> None:
    body = wire.ping_stream(m.Ping(seq_no=1, node="x"))
    framed = wire.frame_stream(body, compress=True)
    raw = msgpack.unpackb(framed[1:], raw=True)
    assert lzw.decompress(raw[b"Buf"]) == body


# ------------------------------------------------------------------------------------------------ fuzz


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        elif len(buf) > 2:
            a, b = sorted(rng.sample(range(len(buf)), 2))
            buf[a:b] = buf[a:b][::-1]
    return bytes(buf)


def test_fuzz_readers_only_raise_wire_errors() -> None:
    rng = random.Random(20261125)
    ring = Keyring([KEY])
    packets = [
        PING, wire.pack_packet([PING, ACK, ALIVE]), wire.pack_packet([ALIVE] * 9, compress=True),
        wire.pack_packet([PING, ALIVE], crc=True), wire.make_compound([wire.compress_message(PING), ACK]),
    ]
    streams = [
        wire.push_pull_stream([NODE] * 2, b"\x02abc", join=True),
        wire.push_pull_stream([NODE], b"state", join=False, compress=True),
        wire.user_msg_stream(b"\x03x"), wire.ping_stream(m.Ping(1, "s")), wire.err_stream("e"),
    ]
    sealed = [wire.pack_packet([PING], keyring=ring), wire.push_pull_stream([NODE], b"", join=True, keyring=ring)]
    outcomes = {"ok": 0, "error": 0}
    for i in range(100_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 64))
        elif kind == 3:
            data = _mutate(rng, rng.choice(sealed))
        else:
            data = _mutate(rng, rng.choice(packets if kind == 1 else streams))
        try:
            if i % 2 == 0:
                for leaf in wire.unpack_packet(data, keyring=ring if kind == 3 else None):
                    try:
                        m.decode(leaf)
                    except MessageError:
                        pass
            else:
                reader = StreamReader(keyring=ring if kind == 3 else None, max_bytes=1 << 16)
                cut = rng.randint(0, len(data))
                if reader.feed(data[:cut]) is None and reader.feed(data[cut:]) is None:
                    reader.eof()
            outcomes["ok"] += 1
        except WireError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 5_000 and outcomes["error"] > 5_000
