"""ProxySupervisor (trio, in the agent): runs one sidecar's worker processes and feeds them snapshots.

Each worker gets a socketpair (the control protocol of control.py), the latest snapshot when it starts and
on every `update`, and is restarted with backoff when it dies (0.1 s doubling to 5 s, reset after a minute
alive). `metrics()` asks every worker and merges their answers with the last totals of dead workers, so
counters never go backwards. When the supervisor is cancelled its workers are terminated (then killed after
2 s), by PID, and only its own.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from .control import ControlError, FrameDecoder, Message, encode
from .metrics import counters_only, merge, render_prometheus
from .metrics_http import serve_trio
from .snapshot import ProxySnapshot

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
RESET_AFTER_S = 60.0  # alive this long: the next death starts the backoff over
TERMINATE_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
EXIT_GRACE_S = 1.0  # a worker that closed its channel gets this long to exit by itself
METRICS_TIMEOUT_S = 1.5  # below the agent runner's limit, so a busy worker's last answer still reaches it
RENDER_INTERVAL_S = 0.25  # renders of the metrics listener start at most this often, however often it is scraped
SCRAPE_INTERVAL_S = 10.0  # keeps each worker's last totals fresh, so a death loses at most this much
MAX_ERRORS = 32  # apply errors kept per worker
MAX_ERROR_LEN = 512
READ_SIZE = 256 * 1024

log = logging.getLogger("meshagent.proxy.supervisor")
T = TypeVar("T")


@dataclass(eq=False)
class _Waiter:
    """One outstanding metrics request to one worker, matched to its answer by the id the worker echoes."""

    done: trio.Event = field(default_factory=trio.Event)
    value: dict[str, Any] | None = None


@dataclass(eq=False)
class _Slot:
    """One worker position: the current process, if any, and what it last said."""

    index: int
    generation: int = 0  # bumped per process started in this slot
    pid: int | None = None
    alive: bool = False
    retired: bool = False
    restarts: int = 0
    started_at: float = 0.0
    applied_version: int | None = None
    errors: list[str] = field(default_factory=list)
    last_exit: str | None = None
    last_metrics: dict[str, Any] | None = None
    stream: trio.SocketStream | None = None
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    wake: trio.Event = field(default_factory=trio.Event)
    waiters: dict[int, _Waiter] = field(default_factory=dict)  # by request id


# Workers run below the agent's priority: under a saturating proxy load on a small VM, the agent's gossip, Raft
# and DNS must still be scheduled first (a 2-core test host: DNS p99 39 ms with the workers at the agent's
# priority, 16 ms at +10). The data plane still takes every cycle the control plane leaves.
WORKER_NICE = 5


class ProxySupervisor:
    """The worker processes of one proxy (`name`: its proxy ID, for logs)."""

    def __init__(self, name: str, python: str = sys.executable, *, worker_args: Sequence[str] = (),
                 nice: int = WORKER_NICE) -> None:
        self.name = name
        self._python = python
        self._worker_args = (*worker_args, "--nice", str(nice))  # (tests add a stand-in data plane)
        self._snapshot: ProxySnapshot | None = None
        self._frame: bytes | None = None  # the snapshot message, encoded once for every worker
        self._frame_error: str | None = None
        self._slots: list[_Slot] = []
        self._next_index = 0
        self._dead_totals: dict[str, Any] = {}
        self._changed = trio.Event()
        self.restarts = 0
        self.metrics_address: tuple[str, int] | None = None
        self.metrics_error: str | None = None
        self._metrics_bind = ""
        self._metrics_scope: trio.CancelScope | None = None
        self._request_ids = itertools.count(1)
        self._renders = SharedRefresh(self._render_now, RENDER_INTERVAL_S)

    # ------------------------------------------------------------------ the API

    def update(self, snapshot: ProxySnapshot) -> None:
        """Make `snapshot` current (latest wins) and send it to every worker; starts or retires workers to
        match `snapshot.workers`. Call from the trio thread."""
        try:
            frame = encode({"t": "snapshot", "s": snapshot.to_wire()})
        except ControlError as exc:
            self._frame_error = f"snapshot version {snapshot.version} not sent: {exc}"
            log.error("proxy %s: %s", self.name, self._frame_error)
            return
        self._snapshot, self._frame, self._frame_error = snapshot, frame, None
        for slot in self._slots:
            slot.wake.set()
        self._changed.set()

    async def metrics(self) -> dict[str, Any]:
        """The merged metrics wire map of every live worker plus the last totals of dead ones."""
        answers: list[tuple[_Slot, int, dict[str, Any]]] = []
        async with trio.open_nursery() as nursery:
            for slot in self._slots:
                if slot.alive and slot.stream is not None:
                    nursery.start_soon(self._ask_metrics, slot, answers)
        # Only answers of processes still alive and not yet buried: a buried one is in _dead_totals already.
        live = [wire for slot, gen, wire in answers if slot.alive and slot.generation == gen]
        return merge([self._dead_totals, *live])

    async def render(self) -> str:
        """Prometheus text of this proxy (what its metrics listener serves). Concurrent scrapes share one
        render, and renders start at most every RENDER_INTERVAL_S, so scrapes cannot load the agent's loop;
        each answer still counts everything up to the moment its scrape arrived."""
        return await self._renders.get()

    async def _render_now(self) -> str:
        return render_prometheus(await self.metrics())

    def status(self) -> dict[str, Any]:
        """Workers, restarts and last errors, for the agent's HTTP API."""
        snap = self._snapshot
        return {
            "name": self.name,
            "version": snap.version if snap is not None else None,
            "restarts": self.restarts,
            "snapshot_error": self._frame_error,
            "metrics_bind": self._metrics_bind,
            "metrics_address": list(self.metrics_address) if self.metrics_address else None,
            "metrics_error": self.metrics_error,
            "workers": [{"index": s.index, "pid": s.pid, "alive": s.alive, "restarts": s.restarts,
                         "applied_version": s.applied_version, "errors": list(s.errors),
                         "last_exit": s.last_exit} for s in self._slots if not s.retired or s.alive],
        }

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes running now."""
        return [s.pid for s in self._slots if s.alive and s.pid is not None]

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run workers for the current snapshot (none until the first `update`) until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scrape_loop)
            task_status.started()
            while True:
                self._reconcile(nursery)
                await self._changed.wait()
                self._changed = trio.Event()

    # ------------------------------------------------------------------ workers

    def _reconcile(self, nursery: trio.Nursery) -> None:
        snap = self._snapshot
        if snap is None:
            return
        active = [s for s in self._slots if not s.retired]
        for slot in active[snap.workers:]:
            slot.retired = True
            slot.wake.set()
        for _ in range(len(active), snap.workers):
            slot = _Slot(index=self._next_index)
            self._next_index += 1
            self._slots.append(slot)
            nursery.start_soon(self._slot_loop, slot)
        if snap.metrics_bind != self._metrics_bind:
            if self._metrics_scope is not None:
                self._metrics_scope.cancel()
                self._metrics_scope = None
            self._metrics_bind = snap.metrics_bind
            self.metrics_address = None
            self.metrics_error = None
            if snap.metrics_bind:
                self._metrics_scope = trio.CancelScope()
                nursery.start_soon(self._serve_metrics, snap.metrics_bind, self._metrics_scope)

    async def _slot_loop(self, slot: _Slot) -> None:
        backoff = BACKOFF_MIN_S
        while not slot.retired:
            started = trio.current_time()
            reason = await self._run_worker(slot)
            if slot.retired:
                log.info("proxy %s: worker %d retired (%s)", self.name, slot.index, reason)
                break
            backoff = next_backoff(backoff, trio.current_time() - started)
            slot.last_exit = reason
            slot.restarts += 1
            self.restarts += 1
            log.warning("proxy %s: worker %d died (%s); restarting in %.1fs", self.name, slot.index, reason,
                        backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)  # for the next death, unless this one lives long
        self._slots.remove(slot)  # retired: its totals are in _dead_totals

    async def _run_worker(self, slot: _Slot) -> str:
        """Run one worker process in `slot` until it dies or the slot is retired; why it ended."""
        parent, child = socket.socketpair()
        try:
            proc = await trio.lowlevel.open_process(
                [self._python, "-m", "meshagent.proxy.worker", "--control-fd", str(child.fileno()),
                 *self._worker_args],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            return f"could not start: {exc}"
        finally:
            child.close()
        slot.generation += 1
        slot.pid, slot.alive, slot.started_at = proc.pid, True, trio.current_time()
        slot.applied_version, slot.errors, slot.last_metrics = None, [], None
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        slot.stream = stream
        reason = "supervisor stopped"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, slot, stream)
                reason = await self._read(slot, stream)
                nursery.cancel_scope.cancel()
        finally:
            self._bury(slot)  # no await before this: metrics() must never count a worker twice
            with trio.CancelScope(shield=True):
                code = await self._reap(proc, EXIT_GRACE_S if reason != "supervisor stopped" else 0.0)
                await stream.aclose()
        return f"{reason}; {_describe(code)}"

    def _bury(self, slot: _Slot) -> None:
        """The process in `slot` is gone: keep its totals, wake whoever waits on it."""
        slot.alive, slot.stream = False, None
        if slot.last_metrics is not None:
            self._dead_totals = merge([self._dead_totals, counters_only(slot.last_metrics)])
            slot.last_metrics = None
        for waiter in slot.waiters.values():
            waiter.done.set()
        slot.waiters.clear()

    async def _reap(self, proc: trio.Process, grace: float) -> int | None:
        """Wait `grace` for `proc` to exit, then SIGTERM, then SIGKILL after TERMINATE_GRACE_S."""
        if grace:
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(TERMINATE_GRACE_S):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        return proc.returncode

    async def _feed(self, slot: _Slot, stream: trio.SocketStream) -> None:
        """Send the current snapshot now and after every change; "stop" when the slot is retired."""
        sent: bytes | None = None
        try:
            while True:
                slot.wake = trio.Event()  # before reading the state: an update from now on wakes us
                if slot.retired:
                    # Its final counts first (the scrape loop's answer may be up to 10 s old), then stop.
                    await self._request_metrics(slot, stream)
                    await self._send(slot, stream, encode({"t": "stop"}))
                    return
                frame = self._frame
                if frame is not None and frame is not sent:
                    await self._send(slot, stream, frame)
                    sent = frame
                await slot.wake.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the reader sees the same and says why

    async def _send(self, slot: _Slot, stream: trio.SocketStream, data: bytes) -> None:
        async with slot.send_lock:
            await stream.send_all(data)

    async def _read(self, slot: _Slot, stream: trio.SocketStream) -> str:
        decoder = FrameDecoder()
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                return f"control socket error: {exc}"
            if not data:
                return "control channel closed"
            error: ControlError | None = None
            try:
                messages = decoder.feed(data)
            except ControlError as exc:
                messages, error = exc.messages, exc
            for message in messages:
                problem = self._on_message(slot, message)
                if problem:
                    log.error("proxy %s: worker %d: %s", self.name, slot.index, problem)
                    return problem
            if error is not None:
                log.error("proxy %s: worker %d: bad control frame: %s", self.name, slot.index, error)
                return f"bad control frame: {error}"

    def _on_message(self, slot: _Slot, message: Message) -> str | None:
        kind = message["t"]
        if kind == "ready":
            return None
        if kind == "applied":
            version, errors = message.get("version"), message.get("errors")
            if not isinstance(version, int) or isinstance(version, bool) or not isinstance(errors, list):
                return "malformed applied message"
            slot.applied_version = version
            kept = [e[:MAX_ERROR_LEN] for e in errors[:MAX_ERRORS] if isinstance(e, str)]
            if kept and kept != slot.errors:
                log.warning("proxy %s: worker %d, snapshot version %d: %s", self.name, slot.index, version,
                            "; ".join(kept))
            slot.errors = kept
            return None
        if kind == "metrics":
            wire = message.get("m")
            if not isinstance(wire, dict):
                return "malformed metrics message"
            wire = merge([wire])  # checked and bounded once, here
            slot.last_metrics = wire
            # Only the request this answers: an abandoned request's answer never goes to a later caller.
            request_id = message.get("id")
            waiter = slot.waiters.pop(request_id, None) if isinstance(request_id, int) else None
            if waiter is not None:
                waiter.value = wire
                waiter.done.set()
            return None
        return f"unexpected message {kind!r} from a worker"

    async def _ask_metrics(self, slot: _Slot, answers: list[tuple[_Slot, int, dict[str, Any]]]) -> None:
        stream, gen = slot.stream, slot.generation
        if stream is None:
            return
        wire = await self._request_metrics(slot, stream)
        if wire is None:
            wire = slot.last_metrics  # slow or unreachable: its last answer
        if wire is not None:
            answers.append((slot, gen, wire))

    async def _request_metrics(self, slot: _Slot, stream: trio.SocketStream) -> dict[str, Any] | None:
        """Ask one worker for its metrics and wait up to METRICS_TIMEOUT_S; its answer, or None. The request
        carries an id the worker echoes, and the waiter is removed however this ends (cancelled included)."""
        request_id = next(self._request_ids)
        waiter = slot.waiters[request_id] = _Waiter()
        try:
            with trio.move_on_after(METRICS_TIMEOUT_S):
                try:
                    await self._send(slot, stream, encode({"t": "metrics", "id": request_id}))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return None
                await waiter.done.wait()
            return waiter.value
        finally:
            slot.waiters.pop(request_id, None)

    async def _scrape_loop(self) -> None:
        while True:
            await trio.sleep(SCRAPE_INTERVAL_S)
            await self.metrics()

    async def _serve_metrics(self, bind: str, scope: trio.CancelScope) -> None:
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(serve_trio, bind, self.render)
                    self.metrics_address = (str(address[0]), int(address[1]))
                    log.info("proxy %s: metrics on %s:%d", self.name, *self.metrics_address)
            except* (OSError, ValueError) as group:
                self.metrics_error = f"{bind}: {group.exceptions[0]}"
                log.error("proxy %s: metrics listener %s", self.name, self.metrics_error)


class SharedRefresh(Generic[T]):
    """Fresh values of `fetch` for many concurrent callers at a bounded rate: a caller gets the result of a
    fetch that started after it arrived (never an older one), fetches start at most every `interval`
    seconds, and every caller waiting when one starts shares it."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], interval: float) -> None:
        self._fetch = fetch
        self._interval = interval
        self._last_start = -math.inf
        self._next: _Round[T] | None = None  # the fetch that has not started yet: newcomers join it

    async def get(self) -> T:
        """A value fetched after this call began."""
        while True:
            round_ = self._next
            if round_ is None:
                round_ = self._next = _Round()
                return await self._lead(round_)  # (a cancelled leader fails the round: the others retry)
            await round_.done.wait()
            if round_.ok:
                return round_.value  # type: ignore[return-value]

    async def _lead(self, round_: _Round[T]) -> T:
        try:
            await trio.sleep_until(self._last_start + self._interval)
            self._next = None  # started: later callers need a later fetch
            self._last_start = trio.current_time()
            round_.value = await self._fetch()
            round_.ok = True
            return round_.value
        finally:
            if self._next is round_:
                self._next = None
            round_.done.set()


@dataclass(eq=False)
class _Round(Generic[T]):
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    value: T | None = None


def next_backoff(backoff: float, alive_s: float) -> float:
    """The wait before restarting a worker that lived `alive_s` seconds, given the current backoff: back to
    the minimum after a long life, else unchanged (the caller doubles it after waiting)."""
    return BACKOFF_MIN_S if alive_s >= RESET_AFTER_S else backoff


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
