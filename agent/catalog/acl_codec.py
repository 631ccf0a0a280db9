"""The ACL part of the catalog FSM's wire format: Token/Policy/Role codecs, secret digests, redaction, pure.

Raft commands and snapshots carry plain dicts; decoding checks every field's type and size, so a hostile
entry in the log is refused (AclStateError naming the field, never a secret's value) and never crashes a
replica. Secrets are looked up by `secret_digest` (hex SHA-256): client replicas get tokens with
`secret_id` blanked and the digest in its place (`redacted_acl_command`, agent/server/feed.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..acl.objects import (
    MAX_DATACENTER,
    MAX_DATACENTERS,
    MAX_DESCRIPTION,
    MAX_IDENTITY_NAME,
    MAX_LINKS,
    POLICY_NAME,
    ROLE_NAME,
    Link,
    NodeIdentity,
    Policy,
    Role,
    ServiceIdentity,
    Token,
)
from ..acl.rules import MAX_RULES_TEXT
from ..acl.secrets import is_uuid

MAX_SECRET = 256
MAX_HASH = 128
DIGEST = re.compile(r"^[0-9a-f]{64}$")


class AclStateError(ValueError):
    """An ACL command the FSM refuses; the message names the field (never a secret's value)."""


def secret_digest(secret: str) -> str:
    """Hex SHA-256 of a token secret: the one place secrets are hashed (lookup key, client replicas)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


# ------------------------------------------------------------------------------------------------ codecs


def token_to_dict(token: Token, *, digest: str | None = None) -> dict[str, Any]:
    """A Token as plain data (Raft, snapshots); `secret_digest` is the secret's unless `digest` is given."""
    return {
        "accessor_id": token.accessor_id,
        "secret_id": token.secret_id,
        "secret_digest": digest if digest is not None else (secret_digest(token.secret_id) if token.secret_id
                                                             else ""),
        "description": token.description,
        "policies": _links_to(token.policies),
        "roles": _links_to(token.roles),
        "service_identities": _services_to(token.service_identities),
        "node_identities": [{"node_name": n.node_name, "datacenter": n.datacenter} for n in token.node_identities],
        "local": token.local,
        "create_time": token.create_time.isoformat() if token.create_time else None,
        "expiration_time": token.expiration_time.isoformat() if token.expiration_time else None,
        "hash": token.hash,
        "create_index": token.create_index,
        "modify_index": token.modify_index,
    }


def token_from_dict(raw: Any) -> tuple[Token, str]:
    """(Token, its secret digest) from `token_to_dict` data; the digest is "" when neither is given.
    A present secret's own digest wins over a carried one. Raises AclStateError naming the field."""
    d = as_map(raw, "token")
    secret = field_text(d, "secret_id", MAX_SECRET, "token.")
    digest = secret_digest(secret) if secret else field_text(d, "secret_digest", 64, "token.")
    if digest and not DIGEST.match(digest):
        raise AclStateError("token.secret_digest: must be 64 lowercase hex digits")
    token = Token(
        accessor_id=field_uuid(d, "accessor_id", "token."),
        secret_id=secret,
        description=field_text(d, "description", MAX_DESCRIPTION, "token."),
        policies=_links_from(d, "policies", "token."),
        roles=_links_from(d, "roles", "token."),
        service_identities=_services_from(d, "token."),
        node_identities=_nodes_from(d, "token."),
        local=_bool(d, "local", "token."),
        create_time=_time(d, "create_time", "token."),
        expiration_time=_time(d, "expiration_time", "token."),
        hash=field_text(d, "hash", MAX_HASH, "token."),
        create_index=field_index(d, "create_index", "token."),
        modify_index=field_index(d, "modify_index", "token."),
    )
    return token, digest


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """A Policy as plain data."""
    return {"id": policy.id, "name": policy.name, "description": policy.description, "rules": policy.rules,
            "datacenters": list(policy.datacenters), "hash": policy.hash, "create_index": policy.create_index,
            "modify_index": policy.modify_index}


def policy_from_dict(raw: Any) -> Policy:
    """A Policy from `policy_to_dict` data (rules are checked for size here, for syntax by `apply`)."""
    d = as_map(raw, "policy")
    name = field_text(d, "name", MAX_IDENTITY_NAME, "policy.")
    if not POLICY_NAME.match(name):
        raise AclStateError("policy.name: not a valid policy name")
    return Policy(id=field_uuid(d, "id", "policy."), name=name,
                  description=field_text(d, "description", MAX_DESCRIPTION, "policy."),
                  rules=field_text(d, "rules", MAX_RULES_TEXT, "policy."),
                  datacenters=_datacenters(d, "datacenters", "policy."),
                  hash=field_text(d, "hash", MAX_HASH, "policy."),
                  create_index=field_index(d, "create_index", "policy."),
                  modify_index=field_index(d, "modify_index", "policy."))


def role_to_dict(role: Role) -> dict[str, Any]:
    """A Role as plain data."""
    return {"id": role.id, "name": role.name, "description": role.description,
            "policies": _links_to(role.policies), "service_identities": _services_to(role.service_identities),
            "node_identities": [{"node_name": n.node_name, "datacenter": n.datacenter} for n in role.node_identities],
            "hash": role.hash, "create_index": role.create_index, "modify_index": role.modify_index}


def role_from_dict(raw: Any) -> Role:
    """A Role from `role_to_dict` data."""
    d = as_map(raw, "role")
    name = field_text(d, "name", MAX_IDENTITY_NAME + 1, "role.")
    if not ROLE_NAME.match(name):
        raise AclStateError("role.name: not a valid role name")
    return Role(id=field_uuid(d, "id", "role."), name=name,
                description=field_text(d, "description", MAX_DESCRIPTION, "role."),
                policies=_links_from(d, "policies", "role."),
                service_identities=_services_from(d, "role."), node_identities=_nodes_from(d, "role."),
                hash=field_text(d, "hash", MAX_HASH, "role."),
                create_index=field_index(d, "create_index", "role."),
                modify_index=field_index(d, "modify_index", "role."))


def redacted_acl_command(cmd: dict[str, Any]) -> dict[str, Any]:
    """An "acl" command as client replicas get it: token secrets blanked, their digests carried instead.
    A replica must refuse exactly what the servers refuse, so a secret the FSM would refuse (not a string,
    too long) becomes a digest it refuses too."""
    out = dict(cmd)
    token = out.get("token")
    if isinstance(token, dict) and token.get("secret_id") not in (None, ""):
        out["token"] = {**token, "secret_id": "", "secret_digest": _redacted_digest(token["secret_id"])}
    secret = out.get("initial_management_secret")
    if secret not in (None, ""):
        out["initial_management_secret"] = ""
        out["initial_management_digest"] = _redacted_digest(secret)
    return out


def _redacted_digest(secret: Any) -> str:
    if isinstance(secret, str) and len(secret) <= MAX_SECRET:
        return secret_digest(secret)
    return "refused: not a valid secret"


# ------------------------------------------------------------------------------------------------ fields


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def as_map(raw: Any, what: str) -> Mapping[str, Any]:
    """`raw` if it is a map, else AclStateError naming `what`."""
    if not isinstance(raw, Mapping):
        raise AclStateError(f"{what}: must be a map, not {_kind(raw)}")
    return raw


def field_text(d: Mapping[str, Any], key: str, limit: int, where: str) -> str:
    """A string field (absent: ""), at most `limit` characters."""
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AclStateError(f"{where}{key}: must be a string, not {_kind(value)}")
    if len(value) > limit:
        raise AclStateError(f"{where}{key}: longer than {limit} characters")
    return value


def field_uuid(d: Mapping[str, Any], key: str, where: str) -> str:
    """A field that must be a UUID in Consul's lowercase form."""
    value = field_text(d, key, 64, where)
    if not is_uuid(value):
        raise AclStateError(f"{where}{key}: must be a UUID")
    return value


def _bool(d: Mapping[str, Any], key: str, where: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise AclStateError(f"{where}{key}: must be true or false, not {_kind(value)}")
    return value


def field_index(d: Mapping[str, Any], key: str, where: str) -> int:
    """A Raft/catalog index field (absent: 0)."""
    value = d.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise AclStateError(f"{where}{key}: must be a non-negative integer")
    return value


def _time(d: Mapping[str, Any], key: str, where: str) -> datetime | None:
    value = field_text(d, key, 64, where)
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise AclStateError(f"{where}{key}: not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise AclStateError(f"{where}{key}: needs a time zone")
    return at


def field_list(d: Mapping[str, Any], key: str, limit: int, where: str) -> list[Any]:
    """A list field (absent: []) of at most `limit` entries."""
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise AclStateError(f"{where}{key}: must be a list, not {_kind(value)}")
    if len(value) > limit:
        raise AclStateError(f"{where}{key}: more than {limit} entries")
    return list(value)


def _datacenters(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    out = field_list(d, key, MAX_DATACENTERS, where)
    if not all(isinstance(dc, str) and 0 < len(dc) <= MAX_DATACENTER for dc in out):
        raise AclStateError(f"{where}{key}: must be datacenter names (1-{MAX_DATACENTER} characters)")
    return tuple(out)


def _links_to(links: tuple[Link, ...]) -> list[dict[str, str]]:
    return [{"id": link.id, "name": link.name} for link in links]


def _links_from(d: Mapping[str, Any], key: str, where: str) -> tuple[Link, ...]:
    out: list[Link] = []
    for i, item in enumerate(field_list(d, key, MAX_LINKS, where)):
        m = as_map(item, f"{where}{key}[{i}]")
        lid = field_text(m, "id", 64, f"{where}{key}[{i}].")
        name = field_text(m, "name", MAX_IDENTITY_NAME + 1, f"{where}{key}[{i}].")
        if (lid and not is_uuid(lid)) or not (lid or name):
            raise AclStateError(f"{where}{key}[{i}]: needs a UUID id or a name")
        out.append(Link(lid, name))
    return tuple(out)


def _services_to(idents: tuple[ServiceIdentity, ...]) -> list[dict[str, Any]]:
    return [{"service_name": s.service_name, "datacenters": list(s.datacenters)} for s in idents]


def _services_from(d: Mapping[str, Any], where: str) -> tuple[ServiceIdentity, ...]:
    out: list[ServiceIdentity] = []
    for i, item in enumerate(field_list(d, "service_identities", MAX_LINKS, where)):
        at = f"{where}service_identities[{i}]."
        m = as_map(item, at[:-1])
        name = field_text(m, "service_name", MAX_IDENTITY_NAME, at)
        if not name:
            raise AclStateError(f"{at}service_name: missing")
        out.append(ServiceIdentity(name, _datacenters(m, "datacenters", at)))
    return tuple(out)


def _nodes_from(d: Mapping[str, Any], where: str) -> tuple[NodeIdentity, ...]:
    out: list[NodeIdentity] = []
    for i, item in enumerate(field_list(d, "node_identities", MAX_LINKS, where)):
        at = f"{where}node_identities[{i}]."
        m = as_map(item, at[:-1])
        name, dc = field_text(m, "node_name", MAX_IDENTITY_NAME, at), field_text(m, "datacenter", MAX_DATACENTER, at)
        if not name or not dc:
            raise AclStateError(f"{at}: needs node_name and datacenter")
        out.append(NodeIdentity(name, dc))
    return tuple(out)
