"""CheckManager: runs every local check on its interval, applies thresholds, expires TTLs, reaps services."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..config.types import CheckDefinition
from .runners import run_http, run_script, run_tcp
from .thresholds import CRITICAL, StatusThresholds

log = logging.getLogger("meshagent.checks")

MIN_INTERVAL = 1.0
# Consul sweeps every 30 s; a 1 s sweep costs nothing here and keeps reaping close to the configured time.
REAP_SWEEP = 1.0

StatusCallback = Callable[[str, str, str], None]
ServiceCallback = Callable[[str], None]


class UnknownCheck(KeyError):
    """No TTL check with that id."""


@dataclass(slots=True)
class _Running:
    defn: CheckDefinition
    status: str
    output: str = ""
    service_id: str = ""
    thresholds: StatusThresholds = field(default_factory=StatusThresholds)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ttl_expires_at: float | None = None
    ttl_updated: trio.Event | None = None
    critical_since: float | None = None
    reaped: bool = False


class CheckManager:
    """Owns one task per check inside its own nursery; removing a check cancels its task."""

    def __init__(self, on_status: StatusCallback, on_deregister_service: ServiceCallback) -> None:
        self._on_status = on_status
        self._on_deregister_service = on_deregister_service
        self._checks: dict[str, _Running] = {}
        self._nursery: trio.Nursery | None = None
        self._pending: list[str] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run checks until cancelled; checks added before this starts begin now."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for check_id in self._pending:
                if check_id in self._checks:
                    self._spawn(check_id)
            self._pending.clear()
            nursery.start_soon(self._reaper)
            task_status.started()

    def add(self, check_id: str, defn: CheckDefinition, initial_status: str, service_id: str = "",
            ttl_expires_at: float | None = None) -> None:
        """Start (or replace) a check; a TTL check may carry over an expiry from before a restart."""
        old = self._checks.pop(check_id, None)
        if old is not None:
            old.scope.cancel()
        thresholds = StatusThresholds(defn.success_before_passing, defn.failures_before_warning,
                                      defn.failures_before_critical)
        running = _Running(defn=defn, status=initial_status, service_id=service_id, thresholds=thresholds,
                           output=old.output if old else "")
        if defn.type == "ttl":
            running.ttl_updated = trio.Event()
            running.ttl_expires_at = ttl_expires_at
        self._checks[check_id] = running
        self._note_critical(running)
        if self._nursery is None:
            self._pending.append(check_id)
        else:
            self._spawn(check_id)

    def remove(self, check_id: str) -> None:
        """Stop a check (no-op when unknown)."""
        running = self._checks.pop(check_id, None)
        if running is not None:
            running.scope.cancel()

    def status(self, check_id: str) -> tuple[str, str]:
        """(status, output) of a check."""
        running = self._checks[check_id]
        return running.status, running.output

    def ttl_expires_at(self, check_id: str) -> float | None:
        """When a TTL check expires (trio clock), or None."""
        running = self._checks.get(check_id)
        return running.ttl_expires_at if running else None

    def report(self, check_id: str, status: str, output: str) -> None:
        """Set the status of a check driven from outside (an alias check: local_state.py computes it)."""
        running = self._checks.get(check_id)
        if running is not None:
            self._report(check_id, running, status, output)

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        """Report a TTL check's status; restarts its TTL."""
        running = self._checks.get(check_id)
        if running is None or running.defn.type != "ttl" or running.ttl_updated is None:
            raise UnknownCheck(f"{check_id!r} is not a TTL check")
        running.ttl_expires_at = trio.current_time() + (running.defn.ttl or 0.0)
        self._report(check_id, running, status, output)
        running.ttl_updated.set()
        running.ttl_updated = trio.Event()

    # ------------------------------------------------------------------ tasks

    def _spawn(self, check_id: str) -> None:
        assert self._nursery is not None
        running = self._checks[check_id]
        if running.defn.type == "alias":
            return  # no task: its status follows the aliased service's checks (report)
        if running.defn.type == "ttl":
            self._nursery.start_soon(self._ttl_loop, check_id, running)
        else:
            runner = {"http": run_http, "tcp": run_tcp, "script": run_script}.get(running.defn.type)
            if runner is None:
                log.error("check %s has no runnable type", check_id)
                return
            self._nursery.start_soon(self._interval_loop, check_id, running, runner)

    async def _interval_loop(self, check_id: str, running: _Running,
                             runner: Callable[[CheckDefinition], Awaitable[tuple[str, str]]]) -> None:
        interval = max(MIN_INTERVAL, running.defn.interval or MIN_INTERVAL)
        with running.scope:
            # Stagger the first run so a reload does not fire every check at once (Consul does the same).
            await trio.sleep(random.uniform(0, min(interval, 1.0)))
            while True:
                started = trio.current_time()
                try:
                    status, output = await runner(running.defn)
                except Exception as exc:  # a runner bug must not kill the other checks
                    log.exception("check %s failed to run", check_id)
                    status, output = CRITICAL, f"check failed to run: {exc}"
                reported = running.thresholds.result(status)
                if reported is not None:
                    self._report(check_id, running, reported, output)
                await trio.sleep_until(started + interval)

    async def _ttl_loop(self, check_id: str, running: _Running) -> None:
        with running.scope:
            if running.ttl_expires_at is None:
                running.ttl_expires_at = trio.current_time() + (running.defn.ttl or 0.0)
            while True:
                event = running.ttl_updated
                assert event is not None
                with trio.move_on_at(running.ttl_expires_at):
                    await event.wait()
                    continue
                if running.status != CRITICAL or running.output != "TTL expired":
                    self._report(check_id, running, CRITICAL, "TTL expired")
                await event.wait()

    def _report(self, check_id: str, running: _Running, status: str, output: str) -> None:
        if (status, output) == (running.status, running.output):
            return
        running.status, running.output = status, output
        self._note_critical(running)
        self._on_status(check_id, status, output)

    def _note_critical(self, running: _Running) -> None:
        if running.status == CRITICAL:
            if running.critical_since is None:
                running.critical_since = trio.current_time() if self._nursery is not None else None
        else:
            running.critical_since = None
            running.reaped = False

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(REAP_SWEEP)
            now = trio.current_time()
            for running in list(self._checks.values()):
                after = running.defn.deregister_critical_service_after
                if running.status == CRITICAL and running.critical_since is None:
                    running.critical_since = now  # critical since before the manager ran
                if (after and running.service_id and not running.reaped and running.critical_since is not None
                        and now - running.critical_since >= after):
                    running.reaped = True
                    self._on_deregister_service(running.service_id)
