"""ACLResolver: a secret (or none) in, an ACLIdentity out, from this agent's catalog (server or replica).

Skeleton for issue 15's contract (docs/acl.md): with ACLs off every request resolves to ALLOW_ALL. Helper B
fills in resolution when `acl.enabled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .identity import ALLOW_ALL, ACLIdentity

if TYPE_CHECKING:
    from ..config.types import ACLTokens, AgentConfig
    from ..store import CatalogStore

MAX_SECRET_LEN = 256  # longer than any token Consul makes: refused as "ACL not found" without a lookup


class ACLResolver:
    """Resolves tokens for every enforcement point of one agent; `tokens` are the agent's own (mutable)."""

    def __init__(self, config: AgentConfig, store: CatalogStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.tokens: ACLTokens = replace(config.acl.tokens)

    @property
    def enabled(self) -> bool:
        """Whether ACLs are enforced on this agent."""
        return self.config.acl.enabled

    def resolve(self, secret: str | None) -> ACLIdentity:
        """The identity for a presented secret; None or "" means the agent's `default` token, else anonymous.
        Raises ACLNotFound for an unknown or expired secret."""
        if not self.enabled:
            return ALLOW_ALL
        raise NotImplementedError("ACL resolution (issue 15, helper B)")

    def agent_secret(self) -> str:
        """The secret the agent's own writes (anti-entropy) carry: `tokens.agent`, else `tokens.default`."""
        return self.tokens.agent or self.tokens.default

    def agent_identity(self) -> ACLIdentity:
        """The identity of the agent's own writes."""
        return self.resolve(self.agent_secret())
