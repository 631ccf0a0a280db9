"""An http upstream's compiled discovery chain in the data plane: which route a request takes (first match
wins) and which target of that route's splits it goes to.

Built once per snapshot (ChainRouter), so a request pays only the comparisons: paths and methods as bytes,
headers with the intention matchers of authorize.py (Envoy's rules: lower-cased names, repeated values joined
by ",", an absent header matching only an inverted Present), query parameters parsed only when a route looks
at them. Paths are matched as intentions match them: normalised, without the query (http1.request_path), so
`/x/../admin` takes the `/admin` route. Regexes are RE2 full matches. A split is a bisect over cumulative
weights (hundredths of a percent) with a uniform draw, or the request's hash when the upstream has header,
cookie or query_parameter hash policies and the request carries one of them (sticky per value; Consul always
draws). SourceIP never makes a split sticky: on an outbound listener it is always the local app.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import replace
from urllib.parse import quote, unquote_to_bytes

from .authorize import HeaderMatcher, compile_pattern
from .http1 import Head, request_path
from .snapshot import ChainRoute, ChainTarget, HashPolicy, QueryMatch, Retries, Upstream

SPLIT_SCALE = 10000  # route weights are hundredths of a percent
MAX_QUERY_PARAMS = 256  # parameters a request's query is searched for (the rest are ignored)
_REQUEST_FIELDS = frozenset({"header", "cookie", "query_parameter"})  # hash policies a split may use


def _utf8(data: bytes) -> bytes:
    # RE2 matches no character at an invalid UTF-8 byte: make each one U+FFFD, as authorize.py does
    return data if data.isascii() else data.decode("utf-8", "replace").encode()


class _Query:
    """One compiled query-parameter condition (Envoy's: the first value of the name, percent-decoded)."""

    __slots__ = ("exact", "name", "regex")

    def __init__(self, q: QueryMatch, where: str) -> None:
        self.name = q.name.encode()
        self.exact = None if q.exact is None else q.exact.encode()
        self.regex = compile_pattern(q.regex, f"{where}.regex")  # neither: Present

    def matches(self, params: dict[bytes, bytes]) -> bool:
        value = params.get(self.name)
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self.regex is not None:
            return self.regex(_utf8(value))
        return True


def parse_query(query: bytes | None) -> dict[bytes, bytes]:
    """A query string's parameters, names and values percent-decoded, the first value of a name kept."""
    params: dict[bytes, bytes] = {}
    if not query:
        return params
    for part in query.split(b"&", MAX_QUERY_PARAMS)[:MAX_QUERY_PARAMS]:
        name, _, value = part.partition(b"=")
        if b"%" in name:
            name = unquote_to_bytes(name)
        if name not in params:
            params[name] = unquote_to_bytes(value) if b"%" in value else value
    return params


class CompiledRoute:
    """One ChainRoute ready to match, with its split table and its overrides in the form a request uses."""

    __slots__ = ("cumulative", "fold", "headers", "methods", "path_exact", "path_prefix", "path_regex", "query",
                 "retries", "rewrite", "route", "single", "targets", "timeout_s", "total")

    def __init__(self, route: ChainRoute, where: str) -> None:
        m = route.match
        self.route = route
        self.path_exact = None if m.path_exact is None else m.path_exact.encode()
        self.path_prefix = None if m.path_prefix is None else m.path_prefix.encode()
        # CaseInsensitive (Envoy's case_sensitive: false): exact and prefix compared ASCII-lower-cased; a regex
        # is not affected (as in Envoy). Without it `/ADMIN` missed an operator's case-insensitive /admin route.
        self.fold = m.case_insensitive and (self.path_exact is not None or self.path_prefix is not None)
        if self.fold:
            self.path_exact = None if self.path_exact is None else self.path_exact.lower()
            self.path_prefix = None if self.path_prefix is None else self.path_prefix.lower()
        self.path_regex = compile_pattern(m.path_regex, f"{where}.match.path_regex")
        self.methods = frozenset(x.upper().encode() for x in m.methods)
        self.headers = tuple(HeaderMatcher(h) for h in m.headers)
        for i, h in enumerate(self.headers):
            if h.broken:
                raise ValueError(f"{where}.match.headers[{i}].regex: RE2 refuses it")
        self.query = tuple(_Query(q, f"{where}.match.query[{i}]") for i, q in enumerate(m.query))
        if not route.splits:
            raise ValueError(f"{where}.splits: a route needs at least one split")
        self.targets = tuple(s.target for s in route.splits)
        cumulative, total = [], 0
        for s in route.splits:
            total += s.weight
            cumulative.append(total)
        if total < 1:
            raise ValueError(f"{where}.splits: weights sum to {total}")
        self.cumulative = cumulative
        self.total = total
        self.single = self.targets[0] if len(set(self.targets)) == 1 else None  # no draw needed
        # What a request target cannot carry is %-encoded (a space, '?', '#', non-ASCII): the rewrite replaces
        # path characters only. RFC 3986 pchar, '/' and '%' (an escape the operator wrote) stay as written.
        self.rewrite = None if route.prefix_rewrite is None else quote(route.prefix_rewrite,
                                                                       safe="/%:@!$&'()*+,;=-._~").encode()
        self.timeout_s = route.request_timeout_ms / 1000.0  # 0: the target's
        self.retries: Retries | None = route.retries  # None: the target's

    def matches(self, head: Head, path: bytes, params: list[dict[bytes, bytes]], query: bytes | None) -> bool:
        """Whether the request matches every set condition (`params` caches the parsed query in its one slot)."""
        if self.fold:
            path = path.lower()  # bytes.lower folds ASCII only and keeps the length (PrefixRewrite cuts by it)
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and not self.path_regex(_utf8(path)):
            return False
        if self.methods and head.method not in self.methods:
            return False
        if self.headers:
            fields = head.headers
            for h in self.headers:
                if not h.matches(fields):
                    return False
        if self.query:
            if not params:
                params.append(parse_query(query))
            for q in self.query:
                if not q.matches(params[0]):
                    return False
        return True


class ChainRouter:
    """An upstream's routes compiled: `match` a request head, `pick` a target of the route's splits."""

    def __init__(self, upstream: Upstream, rng: random.Random) -> None:
        where = upstream.destination_name
        ids = {t.id for t in upstream.targets}
        self.routes = tuple(CompiledRoute(r, f"{where}.routes[{i}]") for i, r in enumerate(upstream.routes))
        for i, r in enumerate(self.routes):
            for j, t in enumerate(r.targets):
                if t not in ids:
                    raise ValueError(f"{where}.routes[{i}].splits[{j}].target: {t[:80]!r} is not a target")
        self._queries = any(r.query for r in self.routes)  # else no request's query is looked at
        # The split hashes only what the request carries: SourceIP is the local app's address on an outbound
        # listener (one constant), which would send a whole 90/10 split to one target.
        self.hash_policies: tuple[HashPolicy, ...] = tuple(
            p for p in upstream.load_balancer.hash_policies if not p.source_ip and p.field in _REQUEST_FIELDS)
        self.source = self.source_of(upstream)
        self.rng = rng
        self._random = rng.random

    @staticmethod
    def source_of(upstream: Upstream) -> tuple[object, ...]:
        """What a router is built from (endpoints are not: a health change does not rebuild it)."""
        return (upstream.routes, tuple(t.id for t in upstream.targets), upstream.load_balancer.hash_policies)

    def match(self, head: Head, path: bytes | None = None) -> CompiledRoute | None:
        """The first route the request matches, or None. `path` is request_path(head.target) when the
        caller has it; computing it raises HTTPError(400) for a target that has no path."""
        target = head.target
        if path is None:
            path = request_path(target)
        query = None
        if self._queries:
            q = target.find(b"?")
            query = target[q + 1:] if q >= 0 else None
        params: list[dict[bytes, bytes]] = []
        for route in self.routes:
            if route.matches(head, path, params, query):
                return route
        return None

    def pick(self, route: CompiledRoute, hash_key: int | None = None) -> str:
        """The target id for one request on `route`: by the request's hash when there is one, else at random."""
        if route.single is not None:
            return route.single
        x = int(self._random() * route.total) if hash_key is None else hash_key % route.total
        return route.targets[bisect_right(route.cumulative, x)]

    @staticmethod
    def rewritten(route: CompiledRoute, head: Head) -> bytes:
        """The request target after `route`'s PrefixRewrite: the matched PathPrefix (or the whole PathExact
        path) replaced in the normalised path, the query kept; always origin form, starting with '/'."""
        assert route.rewrite is not None
        target = head.target
        path = request_path(target)
        rest = path[len(route.path_prefix):] if route.path_prefix is not None else b""
        new = route.rewrite + rest
        if not new.startswith(b"/"):
            new = b"/" + new
        q = target.find(b"?")
        return new + target[q:] if q >= 0 else new


def target_service(target_id: str) -> tuple[str, str] | None:
    """(service, datacenter) of a Consul target ID `[subset.]service.namespace.partition.dc`, or None."""
    parts = target_id.split(".")
    if len(parts) < 4 or not all(parts[-4:]):
        return None
    return parts[-4], parts[-1]


def target_upstream(up: Upstream, target: ChainTarget) -> Upstream:
    """The config of one target's cluster: the upstream's limits, passive health and retries with the
    target's endpoints, identities, timeouts and balancer (a request timeout of 0 keeps the upstream's)."""
    named = target_service(target.id)
    service, dc = named if named is not None else (up.destination_name, up.datacenter)
    return replace(up, destination_name=service, datacenter=dc, endpoints=target.endpoints,
                   spiffe_ids=target.spiffe_ids, connect_timeout_ms=target.connect_timeout_ms,
                   request_timeout_ms=target.request_timeout_ms or up.request_timeout_ms,
                   load_balancer=target.load_balancer, routes=(), targets=())
