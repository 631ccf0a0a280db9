"""gossip.lzw: Go compress/lzw (LSB, 8-bit literals) compatible compression."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.gossip import lzw

# From Go's compress/lzw reader tests: a stream Go's writer produced before it began with a clear code.
GO_TOBE = b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04\x12\x34\xb8\xb0\xe0\xc1\x84\x01\x01"


def test_decodes_go_reference_stream() -> None:
    assert lzw.decompress(GO_TOBE) == b"TOBEORNOTTOBEORTOBEORNOT"


def test_compress_starts_with_clear_code_and_ends_with_eof() -> None:
    # 9-bit codes LSB first: clear (256), 'T', 'O', ... then eof (257).
    out = lzw.compress(b"TOBEORNOTTOBEORTOBEORNOT")
    assert out[0] == 0x00 and out[1] & 0x01 == 0x01
    assert lzw.compress(b"") == bytes([0x00, 0x03, 0x02])  # clear, eof


@pytest.mark.parametrize("size", [0, 1, 2, 3, 255, 4096, 70_000])
def test_round_trip_sizes(size: int) -> None:
    for data in (os.urandom(size), b"a" * size, bytes(i % 7 for i in range(size))):
        assert lzw.decompress(lzw.compress(data)) == data


def test_table_reset_on_long_random_input() -> None:
    # Random bytes fill the 4096-entry table several times over: clear codes mid-stream must agree.
    data = os.urandom(200_000)
    assert lzw.decompress(lzw.compress(data)) == data


def test_compresses_repetitive_input() -> None:
    data = b"serf member alive " * 500
    assert len(lzw.compress(data)) < len(data) // 10


def test_bomb_rejected_by_max_output() -> None:
    bomb = lzw.compress(b"\0" * 1_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(ValueError, match="exceeds"):
        lzw.decompress(bomb, max_output=100_000)
    assert len(lzw.decompress(bomb, max_output=1_000_000)) == 1_000_000


def test_missing_eof_code() -> None:
    data = lzw.compress(b"hello world")
    with pytest.raises(ValueError, match="end-of-data"):
        lzw.decompress(data[:-2])
    with pytest.raises(ValueError, match="end-of-data"):
        lzw.decompress(b"")


def test_invalid_code() -> None:
    # clear, then code 300 with an empty table: not defined yet.
    bits = 256 | (300 << 9)
    with pytest.raises(ValueError, match="invalid code"):
        lzw.decompress(bits.to_bytes(3, "little"))


def test_trailing_bytes_after_eof_ignored() -> None:
    assert lzw.decompress(lzw.compress(b"abc") + b"\xff\xff") == b"abc"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_round_trip_property(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data)) == data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_only_raises_value_error(data: bytes) -> None:
    try:
        lzw.decompress(data, max_output=10_000)
    except ValueError:
        pass
