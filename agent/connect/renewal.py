"""When an agent renews a leaf certificate, pure (time and a random source in, a moment out).

Consul renews at a random point between 60 % and 90 % of a leaf's lifetime, so that a fleet issued together
does not come back together; a leaf already past 90 % (an agent that was down) is renewed at once. After a
root rotation every leaf is reissued, each at a random moment within ROOT_CHANGE_JITTER, so that the
leader is not asked for every certificate in the same second; never later than a quarter of the CA's leaf
TTL, since the CA prunes the old root 2 x LeafCertTTL after the rotation (root_change_window).
"""

from __future__ import annotations

import random

RENEW_FROM = 0.6
RENEW_BY = 0.9
ROOT_CHANGE_JITTER = 30.0  # seconds


def renew_at(valid_after: float, valid_before: float, now: float, rng: random.Random) -> float:
    """The moment (same clock as the arguments) to renew a leaf valid from `valid_after` to `valid_before`."""
    life = max(0.0, valid_before - valid_after)
    latest = valid_after + RENEW_BY * life
    if now >= latest:
        return now
    earliest = valid_after + RENEW_FROM * life
    return max(now, rng.uniform(earliest, latest))


def root_change_window(leaf_ttl: float) -> float:
    """Seconds over which leaves are reissued after a root change: ROOT_CHANGE_JITTER, at most leaf_ttl / 4.

    The CA prunes a rotated-out root 2 x LeafCertTTL after the rotation (Consul's rule); a leaf of that root
    still presented then is refused by every peer. Consul's 1 h minimum TTL keeps its 30 s window far inside
    that; a short test TTL (connect.test_min_leaf_ttl: 10 s prunes at 20-25 s) did not, and a quarter of the
    TTL leaves 1.75 x TTL for the signing itself."""
    if not leaf_ttl > 0.0:  # unknown (NaN, 0): Consul's window
        return ROOT_CHANGE_JITTER
    return min(ROOT_CHANGE_JITTER, leaf_ttl / 4.0)


def reissue_after_root_change(now: float, rng: random.Random, window: float = ROOT_CHANGE_JITTER) -> float:
    """The moment to reissue a leaf after the active root changed: spread over `window` seconds
    (ROOT_CHANGE_JITTER unless the leaf TTL is short: root_change_window)."""
    return now + rng.uniform(0.0, window)
