"""`acl { ... }` (issue 15, docs/acl.md) and Consul's older top-level `acl_*` keys → `AgentConfig.acl`.

Each file's block becomes partial settings under `out["acl"]` (merged key by key across files, `tokens`
too); `build_acl` turns the merged dict into an ACLConfig. `acl.default_policy` stays where it was before
ACLs existed (`acl_default_policy`, the intentions' default) and ACLConfig.default_policy mirrors it.
Token values are secrets: no error, warning or rendering ever shows one.
"""

from __future__ import annotations

from typing import Any

from ..acl.secrets import ANONYMOUS_SECRET_ID, MAX_SECRET_LEN, is_uuid
from .connect_settings import _node  # the one `block or one-element list of blocks` reader
from .duration import format_duration
from .errors import Collector
from .types import ACLConfig, ACLTokens
from .values import blocks, duration, kind_of, show, typed

Where = dict[str, tuple[str, int | None]]

POLICIES = ("allow", "deny")
DOWN_POLICIES = ("extend-cache", "async-cache", "allow", "deny")
MAX_TTL = 24 * 3600.0  # a cache longer than a day is a mistake, not a setting
TTLS = ("token_ttl", "policy_ttl", "role_ttl")
# acl.tokens keys → ACLTokens fields (Consul's pre-1.11 names too); replication is accepted and unused.
TOKEN_KEYS = {"initial_management": "initial_management", "master": "initial_management",
              "default": "default", "agent": "agent", "agent_recovery": "agent_recovery",
              "agent_master": "agent_recovery", "replication": "replication",
              "config_file_service_registration": "config_file_service_registration"}
# Consul's pre-1.4 top-level keys → (acl field or tokens.<field>).
LEGACY_TOP_LEVEL = {"acl_default_policy": "default_policy", "acl_down_policy": "down_policy",
                    "acl_ttl": "token_ttl", "acl_token": "tokens.default", "acl_agent_token": "tokens.agent",
                    "acl_master_token": "tokens.initial_management",
                    "acl_agent_master_token": "tokens.agent_recovery", "acl_replication_token": "tokens.replication",
                    "acl_datacenter": ""}
_KNOWN = ("enabled, default_policy, down_policy, token_ttl, policy_ttl, role_ttl, enable_token_persistence, "
          "enable_key_list_policy, enable_token_replication or tokens")
_SECRET = "the value is a secret and is not shown"


def acl_block(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    """`acl { enabled, default_policy, down_policy, *_ttl, enable_token_persistence, tokens { ... } }`."""
    for block in blocks(value) or [value]:  # `[]` is no block: an error below
        node = _node(col, "acl", block, line)
        if node is None:
            continue
        acl: dict[str, Any] = out.setdefault("acl", {})
        for key, item in node.raw.items():
            field_, at = f"acl.{key}", node.at(key)
            if key == "tokens":
                _tokens(col, item, at, acl.setdefault("tokens", {}), where)
            elif key in ("enabled", "enable_token_persistence", "enable_token_replication", "enable_key_list_policy"):
                _put(acl, where, key, field_, typed(col, field_, item, bool, at), col.path, at)
            else:
                _setting(col, key, field_, item, at, out, where)


def legacy_acl_key(col: Collector, key: str, value: Any, line: int | None, out: dict[str, Any],
                   where: Where) -> None:
    """Consul's older top-level spellings (`acl_default_policy`, `acl_master_token`, `acl_ttl`, ...)."""
    target = LEGACY_TOP_LEVEL[key]
    if not target:  # acl_datacenter: Consul's ACL datacenter, which also turned ACLs on
        col.error(key, "not supported: use `acl { enabled = true }` (there is no ACL replication between "
                  "datacenters); remove it", line)
    elif target.startswith("tokens."):
        tokens: dict[str, Any] = out.setdefault("acl", {}).setdefault("tokens", {})
        _token(col, key, target.removeprefix("tokens."), value, line, tokens, where)
    else:
        _setting(col, target, key, value, line, out, where)


def build_acl(acl: dict[str, Any] | None, default_policy: str) -> ACLConfig:
    """The merged `acl` settings as an ACLConfig; `default_policy` is AgentConfig.acl_default_policy."""
    acl = acl or {}
    tokens = ACLTokens(**{k: v for k, v in acl.get("tokens", {}).items() if k in ACLTokens.__slots__})
    known = {k: v for k, v in acl.items() if k in ACLConfig.__slots__ and k not in ("tokens", "default_policy")}
    return ACLConfig(**known, default_policy=default_policy, tokens=tokens)


def redacted(acl: ACLConfig) -> dict[str, Any]:
    """The `acl` settings as /v1/agent/self's DebugConfig shows them: each token set is "hidden"."""
    def hide(secret: str) -> str:
        return "hidden" if secret else ""

    t = acl.tokens
    return {
        "ACLsEnabled": acl.enabled,
        "ACLResolverSettings": {"ACLDefaultPolicy": acl.default_policy, "ACLDownPolicy": acl.down_policy,
                                "ACLTokenTTL": format_duration(acl.token_ttl),
                                "ACLPolicyTTL": format_duration(acl.policy_ttl),
                                "ACLRoleTTL": format_duration(acl.role_ttl)},
        "ACLEnableTokenPersistence": acl.enable_token_persistence,
        "ACLEnableKeyListPolicy": acl.enable_key_list_policy,
        "ACLTokens": {"ACLDefaultToken": hide(t.default), "ACLAgentToken": hide(t.agent),
                      "ACLAgentRecoveryToken": hide(t.agent_recovery),
                      "ACLInitialManagementToken": hide(t.initial_management)},
    }


# ---------------------------------------------------------------------- parts


def _setting(col: Collector, key: str, field_: str, item: Any, at: int | None, out: dict[str, Any],
             where: Where) -> None:
    """One scalar of the block (or its legacy top-level spelling `field_`)."""
    acl: dict[str, Any] = out.setdefault("acl", {})
    if key == "default_policy":
        policy = _choice(col, field_, item, at, POLICIES)
        _put(out, where, "acl_default_policy", "acl_default_policy", policy, col.path, at)
    elif key == "down_policy":
        _put(acl, where, key, field_, _choice(col, field_, item, at, DOWN_POLICIES), col.path, at)
    elif key in TTLS:
        seconds = duration(col, field_, item, at)
        if seconds is not None and not 0 < seconds <= MAX_TTL:
            col.error(field_, f"must be more than 0s and at most 24h, got {show(item)}", at)
        else:
            _put(acl, where, key, field_, seconds, col.path, at)
    else:
        col.error(field_, f"unknown field ({_KNOWN})", at)


def _tokens(col: Collector, value: Any, line: int | None, out: dict[str, Any], where: Where) -> None:
    node = _node(col, "acl.tokens", value, line)
    if node is None:
        return
    seen: dict[str, str] = {}
    for key, item in node.raw.items():
        field_, at = f"acl.tokens.{key}", node.at(key)
        target = TOKEN_KEYS.get(key)
        if target is None:
            col.error(field_, "unknown token (initial_management, default, agent, agent_recovery, replication or "
                      "config_file_service_registration; Consul's older master and agent_master)", at)
            continue
        if target in seen:
            col.error(field_, f"given twice (as {seen[target]!r} and {key!r})", at)
            continue
        seen[target] = key
        _token(col, field_, target, item, at, out, where)


def _token(col: Collector, field_: str, target: str, value: Any, line: int | None, out: dict[str, Any],
           where: Where) -> None:
    """A secret: a string of printable characters, bounded; never echoed in what goes wrong."""
    if not isinstance(value, str):
        col.error(field_, f"must be a string, got {kind_of(value)}", line)
        return
    if len(value) > MAX_SECRET_LEN:
        col.error(field_, f"is {len(value)} characters; at most {MAX_SECRET_LEN} allowed ({_SECRET})", line)
        return
    if value != value.strip() or not value.isprintable():
        col.error(field_, f"must be printable, without leading or trailing spaces ({_SECRET})", line)
        return
    if target == "replication" and value:
        col.warn(field_, "accepted and not used: there is no ACL replication between datacenters", line)
    if target == "initial_management" and value == ANONYMOUS_SECRET_ID:
        col.error(field_, "must not be the anonymous token's SecretID", line)
        return
    if target == "initial_management" and value and not _is_uuid(value):
        # Accepted, as Consul (deprecated there); but its unsalted SHA-256 reaches every client agent's replica,
        # where a human-chosen secret can be guessed offline, unlike a UUID's 122 random bits.
        col.warn(field_, "is not a UUID; its unsalted SHA-256 is sent to every client agent, where a chosen "
                 "secret can be guessed offline: use a UUID (uuidgen)", line)
    out[target] = value
    where[f"acl.tokens.{target}"] = (col.path, line)


def _is_uuid(value: str) -> bool:
    return is_uuid(value.lower())  # the one definition of Consul's UUID form


def _choice(col: Collector, field_: str, value: Any, line: int | None, choices: tuple[str, ...]) -> str | None:
    text: str | None = typed(col, field_, value, str, line)
    if text is not None and text not in choices:
        col.error(field_, "must be " + " or ".join(f'"{c}"' for c in choices) + f", got {show(text)}", line)
        return None
    return text


def _put(out: dict[str, Any], where: Where, key: str, field_: str, value: Any, path: str, line: int | None) -> None:
    if value is not None:
        out[key] = value
        where[field_] = (path, line)
