"""Consul's HTTP request timing: every routed request's duration (ms) as `http.<METHOD>.<route>` (the route
pattern, not the path, so `/v1/kv/a/b` is `http.GET.v1.kv._` as Consul names it) and as `api.http` with
`method` and `path` labels."""

from __future__ import annotations

import time

from ..http.api import ROUTES
from ..http.messages import Handler, Request, Response
from .registry import Registry, Summary

_PREFIXES = frozenset(p for p in ROUTES if p.endswith("/"))
_PATH_MEMO = 4096  # (method, path) pairs remembered
_DEPTH = max(p.count("/") for p in _PREFIXES) - 1  # segments in the deepest prefix route


def route_of(path: str) -> str | None:
    """The ROUTES pattern serving `path` (exact first, then the longest prefix), or None (a 404). Walks the
    path's first few `/` boundaries (~1 us) rather than testing every prefix route (~5 us for a KV path)."""
    if path in ROUTES:
        return path
    best = None
    at = 0
    for _ in range(_DEPTH):
        at = path.find("/", at + 1)
        if at < 0:
            break
        if path[: at + 1] in _PREFIXES:
            best = path[: at + 1]
    return best


def route_key(pattern: str) -> str:
    """`/v1/kv/` -> `v1.kv._` (Consul: the pattern's parts joined with `.`, an empty part as `_`)."""
    return ".".join(part or "_" for part in pattern.removeprefix("/").split("/"))


class TimedHandler:
    """Wraps the API handler: times each request whose route and method exist (bounded: routes x methods)."""

    def __init__(self, handler: Handler, registry: Registry) -> None:
        self.handler = handler
        self.registry = registry
        self._timers: dict[tuple[str, str], tuple[Summary, Summary]] = {}
        self._by_path: dict[tuple[str, str], tuple[Summary, Summary] | None] = {}

    def _timers_for(self, method: str, path: str) -> tuple[Summary, Summary] | None:
        key = (method, path)
        if key in self._by_path:
            return self._by_path[key]
        timers = self._lookup(method, path)
        if len(self._by_path) >= _PATH_MEMO:
            self._by_path.clear()  # KV paths are endless: a bounded memo of the recent ones
        self._by_path[key] = timers
        return timers

    def _lookup(self, method: str, path: str) -> tuple[Summary, Summary] | None:
        pattern = route_of(path)
        if pattern is None:
            return None
        lookup = "GET" if method == "HEAD" else method
        if lookup not in ROUTES[pattern]:
            return None  # a 405: not a route Consul would time either
        timers = self._timers.get((method, pattern))
        if timers is None:
            key = route_key(pattern)
            timers = self._timers[(method, pattern)] = (
                self.registry.summary(f"http.{method}.{key}", "HTTP request time (ms)"),
                self.registry.summary("api.http", "HTTP request time (ms)", {"method": method, "path": key}))
        return timers

    async def __call__(self, request: Request) -> Response:
        """Answer with the wrapped handler, then record how long it took."""
        started = time.perf_counter()
        try:
            return await self.handler(request)
        finally:
            timers = self._timers_for(request.method, request.path)
            if timers is not None:
                elapsed = (time.perf_counter() - started) * 1000.0
                timers[0].observe(elapsed)
                timers[1].observe(elapsed)
