"""Consul's lock (leader election) and semaphore algorithms over `lock_kv.LockAPI`, as its api package does them:
a session renewed at TTL/2, `PREFIX/.lock` acquired with the session (n = 1), or contender keys
`PREFIX/<session>` plus a CAS'd `PREFIX/.lock` holders document (n > 1); blocking reads wait for changes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from .lock_kv import AgentUnavailable, LockAPI, LockError, Pair

LOCK_FLAG = 0x2DDCCBC058A50C18  # Consul's LockFlagValue: marks a key as a lock's
SEMAPHORE_FLAG = 0xE0F69A2BAA414DE0  # Consul's SemaphoreFlagValue
LOCK_KEY = ".lock"
SESSION_TTL_S = 15.0
LOCK_RETRY_S = 5.0  # Consul's DefaultLockRetryTime: refused with no holder means lock-delay; retry after this
MONITOR_RETRY_S = 1.0  # the CLI's pause between monitor retries after a 5xx
RENEW_RETRY_S = 1.0  # after a failed renew, try again this soon (until a whole TTL has passed without one)
MAX_LIMIT = 1024  # -n: holders of one semaphore
MAX_CAS_TRIES = 1000  # leaving the holders document: a bound on races (or an agent that always says false)


class Session:
    """A session the lock created: renewed every TTL/2 by a thread; `stop()` ends renewal and destroys it."""

    def __init__(self, api: LockAPI, name: str, ttl_s: float = SESSION_TTL_S, lock_delay: str = "15s") -> None:
        self.api, self.ttl_s = api, ttl_s
        self.id = api.session_create(name, f"{ttl_s:g}s", lock_delay)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="session-renew", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        last_ok = time.monotonic()
        wait = self.ttl_s / 2
        while not self._done.wait(wait):
            try:
                if not self.api.session_renew(self.id):
                    return  # gone (404): the monitor sees the lock lost
                last_ok, wait = time.monotonic(), self.ttl_s / 2
            except LockError:
                if time.monotonic() - last_ok > self.ttl_s:
                    return  # a whole TTL without a renewal: the servers have expired it or soon will
                wait = RENEW_RETRY_S

    def stop(self) -> None:
        """End renewal and destroy the session (best effort: a dead agent cannot be told)."""
        self._done.set()
        try:
            self.api.session_destroy(self.id)
        except LockError:
            pass


class _Held:
    """Common parts: the session, stop checks, the monitor thread."""

    def __init__(self, api: LockAPI, session: Session, monitor_retries: int) -> None:
        self.api, self.session, self.monitor_retries = api, session, monitor_retries
        self.held = False
        self.lost = threading.Event()

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def _wait_for(self, deadline: float | None) -> float | None:
        """The blocking wait for the next read: the default, or what is left before the deadline."""
        left = self._remaining(deadline)
        return None if left is None or left > 15.0 else max(left, 0.001)

    def _start_monitor(self, still_held: Callable[[int], tuple[bool, int]]) -> None:
        def run() -> None:
            index, retries = 0, self.monitor_retries
            while self.held and not self.lost.is_set():
                try:
                    ok, new_index = still_held(index)
                except AgentUnavailable:
                    if retries <= 0:
                        break
                    retries -= 1
                    time.sleep(MONITOR_RETRY_S)  # Consul's pause between monitor retries, not a test wait
                    continue
                except LockError:
                    break
                if not ok:
                    break
                retries = self.monitor_retries
                index = 0 if new_index < index else new_index
            self.lost.set()

        threading.Thread(target=run, name="lock-monitor", daemon=True).start()


class Lock(_Held):
    """One holder at `PREFIX/.lock`, acquired with the session (Consul's leader election)."""

    def __init__(self, api: LockAPI, session: Session, prefix: str, monitor_retries: int = 3) -> None:
        super().__init__(api, session, monitor_retries)
        self.key = f"{prefix}/{LOCK_KEY}"

    def acquire(self, deadline: float | None) -> bool:
        """Block until held (True) or the deadline passes (False); raises LockError on a conflict."""
        index = 0
        while True:
            left = self._remaining(deadline)
            if left is not None and left <= 0:
                return False
            pair, new_index = self.api.get(self.key, index, self._wait_for(deadline))
            if pair is not None and pair.flags != LOCK_FLAG:
                raise LockError("Existing key does not match lock use")
            if pair is not None and pair.session == self.session.id:
                break
            if pair is not None and pair.session:
                index = new_index  # held by another: wait for the key to change
                continue
            if self.api.acquire(self.key, self.session.id, LOCK_FLAG):
                break
            # Refused: held again already (wait on it), or lock-delay after an invalidation (a timed retry).
            pair, new_index = self.api.get(self.key)
            if pair is not None and pair.session:
                index = new_index
                continue
            left = self._remaining(deadline)
            time.sleep(LOCK_RETRY_S if left is None else max(0.0, min(LOCK_RETRY_S, left)))
            index = 0
        self.held = True
        self._start_monitor(self._check)
        return True

    def _check(self, index: int) -> tuple[bool, int]:
        pair, new_index = self.api.get(self.key, index)
        return pair is not None and pair.session == self.session.id, new_index

    def release(self) -> None:
        """Give the key back (Session cleared, no lock-delay for the next holder)."""
        if self.held:
            self.held = False
            self.api.release(self.key, self.session.id, LOCK_FLAG)

    def destroy(self) -> bool:
        """Delete the lock key if no one holds it: False when it is in use (left alone)."""
        pair, _ = self.api.get(self.key)
        if pair is None:
            return True
        if pair.flags != LOCK_FLAG:
            raise LockError("Existing key does not match lock use")
        if pair.session:
            return False
        return self.api.delete(self.key, pair.modify_index)


class Semaphore(_Held):
    """Up to `limit` holders: contender keys `PREFIX/<session>` and a holders document at `PREFIX/.lock`."""

    def __init__(self, api: LockAPI, session: Session, prefix: str, limit: int, monitor_retries: int = 3) -> None:
        super().__init__(api, session, monitor_retries)
        if not 1 <= limit <= MAX_LIMIT:
            raise LockError(f"-n must be between 1 and {MAX_LIMIT}")
        self.prefix, self.limit = prefix, limit
        self.key = f"{prefix}/{LOCK_KEY}"
        self.contender = f"{prefix}/{session.id}"

    def _find(self, pairs: list[Pair]) -> Pair:
        for pair in pairs:
            if pair.key == self.key:
                if pair.flags != SEMAPHORE_FLAG:
                    raise LockError("Existing key does not match semaphore use")
                return pair
        return Pair(self.key, b"", SEMAPHORE_FLAG, "", 0)

    def _decode(self, pair: Pair) -> tuple[int, dict[str, bool]]:
        if not pair.value:
            return self.limit, {}
        try:
            doc = json.loads(pair.value)
        except ValueError:
            raise LockError(f"failed to decode the semaphore at {self.key}: not JSON") from None
        limit, holders = (doc.get("Limit"), doc.get("Holders")) if isinstance(doc, dict) else (None, None)
        if not isinstance(limit, int) or isinstance(limit, bool) or not isinstance(holders, dict | None):
            raise LockError(f"failed to decode the semaphore at {self.key}: no Limit/Holders")
        return limit, {str(k): True for k in (holders or {})}

    def _encode(self, holders: dict[str, bool]) -> bytes:
        return json.dumps({"Limit": self.limit, "Holders": holders}).encode()

    @staticmethod
    def _prune(holders: dict[str, bool], pairs: list[Pair]) -> dict[str, bool]:
        # A holder counts while some key under the prefix is held by its session (its contender key).
        alive = {pair.session for pair in pairs if pair.session}
        return {sid: True for sid in holders if sid in alive}

    def acquire(self, deadline: float | None) -> bool:
        """Block until one of the `limit` slots is ours (True) or the deadline passes (False)."""
        if not self.api.acquire(self.contender, self.session.id, SEMAPHORE_FLAG):
            raise LockError("failed to make contender entry")
        try:
            got = self._acquire_slot(deadline)
        except BaseException:
            self._drop_contender()
            raise
        if not got:
            self._drop_contender()
        return got

    def _drop_contender(self) -> None:
        try:
            self.api.delete(self.contender)
        except LockError:
            pass

    def _acquire_slot(self, deadline: float | None) -> bool:
        index = 0
        while True:
            left = self._remaining(deadline)
            if left is not None and left <= 0:
                return False
            pairs, new_index = self.api.list(self.prefix, index, self._wait_for(deadline))
            lock_pair = self._find(pairs)
            limit, holders = self._decode(lock_pair)
            if limit != self.limit:
                raise LockError(f"semaphore limit conflict (lock: {limit}, local: {self.limit})")
            holders = self._prune(holders, pairs)
            if len(holders) >= limit:
                index = new_index  # full: wait for a change under the prefix
                continue
            holders[self.session.id] = True
            if self.api.cas(self.key, self._encode(holders), SEMAPHORE_FLAG, lock_pair.modify_index):
                break
            index = 0  # lost a race with another contender: read again at once
        self.held = True
        self._start_monitor(self._check)
        return True

    def _check(self, index: int) -> tuple[bool, int]:
        pairs, new_index = self.api.list(self.prefix, index)
        _, holders = self._decode(self._find(pairs))
        return self.session.id in self._prune(holders, pairs), new_index

    def release(self) -> None:
        """Leave the holders document (CAS, retried on a race), then delete the contender key."""
        if not self.held:
            return
        self.held = False
        for _ in range(MAX_CAS_TRIES):  # each failed CAS means another contender wrote in between
            pair, _ = self.api.get(self.key)
            pair = pair or Pair(self.key, b"", SEMAPHORE_FLAG, "", 0)
            _, holders = self._decode(pair)
            if self.session.id not in holders:
                break
            del holders[self.session.id]
            if self.api.cas(self.key, self._encode(holders), SEMAPHORE_FLAG, pair.modify_index):
                break
        else:
            raise LockError(f"could not leave the holders of {self.key} after {MAX_CAS_TRIES} tries")
        self.api.delete(self.contender)

    def destroy(self) -> bool:
        """Delete the holders document if no live holder is left: False when it is in use."""
        pairs, _ = self.api.list(self.prefix)
        lock_pair = self._find(pairs)
        if lock_pair.modify_index == 0:
            return True
        _, holders = self._decode(lock_pair)
        if self._prune(holders, pairs):
            return False
        return self.api.delete(self.key, lock_pair.modify_index)
