"""An agent's leaf certificate for one local service, and when to (re)issue it, pure (time and randomness in).

The runtime (leaf_cache.py) keeps one LeafState per service and asks this module what to do: issue now,
sleep until a moment, or forget the service. A leaf is renewed at a random point in 60-90 % of its life
(renewal.py), reissued within 30 s of a root change when it was signed by another root (sooner with a short
TTL: before the CA prunes that root), retried with a jittered exponential backoff while no server signs (the
current leaf keeps being served), and forgotten once nobody asked for it for IDLE_TTL while the service is
not registered on this agent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .renewal import ROOT_CHANGE_JITTER, reissue_after_root_change, renew_at

IDLE_TTL = 72 * 3600.0  # Consul keeps a leaf fresh for 72 h after its last request
RETRY_MIN = 1.0  # seconds: the first retry after a failed signing
RETRY_MAX = 60.0  # seconds: the backoff's cap
MIN_REISSUE = 1.0  # seconds between two leaves of one service at the least (a CA handing out short leaves)


@dataclass(frozen=True, slots=True)
class LeafRecord:
    """A signed leaf as the agent serves it: the certificate, its chain, its key, and its index."""

    service: str
    service_uri: str
    cert_pem: str  # the leaf alone; intermediate_pems go after it in Consul's CertPEM
    intermediate_pems: tuple[str, ...]
    private_key_pem: str = field(repr=False)  # never printed, logged or sent anywhere but the local API
    serial_number: int = 0
    valid_after: float = 0.0  # epoch seconds
    valid_before: float = 0.0
    root_id: str = ""
    index: int = 0  # strictly increasing per service: blocking queries wait on it
    issued_at: float = 0.0  # when this agent received it (epoch seconds)


@dataclass(slots=True)
class LeafState:
    """One service's leaf and schedule; changed only through this module's functions."""

    service: str
    last_requested: float
    leaf: LeafRecord | None = None
    renew_at: float = 0.0  # when to issue the next leaf (0: at once: there is none yet)
    retry_at: float = 0.0  # after a failure: not before this moment
    failures: int = 0
    issued: int = 0  # leaves received, for tests and metrics


def new_state(service: str, now: float) -> LeafState:
    """A service asked for the first time: no leaf, due at once."""
    return LeafState(service=service, last_requested=now)


def requested(state: LeafState, now: float) -> None:
    """Someone asked for this service's leaf: it stays fresh for another IDLE_TTL."""
    state.last_requested = max(state.last_requested, now)


def due(state: LeafState, now: float) -> bool:
    """Whether a leaf should be requested now."""
    return now >= max(state.renew_at, state.retry_at)


def idle(state: LeafState, now: float, registered: bool, idle_ttl: float = IDLE_TTL) -> bool:
    """Whether to forget the service: not registered here, and not asked for within idle_ttl."""
    return not registered and now - state.last_requested >= idle_ttl


def next_wake(state: LeafState, now: float, registered: bool, idle_ttl: float = IDLE_TTL) -> float:
    """The next moment something is to be done: issue, retry, or check idleness."""
    act = max(state.renew_at, state.retry_at)
    return act if registered else min(act, state.last_requested + idle_ttl)


def signed(state: LeafState, leaf: LeafRecord, active_root_id: str | None, now: float,
           rng: random.Random, window: float = ROOT_CHANGE_JITTER) -> LeafRecord:
    """A new leaf arrived: keep it (its index made strictly greater than the last one), schedule renewal.

    The lifetime counts from receipt, not ValidAfter: the CA backdates leaves (clock skew), which for a
    short test TTL would put the whole window in the past and renew at once, again and again; for a 72 h
    leaf this moves the window by well under a minute. A leaf signed by a root that is no longer active (a
    rotation raced the signing) is reissued as after a root change."""
    index = leaf.index if state.leaf is None else max(leaf.index, state.leaf.index + 1)
    start = min(max(leaf.valid_after, now), leaf.valid_before)
    kept = LeafRecord(leaf.service, leaf.service_uri, leaf.cert_pem, leaf.intermediate_pems,
                      leaf.private_key_pem, leaf.serial_number, leaf.valid_after, leaf.valid_before,
                      leaf.root_id, max(index, 1), now)
    state.leaf = kept
    state.failures = 0
    state.retry_at = 0.0
    state.issued += 1
    state.renew_at = max(renew_at(start, leaf.valid_before, now, rng), now + MIN_REISSUE)
    if active_root_id is not None and leaf.root_id and leaf.root_id != active_root_id:
        state.renew_at = min(state.renew_at, reissue_after_root_change(now, rng, window))
    return kept


def failed(state: LeafState, now: float, rng: random.Random) -> float:
    """A signing failed: the current leaf (if any) stays; retry after a jittered exponential backoff.
    Returns the retry moment."""
    state.failures += 1
    delay = min(RETRY_MAX, RETRY_MIN * 2.0 ** min(state.failures - 1, 16))
    state.retry_at = now + delay * (0.5 + 0.5 * rng.random())
    return state.retry_at


def root_changed(state: LeafState, active_root_id: str | None, now: float, rng: random.Random,
                 window: float = ROOT_CHANGE_JITTER) -> bool:
    """The active root changed: a leaf signed by another root is reissued within `window` seconds
    (renewal.root_change_window: before the CA prunes the old root). True when the schedule moved."""
    leaf = state.leaf
    if leaf is None or active_root_id is None or leaf.root_id == active_root_id:
        return False
    at = reissue_after_root_change(now, rng, window)
    if at >= state.renew_at:
        return False
    state.renew_at = at
    return True
