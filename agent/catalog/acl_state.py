"""AclState: ACL tokens, policies and roles in the catalog FSM (Raft, snapshots, the client feed), pure.

Commands (op "acl", verbs below) carry plain dicts made by acl_codec.py's codecs, which check every field, so
a hostile entry in the log is refused (AclStateError) and never crashes a replica. Tokens are indexed by
`secret_digest`: client replicas hold digests, not secrets (agent/server/feed.py), and resolve locally.
Links are stored by ID; reads give them the linked object's current name and drop dangling ones.
The codecs and `secret_digest` are re-exported here (the names issue 15's interface gives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from ..acl.objects import Link, Policy, Role, Token
from ..acl.rules import RulesError, parse_rules
from ..acl.secrets import ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET_ID
from .acl_codec import (
    DIGEST,
    MAX_SECRET,
    AclStateError,
    as_map,
    field_index,
    field_list,
    field_text,
    field_uuid,
    policy_from_dict,
    policy_to_dict,
    redacted_acl_command,
    role_from_dict,
    role_to_dict,
    secret_digest,
    token_from_dict,
    token_to_dict,
)

__all__ = ["GLOBAL_MANAGEMENT_NAME", "MAX_OBJECTS", "WATCH_KEY", "AclState", "AclStateError", "policy_from_dict",
           "policy_to_dict", "redacted_acl_command", "role_from_dict", "role_to_dict", "secret_digest",
           "token_from_dict", "token_to_dict"]

WATCH_KEY = "acl"  # touched by every ACL change
GLOBAL_MANAGEMENT_NAME = "global-management"
# Consul's builtin global-management rules (the authorizer treats the policy's ID as management anyway).
GLOBAL_MANAGEMENT_RULES = """acl = "write"
agent_prefix "" { policy = "write" }
event_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
keyring = "write"
node_prefix "" { policy = "write" }
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" { policy = "write" }
service_prefix "" { policy = "write" intentions = "write" }
session_prefix "" { policy = "write" }
"""
MAX_OBJECTS = 100_000  # per kind: tokens, policies, roles


class AclState:
    """Tokens, policies and roles by ID (with secret-digest and name indexes); changed only by `apply`."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}  # accessor -> token (dict order = CreateIndex order)
        self._digests: dict[str, str] = {}  # accessor -> secret digest
        self._by_digest: dict[str, str] = {}  # secret digest -> accessor
        self._policies: dict[str, Policy] = {}
        self._policy_names: dict[str, str] = {}  # name -> id
        self._roles: dict[str, Role] = {}
        self._role_names: dict[str, str] = {}
        self.bootstrap_index = 0  # 0: never bootstrapped, else Consul's "reset index"
        self.index = 0  # the last ACL change
        # Reads return links with current names; built once per change, not per request.
        self._token_views: dict[str, Token] = {}
        self._role_views: dict[str, Role] = {}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, AclState) and self._tokens == other._tokens and self._digests == other._digests
                and self._policies == other._policies and self._roles == other._roles
                and self.bootstrap_index == other.bootstrap_index and self.index == other.index)

    __hash__ = None  # type: ignore[assignment]  # mutable

    # ------------------------------------------------------------------ reads

    def token(self, accessor_id: str) -> Token | None:
        """A token by AccessorID (links with current names), or None."""
        view = self._token_views.get(accessor_id)
        if view is None:
            stored = self._tokens.get(accessor_id)
            if stored is None:
                return None
            view = self._token_views[accessor_id] = replace(
                stored, policies=self._live(stored.policies, self._policies),
                roles=self._live(stored.roles, self._roles))
        return view

    def token_by_secret(self, secret: str) -> Token | None:
        """The token whose SecretID is `secret` (by digest: works on redacted client replicas), or None."""
        accessor = self._by_digest.get(secret_digest(secret))
        return None if accessor is None else self.token(accessor)

    def tokens(self) -> list[Token]:
        """Every token (expired ones too), in CreateIndex order."""
        return [t for a in self._tokens if (t := self.token(a)) is not None]

    def policy(self, policy_id: str) -> Policy | None:
        """A policy by ID, or None."""
        return self._policies.get(policy_id)

    def policy_by_name(self, name: str) -> Policy | None:
        """A policy by name, or None."""
        pid = self._policy_names.get(name)
        return None if pid is None else self._policies[pid]

    def policies(self) -> list[Policy]:
        """Every policy, in CreateIndex order."""
        return list(self._policies.values())

    def role(self, role_id: str) -> Role | None:
        """A role by ID (policy links with current names), or None."""
        view = self._role_views.get(role_id)
        if view is None:
            stored = self._roles.get(role_id)
            if stored is None:
                return None
            view = self._role_views[role_id] = replace(stored, policies=self._live(stored.policies,
                                                                                   self._policies))
        return view

    def role_by_name(self, name: str) -> Role | None:
        """A role by name, or None."""
        rid = self._role_names.get(name)
        return None if rid is None else self.role(rid)

    def roles(self) -> list[Role]:
        """Every role, in CreateIndex order."""
        return [r for i in self._roles if (r := self.role(i)) is not None]

    @staticmethod
    def _live(links: tuple[Link, ...], table: Mapping[str, Policy | Role]) -> tuple[Link, ...]:
        return tuple(Link(link.id, obj.name) for link in links if (obj := table.get(link.id)) is not None)

    # ------------------------------------------------------------------ writes

    def apply(self, index: int, cmd: dict[str, Any]) -> bool:
        """Apply one "acl" command at `index`; True when something changed (then `index` is set)."""
        verb = cmd.get("verb")
        handler = _VERBS.get(verb) if isinstance(verb, str) else None
        if handler is None:
            raise AclStateError(f"unknown acl verb {str(verb)[:64]!r}")
        changed = handler(self, index, cmd)
        if changed:
            self.index = index
        return changed

    def _token_set(self, index: int, cmd: dict[str, Any]) -> bool:
        token, digest = token_from_dict(cmd.get("token"))
        return self._put_token(index, token, digest)

    def _put_token(self, index: int, token: Token, digest: str) -> bool:
        aid = token.accessor_id
        old = self._tokens.get(aid)
        if not digest:
            if old is None:
                raise AclStateError("token.secret_id: missing")
            token, digest = replace(token, secret_id=old.secret_id), self._digests[aid]  # update keeps secret
        owner = self._by_digest.get(digest)
        if owner is not None and owner != aid:
            raise AclStateError("token.secret_id: already used by another token")
        if aid == ANONYMOUS_ACCESSOR_ID and digest != secret_digest(ANONYMOUS_SECRET_ID):
            raise AclStateError("token.secret_id: the anonymous token's secret cannot be changed")
        if old is None and len(self._tokens) >= MAX_OBJECTS:
            raise AclStateError(f"token: at most {MAX_OBJECTS} tokens")
        token = replace(token, policies=self._resolve(token.policies, "token.policies", self._policies,
                                                      self._policy_names),
                        roles=self._resolve(token.roles, "token.roles", self._roles, self._role_names))
        if old is not None and _same(old, token) and self._digests[aid] == digest:
            return False
        self._tokens[aid] = replace(token, create_index=old.create_index if old else index, modify_index=index)
        old_digest = self._digests.get(aid)
        if old_digest is not None:
            self._by_digest.pop(old_digest, None)
        self._digests[aid] = digest
        self._by_digest[digest] = aid
        self._token_views.pop(aid, None)
        return True

    def _token_delete(self, index: int, cmd: dict[str, Any]) -> bool:
        aid = field_uuid(cmd, "accessor_id", "")
        if aid == ANONYMOUS_ACCESSOR_ID:
            raise AclStateError("accessor_id: the anonymous token cannot be deleted")
        if self._tokens.pop(aid, None) is None:
            return False
        self._by_digest.pop(self._digests.pop(aid), None)
        self._token_views.pop(aid, None)
        return True

    def _policy_set(self, index: int, cmd: dict[str, Any]) -> bool:
        policy = policy_from_dict(cmd.get("policy"))
        old = self._policies.get(policy.id)
        if policy.id == GLOBAL_MANAGEMENT_POLICY_ID:
            if policy.name != GLOBAL_MANAGEMENT_NAME:
                raise AclStateError("policy.name: the builtin global-management policy cannot be renamed")
            if old is not None and (policy.rules, policy.datacenters) != (old.rules, old.datacenters):
                raise AclStateError("policy.rules: the builtin global-management policy's rules and "
                                    "datacenters cannot be changed")
        owner = self._policy_names.get(policy.name)
        if owner is not None and owner != policy.id:
            raise AclStateError(f"policy.name: a policy named {policy.name!r} already exists")
        if old is None and len(self._policies) >= MAX_OBJECTS:
            raise AclStateError(f"policy: at most {MAX_OBJECTS} policies")
        if old is not None and _same(old, policy):
            return False
        if old is None or old.rules != policy.rules:
            try:
                parse_rules(policy.rules)  # the API parsed it already; a forged entry must not plant junk
            except RulesError as exc:
                raise AclStateError(f"policy.rules: {exc}") from None
        if old is not None and old.name != policy.name:
            del self._policy_names[old.name]
        self._policies[policy.id] = replace(policy, create_index=old.create_index if old else index,
                                            modify_index=index)
        self._policy_names[policy.name] = policy.id
        self._links_changed()
        return True

    def _policy_delete(self, index: int, cmd: dict[str, Any]) -> bool:
        pid = field_uuid(cmd, "policy_id", "")
        if pid == GLOBAL_MANAGEMENT_POLICY_ID:
            raise AclStateError("policy_id: the builtin global-management policy cannot be deleted")
        old = self._policies.pop(pid, None)
        if old is None:
            return False
        del self._policy_names[old.name]
        self._links_changed()
        return True

    def _role_set(self, index: int, cmd: dict[str, Any]) -> bool:
        role = role_from_dict(cmd.get("role"))
        old = self._roles.get(role.id)
        owner = self._role_names.get(role.name)
        if owner is not None and owner != role.id:
            raise AclStateError(f"role.name: a role named {role.name!r} already exists")
        if old is None and len(self._roles) >= MAX_OBJECTS:
            raise AclStateError(f"role: at most {MAX_OBJECTS} roles")
        role = replace(role, policies=self._resolve(role.policies, "role.policies", self._policies,
                                                    self._policy_names))
        if old is not None and _same(old, role):
            return False
        if old is not None and old.name != role.name:
            del self._role_names[old.name]
        self._roles[role.id] = replace(role, create_index=old.create_index if old else index, modify_index=index)
        self._role_names[role.name] = role.id
        self._links_changed()
        return True

    def _role_delete(self, index: int, cmd: dict[str, Any]) -> bool:
        rid = field_uuid(cmd, "role_id", "")
        old = self._roles.pop(rid, None)
        if old is None:
            return False
        del self._role_names[old.name]
        self._links_changed()
        return True

    def _bootstrap(self, index: int, cmd: dict[str, Any]) -> bool:
        if self.bootstrap_index:
            raise AclStateError(f"ACL bootstrap no longer allowed (reset index: {self.bootstrap_index})")
        token, digest = token_from_dict(cmd.get("token"))
        if not digest:
            raise AclStateError("token.secret_id: missing")
        self._put_token(index, token, digest)
        self.bootstrap_index = index
        return True

    def _init(self, index: int, cmd: dict[str, Any]) -> bool:
        # Everything is checked before the first write: a refused init changes nothing.
        secret = field_text(cmd, "initial_management_secret", MAX_SECRET, "")
        digest = secret_digest(secret) if secret else field_text(cmd, "initial_management_digest", 64, "")
        if digest and not DIGEST.match(digest):
            raise AclStateError("initial_management_digest: must be 64 lowercase hex digits")
        want_initial = bool(digest) and digest not in self._by_digest
        aid = field_uuid(cmd, "accessor_id", "") if want_initial else ""
        if aid in self._tokens:
            raise AclStateError("accessor_id: already used by another token")
        want_policy = GLOBAL_MANAGEMENT_POLICY_ID not in self._policies
        if want_policy and GLOBAL_MANAGEMENT_NAME in self._policy_names:
            raise AclStateError("policy.name: another policy is named global-management")
        anonymous = secret_digest(ANONYMOUS_SECRET_ID)
        want_anonymous = ANONYMOUS_ACCESSOR_ID not in self._tokens
        if want_anonymous and anonymous in self._by_digest:
            raise AclStateError("token.secret_id: another token has the anonymous token's secret")
        if want_policy:
            self._policies[GLOBAL_MANAGEMENT_POLICY_ID] = Policy(
                id=GLOBAL_MANAGEMENT_POLICY_ID, name=GLOBAL_MANAGEMENT_NAME,
                description="Builtin Policy that grants unlimited access", rules=GLOBAL_MANAGEMENT_RULES,
                create_index=index, modify_index=index)
            self._policy_names[GLOBAL_MANAGEMENT_NAME] = GLOBAL_MANAGEMENT_POLICY_ID
            self._links_changed()
        if want_anonymous:
            self._put_token(index, Token(accessor_id=ANONYMOUS_ACCESSOR_ID, secret_id=ANONYMOUS_SECRET_ID,
                                         description="Anonymous Token"), anonymous)
        if want_initial:
            self._put_token(index, Token(accessor_id=aid, secret_id=secret, description="Initial Management Token",
                                         policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, GLOBAL_MANAGEMENT_NAME),)),
                            digest)
            if not self.bootstrap_index:
                # As Consul's leader: the configured initial management token is the bootstrap, so
                # /v1/acl/bootstrap cannot hand an outsider a second management token.
                self.bootstrap_index = index
        return want_policy or want_anonymous or want_initial

    def _links_changed(self) -> None:
        # A policy or role changed: every view may carry a stale name or a dangling link.
        self._token_views.clear()
        self._role_views.clear()

    def _resolve(self, links: tuple[Link, ...], field: str, table: Mapping[str, Policy | Role],
                 names: Mapping[str, str]) -> tuple[Link, ...]:
        out: list[Link] = []
        for i, link in enumerate(links):
            oid = link.id or names.get(link.name, "")
            obj = table.get(oid)
            if obj is None:
                what = "policy" if field.endswith("policies") else "role"
                by = f"ID {link.id!r}" if link.id else f"name {link.name!r}"
                raise AclStateError(f"{field}[{i}]: no {what} with {by}")
            resolved = Link(oid, obj.name)
            if resolved not in out:
                out.append(resolved)
        return tuple(out)

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, redact_secrets: bool = False) -> dict[str, Any]:
        """As plain data for the catalog snapshot; `redact_secrets` blanks secrets, keeping their digests."""
        tokens = []
        for aid, t in self._tokens.items():
            raw = token_to_dict(t, digest=self._digests[aid])
            if redact_secrets:
                raw["secret_id"] = ""
            tokens.append(raw)
        return {"tokens": tokens, "policies": [policy_to_dict(p) for p in self._policies.values()],
                "roles": [role_to_dict(r) for r in self._roles.values()],
                "bootstrap_index": self.bootstrap_index, "index": self.index}

    @classmethod
    def restore(cls, raw: Any) -> AclState:
        """From `snapshot()` data; None (a snapshot from before ACLs) gives an empty state."""
        state = cls()
        if raw is None:
            return state
        d = as_map(raw, "acl")
        state.bootstrap_index = field_index(d, "bootstrap_index", "acl.")
        state.index = field_index(d, "index", "acl.")
        # Stored links may dangle (deletes leave them): restore takes rows as they are, checking shapes only.
        for item in field_list(d, "policies", MAX_OBJECTS, "acl."):
            p = policy_from_dict(item)
            if p.id in state._policies or p.name in state._policy_names:
                raise AclStateError(f"acl.policies: duplicate policy {p.id}")
            state._policies[p.id] = p
            state._policy_names[p.name] = p.id
        for item in field_list(d, "roles", MAX_OBJECTS, "acl."):
            r = role_from_dict(item)
            if r.id in state._roles or r.name in state._role_names:
                raise AclStateError(f"acl.roles: duplicate role {r.id}")
            state._roles[r.id] = r
            state._role_names[r.name] = r.id
        for item in field_list(d, "tokens", MAX_OBJECTS, "acl."):
            t, digest = token_from_dict(item)
            if not digest or t.accessor_id in state._tokens or digest in state._by_digest:
                raise AclStateError(f"acl.tokens: token {t.accessor_id} has no secret or a duplicate one")
            state._tokens[t.accessor_id] = t
            state._digests[t.accessor_id] = digest
            state._by_digest[digest] = t.accessor_id
        return state


_VERBS: dict[str, Callable[[AclState, int, dict[str, Any]], bool]] = {
    "token-set": AclState._token_set,
    "token-delete": AclState._token_delete,
    "policy-set": AclState._policy_set,
    "policy-delete": AclState._policy_delete,
    "role-set": AclState._role_set,
    "role-delete": AclState._role_delete,
    "bootstrap": AclState._bootstrap,
    "init": AclState._init,
}


def _same(a: Token | Policy | Role, b: Token | Policy | Role) -> bool:
    same: bool = replace(a, create_index=0, modify_index=0) == replace(b, create_index=0, modify_index=0)
    return same
