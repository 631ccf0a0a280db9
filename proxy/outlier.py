"""Passive health (Consul's `PassiveHealthCheck`, Envoy's consecutive-5xx outlier detection), pure.

A host with `max_failures` consecutive failures (5xx or gateway failures) is ejected, with probability
`enforcing_consecutive_5xx`%, for `base_ejection_time x times ejected` (capped at `max_ejection_time`). At
most `max_ejection_percent` of the hosts are ejected at once, but always at least one may be, and never the
last one not ejected. A success resets the consecutive count; the times-ejected count drops by one for each
`interval` the host spends not ejected (Envoy decrements it on every interval tick), computed lazily from
`now`, so no timer is needed: the caller asks `next_deadline()` when to call `available()` again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from meshagent.proxy.snapshot import Endpoint, PassiveHealth


class _Host:
    __slots__ = ("consecutive", "ejected_until", "healthy_since", "times")

    def __init__(self) -> None:
        self.consecutive = 0
        self.times = 0  # ejections not yet decayed
        self.ejected_until = 0.0  # > now while ejected
        self.healthy_since = 0.0  # decay of `times` counts whole intervals from here


class OutlierDetector:
    """Ejections of one upstream's hosts; `record` every outcome, route only to `available` hosts."""

    def __init__(self, cfg: PassiveHealth, rng: random.Random) -> None:
        self.cfg = cfg
        self._rng = rng
        self._max_failures = cfg.max_failures  # ≤ 0: never eject (Envoy's consecutive_5xx of 0)
        self._interval = cfg.interval_s if cfg.interval_s > 0 else 10.0
        self._base = max(cfg.base_ejection_time_s, 0.0)
        self._max_time = max(cfg.max_ejection_time_s, self._base)
        self._percent = min(max(cfg.max_ejection_percent, 0), 100)
        self._enforcing = min(max(cfg.enforcing_consecutive_5xx, 0), 100)
        self._hosts: dict[Endpoint, _Host] = {}
        self._known = 0  # how many hosts the last `available` call was given
        self._ejected: dict[Endpoint, float] = {}  # ejected hosts → end of ejection
        self._last: Sequence[Endpoint] | None = None  # the sequence the last `available` call was given

    def record(self, ep: Endpoint, ok: bool, now: float) -> bool:
        """Count one outcome for `ep`; True when this failure ejected it (refresh `available` then)."""
        host = self._hosts.get(ep)
        if host is None:
            if ok:
                return False  # nothing to reset; do not grow the table for healthy traffic
            host = self._hosts[ep] = _Host()
            host.healthy_since = now
        if ok:
            host.consecutive = 0
            return False
        if host.ejected_until > now or self._max_failures <= 0:
            return False  # a late answer from a host already out
        host.consecutive += 1
        if host.consecutive < self._max_failures:
            return False
        host.consecutive = 0  # the next run of failures gets its own chance
        if self._enforcing < 100 and self._rng.random() * 100 >= self._enforcing:
            return False
        if not self._may_eject(now):
            return False
        self._decay(host, now)
        host.times += 1
        host.ejected_until = now + min(self._base * host.times, self._max_time)
        self._ejected[ep] = host.ejected_until
        return True

    def _may_eject(self, now: float) -> bool:
        self._expire(now)
        total = max(self._known, len(self._hosts))
        ejected = len(self._ejected)
        if ejected + 1 >= total:  # never the last host not ejected
            return False
        cap = max(1, total * self._percent // 100)
        return ejected < cap

    def _decay(self, host: _Host, now: float) -> None:
        if host.times and now > host.healthy_since:
            steps = int((now - host.healthy_since) // self._interval)
            if steps:
                host.times = max(0, host.times - steps)
                host.healthy_since += steps * self._interval

    def _expire(self, now: float) -> None:
        if not self._ejected:
            return
        for ep, until in list(self._ejected.items()):
            if until <= now:
                del self._ejected[ep]
                host = self._hosts.get(ep)
                if host is not None:
                    host.healthy_since = until  # decay counts from the end of the ejection

    def available(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """The hosts of `endpoints` not ejected at `now` (all of them if every one is ejected, as Envoy's
        panic mode does); state of hosts no longer in `endpoints` is dropped."""
        self._known = len(endpoints)
        self._expire(now)
        if endpoints is not self._last:  # the set changed (or a new sequence): forget hosts that left
            self._last = endpoints
            present = set(endpoints)
            for ep in [e for e in self._hosts if e not in present]:
                del self._hosts[ep]
            for ep in [e for e in self._ejected if e not in present]:
                del self._ejected[ep]
        if not self._ejected:
            return list(endpoints)
        out = [ep for ep in endpoints if ep not in self._ejected]
        return out if out else list(endpoints)

    def next_deadline(self) -> float | None:
        """When the earliest ejection ends (call `available` then), or None when no host is ejected."""
        return min(self._ejected.values()) if self._ejected else None

    def ejected(self, now: float) -> list[Endpoint]:
        """The hosts ejected at `now`."""
        self._expire(now)
        return list(self._ejected)
