"""The build's revision, for `meshagent version`, `meshagent info` and /v1/agent/self: never empty.

In order: a REVISION file beside this module (written at packaging time), the git commit this source tree is
checked out at (read from .git, no subprocess: the CLI must start fast and the agent must not fork for it),
else the package version.
"""

from __future__ import annotations

import functools
import os
import re

from meshagent import __version__

_HEX = re.compile(r"[0-9a-f]{7,64}")
_MAX_FILE = 4096  # bytes read from any one file here: HEAD, a ref, packed-refs lines are far shorter


def _read(path: str, limit: int = _MAX_FILE) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit).strip()
    except OSError:
        return ""


def _git_dir(start: str) -> str | None:
    """The .git directory of the work tree holding `start` (a `.git` file names it in worktrees), or None."""
    here = os.path.abspath(start)
    for _ in range(8):  # the source tree is shallow: don't walk far up a stranger's filesystem
        candidate = os.path.join(here, ".git")
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):
            text = _read(candidate)
            if text.startswith("gitdir:"):
                return os.path.join(here, text[len("gitdir:"):].strip())
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent
    return None


def _git_commit(git_dir: str) -> str:
    """The commit HEAD points at, or "" when it cannot be read."""
    head = _read(os.path.join(git_dir, "HEAD"))
    if _HEX.fullmatch(head):  # detached HEAD
        return head
    if not head.startswith("ref: "):
        return ""
    ref = head[5:].strip()
    if ".." in ref or not ref.startswith("refs/"):
        return ""
    common = _read(os.path.join(git_dir, "commondir")) or "."
    for base in (git_dir, os.path.join(git_dir, common)):
        value = _read(os.path.join(base, ref))
        if _HEX.fullmatch(value):
            return value
        packed = _read(os.path.join(base, "packed-refs"), 1 << 20)
        for line in packed.splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _HEX.fullmatch(sha):
                return sha
    return ""


@functools.lru_cache(maxsize=1)
def revision() -> str:
    """A short commit id (12 hex digits) or, outside a checkout, `v<package version>`; never empty."""
    here = os.path.dirname(os.path.abspath(__file__))
    stamped = _read(os.path.join(here, "REVISION"), 200)
    if stamped and stamped.isprintable():
        return stamped
    git_dir = _git_dir(here)
    commit = _git_commit(git_dir) if git_dir else ""
    return commit[:12] if commit else f"v{__version__}"
