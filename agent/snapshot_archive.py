"""Snapshot archives as `GET /v1/snapshot` serves them: a gzipped tar of meta.json, state.bin and SHA256SUMS.

The layout is Consul's (so `tar tzf` and `sha256sum -c` work on a saved file); every member is checked on
unpack, and packing is byte-for-byte deterministic so identical state gives identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from typing import Any

FORMAT = "meshagent-catalog-1"
META, STATE, SUMS = "meta.json", "state.bin", "SHA256SUMS"
MEMBERS = (META, STATE, SUMS)
MAX_UNPACKED = 1 << 30  # a hostile archive must not inflate without bound
_MAX_META = 64 * 1024
_MAX_SUMS = 4 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# What tarfile raises on malformed headers varies by field; all of it means "not a readable tar".
_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError, OSError, KeyError)


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
    files = _read_tar(_gunzip(data))
    for name in MEMBERS:
        if name not in files:
            raise ArchiveError(f"snapshot archive is missing {name}")
    sums = _parse_sums(files[SUMS])
    for name in (META, STATE):
        if hashlib.sha256(files[name]).hexdigest() != sums[name]:
            raise ArchiveError(f"failed checking integrity of snapshot: checksum mismatch for {name}")
    try:
        meta = json.loads(files[META])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"bad snapshot meta.json: not JSON ({str(exc)[:80]})") from None
    if not isinstance(meta, dict):
        raise ArchiveError("bad snapshot meta.json: not a JSON object")
    meta = _check_meta(meta)
    if meta.get("Format") != FORMAT:
        raise ArchiveError(f"unsupported snapshot format {str(meta.get('Format'))[:40]!r} (want {FORMAT!r})")
    return meta, files[STATE]


def _gunzip(data: bytes) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArchiveError("snapshot archive must be bytes")
    if len(data) < 2 or bytes(data[:2]) != _GZIP_MAGIC:
        raise ArchiveError("not a snapshot archive: not gzip data")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing, CRC32 and size checked by zlib
    try:
        out = inflater.decompress(data, MAX_UNPACKED)
    except zlib.error as exc:
        raise ArchiveError(f"corrupt snapshot archive: bad gzip data ({exc})") from None
    if inflater.unconsumed_tail:
        raise ArchiveError(f"snapshot archive inflates to more than {MAX_UNPACKED} bytes")
    if not inflater.eof:
        raise ArchiveError("snapshot archive is truncated (gzip stream ends early)")
    if inflater.unused_data:
        raise ArchiveError("corrupt snapshot archive: extra data after the gzip stream")
    return out


def _read_tar(raw: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                name = member.name
                if name not in MEMBERS:
                    raise ArchiveError(f"unexpected file {name[:60]!r} in snapshot")
                if not member.isreg():
                    raise ArchiveError(f"{name} in snapshot is not a regular file")
                if name in files:
                    raise ArchiveError(f"duplicate {name} in snapshot")
                limit = {META: _MAX_META, SUMS: _MAX_SUMS}.get(name)
                if limit is not None and member.size > limit:
                    raise ArchiveError(f"{name} in snapshot is too large ({member.size} bytes)")
                if member.offset_data + member.size > len(raw):
                    raise ArchiveError(f"snapshot archive is truncated (in {name})")
                fileobj = tar.extractfile(member)
                assert fileobj is not None  # isreg() above
                content = fileobj.read()
                if len(content) != member.size:
                    raise ArchiveError(f"snapshot archive is truncated (in {name})")
                files[name] = content
    except ArchiveError:
        raise
    except _TAR_ERRORS as exc:
        reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        if isinstance(exc, EOFError) or "truncated" in reason or "unexpected end" in reason:
            raise ArchiveError("snapshot archive is truncated (tar data ends early)") from None
        raise ArchiveError(f"corrupt snapshot archive: bad tar data ({reason})") from None
    return files


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
