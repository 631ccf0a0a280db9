"""A client's token/policy/role cache as a sans-IO state machine: TTLs, Consul's down_policy, an LRU bound.

Time comes in as `now` (monotonic seconds); nothing here reads a clock, sleeps or does I/O.
"""

from __future__ import annotations

import enum
import hashlib
import secrets as _secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")
T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

DEFAULT_TTL = 30.0
DEFAULT_MAX_ENTRIES = 10_000


class DownPolicy(enum.Enum):
    """Consul's `acl.down_policy`: what to do when no server answers a refresh."""

    EXTEND_CACHE = "extend-cache"
    ASYNC_CACHE = "async-cache"
    ALLOW = "allow"
    DENY = "deny"


class Status(enum.Enum):
    """What `lookup` found: a fresh entry, an expired one, or none."""

    HIT = "hit"
    STALE = "stale"
    MISS = "miss"


class Failure(enum.Enum):
    """Why a refresh failed: no server answered, or the servers say the object is gone ("ACL not found")."""

    UNREACHABLE = "unreachable"
    NOT_FOUND = "not-found"


class Action(enum.Enum):
    """What the caller does with a request after a refresh: use a value, allow all, deny all, or refuse."""

    USE = "use"
    ALLOW_ALL = "allow-all"
    DENY_ALL = "deny-all"
    NOT_FOUND = "not-found"


@dataclass(frozen=True)
class Lookup(Generic[V]):
    """A lookup's answer: `value` is servable now; `fetch` asks for a refresh (in the background if `value`)."""

    status: Status
    value: V | None
    fetch: bool

    def __repr__(self) -> str:
        # The value may embed a token's secret; a repr that lands in a log must not.
        return f"Lookup(status={self.status.value}, cached={self.value is not None}, fetch={self.fetch})"


@dataclass(frozen=True)
class Outcome(Generic[V]):
    """How a request is answered once a refresh succeeded or failed."""

    action: Action
    value: V | None = None
    reason: str = ""

    def __repr__(self) -> str:
        return f"Outcome(action={self.action.value}, cached={self.value is not None}, reason={self.reason!r})"


@dataclass(frozen=True)
class CacheConfig:
    """The `acl` block's cache settings (Consul's defaults) and our bound on entries."""

    token_ttl: float = DEFAULT_TTL
    policy_ttl: float = DEFAULT_TTL
    role_ttl: float = DEFAULT_TTL
    down_policy: DownPolicy = DownPolicy.EXTEND_CACHE
    max_entries: int = DEFAULT_MAX_ENTRIES
    default_policy: str = "allow"

    def __post_init__(self) -> None:
        if self.default_policy not in ("allow", "deny"):
            raise ValueError("default_policy must be allow or deny")
        for name in ("token_ttl", "policy_ttl", "role_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")


@dataclass
class _Entry(Generic[V]):
    value: V
    stored_at: float
    refreshing: bool = False

    def __repr__(self) -> str:
        # A cached token carries its SecretID; a dump of the cache shows only ages.
        return f"_Entry(stored_at={self.stored_at}, refreshing={self.refreshing})"


class TTLCache(Generic[V]):
    """One kind of ACL object (tokens, policies or roles), keyed by a salted hash of its secret or ID."""

    def __init__(
        self,
        kind: str,
        ttl: float,
        down_policy: DownPolicy = DownPolicy.EXTEND_CACHE,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        salt: bytes | None = None,
        default_policy: str = "allow",
    ) -> None:
        """`salt` keys the hash (random by default), so equal secrets in two dumps do not even correlate."""
        if ttl < 0 or max_entries < 1 or default_policy not in ("allow", "deny"):
            raise ValueError("ttl must be >= 0, max_entries >= 1, default_policy allow or deny")
        self.default_policy = default_policy
        self.kind = kind
        self.ttl = ttl
        self.down_policy = down_policy
        self.max_entries = max_entries
        self._salt = salt if salt is not None else _secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry[V]] = OrderedDict()

    def key(self, secret: str) -> bytes:
        """The dict key for a secret: keyed BLAKE2b, never the secret itself."""
        # Dict lookups compare these digests with ==, which is not constant time; that is safe because what
        # a timing probe could learn is a prefix of a keyed hash, which says nothing about the secret.
        return hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), key=self._salt, digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, secret: object) -> bool:
        return isinstance(secret, str) and self.key(secret) in self._entries

    def __repr__(self) -> str:
        return f"TTLCache(kind={self.kind!r}, ttl={self.ttl}, entries={len(self._entries)}, max={self.max_entries})"

    def lookup(self, secret: str, now: float) -> Lookup[V]:
        """Hit (age < ttl), stale (age >= ttl: refresh) or miss; under async-cache a stale value is served."""
        k = self.key(secret)
        entry = self._entries.get(k)
        if entry is None:
            return Lookup(Status.MISS, None, fetch=True)
        self._entries.move_to_end(k)
        if now - entry.stored_at < self.ttl:
            return Lookup(Status.HIT, entry.value, fetch=False)
        if self.down_policy is DownPolicy.ASYNC_CACHE:
            # Serve the old value now; ask for one background refresh, not one per request.
            fetch = not entry.refreshing
            entry.refreshing = True
            return Lookup(Status.STALE, entry.value, fetch=fetch)
        # Other policies refresh before answering; the cached value stays here for refresh_failed.
        return Lookup(Status.STALE, None, fetch=True)

    def refreshed(self, secret: str, result: V, now: float) -> Outcome[V]:
        """A server answered with `result`: store it fresh (evicting the least recently used beyond the bound)."""
        k = self.key(secret)
        self._entries[k] = _Entry(result, now)
        self._entries.move_to_end(k)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return Outcome(Action.USE, result, "refreshed")

    def refresh_failed(self, secret: str, now: float, reason: Failure) -> Outcome[V]:
        """Apply down_policy when no server answered; a NOT_FOUND object is dropped and refused at once."""
        k = self.key(secret)
        if reason is Failure.NOT_FOUND:
            self._entries.pop(k, None)
            return Outcome(Action.NOT_FOUND, None, f"ACL not found ({self.kind})")
        entry = self._entries.get(k)
        if entry is not None:
            entry.refreshing = False
        policy = self.down_policy
        if policy is DownPolicy.ALLOW:
            return Outcome(Action.ALLOW_ALL, None, "down_policy allow")
        if policy is DownPolicy.DENY:
            return Outcome(Action.DENY_ALL, None, "down_policy deny")
        if entry is None:
            # Nothing to extend: current Consul (ACLResolver's `down` for these two) falls back to
            # default_policy; its older docs and legacy resolver said deny.
            action = Action.ALLOW_ALL if self.default_policy == "allow" else Action.DENY_ALL
            return Outcome(action, None, f"down_policy {policy.value}: nothing cached, default_policy")
        # The entry keeps its old stored_at, so the next lookup tries the servers again.
        return Outcome(Action.USE, entry.value, f"down_policy {policy.value}: cached value extended")

    def invalidate(self, secret: str) -> None:
        """Forget one entry (e.g. the agent itself deleted or updated that token)."""
        self._entries.pop(self.key(secret), None)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


class ResolverCache(Generic[T, P, R]):
    """The three caches a client agent keeps (tokens by secret, policies and roles by ID), from one config."""

    def __init__(self, config: CacheConfig | None = None, salt: bytes | None = None) -> None:
        """One salt for all three unless given; `config` defaults to Consul's."""
        c = config if config is not None else CacheConfig()
        s = salt if salt is not None else _secrets.token_bytes(32)
        self.config = c
        self.tokens: TTLCache[T] = TTLCache("token", c.token_ttl, c.down_policy, c.max_entries, s, c.default_policy)
        self.policies: TTLCache[P] = TTLCache("policy", c.policy_ttl, c.down_policy, c.max_entries, s, c.default_policy)
        self.roles: TTLCache[R] = TTLCache("role", c.role_ttl, c.down_policy, c.max_entries, s, c.default_policy)

    def __repr__(self) -> str:
        return f"ResolverCache(tokens={len(self.tokens)}, policies={len(self.policies)}, roles={len(self.roles)})"
