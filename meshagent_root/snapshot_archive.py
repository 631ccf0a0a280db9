"""Snapshot archives as `GET /v1/snapshot` serves them: a gzipped tar of meta.json, state.bin and SHA256SUMS.

The layout is Consul's (so `tar tzf` and `sha256sum -c` work on a saved file); every member is checked on
unpack, and packing is byte-for-byte deterministic so identical state gives identical files. Unpacking
streams (gzip inflated step by step, ustar headers read by hand), so a file on disk is verified in bounded
memory whatever its size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

FORMAT = "meshagent-catalog-1"
META, STATE, SUMS = "meta.json", "state.bin", "SHA256SUMS"
MEMBERS = (META, STATE, SUMS)
MAX_UNPACKED = 1 << 30  # a hostile archive must not inflate without bound
_MAX_META = 64 * 1024
_MAX_SUMS = 4 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_IN_CHUNK = 256 * 1024
_OUT_CHUNK = 1024 * 1024  # inflated bytes per step: what a streaming unpack holds besides meta and sums


class ArchiveError(Exception):
    """A snapshot archive could not be built or read; the message is one line naming the reason."""


def pack(meta: dict[str, Any], state: bytes) -> bytes:
    """A gzipped tar of meta (plus Format), state and their SHA256SUMS."""
    meta = _check_meta({**meta, "Format": FORMAT})
    meta_bytes = (json.dumps(meta, sort_keys=True, indent=2) + "\n").encode()
    files = {META: meta_bytes, STATE: bytes(state)}
    files[SUMS] = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in (META, STATE)).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o600, 0
            tar.addfile(info, io.BytesIO(files[name]))
    # gzip.compress with mtime=0 leaves no time or file name in the header.
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(meta, state) from an archive, after checking gzip, tar layout, checksums and meta."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArchiveError("snapshot archive must be bytes")
    meta, state = _verify(lambda: io.BytesIO(data), keep_state=True)
    assert state.content is not None
    return meta, state.content


def inspect_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """(meta, size of state.bin) of an archive on disk, verified as `unpack` does, in bounded memory."""
    meta, state = _verify(lambda: open(path, "rb"), keep_state=False)
    return meta, state.size


class StateTooLarge(ArchiveError):
    """A valid archive whose state.bin is larger than the caller can take."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"snapshot state is {size} bytes, more than the {limit} allowed")
        self.size, self.limit = size, limit


def unpack_file(path: str | os.PathLike[str], max_state: int = MAX_UNPACKED) -> tuple[dict[str, Any], bytes]:
    """`unpack` for an archive on disk: one streaming pass verifies it (memory bounded by the member size
    limits, not by the archive), a second reads state.bin, which the restore needs whole anyway; a state
    over max_state raises StateTooLarge before it is read."""
    meta, verified = _verify(lambda: open(path, "rb"), keep_state=False)
    if verified.size > max_state:
        raise StateTooLarge(verified.size, max_state)
    with open(path, "rb") as src:
        state = _read_members(_Gunzip(src), keep_state=True)[STATE]
    # The file is ours, but the second read must still be the archive we verified.
    if state.digest != verified.digest or state.content is None:
        raise ArchiveError("snapshot file changed while it was being restored")
    return meta, state.content


def _verify(open_src: Callable[[], BinaryIO], keep_state: bool) -> tuple[dict[str, Any], _Member]:
    """Checked meta and the state.bin member (its content only when keep_state)."""
    with open_src() as src:
        gz = _Gunzip(src)
        try:
            files = _read_members(gz, keep_state)
        except _TarDefect:
            gz.drain()  # a gzip defect is the better reason, as when the whole archive was inflated first
            raise
        gz.drain()
    for name in MEMBERS:
        if name not in files:
            raise ArchiveError(f"snapshot archive is missing {name}")
    sums_bytes, meta_bytes = files[SUMS].content, files[META].content
    assert sums_bytes is not None and meta_bytes is not None  # small members are always kept
    sums = _parse_sums(sums_bytes)
    for name in (META, STATE):
        if files[name].digest != sums[name]:
            raise ArchiveError(f"failed checking integrity of snapshot: checksum mismatch for {name}")
    try:
        meta = json.loads(meta_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"bad snapshot meta.json: not JSON ({str(exc)[:80]})") from None
    if not isinstance(meta, dict):
        raise ArchiveError("bad snapshot meta.json: not a JSON object")
    meta = _check_meta(meta)
    if meta.get("Format") != FORMAT:
        raise ArchiveError(f"unsupported snapshot format {str(meta.get('Format'))[:40]!r} (want {FORMAT!r})")
    return meta, files[STATE]


class _TarDefect(ArchiveError):
    """A defect found while walking the tar; a gzip defect behind it is reported instead."""


class _Gunzip:
    """Inflates a gzip stream on demand: at most MAX_UNPACKED bytes out, CRC, length and trailing data
    checked by the time `drain` returns."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        head = src.read(2)
        if head != _GZIP_MAGIC:
            raise ArchiveError("not a snapshot archive: not gzip data")
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing, CRC32, size checked
        self._pending = head
        self._buf = bytearray()
        self._total = 0
        self._done = False

    def read(self, n: int) -> bytes:
        """Up to n inflated bytes; fewer only at the end of the stream."""
        while len(self._buf) < n and not self._done:
            self._inflate()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def drain(self) -> None:
        """Inflate (and drop) the rest, so that every gzip check has run."""
        while not self._done:
            self._buf.clear()
            self._inflate()
        self._buf.clear()

    def _inflate(self) -> None:
        data = self._inflater.unconsumed_tail or self._pending or self._src.read(_IN_CHUNK)
        self._pending = b""
        try:
            out = self._inflater.decompress(data, _OUT_CHUNK)
        except zlib.error as exc:
            raise ArchiveError(f"corrupt snapshot archive: bad gzip data ({exc})") from None
        if not data and not out and not self._inflater.eof:
            raise ArchiveError("snapshot archive is truncated (gzip stream ends early)")
        self._total += len(out)
        if self._total > MAX_UNPACKED:
            raise ArchiveError(f"snapshot archive inflates to more than {MAX_UNPACKED} bytes")
        self._buf += out
        if self._inflater.eof:
            if self._inflater.unused_data or self._src.read(1):
                raise ArchiveError("corrupt snapshot archive: extra data after the gzip stream")
            self._done = True


@dataclass(slots=True)
class _Member:
    content: bytes | None  # None for state.bin when not kept
    digest: str
    size: int


def _read_members(gz: _Gunzip, keep_state: bool) -> dict[str, _Member]:
    """Walk a ustar stream: only our three regular files, each once, hashed as they pass."""
    files: dict[str, _Member] = {}
    while True:
        block = gz.read(_BLOCK)
        if len(block) < _BLOCK:
            raise _TarDefect("snapshot archive is truncated (tar data ends early)")
        if block == _ZERO_BLOCK:  # end of archive (what follows is padding)
            return files
        name, size, regular = _parse_header(block)
        if name not in MEMBERS:
            raise _TarDefect(f"unexpected file {name[:60]!r} in snapshot")
        if not regular:
            raise _TarDefect(f"{name} in snapshot is not a regular file")
        if name in files:
            raise _TarDefect(f"duplicate {name} in snapshot")
        limit = {META: _MAX_META, SUMS: _MAX_SUMS}.get(name)
        if limit is not None and size > limit:
            raise _TarDefect(f"{name} in snapshot is too large ({size} bytes)")
        keep = keep_state or name != STATE
        digest, parts, left = hashlib.sha256(), [], size
        while left:
            chunk = gz.read(min(left, _OUT_CHUNK))
            if not chunk:
                raise _TarDefect(f"snapshot archive is truncated (in {name})")
            digest.update(chunk)
            if keep:
                parts.append(chunk)
            left -= len(chunk)
        padding = -size % _BLOCK
        if padding and len(gz.read(padding)) != padding:
            raise _TarDefect(f"snapshot archive is truncated (in {name})")
        files[name] = _Member(b"".join(parts) if keep else None, digest.hexdigest(), size)


def _parse_header(block: bytes) -> tuple[str, int, bool]:
    """(name, size, is a regular file) from a ustar/GNU header block; _TarDefect when malformed."""
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-", 8)
        size_field = block[124:136]
        if size_field[0] & 0x80:
            raise ValueError("base-256 size")  # only for members over 8 GiB, which we never accept
        size = int(size_field.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        raise _TarDefect("corrupt snapshot archive: bad tar data (bad header field)") from None
    # The checksum counts its own field as spaces; old tars summed signed bytes, both are valid.
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored not in (unsigned, signed) or size < 0:
        raise _TarDefect("corrupt snapshot archive: bad tar data (bad header checksum)")
    raw_name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            raw_name = prefix + b"/" + raw_name
    return raw_name.decode("utf-8", "replace"), size, block[156:157] in (b"0", b"\0")


def _parse_sums(data: bytes) -> dict[str, str]:
    """`sha256sum` lines ("<hex>  <name>", or "<hex> *<name>") for exactly meta.json and state.bin."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ArchiveError("bad SHA256SUMS in snapshot: not ASCII") from None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise ArchiveError(f"bad SHA256SUMS in snapshot: malformed line {line[:80]!r}")
        if name not in (META, STATE):
            raise ArchiveError(f"bad SHA256SUMS in snapshot: unexpected entry {name[:60]!r}")
        if name in sums:
            raise ArchiveError(f"bad SHA256SUMS in snapshot: duplicate entry for {name}")
        sums[name] = digest.lower()
    for name in (META, STATE):
        if name not in sums:
            raise ArchiveError(f"bad SHA256SUMS in snapshot: missing hash for {name}")
    return sums


def _check_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta with the fields `snapshot inspect` and restore rely on, of the right types."""
    for key in ("ID", "Index", "Term", "Version"):
        if key not in meta:
            raise ArchiveError(f"bad snapshot meta.json: missing {key}")
    if not isinstance(meta["ID"], str) or not meta["ID"]:
        raise ArchiveError("bad snapshot meta.json: ID must be a non-empty string")
    for key in ("Index", "Term", "Version"):
        value = meta[key]
        # bool is an int in Python, but `true` is no index.
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise ArchiveError(f"bad snapshot meta.json: {key} must be an unsigned integer")
    if meta["Version"] != 1:
        raise ArchiveError(f"unsupported snapshot version {meta['Version']}")
    return meta
