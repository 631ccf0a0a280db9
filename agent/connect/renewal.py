"""When an agent renews a leaf certificate, pure (time and a random source in, a moment out).

Consul renews at a random point between 60 % and 90 % of a leaf's lifetime, so that a fleet issued together
does not come back together; a leaf already past 90 % (an agent that was down) is renewed at once. After a
root rotation every leaf is reissued, each at a random moment within ROOT_CHANGE_JITTER, so that the
leader is not asked for every certificate in the same second.
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


def reissue_after_root_change(now: float, rng: random.Random) -> float:
    """The moment to reissue a leaf after the active root changed: spread over ROOT_CHANGE_JITTER seconds."""
    return now + rng.uniform(0.0, ROOT_CHANGE_JITTER)
