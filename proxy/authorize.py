"""Intentions enforced by the data plane: who a TLS peer is, and whether its connection (L4) or request (L7)
may reach this service, with Consul's semantics.

The rules arrive in evaluation order (the agent sorts them with agent/connect/intentions.py `ordered`: highest
precedence first, deny before allow on ties), so the first rule whose source matches decides. At L4 an L7
rule (action None) denies, as Consul's authorize endpoint does. At L7 an L4 rule decides every request; an
L7 rule's permissions are tried in order and the first that matches decides; when none matches, the default
policy decides (Consul's service-intentions docs: "traffic that fails to match any of the provided
permissions in this intention will be subject to the default intention behavior"). Lower rules for the same
source are never consulted then (Consul's RBAC removes the higher intention's sources from lower ones).

Matching is Envoy's, which Consul configures: paths are matched without query or fragment, after RFC 3986
normalization (Consul's default mesh `RequestNormalization`); methods exactly (case-sensitive, as `:method`);
headers by lower-cased name with repeated values joined by ","; a header that is absent matches only an
inverted Present. Regexes are RE2 full matches compiled once, as Envoy's `safe_regex` (RE2 runs in time
linear in the input, so no path or header can stall the loop; a pattern RE2 refuses fails closed). They see
UTF-8: the path as text, a header value as its bytes with any invalid UTF-8 replaced by U+FFFD (one
character). Verdicts are built once on construction, so a decision allocates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import re2  # type: ignore[import-untyped]  # google-re2: no type information
from meshagent.proxy.snapshot import HeaderMatch, IntentionRule, Intentions, Permission, ProxyConfigError

SCHEME = "spiffe://"
MAX_SPIFFE_ID = 2048  # the SPIFFE specification's bound on a whole ID
CACHE_LIMIT = 4096  # per-source memo entries; cleared when full (sources are few, peers are hostile)
WILDCARD = "*"
DEFAULT_NS = "default"

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and why: `rule` is the deciding intention's name, "" when the default policy decided."""

    allowed: bool
    reason: str
    rule: str


class HeaderMatcher:
    """One compiled header condition (of an intention permission or a chain route)."""

    __slots__ = ("broken", "exact", "invert", "name", "prefix", "present", "regex", "suffix")

    def __init__(self, h: HeaderMatch) -> None:
        self.name = h.name.lower().encode("latin-1", "replace")
        self.present = h.present
        self.exact = None if h.exact is None else h.exact.encode()
        self.prefix = None if h.prefix is None else h.prefix.encode()
        self.suffix = None if h.suffix is None else h.suffix.encode()
        self.regex, self.broken = _compile(h.regex)
        self.invert = h.invert

    def matches(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        value = _header_value(headers, self.name)
        if value is None:  # Envoy: an absent header matches only an inverted Present
            return self.invert and self.present
        if self.broken:
            match = False
        elif self.exact is not None:
            match = value == self.exact
        elif self.prefix is not None:
            match = value.startswith(self.prefix)
        elif self.suffix is not None:
            match = value.endswith(self.suffix)
        elif self.regex is not None:
            if not value.isascii():  # RE2 matches no character at an invalid UTF-8 byte: make it one
                value = value.decode("utf-8", "replace").encode()
            match = self.regex(value)
        else:  # Present (or nothing set, which Consul's validation refuses): the header is there
            match = True
        return match is not self.invert


class _Permission:
    """One compiled L7 permission with its verdict built in advance."""

    __slots__ = ("fail_closed", "headers", "methods", "path_exact", "path_prefix", "path_regex", "verdict")

    def __init__(self, p: Permission, verdict: Verdict) -> None:
        self.verdict = verdict
        self.path_exact = p.path_exact
        self.path_prefix = p.path_prefix
        self.path_regex, broken = _compile(p.path_regex)
        self.methods = frozenset(m.upper() for m in p.methods)
        self.headers = tuple(HeaderMatcher(h) for h in p.headers)
        # A regex that does not compile (the agent validates, but this is a process boundary): a deny then
        # matches every request and an allow none, so a bad rule can only refuse more.
        self.fail_closed = broken or any(h.broken for h in self.headers)

    def matches(self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if self.fail_closed:
            return not self.verdict.allowed
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and not self.path_regex(path.encode("utf-8", "surrogatepass")):
            return False
        if self.methods and method not in self.methods:
            return False
        for h in self.headers:
            if not h.matches(headers):
                return False
        return True


class _Rule:
    """One compiled intention: its L4 verdict and, for L7, its permissions."""

    __slots__ = ("l4", "l7_default", "permissions", "source")

    def __init__(self, rule: IntentionRule, name: str, default: Verdict, default_allow: bool) -> None:
        self.source = rule.source
        if rule.action is None:
            self.l4 = Verdict(False, f"{name} has L7 permissions, which deny at L4", name)
        else:
            self.l4 = Verdict(rule.action == "allow", f"matched {rule.action} intention {name}", name)
        self.permissions: tuple[_Permission, ...] | None = None
        if rule.action is None:
            self.permissions = tuple(
                _Permission(p, Verdict(p.action == "allow",
                                       f"matched {p.action} permission {i + 1} of intention {name}", name))
                for i, p in enumerate(rule.permissions))
        verb = "allow" if default_allow else "deny"
        self.l7_default = Verdict(default.allowed, f"no permission of intention {name} matched; default {verb}",
                                  "")


class Authorizer:
    """The intentions of one destination service, compiled for per-connection and per-request decisions."""

    def __init__(self, intentions: Intentions, destination: str, trust_domain: str) -> None:
        self.destination = destination
        self.trust_domain = trust_domain
        self._prefix = f"{SCHEME}{trust_domain}/"
        verb = "allow" if intentions.default_allow else "deny"
        self.default = Verdict(intentions.default_allow, f"no intention matched; default {verb}", "")
        # Peers come from this trust domain's default namespace only (source_of), so a rule for another
        # namespace can never match and is dropped here.
        self._rules = tuple(
            _Rule(r, r.name or f"{r.source} => {destination}", self.default, intentions.default_allow)
            for r in intentions.rules if r.source_ns in (DEFAULT_NS, WILDCARD))
        self._by_source: dict[str, _Rule | None] = {}
        self._ids: dict[str, str | None] = {}

    def source_of(self, spiffe_id: str | None) -> str | None:
        """The service name of a peer's SPIFFE ID in this trust domain (default namespace), else None."""
        if spiffe_id is None:
            return None
        try:
            return self._ids[spiffe_id]
        except KeyError:
            pass
        name = self._parse(spiffe_id)
        if len(self._ids) >= CACHE_LIMIT:
            self._ids.clear()
        self._ids[spiffe_id] = name
        return name

    def _parse(self, spiffe_id: str) -> str | None:
        if not isinstance(spiffe_id, str) or len(spiffe_id) > MAX_SPIFFE_ID:
            return None
        if not spiffe_id.startswith(self._prefix) or not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            return None
        parts = spiffe_id[len(self._prefix):].split("/")
        # Only ns/<ns>/dc/<dc>/svc/<name>; the partition form (/ap/<partition>/...) is refused for now.
        if len(parts) != 6 or parts[0] != "ns" or parts[2] != "dc" or parts[4] != "svc":
            return None
        for seg in parts[1::2]:
            if seg in (".", "..") or not _SEGMENT.fullmatch(seg):
                return None
        if parts[1] != DEFAULT_NS:
            return None
        return parts[5]

    def _rule_for(self, source: str) -> _Rule | None:
        try:
            return self._by_source[source]
        except KeyError:
            pass
        found = None
        for rule in self._rules:
            if rule.source == WILDCARD or rule.source == source:
                found = rule
                break
        if len(self._by_source) >= CACHE_LIMIT:
            self._by_source.clear()
        self._by_source[source] = found
        return found

    def l4(self, source: str) -> Verdict:
        """Whether a new connection from `source` is allowed (an L7 intention denies here, as in Consul)."""
        rule = self._rule_for(source)
        return self.default if rule is None else rule.l4

    def l7(self, source: str, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Verdict:
        """Whether one HTTP request from `source` is allowed; `path` is the request target (query ignored)."""
        rule = self._rule_for(source)
        if rule is None:
            return self.default
        perms = rule.permissions
        if perms is None:
            return rule.l4
        if not perms:
            return rule.l7_default
        path = normalize_path(path)
        for perm in perms:
            if perm.matches(method, path, headers):
                return perm.verdict
        return rule.l7_default


def normalize_path(target: str) -> str:
    """The path of a request target as matched: query and fragment dropped, %-escapes of unreserved
    characters decoded, dot segments removed (RFC 3986 6.2.2); L7 handlers should forward this path."""
    cut = len(target)
    q = target.find("?")
    if q >= 0:
        cut = q
    f = target.find("#", 0, cut)
    if f >= 0:
        cut = f
    path = target[:cut] if cut != len(target) else target
    if "%" in path:
        path = _PCT.sub(_pct, path)
    if "/." in path or path.startswith("."):
        path = _remove_dot_segments(path)
    return path


def _pct(m: re.Match[str]) -> str:
    byte = int(m.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    if path.startswith("/") and not result.startswith("/"):
        result = "/" + result
    return result


def _header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Every value of header `name` joined by "," (Envoy's rule for matching repeated headers), or None."""
    found: bytes | None = None
    n = len(name)
    for k, v in headers:
        if len(k) == n and (k == name or k.lower() == name):
            found = v if found is None else found + b"," + v
    if found is None and name == b"host":  # HTTP/1's Host is HTTP/2's :authority
        return _header_value(headers, b":authority")
    if found is None and name == b":authority":
        for k, v in headers:
            if len(k) == 4 and k.lower() == b"host":
                return v
    return found


FullMatch = Callable[[bytes], bool]
"""A compiled regex: whether it matches the whole of a UTF-8 byte string."""


def _re2_options() -> object:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.never_capture = True  # a yes/no answer: no group spans to build
    return options


_OPTIONS = _re2_options()
# google-re2's public fullmatch builds a generator and a Match object per call (~3 us); its compiled RE2's
# Match with both ends anchored is the same test at a third of the cost. Used when present (pinned <2).
_ANCHOR_BOTH = getattr(getattr(re2, "_Anchor", None), "ANCHOR_BOTH", None)


def compile_fullmatch(pattern: str) -> FullMatch:
    """An RE2 full match of `pattern` (ValueError with RE2's reason when RE2 refuses it)."""
    try:
        compiled = re2.compile(pattern.encode("utf-8", "surrogatepass"), _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "refused"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None
    except (TypeError, OverflowError, MemoryError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    raw = getattr(compiled, "_regexp", None)
    if _ANCHOR_BOTH is None or raw is None or not hasattr(raw, "Match"):
        fullmatch = compiled.fullmatch
        return lambda data: fullmatch(data) is not None
    match, anchor = raw.Match, _ANCHOR_BOTH

    def full(data: bytes) -> bool:
        return bool(match(anchor, data, 0, len(data))[0][0] >= 0)
    return full


def compile_pattern(pattern: str | None, where: str) -> FullMatch | None:
    """`pattern` compiled for full matches (None stays None); ProxyConfigError naming `where` if RE2 refuses it."""
    if pattern is None:
        return None
    try:
        return compile_fullmatch(pattern)
    except ValueError as exc:
        raise ProxyConfigError(f"{where}: RE2 refuses {pattern[:80]!r}: {str(exc)[:200]}") from None


def _compile(pattern: str | None) -> tuple[FullMatch | None, bool]:
    """The compiled pattern, and whether RE2 refused it (a refused one fails closed)."""
    if pattern is None:
        return None, False
    try:
        return compile_fullmatch(pattern), False
    except ValueError:
        return None, True
