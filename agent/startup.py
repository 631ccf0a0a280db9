"""What an agent settles before any component runs: the data dir's lock, the node ID, the gossip keyring and
the server port's TLS policy. Every failure is an AgentError, worded for the operator."""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..gossip.keyring import Keyring, KeyringError, decode_key, load_keyring_file, save_keyring_file

if TYPE_CHECKING:
    from .config.types import AgentConfig
    from .tls.policy import RPCTLS

log = logging.getLogger("meshagent.agent")


class AgentError(Exception):
    """The agent cannot start (bad data dir, address in use, ...); the message is for the operator."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir so two agents never share one (Consul requires locking too)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentError(f"data dir {data_dir} is in use by another meshagent process") from None
    return fd


def node_id(data_dir: Path | None, configured: str) -> str:
    """The node's UUID: configured, else persisted in the data dir, else new."""
    if configured:
        return configured
    if data_dir is None:
        return str(uuid.uuid4())
    path = data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    new_id = str(uuid.uuid4())
    path.write_text(new_id)
    return new_id


def load_keyring(data_dir: Path | None, encrypt: str) -> tuple[Keyring | None, str | None]:
    """The gossip keyring: <data-dir>/serf/local.keyring when it exists (it holds installed and rotated
    keys), else a new one from -encrypt, saved there; None without either (plaintext gossip)."""
    path = data_dir / "serf" / "local.keyring" if data_dir else None
    try:
        if path is not None and path.exists():
            keyring = load_keyring_file(path)
            if encrypt and decode_key(encrypt) not in keyring:
                log.warning("%s exists; the -encrypt key is not in it and is ignored (use meshagent keyring)", path)
            return keyring, str(path)
        if not encrypt:
            return None, str(path) if path else None
        keyring = Keyring([decode_key(encrypt)])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_keyring_file(path, keyring)
        return keyring, str(path) if path else None
    except (KeyringError, OSError) as exc:
        raise AgentError(f"gossip keyring: {exc}") from exc


def rpc_tls(config: AgentConfig, keyring: Keyring | None) -> RPCTLS | None:
    """The server port's TLS policy (agent/tls): None keeps :8300 plaintext (no tls settings, no gossip key)."""
    from .tls.setup import rpc_tls_for, tls_configured

    if not keyring and not tls_configured(config.tls):
        return None
    from .tls.policy import TLSSetupError

    try:
        tls = rpc_tls_for(config, keyring)
    except TLSSetupError as exc:
        raise AgentError(f"tls: {exc}") from exc
    if tls is not None:
        log.info("server port :%d security: %s", config.ports.server, tls.describe())
    return tls
