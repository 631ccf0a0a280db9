"""The data dir's local-state.json: API-registered services and checks, maintenance and TTL statuses.

A restart reads it back so that what was registered over HTTP, and a TTL check's last status, survive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..atomic_file import write_atomic

log = logging.getLogger("meshagent.agent")

STATE_FILE = "local-state.json"


@dataclass(slots=True)
class Persisted:
    """What local-state.json holds."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # api-registered, CamelCase bodies
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # api-registered node checks
    ttl: dict[str, dict[str, Any]] = field(default_factory=dict)  # check id -> status, output, expires (wall)
    node_maintenance: str | None = None
    service_maintenance: dict[str, str] = field(default_factory=dict)
    # ACL secrets the API services/node checks were registered with (the file is written 0600; never logged)
    service_tokens: dict[str, str] = field(default_factory=dict)
    check_tokens: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The file's contents: sorted, indented JSON."""
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()


class StateFile:
    """Reads and writes local-state.json in `data_dir` (nothing at all without a data dir)."""

    def __init__(self, data_dir: str | None) -> None:
        self.path = Path(data_dir) / STATE_FILE if data_dir else None
        self._lock = trio.Lock()

    def load(self) -> Persisted:
        """The saved state; empty when there is none or it cannot be read (logged)."""
        if self.path is None or not self.path.exists():
            return Persisted()
        try:
            raw = json.loads(self.path.read_text())
            return Persisted(services=dict(raw.get("services", {})), checks=dict(raw.get("checks", {})),
                             ttl=dict(raw.get("ttl", {})), node_maintenance=raw.get("node_maintenance"),
                             service_maintenance=dict(raw.get("service_maintenance", {})),
                             service_tokens=_secrets(raw.get("service_tokens")),
                             check_tokens=_secrets(raw.get("check_tokens")))
        except (OSError, ValueError, AttributeError) as exc:
            # Refusing to start would lose the catalog too; start empty and say loudly what was dropped.
            log.error("ignoring unreadable local state %s: %s", self.path, exc)
            return Persisted()

    async def save(self, current: Callable[[], Persisted]) -> None:
        """Replace the file atomically with `current()`; raises OSError when the disk refuses."""
        if self.path is None:
            return
        # One writer at a time, and the state taken once the lock is ours: otherwise an older state could be
        # renamed over a newer one.
        async with self._lock:
            data = current().to_bytes()
            await trio.to_thread.run_sync(write_atomic, self.path, data)


def _secrets(raw: Any) -> dict[str, str]:
    """id -> secret from the file: anything not a short string pair is dropped (a hand-edited file)."""
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= 256}


TOKENS_FILE = "acl-tokens.json"
# Names in acl-tokens.json, as Consul's persisted tokens file (and ACLTokens' fields).
PERSISTED_TOKEN_TYPES = ("default", "agent", "agent_recovery", "replication", "config_file_service_registration")


MAX_TOKENS_FILE = 64 * 1024  # a handful of 256-character secrets fits many times over


class AgentTokenFile:
    """The data dir's acl-tokens.json: agent tokens set over HTTP (PUT /v1/agent/token/<type>), kept across
    restarts when acl.enable_token_persistence; they win over the config's at start, as in Consul."""

    def __init__(self, data_dir: str | None) -> None:
        self.path = Path(data_dir) / TOKENS_FILE if data_dir else None
        self.values: dict[str, str] = {}  # only what the API set: config tokens are never written here
        self._lock = trio.Lock()

    def load(self) -> dict[str, str]:
        """The persisted tokens (type -> secret); empty when none or unreadable (logged without values)."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            # Read at most one byte past the bound: a huge file is refused without being read whole.
            with self.path.open("rb") as f:
                data = f.read(MAX_TOKENS_FILE + 1)
            if len(data) > MAX_TOKENS_FILE:
                raise ValueError(f"larger than {MAX_TOKENS_FILE} bytes")
            raw = json.loads(data)
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable ACL tokens file %s: %s", self.path, type(exc).__name__)
            return {}
        if not isinstance(raw, dict):
            log.error("ignoring ACL tokens file %s: not a JSON object", self.path)
            return {}
        # Consul's older name for agent_recovery
        if "agent_recovery" not in raw and "agent_master" in raw:
            raw["agent_recovery"] = raw["agent_master"]
        self.values = {k: v for k, v in raw.items()
                       if k in PERSISTED_TOKEN_TYPES and isinstance(v, str) and 0 < len(v) <= 256}
        return dict(self.values)

    async def save(self, token_type: str, secret: str) -> None:
        """Record one API-set token ("" removes it) and rewrite the file atomically (0600); raises OSError."""
        if secret:
            self.values[token_type] = secret
        else:
            self.values.pop(token_type, None)
        if self.path is None:
            return
        async with self._lock:
            data = json.dumps(self.values, indent=1, sort_keys=True).encode()
            await trio.to_thread.run_sync(write_atomic, self.path, data)
