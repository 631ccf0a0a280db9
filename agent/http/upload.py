"""Large request bodies streamed to a temp file (snapshot restores), and write errors as clear answers."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import trio

from .body import BodyStream
from .query import HTTPError

WRITE_BATCH = 1024 * 1024  # bytes gathered per write: one thread hop per MiB, not per socket read
PREFIX = ".meshagent-upload-"
# An upload file nobody has written to for this long was left by a process that died mid-upload (a live
# upload writes at least every few seconds or is cut by its read deadline).
STALE_AFTER = 3600.0


def write_error(exc: OSError, path: Path | str) -> HTTPError:
    """A 500 naming what failed and where: "no space left on device writing <path>"."""
    if exc.errno == errno.ENOSPC:
        return HTTPError(500, f"no space left on device writing {path}")
    return HTTPError(500, f"{(exc.strerror or str(exc)).lower()} writing {path}")


def upload_dir(data_dir: str) -> Path:
    """Where uploads land: the data dir (same disk as what they restore), or the system's temp dir (-dev)."""
    return Path(data_dir) if data_dir else Path(tempfile.gettempdir())


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _create(path: Path) -> int:
    """The new upload file (0600), after removing any that a killed agent left behind."""
    now = time.time()
    for old in path.parent.glob(f"{PREFIX}*.tmp"):
        with suppress(OSError):
            if now - old.stat().st_mtime > STALE_AFTER:
                old.unlink()
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@asynccontextmanager
async def body_to_file(body: BodyStream, directory: Path) -> AsyncIterator[Path]:
    """Write a streamed body to a new 0600 file in `directory` (off the event loop); yields its path and
    removes it afterwards, whatever happens. A body known to exceed the free space is refused at once."""
    if body.length is not None:
        try:
            free = await trio.to_thread.run_sync(_free_bytes, directory)
        except OSError as exc:
            raise HTTPError(500, f"cannot use {directory} for the upload: {exc.strerror or exc}") from None
        if body.length > free:
            raise HTTPError(507, f"not enough free space in {directory} for a {body.length}-byte upload "
                                 f"({free} bytes free)")
    path = directory / f"{PREFIX}{os.urandom(6).hex()}.tmp"
    try:
        fd = await trio.to_thread.run_sync(_create, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        try:
            batch = bytearray()
            async for chunk in body:
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await trio.to_thread.run_sync(_write_all, fd, batch)
                    batch.clear()
            if batch:
                await trio.to_thread.run_sync(_write_all, fd, batch)
        except OSError as exc:
            raise write_error(exc, path) from None
        finally:
            os.close(fd)
        yield path
    finally:
        with suppress(OSError):
            os.unlink(path)
