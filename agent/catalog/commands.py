"""Constructors for catalog commands: the only shapes `Catalog.apply` accepts (and the Raft log carries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..acl.objects import Policy, Role, Token
from ..acl.secrets import new_id
from .acl_state import policy_to_dict, role_to_dict, token_to_dict
from .model import Check, Node, Service, row_to_dict
from .session_state import Session, session_to_dict


def register(node: Node, service: Service | None = None, checks: list[Check] | None = None) -> dict[str, Any]:
    """Upsert a node, optionally one service on it and checks on it."""
    return {
        "op": "register",
        "node": row_to_dict(node),
        "service": row_to_dict(service) if service is not None else None,
        "checks": [row_to_dict(c) for c in checks or ()],
    }


def deregister(node: str, service_id: str = "", check_id: str = "") -> dict[str, Any]:
    """Remove a check, a service (with its checks) or, with neither id, the whole node."""
    return {"op": "deregister", "node": node, "service_id": service_id, "check_id": check_id}


def kv_set(key: str, value: bytes, flags: int = 0) -> dict[str, Any]:
    """Write a key unconditionally."""
    return {"op": "kv", "verb": "set", "key": key, "value": value, "flags": flags}


def kv_cas(key: str, value: bytes, index: int, flags: int = 0) -> dict[str, Any]:
    """Write a key only if its ModifyIndex equals index (0: only if absent)."""
    return {"op": "kv", "verb": "cas", "key": key, "value": value, "flags": flags, "index": index}


def kv_delete(key: str) -> dict[str, Any]:
    """Delete one key."""
    return {"op": "kv", "verb": "delete", "key": key}


def kv_delete_cas(key: str, index: int) -> dict[str, Any]:
    """Delete a key only if its ModifyIndex equals index."""
    return {"op": "kv", "verb": "delete-cas", "key": key, "index": index}


def kv_delete_tree(prefix: str) -> dict[str, Any]:
    """Delete every key under a prefix."""
    return {"op": "kv", "verb": "delete-tree", "key": prefix}


def kv_lock(key: str, value: bytes, session: str, now: float, flags: int = 0) -> dict[str, Any]:
    """`?acquire=`: write and lock a key for a session, unless another holds it or it is under lock-delay at
    `now` (unix seconds, stamped by the proposer)."""
    return {"op": "kv", "verb": "lock", "key": key, "value": value, "flags": flags, "session": session,
            "now": now}


def kv_unlock(key: str, value: bytes, session: str, flags: int = 0) -> dict[str, Any]:
    """`?release=`: write a key and clear its lock, only if `session` holds it."""
    return {"op": "kv", "verb": "unlock", "key": key, "value": value, "flags": flags, "session": session}


def session_create(session: Session | Mapping[str, Any]) -> dict[str, Any]:
    """Create a session (a row or its dict; the proposer picks its UUID `id`). The FSM refuses an unknown
    node or check, or a critical check, with Consul's text; the result is the session's ID."""
    row = session_to_dict(session) if isinstance(session, Session) else dict(session)
    return {"op": "session", "verb": "create", "session": row}


def session_destroy(session_id: str, now: float) -> dict[str, Any]:
    """Invalidate a session at `now` (unix seconds): its locks are released (or keys deleted) and lock-delay
    starts. Result False for an unknown session."""
    return {"op": "session", "verb": "destroy", "id": session_id, "now": now}


def config_entry_set(entry: dict[str, Any], cas: int | None = None) -> dict[str, Any]:
    """Write a (validated, canonical) config entry; with `cas`, only if its ModifyIndex is `cas` (0: absent)."""
    return {"op": "config-entry", "verb": "set", "entry": entry, "cas": cas}


def config_entry_delete(kind: str, name: str, cas: int | None = None) -> dict[str, Any]:
    """Delete a config entry; with `cas`, only if its ModifyIndex is `cas`."""
    return {"op": "config-entry", "verb": "delete", "kind": kind, "name": name, "cas": cas}


def connect_ca(action: str, **fields: Any) -> dict[str, Any]:
    """A mesh CA command (init, rotate, prune, set-config: agent/catalog/connect_state.py); leader only."""
    return {"op": "connect-ca", "action": action, **fields}


def acl_token_set(token: Token) -> dict[str, Any]:
    """Create or replace a token (links by ID or Name; the FSM stores both). An empty SecretID on an existing
    token keeps its secret."""
    return {"op": "acl", "verb": "token-set", "token": token_to_dict(token)}


def acl_token_delete(accessor_id: str) -> dict[str, Any]:
    """Delete a token (the anonymous token cannot be)."""
    return {"op": "acl", "verb": "token-delete", "accessor_id": accessor_id}


def acl_policy_set(policy: Policy) -> dict[str, Any]:
    """Create or replace a policy (names are unique; global-management keeps its name and rules)."""
    return {"op": "acl", "verb": "policy-set", "policy": policy_to_dict(policy)}


def acl_policy_delete(policy_id: str) -> dict[str, Any]:
    """Delete a policy; links to it are dropped when read."""
    return {"op": "acl", "verb": "policy-delete", "policy_id": policy_id}


def acl_role_set(role: Role) -> dict[str, Any]:
    """Create or replace a role."""
    return {"op": "acl", "verb": "role-set", "role": role_to_dict(role)}


def acl_role_delete(role_id: str) -> dict[str, Any]:
    """Delete a role; links to it are dropped when read."""
    return {"op": "acl", "verb": "role-delete", "role_id": role_id}


def acl_bootstrap(token: Token) -> dict[str, Any]:
    """Store the bootstrap token, once: refused with the reset index once the cluster is bootstrapped."""
    return {"op": "acl", "verb": "bootstrap", "token": token_to_dict(token)}


def acl_init(initial_management_secret: str = "", accessor_id: str | None = None) -> dict[str, Any]:
    """Add the builtins if missing: global-management, the anonymous token and, if given and no token has it,
    a global-management token with this secret (its AccessorID chosen here: the FSM draws no randomness)."""
    return {"op": "acl", "verb": "init", "initial_management_secret": initial_management_secret,
            "accessor_id": accessor_id or new_id()}


def txn(ops: list[dict[str, Any]], now: float = 0.0) -> dict[str, Any]:
    """A transaction (agent/catalog/txn.py ops): applied in one log entry, every op or none. `now` (unix
    seconds, stamped by the proposer) is what its lock ops see for lock-delay."""
    return {"op": "txn", "ops": ops, "now": now}
