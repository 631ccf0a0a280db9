"""How `meshagent acl …` prints tokens, policies and roles: Consul's pretty layout, or `-format json`.

Pure functions of the agent's JSON (dicts as /v1/acl/* answer them); hostile values are shown, never trusted:
any field may be missing or of the wrong type, and control characters are escaped so an object's text cannot
rewrite the operator's terminal.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

FORMATS = ("pretty", "json")


def to_json(value: Any) -> str:
    """`-format json`: the agent's object as Consul prints it (4-space indent)."""
    return json.dumps(value, indent=4)


def clean(value: Any) -> str:
    """A field as one safe line: control characters (newlines, escapes) shown as \\xNN."""
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def go_time(value: Any) -> str:
    """An RFC 3339 time as Go prints a time.Time (`2026-12-05 08:44:55.1234 +0000 UTC`); as given if not one."""
    if not isinstance(value, str) or not value:
        return clean(value)
    text = value.replace("Z", "+00:00")
    frac = ""
    if "." in text:  # Python parses at most 6 digits: keep Go's up-to-9, trailing zeros trimmed
        head, _, rest = text.partition(".")
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        frac, text = digits.rstrip("0"), head + rest[len(digits):]
    try:
        at = datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return clean(value)
    return at.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


def hash_hex(value: Any) -> str:
    """The API's base64 Hash as Consul's CLI prints it (hex)."""
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return clean(value)


def _items(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = obj.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _bool(value: Any) -> str:
    return "true" if value is True else "false"


def _links(obj: dict[str, Any], key: str, title: str, indent: str) -> list[str]:
    items = _items(obj, key)
    if not items:
        return []
    return [f"{indent}{title}:"] + [f"{indent}   {clean(i.get('ID'))} - {clean(i.get('Name'))}" for i in items]


def _identities(obj: dict[str, Any], indent: str) -> list[str]:
    out: list[str] = []
    services = _items(obj, "ServiceIdentities")
    if services:
        out.append(f"{indent}Service Identities:")
        for svc in services:
            dcs = svc.get("Datacenters")
            shown = ", ".join(clean(d) for d in dcs) if isinstance(dcs, list) and dcs else "all"
            out.append(f"{indent}   {clean(svc.get('ServiceName'))} (Datacenters: {shown})")
    nodes = _items(obj, "NodeIdentities")
    if nodes:
        out.append(f"{indent}Node Identities:")
        out += [f"{indent}   {clean(n.get('NodeName'))} (Datacenter: {clean(n.get('Datacenter'))})" for n in nodes]
    return out


def _token_head(token: dict[str, Any], meta: bool) -> list[str]:
    lines = [f"AccessorID:       {clean(token.get('AccessorID'))}",
             f"SecretID:         {clean(token.get('SecretID'))}",
             f"Description:      {clean(token.get('Description'))}",
             f"Local:            {_bool(token.get('Local'))}",
             f"Create Time:      {go_time(token.get('CreateTime'))}"]
    if token.get("ExpirationTime"):
        lines.append(f"Expiration Time:  {go_time(token.get('ExpirationTime'))}")
    if meta:
        lines += [f"Hash:             {hash_hex(token.get('Hash'))}",
                  f"Create Index:     {clean(token.get('CreateIndex'))}",
                  f"Modify Index:     {clean(token.get('ModifyIndex'))}"]
    return lines + _links(token, "Policies", "Policies", "") + _links(token, "Roles", "Roles", "") + \
        _identities(token, "")


def token_text(token: Any, meta: bool = False) -> str:
    """One token as `consul acl token read` prints it."""
    return "\n".join(_token_head(token if isinstance(token, dict) else {}, meta))


def token_list_text(tokens: Any, meta: bool = False) -> str:
    """`consul acl token list`: each token's block, a blank line between."""
    items = [t for t in tokens if isinstance(t, dict)] if isinstance(tokens, list) else []
    return "\n\n".join(token_text(t, meta) for t in items)


def policy_text(policy: Any, meta: bool = False) -> str:
    """One policy as `consul acl policy read` prints it (the rules last, as written)."""
    p = policy if isinstance(policy, dict) else {}
    dcs = p.get("Datacenters")
    lines = [f"ID:           {clean(p.get('ID'))}",
             f"Name:         {clean(p.get('Name'))}",
             f"Description:  {clean(p.get('Description'))}",
             f"Datacenters:  {', '.join(clean(d) for d in dcs) if isinstance(dcs, list) else ''}"]
    if meta:
        lines += [f"Hash:         {hash_hex(p.get('Hash'))}",
                  f"Create Index: {clean(p.get('CreateIndex'))}",
                  f"Modify Index: {clean(p.get('ModifyIndex'))}"]
    rules = p.get("Rules")
    # Rules are multi-line by nature: keep newlines and tabs, escape every other control character.
    shown = "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in rules) \
        if isinstance(rules, str) else ""
    return "\n".join([*lines, "Rules:", shown]).rstrip("\n")


def policy_list_text(policies: Any, meta: bool = False) -> str:
    """`consul acl policy list`: `name:` then the indented fields, per policy."""
    out: list[str] = []
    for p in policies if isinstance(policies, list) else []:
        if not isinstance(p, dict):
            continue
        dcs = p.get("Datacenters")
        out += [f"{clean(p.get('Name'))}:",
                f"   ID:           {clean(p.get('ID'))}",
                f"   Description:  {clean(p.get('Description'))}",
                f"   Datacenters:  {', '.join(clean(d) for d in dcs) if isinstance(dcs, list) else ''}"]
        if meta:
            out += [f"   Hash:         {hash_hex(p.get('Hash'))}",
                    f"   Create Index: {clean(p.get('CreateIndex'))}",
                    f"   Modify Index: {clean(p.get('ModifyIndex'))}"]
    return "\n".join(out)


def role_text(role: Any, meta: bool = False, indent: str = "") -> str:
    """One role as `consul acl role read` prints it."""
    r = role if isinstance(role, dict) else {}
    lines = [f"{indent}ID:           {clean(r.get('ID'))}",
             *([] if indent else [f"Name:         {clean(r.get('Name'))}"]),
             f"{indent}Description:  {clean(r.get('Description'))}"]
    if meta:
        lines += [f"{indent}Hash:         {hash_hex(r.get('Hash'))}",
                  f"{indent}Create Index: {clean(r.get('CreateIndex'))}",
                  f"{indent}Modify Index: {clean(r.get('ModifyIndex'))}"]
    return "\n".join(lines + _links(r, "Policies", "Policies", indent) + _identities(r, indent))


def role_list_text(roles: Any, meta: bool = False) -> str:
    """`consul acl role list`: `name:` then the indented fields, per role."""
    items = [r for r in roles if isinstance(r, dict)] if isinstance(roles, list) else []
    return "\n".join(f"{clean(r.get('Name'))}:\n{role_text(r, meta, indent='   ')}" for r in items)
