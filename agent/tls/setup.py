"""From agent configuration to the :8300 TLS policy (None when :8300 stays plaintext)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...gossip.keyring import Keyring
from ..config.types import AgentConfig, TLSConfig

if TYPE_CHECKING:
    from .policy import RPCTLS


def tls_configured(tls: TLSConfig) -> bool:
    """Whether any `tls` / `auto_encrypt` setting asks for TLS on :8300."""
    return any((tls.ca_file, tls.ca_path, tls.cert_file, tls.key_file, tls.verify_incoming, tls.verify_outgoing,
                tls.verify_server_hostname, tls.auto_encrypt_tls, tls.auto_encrypt_allow_tls))


def rpc_tls_for(config: AgentConfig, keyring: Keyring | None) -> RPCTLS | None:
    """The policy for this agent's :8300, from its tls settings and gossip keyring. Raises TLSSetupError."""
    if not tls_configured(config.tls) and not keyring:
        return None
    from .policy import RPCTLS  # ssl and x509 load only for agents that use them (docs/agent-memory.md)

    return RPCTLS(config.tls, config.datacenter, server=config.server or config.dev, keyring=keyring,
                  domain=config.domain, encrypt_verify_incoming=config.encrypt_verify_incoming,
                  encrypt_verify_outgoing=config.encrypt_verify_outgoing)
