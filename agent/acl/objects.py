"""ACL tokens, policies and roles as Consul's API shapes them: typed values, hostile-body parsers, JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config.duration import parse_duration
from .rules import RulesError, parse_rules
from .secrets import is_reserved, is_uuid, new_id

# Consul's name checks (acl.go: validPolicyName, validRoleName; identity names as service names).
POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,256}$")
IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
MAX_IDENTITY_NAME = 256

# Bounds Consul does not set: these objects live in Raft and in every client's cache, so an API body
# must not be able to make one arbitrarily large.
MAX_DESCRIPTION = 8 * 1024
MAX_LINKS = 256
MAX_DATACENTERS = 64
MAX_DATACENTER = 256

# Consul's defaults for acl.token_min_expiration_ttl / token_max_expiration_ttl.
MIN_EXPIRATION_TTL = 60.0
MAX_EXPIRATION_TTL = 24 * 3600.0

# What Consul puts in place of a SecretID the reader may not see.
HIDDEN_SECRET = "<hidden>"


class ACLObjectError(ValueError):
    """An API body that is not a valid token, policy or role; the message names the field."""


@dataclass(frozen=True)
class Link:
    """A PolicyLink or RoleLink: `{ID, Name}`; a request may give either, the store fills both."""

    id: str
    name: str


@dataclass(frozen=True)
class ServiceIdentity:
    """`{ServiceName, Datacenters}`: the synthetic policy for one service (empty = every datacenter)."""

    service_name: str
    datacenters: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeIdentity:
    """`{NodeName, Datacenter}`: the synthetic policy for one node in one datacenter."""

    node_name: str
    datacenter: str


@dataclass(frozen=True)
class Policy:
    """An ACL policy: its rules text is kept as written (parsed and checked on the way in)."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_api(self) -> dict[str, Any]:
        """Consul's JSON for GET /v1/acl/policy/:id."""
        out: dict[str, Any] = {"ID": self.id, "Name": self.name, "Description": self.description,
                               "Rules": self.rules}
        if self.datacenters:
            out["Datacenters"] = list(self.datacenters)
        out.update(Hash=self.hash, CreateIndex=self.create_index, ModifyIndex=self.modify_index)
        return out


@dataclass(frozen=True)
class Role:
    """An ACL role: policies and identities a token takes on by linking the role."""

    id: str
    name: str
    description: str = ""
    policies: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_api(self) -> dict[str, Any]:
        """Consul's JSON for GET /v1/acl/role/:id."""
        out: dict[str, Any] = {"ID": self.id, "Name": self.name, "Description": self.description}
        out.update(_grants_api(self.policies, (), self.service_identities, self.node_identities))
        out.update(Hash=self.hash, CreateIndex=self.create_index, ModifyIndex=self.modify_index)
        return out


@dataclass(frozen=True)
class Token:
    """An ACL token; `secret_id` is never rendered unless the reader holds acl:write."""

    accessor_id: str
    secret_id: str = ""
    description: str = ""
    policies: tuple[Link, ...] = ()
    roles: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    local: bool = False
    create_time: datetime | None = None
    expiration_time: datetime | None = None
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def __repr__(self) -> str:
        # Tokens end up in logs through reprs of whatever holds them; the secret must not.
        return f"Token(accessor_id={self.accessor_id!r}, description={self.description!r})"

    def expired(self, now: datetime) -> bool:
        """Has the token's ExpirationTime passed?"""
        return self.expiration_time is not None and now >= self.expiration_time

    def to_api(self, secret_visible: bool) -> dict[str, Any]:
        """Consul's JSON for a token read; SecretID is `<hidden>` unless `secret_visible` (acl:write)."""
        out: dict[str, Any] = {
            "AccessorID": self.accessor_id,
            "SecretID": self.secret_id if secret_visible else HIDDEN_SECRET,
            "Description": self.description,
        }
        out.update(_grants_api(self.policies, self.roles, self.service_identities, self.node_identities))
        out["Local"] = self.local
        if self.expiration_time is not None:
            out["ExpirationTime"] = _rfc3339(self.expiration_time)
        if self.create_time is not None:
            out["CreateTime"] = _rfc3339(self.create_time)
        out.update(Hash=self.hash, CreateIndex=self.create_index, ModifyIndex=self.modify_index)
        return out


# ------------------------------------------------------------------------------------------------ parsers


def policy_from_request(body: Any, *, policy_id: str | None = None) -> Policy:
    """A Policy from a PUT /v1/acl/policy body (policy_id: the URL's, on update); raises ACLObjectError."""
    obj = _object(body, "policy")
    pid = _id_field(obj, "ID", policy_id)
    name = _str(obj, "Name", MAX_IDENTITY_NAME)
    if not POLICY_NAME.match(name):
        raise ACLObjectError(f"Name: invalid policy name {name!r} (1-128 of A-Z a-z 0-9 - _)")
    rules = _str(obj, "Rules", None, required=False)
    try:
        parse_rules(rules)
    except RulesError as exc:
        raise ACLObjectError(f"Rules: {exc}") from None
    policy = Policy(id=pid, name=name, description=_description(obj), rules=rules,
                    datacenters=_datacenters(obj, "Datacenters"))
    return replace(policy, hash=object_hash(policy))


def role_from_request(body: Any, *, role_id: str | None = None) -> Role:
    """A Role from a PUT /v1/acl/role body (role_id: the URL's, on update); raises ACLObjectError."""
    obj = _object(body, "role")
    rid = _id_field(obj, "ID", role_id)
    name = _str(obj, "Name", MAX_IDENTITY_NAME + 1)
    if not ROLE_NAME.match(name):
        raise ACLObjectError(f"Name: invalid role name {name!r} (1-256 of A-Z a-z 0-9 - _)")
    role = Role(id=rid, name=name, description=_description(obj), policies=_links(obj, "Policies", POLICY_NAME),
                service_identities=_service_identities(obj), node_identities=_node_identities(obj))
    return replace(role, hash=object_hash(role))


def token_from_request(
    body: Any,
    *,
    now: datetime,
    accessor_id: str | None = None,
    min_ttl: float = MIN_EXPIRATION_TTL,
    max_ttl: float = MAX_EXPIRATION_TTL,
) -> Token:
    """A Token from a PUT /v1/acl/token body (accessor_id: the URL's, on update); raises ACLObjectError.

    Missing IDs are generated; ExpirationTTL becomes ExpirationTime = now + TTL, within [min_ttl, max_ttl].
    """
    obj = _object(body, "token")
    aid = _id_field(obj, "AccessorID", accessor_id)
    if is_reserved(aid):
        raise ACLObjectError(f"AccessorID: {aid!r} is in the reserved range")
    sid = obj.get("SecretID")
    if sid is None or sid == "":
        sid = new_id()
    elif not isinstance(sid, str) or not is_uuid(sid.lower()):
        # The value is not echoed: it may be a real secret pasted into the wrong field.
        raise ACLObjectError("SecretID: must be a UUID")
    else:
        sid = sid.lower()
    if not isinstance(sid, str):
        raise ACLObjectError("SecretID: must be a UUID")
    local = obj.get("Local", False)
    if not isinstance(local, bool):
        raise ACLObjectError(f"Local: must be true or false, not {_kind(local)}")
    token = Token(
        accessor_id=aid,
        secret_id=sid,
        description=_description(obj),
        policies=_links(obj, "Policies", POLICY_NAME),
        roles=_links(obj, "Roles", ROLE_NAME),
        service_identities=_service_identities(obj),
        node_identities=_node_identities(obj),
        local=local,
        create_time=now,
        expiration_time=_expiration(obj, now, min_ttl, max_ttl),
    )
    return replace(token, hash=object_hash(token))


def object_hash(obj: Token | Policy | Role) -> str:
    """Base64 of SHA-256 over the object's granted content (Consul's Hash: changes when what it grants does)."""
    if isinstance(obj, Policy):
        content: dict[str, Any] = {"n": obj.name, "d": obj.description, "r": obj.rules, "dc": obj.datacenters}
    else:
        content = _grants_api(obj.policies, obj.roles if isinstance(obj, Token) else (),
                              obj.service_identities, obj.node_identities)
        content["n"] = obj.name if isinstance(obj, Role) else ""
        content["d"] = obj.description
        if isinstance(obj, Token):
            content["l"] = obj.local
            content["x"] = _rfc3339(obj.expiration_time) if obj.expiration_time else ""
    raw = json.dumps(content, sort_keys=True, separators=(",", ":"), default=list).encode()
    return base64.b64encode(hashlib.sha256(raw).digest()).decode()


# ------------------------------------------------------------------------------------------------ helpers


def _object(body: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ACLObjectError(f"body: a {what} must be a JSON object, not {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(obj: Mapping[str, Any], key: str, limit: int | None, *, required: bool = True, where: str = "") -> str:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise ACLObjectError(f"{where}{key}: missing")
        return ""
    if not isinstance(value, str):
        raise ACLObjectError(f"{where}{key}: must be a string, not {_kind(value)}")
    if limit is not None and len(value) > limit:
        raise ACLObjectError(f"{where}{key}: longer than {limit} characters")
    return value


def _description(obj: Mapping[str, Any]) -> str:
    return _str(obj, "Description", MAX_DESCRIPTION, required=False)


def _id_field(obj: Mapping[str, Any], key: str, from_url: str | None) -> str:
    given = _str(obj, key, 64, required=False).lower()
    if given and not is_uuid(given):
        raise ACLObjectError(f"{key}: {given!r} is not a UUID")
    if from_url is not None:
        if given and given != from_url:
            raise ACLObjectError(f"{key}: {given!r} does not match the URL's {from_url!r}")
        return from_url
    return given or new_id()


def _list(obj: Mapping[str, Any], key: str, limit: int, where: str = "") -> Sequence[Any]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ACLObjectError(f"{where}{key}: must be a list, not {_kind(value)}")
    if len(value) > limit:
        raise ACLObjectError(f"{where}{key}: more than {limit} entries")
    return value


def _datacenters(obj: Mapping[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    out: list[str] = []
    for i, dc in enumerate(_list(obj, key, MAX_DATACENTERS, where)):
        if not isinstance(dc, str) or not dc or len(dc) > MAX_DATACENTER:
            raise ACLObjectError(f"{where}{key}[{i}]: must be a datacenter name (1-{MAX_DATACENTER} characters)")
        out.append(dc)
    return tuple(out)


def _links(obj: Mapping[str, Any], key: str, name_re: re.Pattern[str]) -> tuple[Link, ...]:
    out: list[Link] = []
    for i, item in enumerate(_list(obj, key, MAX_LINKS)):
        where = f"{key}[{i}]."
        if not isinstance(item, Mapping):
            raise ACLObjectError(f"{key}[{i}]: must be an object with ID or Name, not {_kind(item)}")
        lid = _str(item, "ID", 64, required=False, where=where).lower()
        name = _str(item, "Name", MAX_IDENTITY_NAME + 1, required=False, where=where)
        if not lid and not name:
            raise ACLObjectError(f"{key}[{i}]: needs an ID or a Name")
        if lid and not is_uuid(lid):
            raise ACLObjectError(f"{where}ID: {lid!r} is not a UUID")
        if name and not name_re.match(name):
            raise ACLObjectError(f"{where}Name: {name!r} is not a valid name")
        link = Link(lid, name)
        if link not in out:  # Consul de-duplicates links
            out.append(link)
    return tuple(out)


def _identity_name(item: Mapping[str, Any], key: str, where: str) -> str:
    name = _str(item, key, MAX_IDENTITY_NAME + 1, where=where)
    if len(name) > MAX_IDENTITY_NAME or not IDENTITY_NAME.match(name):
        raise ACLObjectError(f"{where}{key}: {name!r} is not valid (lowercase letters, digits, '-' and '_', "
                             f"at most {MAX_IDENTITY_NAME})")
    return name


def _service_identities(obj: Mapping[str, Any]) -> tuple[ServiceIdentity, ...]:
    out: list[ServiceIdentity] = []
    for i, item in enumerate(_list(obj, "ServiceIdentities", MAX_LINKS)):
        where = f"ServiceIdentities[{i}]."
        if not isinstance(item, Mapping):
            raise ACLObjectError(f"ServiceIdentities[{i}]: must be an object, not {_kind(item)}")
        ident = ServiceIdentity(_identity_name(item, "ServiceName", where), _datacenters(item, "Datacenters", where))
        if ident not in out:
            out.append(ident)
    return tuple(out)


def _node_identities(obj: Mapping[str, Any]) -> tuple[NodeIdentity, ...]:
    out: list[NodeIdentity] = []
    for i, item in enumerate(_list(obj, "NodeIdentities", MAX_LINKS)):
        where = f"NodeIdentities[{i}]."
        if not isinstance(item, Mapping):
            raise ACLObjectError(f"NodeIdentities[{i}]: must be an object, not {_kind(item)}")
        name = _identity_name(item, "NodeName", where)
        dc = _str(item, "Datacenter", MAX_DATACENTER, where=where)
        ident = NodeIdentity(name, dc)
        if ident not in out:
            out.append(ident)
    return tuple(out)


def _expiration(obj: Mapping[str, Any], now: datetime, min_ttl: float, max_ttl: float) -> datetime | None:
    ttl_raw, time_raw = obj.get("ExpirationTTL"), obj.get("ExpirationTime")
    has_ttl = ttl_raw not in (None, "", 0)
    has_time = time_raw not in (None, "")
    if has_ttl and has_time:
        raise ACLObjectError("ExpirationTTL: cannot be set together with ExpirationTime")
    if has_ttl:
        try:
            ttl = parse_duration(ttl_raw)
        except ValueError as exc:
            raise ACLObjectError(f"ExpirationTTL: {exc}") from None
        if ttl < 0:
            raise ACLObjectError("ExpirationTTL: cannot be negative")
        at = now + timedelta(seconds=ttl)
    elif has_time:
        if not isinstance(time_raw, str):
            raise ACLObjectError(f"ExpirationTime: must be an RFC 3339 string, not {_kind(time_raw)}")
        try:
            at = datetime.fromisoformat(time_raw)
        except ValueError:
            raise ACLObjectError(f"ExpirationTime: {time_raw[:64]!r} is not an RFC 3339 time") from None
        if at.tzinfo is None:
            raise ACLObjectError("ExpirationTime: needs a time zone (e.g. Z or +00:00)")
    else:
        return None
    field_ = "ExpirationTTL" if has_ttl else "ExpirationTime"
    left = (at - now).total_seconds()
    if left < min_ttl:
        raise ACLObjectError(f"{field_}: expires sooner than the minimum of {min_ttl:g}s")
    if left > max_ttl:
        raise ACLObjectError(f"{field_}: expires later than the maximum of {max_ttl:g}s")
    return at.astimezone(UTC)


def _grants_api(
    policies: tuple[Link, ...],
    roles: tuple[Link, ...],
    services: tuple[ServiceIdentity, ...],
    nodes: tuple[NodeIdentity, ...],
) -> dict[str, Any]:
    # Consul omits empty lists from these objects (omitempty), and so do we.
    out: dict[str, Any] = {}
    if policies:
        out["Policies"] = [{"ID": p.id, "Name": p.name} for p in policies]
    if roles:
        out["Roles"] = [{"ID": r.id, "Name": r.name} for r in roles]
    if services:
        out["ServiceIdentities"] = [
            {"ServiceName": s.service_name, **({"Datacenters": list(s.datacenters)} if s.datacenters else {})}
            for s in services
        ]
    if nodes:
        out["NodeIdentities"] = [{"NodeName": n.node_name, "Datacenter": n.datacenter} for n in nodes]
    return out


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
