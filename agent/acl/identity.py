"""ACLIdentity: who a request acts as once its token is resolved, and the one way to enforce a Decision.

Every enforcement point (HTTP endpoints, DNS, RPC re-checks, the mesh) asks an `ACLIdentity` for a Decision
(`identity.authorizer.service_write("web")`) and calls `require`; lists keep what `allowed` lets through.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rpc.errors import ACLDenied
from .authorizer import Authorizer, Decision
from .objects import Token


@dataclass(frozen=True)
class ACLIdentity:
    """A resolved token: its AccessorID, its merged Authorizer and, when it is a stored token, the Token."""

    accessor_id: str
    authorizer: Authorizer
    token: Token | None = None
    # Same key, same decisions: response caches add it to their key (AccessorID plus the ACL state's index,
    # so a policy edit never serves a list filtered under the old rules). "" when ACLs are off.
    cache_key: str = ""
    enabled: bool = True

    def __repr__(self) -> str:
        return f"ACLIdentity(accessor_id={self.accessor_id!r}, enabled={self.enabled})"


# ACLs disabled: every decision allowed, nothing filtered, nothing added to cache keys.
ALLOW_ALL = ACLIdentity(accessor_id="", authorizer=Authorizer.management_token(), token=None, cache_key="",
                        enabled=False)


def require(identity: ACLIdentity, decision: Decision) -> None:
    """Raise ACLDenied (HTTP 403, Consul's text) unless `decision` allows."""
    if not decision.allowed:
        raise ACLDenied(decision.denied_message(identity.accessor_id))
