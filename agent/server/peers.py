"""RaftPeer: one server of the Raft configuration, as the operator API and CLI show it; its names file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...atomic_file import write_atomic


@dataclass(frozen=True, slots=True)
class RaftPeer:
    """A server in the configuration: Raft ID, node name, :8300 address, whether it leads and whether it votes."""

    id: str
    node: str
    address: str
    leader: bool
    voter: bool


# The names file: {server ID: node name} for the Raft configuration's servers, kept next to the Raft log so a
# restarted server names its peers at once (hellos, which teach names, are only exchanged while joining).
NAMES_FILE = "peer-names.json"
MAX_NAMES_BYTES = 256 * 1024
MAX_NAME_LEN = 256


def parse_names(data: bytes) -> dict[str, str]:
    """The names a names file holds; {} for a file that is not one (a damaged file only loses names)."""
    if len(data) > MAX_NAMES_BYTES:
        return {}
    try:
        raw = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items()
            if isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_NAME_LEN and 0 < len(v) <= MAX_NAME_LEN}


def encode_names(names: dict[str, str], keep: set[str]) -> bytes:
    """The names file's bytes for the servers in `keep` (those of the configuration, and this one)."""
    return json.dumps({k: v for k, v in sorted(names.items()) if k in keep}, indent=1).encode() + b"\n"


def load_names(path: Path | None) -> dict[str, str]:
    """The names saved at `path` ({} when there is none or it cannot be read)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return parse_names(f.read(MAX_NAMES_BYTES + 1))
    except OSError:
        return {}


def save_names(path: Path, data: bytes) -> None:
    """Write the names file (atomically: a crash leaves the old one or the new one)."""
    write_atomic(path, data, 0o644)
