"""Snapshot archives: round trip, byte-for-byte determinism, and a one-line ArchiveError for every defect."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.snapshot_archive import FORMAT, ArchiveError, pack, unpack

META: dict[str, Any] = {"ID": "2-9-1700000000000", "Index": 9, "Term": 2, "Version": 1}
STATE = b"\x00catalog state\xff" * 50


def _tar(files: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A plain tar of `files` in the given order (a list may repeat a name)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items() if isinstance(files, dict) else files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _archive(files: dict[str, bytes]) -> bytes:
    return gzip.compress(_tar(files), mtime=0)


def _sums(**files: bytes) -> bytes:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()


def _signed(meta: Any, state: bytes = STATE) -> bytes:
    """An archive with correct checksums around arbitrary meta (to reach the meta checks)."""
    meta_bytes = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    sums = _sums(**{"meta.json": meta_bytes, "state.bin": state})
    return _archive({"meta.json": meta_bytes, "state.bin": state, "SHA256SUMS": sums})


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _flip_in_member(archive: bytes, name: str, at: int = 3) -> bytes:
    """The archive with one byte of member `name` flipped, re-gzipped so only the tar content differs."""
    raw = bytearray(gzip.decompress(archive))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        offset = tar.getmember(name).offset_data
    raw[offset + at] ^= 0x01
    return gzip.compress(bytes(raw), mtime=0)


def _error(data: bytes) -> str:
    with pytest.raises(ArchiveError) as info:
        unpack(data)
    text = str(info.value)
    assert text and "\n" not in text
    return text


# ---------------------------------------------------------------------- good archives


@pytest.mark.parametrize("state", [b"", b"x", STATE, bytes(range(256)) * 4000])
def test_round_trip(state: bytes) -> None:
    meta, back = unpack(pack(META, state))
    assert back == state
    assert meta == {**META, "Format": FORMAT}


def test_layout_is_consul_like() -> None:
    archive = pack(META, STATE)
    assert archive[:2] == b"\x1f\x8b"
    assert archive[4:8] == b"\0\0\0\0"  # gzip MTIME
    members = _members(archive)
    assert list(members) == ["SHA256SUMS", "meta.json", "state.bin"]
    assert members["state.bin"] == STATE
    assert json.loads(members["meta.json"]) == {**META, "Format": FORMAT}
    lines = members["SHA256SUMS"].decode().splitlines()
    assert lines == [f"{hashlib.sha256(members[n]).hexdigest()}  {n}" for n in ("meta.json", "state.bin")]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        assert all(m.mtime == 0 and m.isreg() for m in tar)


def test_pack_is_deterministic() -> None:
    first = pack(dict(META), STATE)
    assert pack(dict(reversed(list(META.items()))), bytearray(STATE)) == first
    assert pack(META, STATE + b"!") != first
    assert pack({**META, "Index": 10}, STATE) == pack({**META, "Index": 10}, STATE)


def test_member_order_and_binary_mode_sums_are_accepted() -> None:
    meta = json.dumps({**META, "Format": FORMAT}).encode()
    sums = "".join(f"{hashlib.sha256(d).hexdigest()} *{n}\n" for n, d in (("state.bin", STATE), ("meta.json", meta)))
    archive = _archive({"meta.json": meta, "state.bin": STATE, "SHA256SUMS": sums.encode()})
    assert unpack(archive)[1] == STATE


# ---------------------------------------------------------------------- every defect


@pytest.mark.parametrize("data", [b"", b"\x1f", b"junk", b"PK\x03\x04zipfile", _tar({"meta.json": b"{}"})])
def test_not_gzip(data: bytes) -> None:
    assert "not gzip" in _error(data)


def test_bad_gzip_data() -> None:
    archive = bytearray(pack(META, STATE))
    archive[len(archive) // 2] ^= 0xFF
    assert "gzip" in _error(bytes(archive))


@pytest.mark.parametrize("keep", [3, 10, 30, -20, -8, -1])
def test_truncated_gzip(keep: int) -> None:
    archive = pack(META, STATE)
    assert "truncated" in _error(archive[:keep])


def test_trailing_garbage() -> None:
    assert "extra data" in _error(pack(META, STATE) + b"more")


@pytest.mark.parametrize("cut", [100, 700, 1600])
def test_truncated_tar(cut: int) -> None:
    raw = gzip.decompress(pack(META, STATE))
    assert "truncated" in _error(gzip.compress(raw[:cut], mtime=0))


def test_not_a_tar() -> None:
    assert "bad tar data" in _error(gzip.compress(b"\x01" * 2048, mtime=0))


@pytest.mark.parametrize("missing", ["meta.json", "state.bin", "SHA256SUMS"])
def test_missing_member(missing: str) -> None:
    files = _members(pack(META, STATE))
    del files[missing]
    assert _error(_archive(files)) == f"snapshot archive is missing {missing}"


def test_unexpected_member() -> None:
    files = _members(pack(META, STATE))
    files["../../etc/passwd"] = b"x"
    assert "unexpected file '../../etc/passwd'" in _error(_archive(files))


def test_duplicate_member() -> None:
    files = _members(pack(META, STATE))
    raw = _tar([*files.items(), ("state.bin", b"other")])
    assert "duplicate state.bin" in _error(gzip.compress(raw, mtime=0))


def test_member_must_be_a_regular_file() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        link = tarfile.TarInfo("state.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert "not a regular file" in _error(gzip.compress(raw.getvalue(), mtime=0))


@pytest.mark.parametrize("member", ["state.bin", "meta.json"])
def test_flipped_byte_names_the_member(member: str) -> None:
    assert _error(_flip_in_member(pack(META, STATE), member)).endswith(f"checksum mismatch for {member}")


@pytest.mark.parametrize("sums, reason", [
    (b"\xff\xfe", "not ASCII"),
    (b"nothex  meta.json\n", "malformed line"),
    (b"", "missing hash for meta.json"),
])
def test_bad_sums(sums: bytes, reason: str) -> None:
    files = _members(pack(META, STATE))
    files["SHA256SUMS"] = sums
    assert reason in _error(_archive(files))


def test_sums_missing_or_extra_entry() -> None:
    files = _members(pack(META, STATE))
    meta_line = files["SHA256SUMS"].splitlines()[0] + b"\n"
    files["SHA256SUMS"] = meta_line
    assert "missing hash for state.bin" in _error(_archive(files))
    files["SHA256SUMS"] = _sums(**{"meta.json": files["meta.json"], "state.bin": STATE, "other": b""})
    assert "unexpected entry 'other'" in _error(_archive(files))
    files["SHA256SUMS"] = meta_line * 2
    assert "duplicate entry for meta.json" in _error(_archive(files))


@pytest.mark.parametrize("meta, reason", [
    (b"{not json", "not JSON"),
    (b"\xff", "not JSON"),
    ([1, 2], "not a JSON object"),
    ({"Index": 9, "Term": 2, "Version": 1, "Format": FORMAT}, "missing ID"),
    ({**META, "Format": FORMAT, "ID": ""}, "ID must be"),
    ({**META, "Format": FORMAT, "Index": "9"}, "Index must be"),
    ({**META, "Format": FORMAT, "Term": -1}, "Term must be"),
    ({**META, "Format": FORMAT, "Index": True}, "Index must be"),
    ({**META, "Format": FORMAT, "Index": 2**64}, "Index must be"),
    ({**META, "Format": FORMAT, "Version": 2}, "unsupported snapshot version 2"),
    (META, "unsupported snapshot format"),
    ({**META, "Format": "consul-fsm"}, "unsupported snapshot format 'consul-fsm'"),
])
def test_bad_meta(meta: Any, reason: str) -> None:
    assert reason in _error(_signed(meta))


def test_oversized_meta_is_refused() -> None:
    assert "meta.json in snapshot is too large" in _error(_signed(b" " * (65 * 1024)))


def test_pack_refuses_meta_it_could_not_read_back() -> None:
    with pytest.raises(ArchiveError, match="missing Term"):
        pack({"ID": "x", "Index": 1, "Version": 1}, b"")


# ---------------------------------------------------------------------- fuzz: only ArchiveError, ever

_GOOD = pack(META, STATE)
_GOOD_TAR = gzip.decompress(_GOOD)


def _unpack_or_archive_error(data: bytes) -> None:
    try:
        meta, state = unpack(data)
    except ArchiveError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert meta["Format"] == FORMAT and isinstance(state, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _unpack_or_archive_error(data)
    _unpack_or_archive_error(b"\x1f\x8b" + data)
    _unpack_or_archive_error(gzip.compress(data, mtime=0))


def _mutate(base: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 overwrite a byte, 1 insert, 2 delete, 3 truncate."""
    out = bytearray(base)
    for kind, pos, value in edits:
        pos = pos % (len(out) + 1)
        if kind == 0 and pos < len(out):
            out[pos] = value
        elif kind == 1:
            out.insert(pos, value)
        elif kind == 2 and pos < len(out):
            del out[pos]
        elif kind == 3:
            del out[pos:]
    return bytes(out)


_EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITS)
def test_fuzz_mutated_archive(edits: list[tuple[int, int, int]]) -> None:
    _unpack_or_archive_error(_mutate(_GOOD, edits))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITS, st.integers(0, 1535))
def test_fuzz_mutated_tar_inside_valid_gzip(edits: list[tuple[int, int, int]], header_pos: int) -> None:
    # Aim half the edits at the tar headers (the first 512 bytes of each member), where the parser is.
    aimed = [(k, header_pos if i % 2 else p, v) for i, (k, p, v) in enumerate(edits)]
    _unpack_or_archive_error(gzip.compress(_mutate(_GOOD_TAR, aimed), mtime=0))


def test_error_messages_never_carry_raw_newlines() -> None:
    text = _error(_signed({**META, "Format": "a\nb"}))
    assert re.fullmatch(r"[^\n]+", text)
