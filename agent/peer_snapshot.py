"""PeerSnapshot: the gossip peers of the last run, so that a restarted agent finds its cluster again.

Serf keeps such a snapshot too; this one is a small JSON file, <data-dir>/serf/peers.json:
{"peers": ["198.18.0.11:8301", ...], "left": false}. A graceful leave sets "left", after which the agent
rejoins only with -rejoin (rejoin_after_leave), as Consul does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..atomic_file import write_atomic

log = logging.getLogger("meshagent.agent")


class PeerSnapshot:
    """Reads and writes the peers file; a broken file is reported and treated as empty."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[list[str], bool]:
        """(peers, left gracefully last time)."""
        if not self.path.exists():
            return [], False
        try:
            data = json.loads(self.path.read_text())
            peers = [str(p) for p in data.get("peers", [])]
            return peers, bool(data.get("left", False))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.error("ignoring unreadable gossip peer snapshot %s: %s", self.path, exc)
            return [], False

    def save(self, peers: list[str], left: bool) -> None:
        """Replace the file (atomically); errors are logged, never fatal."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"peers": sorted(peers), "left": left}).encode())
        except OSError as exc:
            log.warning("cannot save gossip peer snapshot %s: %s", self.path, exc)
