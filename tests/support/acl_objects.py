"""ACL policies and tokens for tests, written with the FSM's acl_* commands so that the agent's real
ACLResolver resolves them (no stand-in resolver). IDs derive from a name, so a test can name the AccessorID
a 403 or a log line should carry, and re-set a policy's rules under the same ID."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.catalog import commands
from meshagent.agent.store import CatalogStore

_NAMESPACE = uuid.UUID("6d2f0a54-7c1e-4f1b-9a55-3b0c8e1d2f47")


def accessor_of(name: str) -> str:
    """The AccessorID of the token `grant(name, …)` makes."""
    return str(uuid.uuid5(_NAMESPACE, f"token:{name}"))


def policy_of(name: str, rules: str) -> Policy:
    """The policy `p-<name>` with `rules` (the same ID for the same name: setting it again changes its rules)."""
    return Policy(id=str(uuid.uuid5(_NAMESPACE, f"policy:{name}")), name=f"p-{name}", rules=rules)


def grant(name: str, rules: str, secret: str) -> list[dict[str, Any]]:
    """The commands making policy `p-<name>` with `rules` and a token with `secret` linked to it."""
    policy = policy_of(name, rules)
    token = Token(accessor_id=accessor_of(name), secret_id=secret, description=name,
                  policies=(Link(policy.id, policy.name),))
    return [commands.acl_policy_set(policy), commands.acl_token_set(token)]


def apply_now(store: CatalogStore, cmds: Iterable[dict[str, Any]]) -> None:
    """Apply commands to the store's catalog at the next indexes, at once (no trio loop may be using it)."""
    for cmd in cmds:
        store.catalog.apply(store.catalog.last_index + 1, cmd)


def add_token(apply: Callable[[dict[str, Any]], object], name: str, rules: str) -> str:
    """A new token (fresh random IDs and secret) holding one new policy `p-<name>` of `rules`, written with
    `apply` (e.g. a harness ServerThread's); its secret."""
    policy = Policy(id=str(uuid.uuid4()), name=f"p-{name}", rules=rules)
    secret = str(uuid.uuid4())
    apply(commands.acl_policy_set(policy))
    apply(commands.acl_token_set(Token(accessor_id=str(uuid.uuid4()), secret_id=secret, description=name,
                                       policies=(Link(policy.id, policy.name),))))
    return secret
