"""Consul's ACL rule language (HCL or JSON) parsed into typed, bounded rules, and identity policies."""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.syntax import LINES, START, SyntaxProblem, load_hcl, load_json
from .rules_scanner import scan_hcl, scan_json

# Bounds: a policy is operator input stored in Raft. The common shapes are read in linear time
# (rules_scanner.py); anything else goes through python-hcl2, superlinear (0.4-0.5 s at 64 KiB).
MAX_RULES_TEXT = 64 * 1024
MAX_RULES = 1000
MAX_NAME = 1024
_TOO_MANY = f"rules: more than {MAX_RULES} rules"
# Results (or errors) kept per Rules text, so an agent parses a policy once: the FSM's check on apply,
# the resolver and the API's check share them. Bounded in entries and in text held.
MAX_CACHED = 1024
MAX_CACHED_TEXT = 4 * 1024 * 1024


class Access(enum.IntEnum):
    """A disposition; the order is Consul's merge precedence (deny > write > list > read)."""

    READ = 1
    LIST = 2
    WRITE = 3
    DENY = 4


ACCESS_NAMES = {"read": Access.READ, "list": Access.LIST, "write": Access.WRITE, "deny": Access.DENY}

# Resources with per-name rules (`node "x"` and `node_prefix "x"`), and the single-valued ones (`acl = "read"`).
NAMED = ("agent", "event", "key", "node", "query", "service", "session")
SINGLE = ("acl", "keyring", "mesh", "operator", "peering")

_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
_MAX_IDENTITY_NAME = 256


class RulesError(ValueError):
    """A policy's Rules text that cannot be used; the message names the line (when known) and field."""


@dataclass(frozen=True)
class NamedRule:
    """One `resource "name" { policy = … }` (prefix=False) or `resource_prefix "name" {…}` rule."""

    resource: str
    name: str
    prefix: bool
    access: Access
    intentions: Access | None = None  # services only; None = unset (derived from `access`)


@dataclass(frozen=True)
class Policy:
    """The typed rules of one policy: named rules in written order, and single-valued resources."""

    named: tuple[NamedRule, ...] = ()
    single: Mapping[str, Access] = field(default_factory=dict)


def parse_rules(text: str) -> Policy:
    """Parse Rules text (HCL, or JSON when it starts with `{`); raises RulesError naming line and field.
    Cached per text (bounded): one parse per process, and callers share the result (never mutate it)."""
    if _blank(text):
        return Policy()
    return _cache.get(text)


def _blank(text: str) -> bool:
    """Checks the size (raises RulesError); True for blank text (no rules)."""
    try:
        size = len(text) if len(text) > MAX_RULES_TEXT else len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no text Raft or Consul could carry
        raise RulesError("rules: not valid UTF-8 text") from None
    if size > MAX_RULES_TEXT:
        raise RulesError(f"rules: longer than {MAX_RULES_TEXT} bytes")
    return not text.strip()


class _RulesCache:
    """Parsed Rules (or the RulesError message) by text: LRU, bounded in entries and in text bytes."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Policy | str] = OrderedDict()
        self._chars = 0
        self.misses = 0  # texts parsed (what tests and the bench count)

    def get(self, text: str) -> Policy:
        entry = self._entries.get(text)
        if entry is None:
            self.misses += 1
            try:
                entry = _parse(text)
            except RulesError as exc:
                entry = str(exc)
            self._keep(text, entry)
        else:
            try:
                self._entries.move_to_end(text)
            except KeyError:  # evicted meanwhile (another thread): still a good answer
                pass
        if isinstance(entry, str):
            raise RulesError(entry)
        return entry

    def _keep(self, text: str, entry: Policy | str) -> None:
        if text in self._entries:
            return
        self._entries[text] = entry
        self._chars += len(text)
        while self._entries and (len(self._entries) > MAX_CACHED or self._chars > MAX_CACHED_TEXT):
            old, _ = self._entries.popitem(last=False)
            self._chars -= len(old)

    def clear(self) -> None:
        """Forget every result (tests, benchmarks)."""
        self._entries.clear()
        self._chars = 0


_cache = _RulesCache()


def parse_rules_uncached(text: str) -> Policy:
    """parse_rules without the cache (tests and benchmarks)."""
    return Policy() if _blank(text) else _parse(text)


def _parse(text: str) -> Policy:
    """The linear reader when it knows the text and finds no fault, else python-hcl2 (its errors, lines)."""
    is_json = text.lstrip().startswith("{")
    tree = scan_json(text) if is_json else scan_hcl(text)
    if isinstance(tree, dict):
        try:
            return _policy(tree)
        except RulesError as exc:
            if str(exc) == _TOO_MANY:
                raise  # names no line: the same text either way, without python-hcl2's 0.5 s on 64 KiB
            # else the slow path below says it again, with the line
    return parse_rules_slow(text, is_json)


def parse_rules_slow(text: str, is_json: bool | None = None) -> Policy:
    """The python-hcl2 / annotated-JSON path alone (the reference the linear reader is tested against)."""
    if is_json is None:
        is_json = text.lstrip().startswith("{")
    try:
        tree = load_json(text) if is_json else load_hcl(text)
    except SyntaxProblem as exc:
        raise RulesError(f"rules: {_at(exc.line)}{exc.reason}") from None
    except Exception as exc:  # third-party parsers on hostile text (JSON's 4300-digit int limit): never a crash
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RulesError(f"rules: invalid {'JSON' if is_json else 'HCL'}: {reason}") from None
    if not isinstance(tree, dict):
        raise RulesError("rules: the top level must be an object")
    return _policy(tree)


def _at(line: int | None) -> str:
    return f"line {line}: " if line else ""


def _user_keys(obj: Mapping[str, Any]) -> Iterable[str]:
    return (k for k in obj if not k.startswith("__"))


def _policy(tree: Mapping[str, Any]) -> Policy:
    lines: Mapping[str, int] = tree.get(LINES, {})
    named: list[NamedRule] = []
    single: dict[str, Access] = {}
    for key in _user_keys(tree):
        value = tree[key]
        line = lines.get(key) or _block_line(value)
        base, prefix = (key[: -len("_prefix")], True) if key.endswith("_prefix") else (key, False)
        if base in NAMED:
            named.extend(_named(base, prefix, key, value, line))
            if len(named) > MAX_RULES:
                raise RulesError(_TOO_MANY)
        elif key in SINGLE:
            single[key] = _single(key, value, line)
        else:
            raise RulesError(f"rules: {_at(line)}unknown resource {key!r}")
    return Policy(tuple(named), single)


def _block_line(value: Any) -> int | None:
    """An HCL block's line: hcl2 records it on the block's body, not on the top-level key."""
    for block in value if isinstance(value, list) else []:
        for name, body in block.items() if isinstance(block, dict) else ():
            if not name.startswith("__") and isinstance(body, dict) and isinstance(body.get(START), int):
                return int(body[START])
    return None


def _single(key: str, value: Any, line: int | None) -> Access:
    """`operator = "read"`: one disposition; `list` belongs to keys only."""
    if not isinstance(value, str) or value not in ACCESS_NAMES or value == "list":
        raise RulesError(f"rules: {_at(line)}{key}: policy {_show(value)} is not read, write or deny")
    return ACCESS_NAMES[value]


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else type(value).__name__


def _blocks(value: Any) -> Iterable[Mapping[str, Any]]:
    """HCL gives a list of {name: body}; JSON gives {name: body} or a list of them."""
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item
            else:
                yield {"": item}  # reported below as a body that is not an object


def _named(base: str, prefix: bool, key: str, value: Any, line: int | None) -> Iterable[NamedRule]:
    if not isinstance(value, (dict, list)):
        raise RulesError(f'rules: {_at(line)}{key}: expected blocks like {key} "name" {{ policy = "read" }}')
    for block in _blocks(value):
        lines: Mapping[str, int] = block.get(LINES, {})
        for name in _user_keys(block):
            body = block[name]
            rule = _plain_rule(base, prefix, name, body)
            if rule is not None:
                yield rule
                continue
            body_line = body.get(START) if isinstance(body, dict) else None
            where = _at(body_line or lines.get(name) or line)
            label = f'{key} "{name}"'
            if len(name) > MAX_NAME:
                raise RulesError(f"rules: {where}{key}: name longer than {MAX_NAME} characters")
            if not isinstance(body, dict):
                raise RulesError(f"rules: {where}{label}: expected a block with policy")
            yield _named_body(base, prefix, name, label, body, where)


def _plain_rule(base: str, prefix: bool, name: str, body: Any) -> NamedRule | None:
    """The rule of a well-formed block, without building error texts; None: let the checks below say why."""
    if len(name) > MAX_NAME or not isinstance(body, dict):
        return None
    value = body.get("policy")
    access = ACCESS_NAMES.get(value) if isinstance(value, str) else None
    if access is None or (access is Access.LIST and base != "key"):
        return None
    intentions = None
    extra = 1
    if base == "service" and "intentions" in body:
        value = body["intentions"]
        intentions = ACCESS_NAMES.get(value) if isinstance(value, str) else None
        if intentions is None or intentions is Access.LIST:
            return None
        extra = 2
    if len(body) != extra and sum(1 for k in body if not k.startswith("__")) != extra:
        return None  # a field other than policy/intentions
    return NamedRule(base, name, prefix, access, intentions)


def _named_body(base: str, prefix: bool, name: str, label: str, body: Mapping[str, Any], where: str) -> NamedRule:
    lines: Mapping[str, int] = body.get(LINES, {})
    allowed = {"policy", "intentions"} if base == "service" else {"policy"}
    for attr in _user_keys(body):
        if attr not in allowed:
            raise RulesError(f"rules: {_at(lines.get(attr)) or where}{label}: unknown field {attr!r}")
    if "policy" not in body:
        raise RulesError(f"rules: {where}{label}: policy is missing")
    access = _access(body["policy"], base == "key", f"rules: {_at(lines.get('policy')) or where}{label}: policy")
    intentions = None
    if "intentions" in body:
        intentions = _access(body["intentions"], False,
                             f"rules: {_at(lines.get('intentions')) or where}{label}: intentions")
    return NamedRule(base, name, prefix, access, intentions)


def _access(value: Any, allow_list: bool, prefix: str) -> Access:
    if isinstance(value, str) and value in ACCESS_NAMES and (allow_list or value != "list"):
        return ACCESS_NAMES[value]
    choices = "read, write, list or deny" if allow_list else "read, write or deny"
    raise RulesError(f"{prefix} {_show(value)} is not {choices}")


# ------------------------------------------------------------------- identities


def _check_identity(kind: str, name: str) -> None:
    # Consul's own check for identity names: lowercase DNS-ish labels (underscores allowed), at most 256.
    if len(name) > _MAX_IDENTITY_NAME or not _SERVICE_NAME.match(name):
        raise RulesError(f"{kind} identity: name {name!r} is not valid (lowercase letters, digits, '-' and '_')")


def service_identity_policy(service: str) -> Policy:
    """Consul's synthetic policy for a ServiceIdentity: write on the service and its sidecar, read the rest."""
    _check_identity("service", service)
    return Policy((
        NamedRule("service", service, False, Access.WRITE),
        NamedRule("service", f"{service}-sidecar-proxy", False, Access.WRITE),
        NamedRule("service", "", True, Access.READ),
        NamedRule("node", "", True, Access.READ),
    ))


def node_identity_policy(node: str) -> Policy:
    """Consul's synthetic policy for a NodeIdentity: write on the node, read every service."""
    _check_identity("node", node)
    return Policy((
        NamedRule("node", node, False, Access.WRITE),
        NamedRule("service", "", True, Access.READ),
    ))
