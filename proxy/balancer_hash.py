"""Consistent hashing for one upstream (Consul's ring_hash and maglev policies) and the request keys they
hash (Consul's HashPolicies), pure. Hashes are stable across worker processes (blake2b and splitmix64, not
Python's salted `hash`), so every worker sends a key to the same endpoint.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from collections.abc import Collection, Mapping, Sequence

from meshagent.proxy.snapshot import Endpoint, HashPolicy

MASK64 = (1 << 64) - 1
MAGLEV_TABLE = 65537  # prime, Envoy's default table size
MAGLEV_CACHE_TABLES = 8  # built tables kept per process (each ~0.5 MB), least recently used dropped
RING_LIMIT = 65536  # hard cap on ring entries whatever maximum_ring_size says: memory and rebuild time

_MAGLEV_CACHE: dict[tuple[int, tuple[tuple[str, int, int], ...]], list[int]] = {}


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """splitmix64's finalizer: a cheap stable hash of a 64-bit integer."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


def _host_key(ep: Endpoint) -> bytes:
    return f"{ep.address}:{ep.port}".encode()


class _Hashed:
    """Shared pick for tables of endpoint indexes: walk on from the key's slot past excluded endpoints."""

    _owners: list[int]

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The available set; the table is rebuilt only when it changed."""
        eps = tuple(endpoints)
        if eps != self._eps:
            self._eps = eps
            self._rebuild()

    def _rebuild(self) -> None:
        raise NotImplementedError

    def started(self, ep: Endpoint) -> None:
        """Hash policies keep no per-request state."""

    def finished(self, ep: Endpoint, latency_s: float, ok: bool, now: float) -> None:
        """Hash policies keep no per-request state."""

    def _slot(self, key: int) -> int:
        raise NotImplementedError

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        if not self._eps:
            return None
        key = self._rng.getrandbits(64) if hash_key is None else hash_key & MASK64
        owners = self._owners
        slot = self._slot(key)
        ep = self._eps[owners[slot]]
        if not exclude or ep not in exclude:
            return ep
        if all(e in exclude for e in self._eps):
            return None
        n = len(owners)
        for step in range(1, n):
            ep = self._eps[owners[(slot + step) % n]]
            if ep not in exclude:
                return ep
        return None


class RingHash(_Hashed):
    """Ketama-style ring (Envoy's ring_hash): each endpoint gets ring entries in proportion to its weight,
    at least min_ring and at most max_ring (and RING_LIMIT) entries in all; a key goes to the next entry."""

    def __init__(self, rng: random.Random, min_ring: int = 1024, max_ring: int = 8_388_608) -> None:
        super().__init__(rng)
        self._max = min(max(max_ring, 1), RING_LIMIT)
        self._min = min(max(min_ring, 1), self._max)
        self._hashes: list[int] = []
        self._owners = []

    def _rebuild(self) -> None:
        eps = self._eps
        if not eps:
            self._hashes, self._owners = [], []
            return
        # Entries per unit of weight: enough for min_ring in all, rounded up to a power of two, so that
        # adding or removing an endpoint rarely changes the other endpoints' entries (Envoy rescales the
        # whole ring on every change, which moves keys between endpoints that stayed).
        total = sum(max(ep.weight, 1) for ep in eps)
        unit = 1 << max(0, math.ceil(math.log2(max(self._min / total, 1.0))))
        while unit > 1 and unit * total > self._max:
            unit >>= 1
        entries: list[tuple[int, int]] = []
        for i, ep in enumerate(eps):
            base = stable_hash(_host_key(ep))
            count = max(ep.weight, 1) * unit
            if total > self._max:  # even one entry per weight unit is too many: share max_ring by weight
                count = max(1, max(ep.weight, 1) * self._max // total)
            for k in range(count):
                entries.append((_mix((base + k * 0x9E3779B97F4A7C15) & MASK64), i))
        entries.sort()
        self._hashes = [h for h, _ in entries]
        self._owners = [i for _, i in entries]

    def _slot(self, key: int) -> int:
        slot = bisect_left(self._hashes, key)
        return 0 if slot == len(self._hashes) else slot


class Maglev(_Hashed):
    """Maglev (Envoy's): a 65537-entry lookup table filled from each endpoint's permutation, weighted, so
    removing one of N endpoints moves about 1/N of the keys."""

    def __init__(self, rng: random.Random, table_size: int = MAGLEV_TABLE) -> None:
        super().__init__(rng)
        self._size = table_size
        self._owners = []

    def _rebuild(self) -> None:
        if not self._eps:
            self._owners = []
            return
        # A build probes ~m ln m slots (50-100 ms in Python), so tables are kept per endpoint set: an
        # ejection and its end toggle between two sets and rebuild nothing the second time.
        key = (self._size, tuple((ep.address, ep.port, ep.weight) for ep in self._eps))
        table = _MAGLEV_CACHE.pop(key, None)
        if table is None:
            table = self._build()
        _MAGLEV_CACHE[key] = table
        while len(_MAGLEV_CACHE) > MAGLEV_CACHE_TABLES:
            del _MAGLEV_CACHE[next(iter(_MAGLEV_CACHE))]
        self._owners = table

    def _build(self) -> list[int]:
        eps = self._eps
        m = self._size
        table = [-1] * m
        offsets: list[int] = []
        skips: list[int] = []
        for ep in eps:
            h = stable_hash(_host_key(ep))
            offsets.append(h % m)
            skips.append(_mix(h) % (m - 1) + 1)
        weights = [max(ep.weight, 1) for ep in eps]
        top = max(weights)
        targets = [float(top)] * len(eps)  # an endpoint takes a slot when iteration x weight reaches this
        nexts = [0] * len(eps)
        filled = 0
        iteration = 0
        while filled < m:
            iteration += 1
            for i in range(len(eps)):
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += top
                off, skip, j = offsets[i], skips[i], nexts[i]
                c = (off + j * skip) % m
                while table[c] >= 0:
                    j += 1
                    c = (off + j * skip) % m
                table[c] = i
                nexts[i] = j + 1
                filled += 1
                if filled == m:
                    break
        return table

    def _slot(self, key: int) -> int:
        return key % self._size


# ---------------------------------------------------------------------- hash keys


def hash_key(policies: Sequence[HashPolicy], headers: Sequence[tuple[bytes, bytes]],
             cookies: Mapping[str, str] | None, query: Mapping[str, str] | str | None,
             source_ip: str) -> int | None:
    """The request's key for ring_hash/maglev per Consul's HashPolicies (Envoy's rules): each policy that
    finds its input mixes into the key; a terminal one that found it stops. None when no input was found
    (the balancer then picks at random). `cookies` None parses the Cookie headers; `query` may be raw."""
    key: int | None = None
    for p in policies:
        value: bytes | None = None
        if p.source_ip:
            value = source_ip.encode() if source_ip else None
        elif p.field == "header":
            value = _header(headers, p.field_value.lower().encode("latin-1", "replace"))
        elif p.field == "cookie":
            found = (_cookie(headers, p.field_value) if cookies is None else cookies.get(p.field_value))
            value = None if found is None else found.encode("utf-8", "surrogateescape")
        elif p.field == "query_parameter":
            found = _query(query, p.field_value)
            value = None if found is None else found.encode("utf-8", "surrogateescape")
        if value is None:
            continue
        h = stable_hash(value)
        key = h if key is None else ((((key << 1) | (key >> 63)) & MASK64) ^ h)
        if p.terminal:
            break
    return key


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found: bytes | None = None
    for k, v in headers:
        if len(k) == len(name) and k.lower() == name:
            found = v if found is None else found + b"," + v
    return found


def _cookie(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    for k, v in headers:
        if len(k) == 6 and k.lower() == b"cookie":
            for part in v.decode("latin-1").split(";"):
                key, eq, val = part.strip().partition("=")
                if eq and key == name:
                    return val.strip('"')
    return None


def _query(query: Mapping[str, str] | str | None, name: str) -> str | None:
    if query is None:
        return None
    if not isinstance(query, str):
        return query.get(name)
    for part in query.split("&"):
        key, _, val = part.partition("=")
        if key == name:
            return val
    return None
