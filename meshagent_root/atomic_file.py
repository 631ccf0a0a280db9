"""write_atomic: replace a file so that a crash leaves either the old or the new content, never a mix.

A leaf module (standard library only) so that every layer can use it: the Raft log's metadata, the gossip
keyring, the agent's local state and peer list, and the CLI's snapshot download.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temp file: write, fsync, rename, fsync of the directory."""
    target = Path(path)
    # A unique temp name: two writers must never rename each other's half-written file.
    tmp = target.with_name(f"{target.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
