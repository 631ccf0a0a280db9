"""ACLResolver: a secret (or none) in, an ACLIdentity out, from this agent's catalog (server or replica).

The catalog is the cache (docs/acl.md): servers resolve from their FSM, clients from their replica, which
the servers' feed keeps current (tokens carry a secret digest, never the secret). No RPC per request.
Policies are parsed once per (ID, ModifyIndex); identities are memoised per AccessorID until the ACL
state's index moves. On a client whose replica has been stale for longer than `token_ttl`, `down_policy`
decides (extend-cache/async-cache: known tokens keep resolving, unknown ones get default_policy, as Consul's
resolver without a cached entry; allow: allow all; deny: deny all but agent_recovery).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..rpc.errors import ACLNotFound
from .authorizer import Authorizer
from .identity import ALLOW_ALL, ACLIdentity
from .objects import Policy, Token
from .rules import Access, NamedRule, RulesError, node_identity_policy, parse_rules, service_identity_policy
from .rules import Policy as Rules
from .secrets import ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET_ID, MAX_SECRET_LEN, secrets_equal

if TYPE_CHECKING:
    from ..catalog.acl_state import AclState
    from ..config.types import ACLTokens, AgentConfig
    from ..store import CatalogStore

log = logging.getLogger("meshagent.acl")

MAX_PARSED = 4096  # parsed policies kept (LRU by (ID, ModifyIndex))
MAX_IDENTITIES = 4096  # resolved identities kept until the ACL index moves
AGENT_RECOVERY_ACCESSOR = "agent-recovery"  # not a stored token: the 403 text names it so
_NO_TOKEN = Token(accessor_id=ANONYMOUS_ACCESSOR_ID, description="Anonymous Token")


class ACLResolver:
    """Resolves tokens for every enforcement point of one agent; `tokens` are the agent's own (mutable)."""

    def __init__(self, config: AgentConfig, store: CatalogStore,
                 clock: Callable[[], float] = time.monotonic, *,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # the clock of store.stale_since (the agent passes trio.current_time)
        self.wall = wall  # token ExpirationTime is wall-clock time
        self.tokens: ACLTokens = replace(config.acl.tokens)
        self.node_name = config.node_name  # the agent sets its resolved name (agent_recovery's agent rule)
        self._parsed: OrderedDict[tuple[str, int], Rules] = OrderedDict()
        self._identities: dict[str, ACLIdentity] = {}
        # Presented secret -> identity, for the hot path (no digest, no lookup): only while the replica is
        # current, dropped with _identities. It holds only secrets presented to this agent, which pass through
        # its memory anyway.
        self._by_secret: dict[str | None, ACLIdentity] = {}
        # What _identities and _by_secret were built under: the ACL state (object and index), default policy, DC.
        self._generation: tuple[int, int, str, str] = (-1, -1, "", "")
        self._recovery: ACLIdentity | None = None
        self.hits = 0  # resolved to a stored token (or the anonymous one)
        self.not_found = 0  # ACLNotFound raised
        self.down_policy_applied = 0  # answers decided by down_policy (allow or deny)

    @property
    def enabled(self) -> bool:
        """Whether ACLs are enforced on this agent."""
        return self.config.acl.enabled

    def resolve(self, secret: str | None) -> ACLIdentity:
        """The identity for a presented secret; None or "" means the agent's `default` token, else anonymous.
        Raises ACLNotFound for an unknown or expired secret."""
        if not self.enabled:
            return ALLOW_ALL
        secret = secret or self.tokens.default or None
        if secret is not None:
            if len(secret) > MAX_SECRET_LEN:
                self.not_found += 1
                raise ACLNotFound("ACL not found")
            recovery = self.tokens.agent_recovery
            if recovery and secrets_equal(secret, recovery):
                return self._recovery_identity()
        down = self._down_policy()
        if down in ("allow", "deny"):
            return self._down_identity(down, secret)
        acl = self.store.catalog.acl
        generation = (id(acl), acl.index, self.config.acl.default_policy, self.config.datacenter)
        if down is None and generation == self._generation:
            known = self._by_secret.get(secret)
            if known is not None and (known.token is None or known.token.expiration_time is None
                                      or not known.token.expired(self.wall())):
                self.hits += 1
                return known
        token = self._lookup(acl, secret)
        if token is None and down is not None:
            # extend-cache/async-cache with nothing known for this secret: Consul's resolver falls back to
            # default_policy when no server answers and nothing is cached (a token made since we lost them).
            return self._down_identity(self.config.acl.default_policy, secret)
        if token is None or (token.expiration_time is not None and token.expired(self.wall())):
            self.not_found += 1
            raise ACLNotFound("ACL not found")
        self.hits += 1
        if generation != self._generation or len(self._identities) >= MAX_IDENTITIES \
                or len(self._by_secret) >= MAX_IDENTITIES:
            self._identities.clear()
            self._by_secret.clear()
            self._generation = generation
        identity = self._identities.get(token.accessor_id)
        if identity is None:
            authorizer = Authorizer.for_policies(self._policies(acl, token),
                                                 self.config.acl.default_policy == "allow")
            identity = self._identities[token.accessor_id] = ACLIdentity(
                accessor_id=token.accessor_id, authorizer=authorizer, token=token,
                cache_key=f"{token.accessor_id}:{acl.index}")
        if down is None:
            self._by_secret[secret] = identity
        return identity

    def resolve_rpc(self, secret: str | None) -> ACLIdentity:
        """Who an RPC caller (:8300) acts as: its token, else the anonymous token. Never this agent's `default`
        token, which is for requests to this agent's own HTTP API and DNS, not for whoever reaches :8300."""
        if secret:
            return self.resolve(secret)
        if not self.tokens.default:
            return self.resolve(None)  # the anonymous token (its rules, or default_policy before acl_init)
        return self.resolve(ANONYMOUS_SECRET_ID)

    def agent_secret(self) -> str:
        """The secret the agent's own writes (anti-entropy) carry: `tokens.agent`, else `tokens.default`."""
        return self.tokens.agent or self.tokens.default

    def agent_identity(self) -> ACLIdentity:
        """The identity of the agent's own writes."""
        return self.resolve(self.agent_secret())

    def counters(self) -> dict[str, int]:
        """acl.resolve.hits, acl.resolve.not_found, acl.down_policy (for /v1/agent/metrics)."""
        return {"resolve.hits": self.hits, "resolve.not_found": self.not_found,
                "down_policy": self.down_policy_applied}

    # ------------------------------------------------------------------ parts

    @staticmethod
    def _lookup(acl: AclState, secret: str | None) -> Token | None:
        """The stored token for `secret` (None: the anonymous token), or None when no token has it."""
        if secret is None:
            # Before the leader's acl_init has reached this catalog there is no anonymous token: no policies.
            return acl.token(ANONYMOUS_ACCESSOR_ID) or _NO_TOKEN
        return acl.token_by_secret(secret)

    def _policies(self, acl: AclState, token: Token) -> Iterator[tuple[str, Rules]]:
        """(policy ID, rules) of the token's policies, its roles' policies and every identity in this DC."""
        dc = self.config.datacenter
        roles = [r for link in token.roles if (r := acl.role(link.id)) is not None]
        for link in [*token.policies, *(p for r in roles for p in r.policies)]:
            policy = acl.policy(link.id)
            if policy is not None and (not policy.datacenters or dc in policy.datacenters):
                yield policy.id, self._parse(policy)
        for svc in [*token.service_identities, *(s for r in roles for s in r.service_identities)]:
            if not svc.datacenters or dc in svc.datacenters:
                yield "", service_identity_policy(svc.service_name)
        for node in [*token.node_identities, *(n for r in roles for n in r.node_identities)]:
            if node.datacenter == dc:
                yield "", node_identity_policy(node.node_name)

    def _parse(self, policy: Policy) -> Rules:
        """A policy's rules, parsed once per (ID, ModifyIndex); bounded LRU."""
        key = (policy.id, policy.modify_index)
        rules = self._parsed.get(key)
        if rules is not None:
            self._parsed.move_to_end(key)
            return rules
        try:
            rules = parse_rules(policy.rules)
        except RulesError as exc:  # the FSM checks rules on the way in: only a damaged entry gets here
            log.warning("policy %s (%s) has rules that cannot be used, ignored: %s", policy.id, policy.name,
                        exc)
            rules = Rules()
        self._parsed[key] = rules
        if len(self._parsed) > MAX_PARSED:
            self._parsed.popitem(last=False)
        return rules

    def _recovery_identity(self) -> ACLIdentity:
        """Consul's agent recovery policy: agent:write on this node, node:read on all; needs no server."""
        key = f"{AGENT_RECOVERY_ACCESSOR}:{self.node_name}"
        if self._recovery is None or self._recovery.cache_key != key:
            rules = Rules((NamedRule("agent", self.node_name, False, Access.WRITE),
                           NamedRule("node", "", True, Access.READ)))
            self._recovery = ACLIdentity(accessor_id=AGENT_RECOVERY_ACCESSOR, token=None, cache_key=key,
                                         authorizer=Authorizer([rules], default_allow=False))
        return self._recovery

    def _down_policy(self) -> str | None:
        """The down_policy in effect: on a client whose replica is stale for longer than token_ttl, else None."""
        since = self.store.stale_since
        if since is None or self.config.server or self.config.dev:
            return None
        acl = self.config.acl
        if self.clock() - since <= acl.token_ttl:
            return None  # the replica is the cache: decisions as current as token_ttl allows
        return acl.down_policy

    def _down_identity(self, down: str, secret: str | None) -> ACLIdentity:
        self.down_policy_applied += 1
        if down == "allow":
            # Consul's allow-all, not management: acl (and so snapshot, agent tokens) stays denied.
            return ACLIdentity(accessor_id="", authorizer=Authorizer((), default_allow=True), token=None,
                               cache_key="down-policy:allow")
        token = None if secret is None else self.store.catalog.acl.token_by_secret(secret)
        accessor = token.accessor_id if token is not None else ANONYMOUS_ACCESSOR_ID if secret is None else ""
        return ACLIdentity(accessor_id=accessor, authorizer=Authorizer((), default_allow=False), token=token,
                           cache_key="down-policy:deny")
