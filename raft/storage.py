"""Durable Raft storage: CRC-checked log segment files, a meta file (term, vote, compaction point), snapshots.

Blocking file I/O: the runtime calls it from a worker thread. Nothing is durable until `sync()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ..atomic_file import fsync_dir as _fsync_dir
from ..atomic_file import write_atomic
from .entry import Entry, SnapshotMeta

log = logging.getLogger("meshagent.raft.storage")

_HEADER = struct.Struct(">II")  # payload length, CRC32 of the payload
_META = "meta.msgpack"
_SEG_SUFFIX = ".seg"


class StorageError(Exception):
    """Storage could not be opened or written; the message names the file."""


class CorruptLogError(StorageError):
    """A record that fails its checks somewhere other than a torn tail."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at offset {offset}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


@dataclass(frozen=True, slots=True)
class CutTail:
    """Bytes recovery cut off the end of the log: entries from `first_lost` on, unless they were never synced."""

    path: Path
    offset: int
    size: int
    first_lost: int
    reason: str


def _record(e: Entry) -> bytes:
    payload = msgpack.packb([e.index, e.term, e.kind, e.data], use_bin_type=True)
    return bytes(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)


class _Segment:
    def __init__(self, path: Path, first: int) -> None:
        self.path = path
        self.first = first
        self.offsets: list[int] = []  # file offset of each entry, index = first + position
        self.size = 0


class MemoryLogStore:
    """The log in memory (`-dev`): the same API, nothing survives the process."""

    def __init__(self) -> None:
        self.term = 0
        self.vote: str | None = None
        self._entries: list[Entry] = []
        self._base_index = 0
        self._base_term = 0

    @property
    def first_index(self) -> int:
        """Index of the first entry still stored."""
        return self._base_index + 1

    @property
    def last_index(self) -> int:
        """Index of the last entry (0 when never written)."""
        return self._base_index + len(self._entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive."""
        if lo < self.first_index or hi > self.last_index:
            raise IndexError(f"entries {lo}..{hi} outside {self.first_index}..{self.last_index}")
        return self._entries[lo - self._base_index - 1:hi - self._base_index]

    def entry(self, index: int) -> Entry:
        """One entry."""
        return self.entries(index, index)[0]

    def term_at(self, index: int) -> int | None:
        """Term of entry `index` (or of the compaction point)."""
        if index == self._base_index:
            return self._base_term
        if self.first_index <= index <= self.last_index:
            return self._entries[index - self._base_index - 1].term
        return None

    def append(self, entries: list[Entry]) -> None:
        """Append contiguous entries."""
        for e in entries:
            if e.index != self.last_index + 1:
                raise ValueError(f"append of {e.index} after {self.last_index}")
            self._entries.append(e)

    def truncate_suffix(self, from_index: int) -> None:
        """Remove entries >= from_index."""
        del self._entries[max(0, from_index - self._base_index - 1):]

    def set_hard_state(self, term: int, vote: str | None) -> None:
        """Record term and vote."""
        self.term, self.vote = term, vote

    def compact_prefix(self, upto_index: int, upto_term: int) -> None:
        """Drop entries <= upto_index."""
        drop = upto_index - self._base_index
        if drop > 0:
            del self._entries[:drop]
            self._base_index, self._base_term = upto_index, upto_term

    def reset(self, index: int, term: int) -> None:
        """Drop the whole log; the next append is index + 1."""
        self._entries = []
        self._base_index, self._base_term = index, term

    def sync(self) -> None:
        """Nothing to do in memory."""

    def close(self) -> None:
        """Nothing to do in memory."""


class LogStore(MemoryLogStore):
    """Durable Raft log (CRC-checked segment files) plus the current term and vote.

    Entries are also kept in memory (the Raft core holds them anyway, bounded by snapshot_threshold +
    trailing_logs), so reads never touch the disk.
    """

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        super().__init__()
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._meta_dirty = False
        self._dir_dirty = False
        self._retired: list[int] = []
        # Set when recovery cut a damaged tail. A crash mid-write leaves one too (never acknowledged), but so
        # does a disk or operator losing synced bytes; the two look the same here, so it is reported as
        # possible loss of acknowledged entries, and the leader, which knows what we acknowledged, confirms.
        self.cut_tail: CutTail | None = None

    @classmethod
    def open(cls, directory: Path, segment_bytes: int = 64 * 1024 * 1024) -> LogStore:
        """Open (or create) the log in `directory`, recovering from a crash; raises StorageError."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            store = cls(directory, segment_bytes)
            store._load_meta()
            store._recover()
        except OSError as exc:
            raise StorageError(f"{directory}: {exc}") from exc
        return store

    # ------------------------------------------------------------------------------------------ recovery

    def _load_meta(self) -> None:
        path = self.dir / _META
        if not path.exists():
            return  # a fresh log, or a crash before the first term change: term 0, no vote
        try:
            raw = msgpack.unpackb(path.read_bytes(), raw=False)
            self.term, self.vote = int(raw["term"]), raw["vote"]
            self._base_index, self._base_term = int(raw["base_index"]), int(raw["base_term"])
        except Exception as exc:
            raise StorageError(f"{path}: unreadable Raft state: {exc}") from exc

    def _recover(self) -> None:
        paths = sorted(self.dir.glob(f"*{_SEG_SUFFIX}"))
        expected: int | None = None
        last_term = 0
        for n, path in enumerate(paths):
            try:
                first = int(path.stem)
            except ValueError as exc:
                raise StorageError(f"{path}: not a log segment name") from exc
            seg = _Segment(path, first)
            data = path.read_bytes()
            offset = 0
            is_last = n == len(paths) - 1
            while offset < len(data):
                problem = None
                size = 0
                if len(data) - offset < _HEADER.size:
                    problem = "incomplete record header"
                else:
                    size, crc = _HEADER.unpack_from(data, offset)
                    payload = data[offset + _HEADER.size:offset + _HEADER.size + size]
                    if len(payload) < size:
                        problem = "incomplete record"
                    elif zlib.crc32(payload) != crc:
                        problem = "CRC mismatch"
                if problem is not None:
                    end = offset + _HEADER.size + size
                    if is_last and (problem != "CRC mismatch" or end >= len(data)):
                        # A torn write at the very end: safe to cut if never acknowledged; if it was (the
                        # disk lost synced bytes), the leader sends the entries again.
                        lost = self.last_index + 1
                        self.cut_tail = CutTail(path, offset, len(data) - offset, lost, problem)
                        log.error("%s: DATA LOSS? cut %d bytes at offset %d (%s): entries from index %d on are "
                                  "gone from this server; harmless after a crash mid-write, lost acknowledged "
                                  "entries otherwise (the leader re-sends them and logs the range it had "
                                  "confirmed)", path, len(data) - offset, offset, problem, lost)
                        with open(path, "r+b") as f:
                            f.truncate(offset)
                            os.fsync(f.fileno())
                        break
                    raise CorruptLogError(path, offset, problem)
                try:
                    index, term, kind, blob = msgpack.unpackb(payload, raw=False)
                    entry = Entry(index, term, kind, blob)
                except Exception as exc:
                    raise CorruptLogError(path, offset, f"undecodable entry: {exc}") from exc
                want = expected if expected is not None else first
                if entry.index != want or (not seg.offsets and entry.index != first):
                    raise CorruptLogError(path, offset, f"entry {entry.index} where {want} was expected")
                if entry.term < last_term:
                    raise CorruptLogError(path, offset, f"term {entry.term} after term {last_term}")
                last_term = entry.term
                seg.offsets.append(offset)
                expected = entry.index + 1
                if entry.index > self._base_index:
                    if entry.index != self.last_index + 1:
                        raise CorruptLogError(path, offset, f"entry {entry.index} does not follow "
                                                            f"{self.last_index}")
                    self._entries.append(entry)
                offset += _HEADER.size + size
            seg.size = min(offset, len(data))
            self._segments.append(seg)
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    # ------------------------------------------------------------------------------------------ writes

    def _roll(self, first: int) -> None:
        self._flush_pending()
        path = self.dir / f"{first:020d}{_SEG_SUFFIX}"
        if self._fd is not None:
            self._retired.append(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(_Segment(path, first))
        self._dir_dirty = True

    def _flush_pending(self) -> None:
        if self._pending and self._fd is not None:
            view = memoryview(b"".join(self._pending))
            while view:
                view = view[os.write(self._fd, view):]
            self._pending = []

    def append(self, entries: list[Entry]) -> None:
        """Append contiguous entries (durable after `sync`)."""
        for e in entries:
            if e.index != self.last_index + 1:
                raise ValueError(f"append of {e.index} after {self.last_index}")
            if not self._segments or self._segments[-1].size >= self.segment_bytes:
                self._roll(e.index)
            seg = self._segments[-1]
            rec = _record(e)
            seg.offsets.append(seg.size)
            seg.size += len(rec)
            self._pending.append(rec)
            self._entries.append(e)

    def truncate_suffix(self, from_index: int) -> None:
        """Remove entries >= from_index (durable after `sync`)."""
        self._flush_pending()
        super().truncate_suffix(from_index)
        while self._segments and self._segments[-1].first >= from_index:
            seg = self._segments.pop()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.unlink(seg.path)
            self._dir_dirty = True
            if self._segments:
                self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        if self._segments:
            seg = self._segments[-1]
            keep = from_index - seg.first
            if keep < len(seg.offsets):
                seg.size = seg.offsets[keep]
                del seg.offsets[keep:]
                os.truncate(seg.path, seg.size)

    def set_hard_state(self, term: int, vote: str | None) -> None:
        """Record term and vote (durable after `sync`)."""
        super().set_hard_state(term, vote)
        self._meta_dirty = True

    def compact_prefix(self, upto_index: int, upto_term: int) -> None:
        """Entries <= upto_index may go: whole segments are deleted (durable after `sync`)."""
        super().compact_prefix(upto_index, upto_term)
        self._meta_dirty = True
        while len(self._segments) > 1 and self._segments[1].first <= upto_index + 1:
            seg = self._segments.pop(0)
            os.unlink(seg.path)
            self._dir_dirty = True

    def reset(self, index: int, term: int) -> None:
        """After installing a snapshot: drop the whole log; the next append is index + 1."""
        self._flush_pending()
        super().reset(index, term)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for seg in self._segments:
            os.unlink(seg.path)
        self._segments = []
        self._dir_dirty = self._meta_dirty = True

    def sync(self) -> None:
        """Make everything written so far durable: one fdatasync per touched file."""
        self._flush_pending()
        if self._meta_dirty:
            write_atomic(self.dir / _META, msgpack.packb(
                {"term": self.term, "vote": self.vote, "base_index": self._base_index,
                 "base_term": self._base_term}, use_bin_type=True))
            self._meta_dirty = False
        for fd in self._retired:  # segments we rolled away from: sync once more, then close
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
                os.close(fd)
        self._retired.clear()
        if self._fd is not None:
            os.fdatasync(self._fd)
        if self._dir_dirty:
            _fsync_dir(self.dir)
            self._dir_dirty = False

    def close(self) -> None:
        """Close the open segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MemorySnapshotStore:
    """Snapshots in memory (`-dev`)."""

    def __init__(self) -> None:
        self._latest: tuple[SnapshotMeta, bytes] | None = None

    def save(self, meta: SnapshotMeta, data: bytes) -> Path:
        """Keep this snapshot as the latest."""
        self._latest = (meta, data)
        return Path("<memory>")

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot."""
        return self._latest


class SnapshotStore(MemorySnapshotStore):
    """Snapshots as checksummed msgpack files: temp name, fsync, rename; the newest `retain` kept."""

    def __init__(self, directory: Path, retain: int = 2) -> None:
        super().__init__()
        self.dir = directory
        self.retain = retain

    def save(self, meta: SnapshotMeta, data: bytes) -> Path:
        """Write a snapshot durably and drop old ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        body = msgpack.packb({"meta": meta.to_wire(), "data": data}, use_bin_type=True)
        path = self.dir / f"{meta.index:020d}-{meta.term:020d}.snap"
        write_atomic(path, hashlib.sha256(body).digest() + body)
        for old in sorted(self.dir.glob("*.snap"))[:-self.retain]:
            os.unlink(old)
        return path

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot, verified; a corrupt one raises CorruptLogError naming the file."""
        if not self.dir.exists():
            return None
        files = sorted(self.dir.glob("*.snap"))
        if not files:
            return None
        path = files[-1]
        raw = path.read_bytes()
        if len(raw) < 32 or hashlib.sha256(raw[32:]).digest() != raw[:32]:
            raise CorruptLogError(path, 0, "snapshot checksum mismatch")
        try:
            body = msgpack.unpackb(raw[32:], raw=False)
            return SnapshotMeta.from_wire(body["meta"]), bytes(body["data"])
        except Exception as exc:
            raise CorruptLogError(path, 32, f"undecodable snapshot: {exc}") from exc
