"""ProxySnapshot.check()'s rules for an upstream's compiled discovery chain (routes and targets): hostile wire
input, so every rule names the field it refuses. Imported by snapshot.py only when an upstream has a chain.
"""

from __future__ import annotations

import re

from .authorize import compile_pattern
from .snapshot import (
    MAX_ENDPOINTS,
    ChainRoute,
    ChainTarget,
    ProxyConfigError,
    Retries,
    Upstream,
    check_ip,
    check_port,
)

SPLIT_TOTAL = 10000  # a route's weights sum to 100 % in hundredths of a percent
MAX_CHAIN_ENDPOINTS = 4 * MAX_ENDPOINTS  # over all targets of one upstream
MAX_TIMEOUT_MS = 86_400_000
MAX_NUM_RETRIES = 1000

_TARGET_ID = re.compile(r"[!-~]{1,512}")  # printable ASCII: a metrics label and a log field
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # methods (RFC 9110 tokens)
_HEADER = re.compile(r":?[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token, or a pseudo-header such as :authority
_PATH = re.compile(r"/[^\x00-\x1f\x7f]*")  # compared with request paths, never relayed: no control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_chain(up: Upstream, where: str) -> None:
    """The chain rules for one upstream: http only; targets unique and checked as upstream endpoints are;
    every route's splits name targets with weights 1-10000 summing to 10000; matches that hold together."""
    if not up.routes and not up.targets:
        return
    if up.protocol != "http":
        raise ProxyConfigError(f"{where}.routes: only http upstreams have routes (protocol is {up.protocol})")
    if not up.routes:
        raise ProxyConfigError(f"{where}.targets: targets without routes")
    ids: set[str] = set()
    endpoints = 0
    for i, t in enumerate(up.targets):
        _target(t, f"{where}.targets[{i}]")
        if t.id in ids:
            raise ProxyConfigError(f"{where}.targets[{i}].id: {t.id!r} is not unique")
        ids.add(t.id)
        endpoints += len(t.endpoints)
        if endpoints > MAX_CHAIN_ENDPOINTS:
            raise ProxyConfigError(f"{where}.targets: more than {MAX_CHAIN_ENDPOINTS} endpoints in all")
    for i, r in enumerate(up.routes):
        _route(r, ids, f"{where}.routes[{i}]")


def _target(t: ChainTarget, where: str) -> None:
    if not _TARGET_ID.fullmatch(t.id):
        raise ProxyConfigError(f"{where}.id: {t.id[:80]!r} is not 1-512 printable ASCII characters")
    for j, ep in enumerate(t.endpoints):
        check_port(ep.port, f"{where}.endpoints[{j}].port")
        check_ip(ep.address, f"{where}.endpoints[{j}].address")
        if ep.weight < 1:
            raise ProxyConfigError(f"{where}.endpoints[{j}].weight: {ep.weight} is below 1")
    for j, sid in enumerate(t.spiffe_ids):
        if not sid.startswith("spiffe://"):
            raise ProxyConfigError(f"{where}.spiffe_ids[{j}]: {sid[:80]!r} is not a SPIFFE ID")
    _range(t.connect_timeout_ms, 1, MAX_TIMEOUT_MS, f"{where}.connect_timeout_ms")
    _range(t.request_timeout_ms, 0, MAX_TIMEOUT_MS, f"{where}.request_timeout_ms")
    # A load balancer needs no rule, as on a flat upstream: an unknown policy is the protocol's default, the
    # balancers clamp choice_count and ring sizes, a hash policy whose input is absent adds nothing.


def _route(r: ChainRoute, ids: set[str], where: str) -> None:
    if not r.splits:
        raise ProxyConfigError(f"{where}.splits: a route needs at least one split")
    total = 0
    for j, s in enumerate(r.splits):
        if s.target not in ids:
            raise ProxyConfigError(f"{where}.splits[{j}].target: {s.target[:80]!r} is not a target of this "
                                   "upstream")
        _range(s.weight, 1, SPLIT_TOTAL, f"{where}.splits[{j}].weight")
        total += s.weight
    if total != SPLIT_TOTAL:
        raise ProxyConfigError(f"{where}.splits: weights sum to {total}, not {SPLIT_TOTAL} (100 %)")
    m = r.match
    paths = [p for p in (m.path_exact, m.path_prefix, m.path_regex) if p is not None]
    if len(paths) > 1:
        raise ProxyConfigError(f"{where}.match: at most one of path_exact, path_prefix, path_regex")
    for name, value in (("path_exact", m.path_exact), ("path_prefix", m.path_prefix)):
        if value is not None and not _PATH.fullmatch(value):
            raise ProxyConfigError(f"{where}.match.{name}: {value[:80]!r} is not a path beginning with /")
    compile_pattern(m.path_regex, f"{where}.match.path_regex")
    for j, method in enumerate(m.methods):
        if not _TOKEN.fullmatch(method):
            raise ProxyConfigError(f"{where}.match.methods[{j}]: {method[:40]!r} is not a method")
    for j, h in enumerate(m.headers):
        at = f"{where}.match.headers[{j}]"
        if not _HEADER.fullmatch(h.name):
            raise ProxyConfigError(f"{at}.name: {h.name[:80]!r} is not a header name")
        if sum((h.present, h.exact is not None, h.prefix is not None, h.suffix is not None,
                h.regex is not None)) > 1:
            raise ProxyConfigError(f"{at}: at most one of present, exact, prefix, suffix, regex")
        compile_pattern(h.regex, f"{at}.regex")
    for j, q in enumerate(m.query):
        at = f"{where}.match.query[{j}]"
        if not q.name:
            raise ProxyConfigError(f"{at}.name: empty")
        if sum((q.present, q.exact is not None, q.regex is not None)) > 1:
            raise ProxyConfigError(f"{at}: at most one of present, exact, regex")
        compile_pattern(q.regex, f"{at}.regex")
    if r.prefix_rewrite is not None:
        if m.path_exact is None and m.path_prefix is None:
            raise ProxyConfigError(f"{where}.prefix_rewrite: needs match.path_exact or match.path_prefix")
        if _CONTROL.search(r.prefix_rewrite):  # (other characters a target cannot carry are %-encoded)
            raise ProxyConfigError(f"{where}.prefix_rewrite: {r.prefix_rewrite[:80]!r} has control characters")
    _range(r.request_timeout_ms, 0, MAX_TIMEOUT_MS, f"{where}.request_timeout_ms")
    if r.retries is not None:
        _retries(r.retries, f"{where}.retries")


def _retries(r: Retries, where: str) -> None:
    _range(r.num_retries, 0, MAX_NUM_RETRIES, f"{where}.num_retries")
    for j, code in enumerate(r.retry_on_status_codes):
        _range(code, 100, 599, f"{where}.retry_on_status_codes[{j}]")
    _range(r.base_interval_ms, 0, MAX_TIMEOUT_MS, f"{where}.base_interval_ms")
    _range(r.max_interval_ms, 0, MAX_TIMEOUT_MS, f"{where}.max_interval_ms")
    if not 0.0 <= r.budget_percent <= 100.0:
        raise ProxyConfigError(f"{where}.budget_percent: {r.budget_percent} is not between 0 and 100")
    _range(r.budget_min_concurrent, 0, 1 << 20, f"{where}.budget_min_concurrent")


def _range(value: int, low: int, high: int, where: str) -> None:
    if not low <= value <= high:
        raise ProxyConfigError(f"{where}: {value} is not between {low} and {high}")
