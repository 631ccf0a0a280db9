"""Load balancers for one upstream's endpoints (Consul's `LoadBalancer` policies), pure: `rng` passed in,
time only through `finished(..., now)`.

The default for http is linkerd2-proxy's: power of two choices over peak-EWMA latency x (pending + 1), where
a failed request counts at least FAILURE_PENALTY_S so that a fast 503 does not look fast (linkerd2-proxy
#4537); for tcp it is least_request. Hash policies (ring_hash, maglev; balancer_hash.py) take a 64-bit key from
`hash_key`, stable across worker processes.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Collection, Sequence
from typing import Protocol

from meshagent.proxy.balancer_hash import Maglev, RingHash, hash_key, stable_hash
from meshagent.proxy.snapshot import Endpoint, LoadBalancer

__all__ = ["Balancer", "LeastRequest", "Maglev", "PeakEwma", "RandomBalancer", "RingHash", "RoundRobin",
           "hash_key", "make_balancer", "stable_hash"]

EWMA_TAU_S = 10.0  # linkerd2-proxy's decay
DEFAULT_RTT_S = 0.030  # an endpoint without samples (linkerd2-proxy's default_rtt)
FAILURE_PENALTY_S = 1.0  # the least latency a failed request records
SWRR_MAX = 64  # weighted round robin scans all endpoints up to this many, then uses a deadline heap
_EXCLUDE_TRIES = 8  # random draws before filtering the set when some endpoints are excluded


class Balancer(Protocol):
    """Chooses an endpoint per request (http) or connection (tcp)."""

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The available set (healthy, not ejected); stats of endpoints still present are kept."""

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """An endpoint not in `exclude`, or None when there is none."""

    def started(self, ep: Endpoint) -> None:
        """A request or connection began on `ep`."""

    def finished(self, ep: Endpoint, latency_s: float, ok: bool, now: float) -> None:
        """It ended after `latency_s`; `ok` False for a 5xx or a gateway failure."""


def make_balancer(lb: LoadBalancer, protocol: str, rng: random.Random) -> Balancer:
    """The balancer of an upstream's `LoadBalancer` config (an unknown policy gets the protocol's default)."""
    policy = lb.policy
    if policy == "round_robin":
        return RoundRobin(rng)
    if policy == "random":
        return RandomBalancer(rng)
    if policy == "least_request":
        return LeastRequest(rng, lb.choice_count)
    if policy == "ring_hash":
        return RingHash(rng, lb.minimum_ring_size, lb.maximum_ring_size)
    if policy == "maglev":
        return Maglev(rng)
    return PeakEwma(rng) if protocol == "http" else LeastRequest(rng, 2)


# ---------------------------------------------------------------------- shared pieces


class _Weighted:
    """Weighted random choice over a fixed set: uniform when all weights are equal, else bisect."""

    __slots__ = ("cum", "eps", "total")

    def __init__(self, eps: tuple[Endpoint, ...]) -> None:
        self.eps = eps
        self.cum: list[int] | None = None
        self.total = 0
        if eps and any(ep.weight != eps[0].weight for ep in eps):
            acc = 0
            self.cum = []
            for ep in eps:
                acc += max(ep.weight, 1)
                self.cum.append(acc)
            self.total = acc

    def index(self, rng: random.Random) -> int:
        if self.cum is None:
            return int(rng.random() * len(self.eps))
        return bisect_right(self.cum, rng.random() * self.total)

    def choose(self, rng: random.Random, exclude: Collection[Endpoint]) -> Endpoint | None:
        eps = self.eps
        if not eps:
            return None
        if not exclude:
            return eps[self.index(rng)]
        for _ in range(_EXCLUDE_TRIES):
            ep = eps[self.index(rng)]
            if ep not in exclude:
                return ep
        rest = tuple(ep for ep in eps if ep not in exclude)
        return _Weighted(rest).choose(rng, ()) if rest else None


class _Base:
    """Keeps the endpoint set; subclasses rebuild what they precompute in `_rebuild`."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._eps: tuple[Endpoint, ...] = ()
        self._w = _Weighted(())

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        eps = tuple(endpoints)
        if eps == self._eps:
            return
        self._eps = eps
        self._w = _Weighted(eps)
        self._rebuild()

    def _rebuild(self) -> None:
        pass

    def started(self, ep: Endpoint) -> None:
        pass

    def finished(self, ep: Endpoint, latency_s: float, ok: bool, now: float) -> None:
        pass


# ---------------------------------------------------------------------- round robin, random


class RoundRobin(_Base):
    """Smooth weighted round robin: equal weights rotate from a random start (so workers do not all begin
    at the same endpoint); unequal weights use nginx's smooth algorithm (each pick adds every weight to its
    endpoint's credit, takes the highest and charges it the total) up to SWRR_MAX endpoints, and beyond
    that earliest-deadline-first (Envoy's; each endpoint due every 1/weight), O(log n) instead of O(n)."""

    def _rebuild(self) -> None:
        eps = self._eps
        n = len(eps)
        self._next = int(self._rng.random() * n) if n else 0
        self._weights = [max(ep.weight, 1) for ep in eps]
        self._credit = [0] * n
        self._heap: list[tuple[float, int, int]] = []
        self._mode = "rotate" if self._w.cum is None else "swrr" if n <= SWRR_MAX else "edf"
        if self._mode == "edf":
            # Random phases within the first period, so equal deadlines do not bunch endpoints together.
            self._heap = [(self._rng.random() / w, i, i) for i, w in enumerate(self._weights)]
            heapq.heapify(self._heap)
            self._seq = n

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        eps = self._eps
        if not eps:
            return None
        if self._mode == "rotate":
            for _ in range(len(eps)):
                ep = eps[self._next]
                self._next = (self._next + 1) % len(eps)
                if not exclude or ep not in exclude:
                    return ep
            return None
        if self._mode == "swrr":
            return self._swrr(exclude)
        return self._edf(exclude)

    def _swrr(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        credit, weights, eps = self._credit, self._weights, self._eps
        best = -1
        total = 0
        for i in range(len(eps)):
            if exclude and eps[i] in exclude:
                continue  # nginx: a peer that cannot be used now neither earns nor counts
            credit[i] += weights[i]
            total += weights[i]
            if best < 0 or credit[i] > credit[best]:
                best = i
        if best < 0:
            return None
        credit[best] -= total
        return eps[best]

    def _edf(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        held: list[tuple[float, int, int]] = []
        chosen: Endpoint | None = None
        while self._heap:
            item = heapq.heappop(self._heap)
            i = item[2]
            ep = self._eps[i]
            if exclude and ep in exclude:
                held.append(item)
                continue
            self._seq += 1
            heapq.heappush(self._heap, (item[0] + 1.0 / self._weights[i], self._seq, i))
            chosen = ep
            break
        for item in held:
            heapq.heappush(self._heap, item)
        return chosen


class RandomBalancer(_Base):
    """Weighted random."""

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        return self._w.choose(self._rng, exclude)


# ---------------------------------------------------------------------- least request, peak EWMA


class _Stat:
    __slots__ = ("ewma", "pending", "stamp")

    def __init__(self, now: float) -> None:
        self.pending = 0
        self.ewma = DEFAULT_RTT_S
        self.stamp = now


class _Stats(_Base):
    """Per-endpoint stats that survive updates for endpoints still present."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._stats: dict[Endpoint, _Stat] = {}
        self._now = 0.0  # the latest `now` seen: picks decay estimates to it (no clock reads here)

    def _rebuild(self) -> None:
        old = self._stats
        self._stats = {ep: old.get(ep) or _Stat(self._now) for ep in self._eps}

    def started(self, ep: Endpoint) -> None:
        st = self._stats.get(ep)
        if st is not None:
            st.pending += 1

    def finished(self, ep: Endpoint, latency_s: float, ok: bool, now: float) -> None:
        if now > self._now:
            self._now = now
        st = self._stats.get(ep)
        if st is None:
            return
        if st.pending > 0:
            st.pending -= 1
        self._sample(st, latency_s, ok, now)

    def _sample(self, st: _Stat, latency_s: float, ok: bool, now: float) -> None:
        pass

    def _two(self, exclude: Collection[Endpoint], count: int) -> list[Endpoint]:
        """Up to `count` distinct weighted random candidates not in `exclude` (fewer for a small set)."""
        eps = self._eps
        if not exclude and len(eps) <= 2:
            # The common small sets, without the draw-until-distinct loop (it drew 10 times for one endpoint):
            # all of them, the first drawn by weight as the loop would (ties go to the first candidate).
            if len(eps) < 2:
                return list(eps)
            i = self._w.index(self._rng)
            return [eps[i], eps[1 - i]] if count >= 2 else [eps[i]]
        out: list[Endpoint] = []
        for _ in range(count + _EXCLUDE_TRIES):
            ep = self._w.choose(self._rng, exclude)
            if ep is None:
                return out
            if ep not in out:
                out.append(ep)
                if len(out) == count:
                    return out
        # Unlucky draws (or a set no bigger than `count`): complete from a random start, still distinct.
        start = int(self._rng.random() * len(eps))
        for k in range(len(eps)):
            ep = eps[(start + k) % len(eps)]
            if ep not in out and (not exclude or ep not in exclude):
                out.append(ep)
                if len(out) == count:
                    break
        return out


class LeastRequest(_Stats):
    """Power of `choice_count` choices (weighted random candidates), the one with fewest active requests."""

    def __init__(self, rng: random.Random, choice_count: int = 2) -> None:
        super().__init__(rng)
        self._choices = min(max(choice_count, 1), 64)

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        eps = self._eps
        if len(eps) == 1:  # one candidate: nothing to compare
            ep = eps[0]
            return ep if not exclude or ep not in exclude else None
        best: Endpoint | None = None
        best_pending = -1
        for ep in self._two(exclude, self._choices):
            pending = self._stats[ep].pending
            if best is None or pending < best_pending:
                best, best_pending = ep, pending
        return best


class PeakEwma(_Stats):
    """P2C over peak-EWMA cost (linkerd2-proxy): cost = estimate x (pending + 1); a slower sample replaces
    the estimate at once, faster ones blend in with time constant EWMA_TAU_S; idle estimates decay."""

    def cost(self, ep: Endpoint) -> float:
        """The endpoint's current cost (seconds), decayed to the latest `now` seen."""
        st = self._stats[ep]
        return st.ewma * math.exp(-(self._now - st.stamp) / EWMA_TAU_S) * (st.pending + 1)

    def pick(self, hash_key: int | None = None, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        eps = self._eps
        if len(eps) == 1:  # one candidate: nothing to compare (the usual case of a small mesh)
            ep = eps[0]
            return ep if not exclude or ep not in exclude else None
        cands = self._two(exclude, 2)
        if len(cands) < 2:
            return cands[0] if cands else None
        a, b = cands
        return a if self.cost(a) <= self.cost(b) else b

    def _sample(self, st: _Stat, latency_s: float, ok: bool, now: float) -> None:
        sample = latency_s if latency_s == latency_s and latency_s > 0 else 0.0  # NaN, negative: 0
        if not ok:
            sample = max(sample, FAILURE_PENALTY_S)
        decay = math.exp(-max(now - st.stamp, 0.0) / EWMA_TAU_S)
        estimate = st.ewma * decay
        st.ewma = sample if sample > estimate else estimate + sample * (1.0 - decay)
        st.stamp = max(now, st.stamp)
