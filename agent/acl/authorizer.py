"""A token's policies merged into one Authorizer with Consul's precedence, and its 403 wording."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .rules import NAMED, Access, NamedRule, Policy

GLOBAL_MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"
# Resources whose names the catalog matches case-insensitively: their rules match the same way (not Consul's).
FOLDED = frozenset({"service", "node"})


@dataclass(frozen=True)
class Decision:
    """Allowed or not, and the permission Consul names in its 403 (`service:write` on "web")."""

    allowed: bool
    permission: str
    name: str | None = None

    def denied_message(self, accessor_id: str) -> str:
        """Consul's 403 body for this decision and token."""
        on = f' on "{self.name}"' if self.name is not None else ""
        return f"Permission denied: token with AccessorID '{accessor_id}' lacks permission '{self.permission}'{on}"


@dataclass(frozen=True)
class _Rule:
    access: Access
    intentions: Access | None


def _stronger(a: Access | None, b: Access | None) -> Access | None:
    # Consul's merger keeps the disposition that takes precedence: deny > write > list > read; unset loses.
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _enforce(rule: Access, required: Access) -> bool:
    """Does a rule grant `required`? write grants all, list grants list and read, read only read."""
    if rule is Access.DENY:
        return False
    if rule is Access.WRITE:
        return True
    if rule is Access.LIST:
        return required in (Access.LIST, Access.READ)
    return required is Access.READ


class _Table:
    """One resource's exact and prefix rules (merged); exact beats prefix, longest prefix wins. `fold`: names
    compared lowercased, as the catalog compares service and node names (else `service "web" deny` would not
    stop a registration of "WEB", which the catalog then serves as web)."""

    def __init__(self, fold: bool = False) -> None:
        self.exact: dict[str, _Rule] = {}
        self.prefix: dict[str, _Rule] = {}
        self.fold = fold

    def add(self, rule: NamedRule) -> None:
        table = self.prefix if rule.prefix else self.exact
        name = rule.name.lower() if self.fold else rule.name
        old = table.get(name)
        if old is None:
            table[name] = _Rule(rule.access, rule.intentions)
        else:
            merged = _stronger(old.access, rule.access)
            assert merged is not None
            table[name] = _Rule(merged, _stronger(old.intentions, rule.intentions))

    def lookup(self, name: str) -> _Rule | None:
        """The governing rule for `name`, or None when nothing matches."""
        if self.fold:
            name = name.lower()
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        return _longest_prefix(self.prefix, name)


class Authorizer:
    """Decisions for one token: its policies merged; `default_allow` when no rule matches."""

    def __init__(self, policies: Iterable[Policy], default_allow: bool, management: bool = False) -> None:
        self._default = default_allow
        self._management = management
        self._tables: dict[str, _Table] = {r: _Table(fold=r in FOLDED) for r in NAMED}
        self._single: dict[str, Access] = {}
        for policy in policies:
            for rule in policy.named:
                self._tables[rule.resource].add(rule)
            for key, access in policy.single.items():
                merged = _stronger(self._single.get(key), access)
                assert merged is not None
                self._single[key] = merged

    @classmethod
    def for_policies(cls, policies: Iterable[tuple[str, Policy]], default_allow: bool) -> Authorizer:
        """From (policy ID, policy) pairs of a token, its roles and identities; global-management allows all."""
        pairs = list(policies)
        management = any(pid == GLOBAL_MANAGEMENT_POLICY_ID for pid, _ in pairs)
        return cls((p for _, p in pairs), default_allow, management)

    @classmethod
    def management_token(cls) -> Authorizer:
        """The global-management policy's authorizer: everything allowed."""
        return cls((), default_allow=True, management=True)

    # ------------------------------------------------------------------ core

    def _named(self, resource: str, name: str, required: Access, label: str | None = None) -> Decision:
        permission = f"{label or resource}:{_word(required)}"
        if self._management:
            return Decision(True, permission, name)
        rule = self._tables[resource].lookup(name)
        allowed = self._default if rule is None else _enforce(rule.access, required)
        return Decision(allowed, permission, name)

    def _one(self, resource: str, required: Access, fallback: str | None = None) -> Decision:
        permission = f"{resource}:{_word(required)}"
        if self._management:
            return Decision(True, permission)
        access = self._single.get(resource)
        if access is None and fallback is not None:
            # mesh and peering fall back to the operator rule when they have none (Consul does the same).
            access = self._single.get(fallback)
        # acl never takes the default: Consul's allow-all authorizer denies ACLRead/ACLWrite (allowManage
        # false), so under default_policy "allow" only a policy (or global-management) reads tokens or mints them.
        default = self._default and resource != "acl"
        allowed = default if access is None else _enforce(access, required)
        return Decision(allowed, permission)

    def _intention(self, destination: str, required: Access) -> Decision:
        permission = f"intention:{_word(required)}"
        if self._management:
            return Decision(True, permission, destination)
        rule = self._tables["service"].lookup(destination)
        if rule is None:
            return Decision(self._default, permission, destination)
        intentions = rule.intentions
        if intentions is None:
            # Unset: a service rule of read or write gives intentions read, anything else denies (Consul).
            intentions = Access.READ if rule.access in (Access.READ, Access.WRITE) else Access.DENY
        return Decision(_enforce(intentions, required), permission, destination)

    # ------------------------------------------------------------------ per resource

    def service_read(self, name: str) -> Decision:
        return self._named("service", name, Access.READ)

    def service_write(self, name: str) -> Decision:
        return self._named("service", name, Access.WRITE)

    def intention_read(self, destination: str) -> Decision:
        return self._intention(destination, Access.READ)

    def intention_write(self, destination: str) -> Decision:
        return self._intention(destination, Access.WRITE)

    def node_read(self, name: str) -> Decision:
        return self._named("node", name, Access.READ)

    def node_write(self, name: str) -> Decision:
        return self._named("node", name, Access.WRITE)

    def agent_read(self, name: str) -> Decision:
        return self._named("agent", name, Access.READ)

    def agent_write(self, name: str) -> Decision:
        return self._named("agent", name, Access.WRITE)

    def event_read(self, name: str) -> Decision:
        return self._named("event", name, Access.READ)

    def event_write(self, name: str) -> Decision:
        return self._named("event", name, Access.WRITE)

    def query_read(self, name: str) -> Decision:
        return self._named("query", name, Access.READ)

    def query_write(self, name: str) -> Decision:
        return self._named("query", name, Access.WRITE)

    def session_read(self, name: str) -> Decision:
        return self._named("session", name, Access.READ)

    def session_write(self, name: str) -> Decision:
        return self._named("session", name, Access.WRITE)

    def key_read(self, key: str) -> Decision:
        return self._named("key", key, Access.READ)

    def key_list(self, key: str) -> Decision:
        return self._named("key", key, Access.LIST)

    def key_write(self, key: str) -> Decision:
        return self._named("key", key, Access.WRITE)

    def key_write_prefix(self, prefix: str) -> Decision:
        """Write on every key under `prefix` (KV delete-tree): the governing rule and every rule below it."""
        permission = "key:write"
        if self._management:
            return Decision(True, permission, prefix)
        table = self._tables["key"]
        # Any rule at or under the prefix that does not grant write denies, as in Consul.
        for rules in (table.exact, table.prefix):
            for name, rule in rules.items():
                if name.startswith(prefix) and not _enforce(rule.access, Access.WRITE):
                    return Decision(False, permission, prefix)
        governing = _longest_prefix(table.prefix, prefix)
        allowed = self._default if governing is None else _enforce(governing.access, Access.WRITE)
        return Decision(allowed, permission, prefix)

    def operator_read(self) -> Decision:
        return self._one("operator", Access.READ)

    def operator_write(self) -> Decision:
        return self._one("operator", Access.WRITE)

    def keyring_read(self) -> Decision:
        return self._one("keyring", Access.READ)

    def keyring_write(self) -> Decision:
        return self._one("keyring", Access.WRITE)

    def acl_read(self) -> Decision:
        return self._one("acl", Access.READ)

    def acl_write(self) -> Decision:
        return self._one("acl", Access.WRITE)

    def mesh_read(self) -> Decision:
        return self._one("mesh", Access.READ, fallback="operator")

    def mesh_write(self) -> Decision:
        return self._one("mesh", Access.WRITE, fallback="operator")

    def peering_read(self) -> Decision:
        return self._one("peering", Access.READ, fallback="operator")

    def peering_write(self) -> Decision:
        return self._one("peering", Access.WRITE, fallback="operator")

    def snapshot(self) -> Mapping[str, object]:
        """The merged rules, for tests and debugging (never includes secrets)."""
        return {
            "single": dict(self._single),
            "exact": {r: dict(t.exact) for r, t in self._tables.items() if t.exact},
            "prefix": {r: dict(t.prefix) for r, t in self._tables.items() if t.prefix},
        }


def _longest_prefix(prefixes: Mapping[str, _Rule], name: str) -> _Rule | None:
    """The rule of the longest prefix of `name`; a scan is fine at the bounded rule counts (MAX_RULES)."""
    best: str | None = None
    for prefix in prefixes:
        if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else prefixes[best]


def _word(access: Access) -> str:
    return {Access.READ: "read", Access.LIST: "list", Access.WRITE: "write", Access.DENY: "deny"}[access]

