"""Reactor: the data plane's event loop — one `select.epoll`, plain callbacks by fd, timers, no trio.

Level-triggered epoll: a callback that leaves bytes unread is simply called again on the next wake-up, so
handlers may bound their work per wake (fairness between fast and slow peers) without losing events.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_IN_READY = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_OUT_READY = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
MAX_EVENTS = 1024
# asyncio's rule: rebuild the timer heap once cancelled timers are more than half of it (and at least this
# many), so closed connections' idle timers do not pin memory until their deadlines pass.
MIN_CANCELLED_TO_PURGE = 100


def _noop() -> None:
    return None


class Timer:
    """A pending `call_later`; `cancel()` stops it (idempotent)."""

    __slots__ = ("_reactor", "cancelled", "cb", "when")

    def __init__(self, when: float, cb: Callable[[], None], reactor: Reactor | None = None) -> None:
        self.when = when
        self.cb = cb
        self.cancelled = False
        self._reactor = reactor

    def cancel(self) -> None:
        """Never run the callback; its references are dropped now (the heap entry may stay a while)."""
        if self.cancelled:
            return
        self.cancelled = True
        self.cb = _noop  # a cancelled timer must not keep its owner (a closed connection) alive
        reactor, self._reactor = self._reactor, None
        if reactor is not None:
            reactor._timer_cancelled()

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Reactor:
    """Readers and writers by fd on one epoll set, timers and soon-callbacks; `run()` until `stop()`."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[Timer] = []
        self._cancelled = 0  # cancelled timers still in self._timers
        self._soon: deque[Callable[[], None]] = deque()
        self._threadsafe: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._running = False
        self._stopping = False
        self.errors = 0  # callbacks that raised (counted, logged, never fatal)
        self.closed = False

    # ------------------------------------------------------------------ registration

    # The loop's clock, time.monotonic() itself: handlers read it a few times per request, and a method
    # wrapping it cost a Python frame each time.
    now = staticmethod(time.monotonic)

    def add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        """Call `cb` whenever `fd` is readable (or hung up / in error)."""
        self._readers[fd] = cb
        self._update(fd, True)

    def remove_reader(self, fd: int) -> None:
        """Stop watching `fd` for reading (no-op if not watched)."""
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, cb: Callable[[], None]) -> None:
        """Call `cb` whenever `fd` is writable (or hung up / in error)."""
        self._writers[fd] = cb
        self._update(fd, True)

    def remove_writer(self, fd: int) -> None:
        """Stop watching `fd` for writing (no-op if not watched)."""
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int, adding: bool = False) -> None:
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd)
        if mask == old and not adding:
            return
        # An add with an unchanged mask still reaches epoll (a rare, redundant add): the fd may be a new socket
        # given the number of one closed while registered, which epoll dropped and our mask did not.
        try:
            if not mask:
                del self._masks[fd]
                self._ep.unregister(fd)
            elif old is None:
                try:
                    self._ep.register(fd, mask)
                except FileExistsError:  # registered behind our back: take it over
                    self._ep.modify(fd, mask)
                self._masks[fd] = mask
            else:
                try:
                    self._ep.modify(fd, mask)
                except FileNotFoundError:
                    # The fd was closed and its number reused by a new socket (epoll dropped the old one):
                    # the new socket is not in the set yet.
                    self._ep.register(fd, mask)
                self._masks[fd] = mask
        except OSError:  # the fd was closed under us: forget it, the owner's close() cleans up
            self._masks.pop(fd, None)
            self._readers.pop(fd, None)
            self._writers.pop(fd, None)

    # ------------------------------------------------------------------ scheduling

    def call_later(self, delay: float, cb: Callable[[], None]) -> Timer:
        """Run `cb` once after `delay` seconds (from the loop thread)."""
        timer = Timer(time.monotonic() + max(0.0, delay), cb, self)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        self._cancelled += 1
        timers = self._timers
        if self._cancelled > MIN_CANCELLED_TO_PURGE and self._cancelled * 2 > len(timers):
            # In place: run() holds a reference to this list.
            timers[:] = [t for t in timers if not t.cancelled]
            heapq.heapify(timers)
            self._cancelled = 0

    def call_soon(self, cb: Callable[[], None]) -> None:
        """Run `cb` on the next turn of the loop (from the loop thread)."""
        self._soon.append(cb)

    def call_soon_threadsafe(self, cb: Callable[[], None]) -> None:
        """Run `cb` in the loop thread, from any thread (wakes the loop)."""
        with self._lock:
            self._threadsafe.append(cb)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # the pipe is full: a wake-up is already pending
            pass

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Dispatch events, timers and soon-callbacks until `stop()`."""
        self._running = True
        self._stopping = False
        poll = self._ep.poll
        readers = self._readers
        writers = self._writers
        wake_r = self._wake_r
        timers = self._timers
        soon = self._soon
        threadsafe = self._threadsafe
        monotonic = time.monotonic
        try:
            while not self._stopping:
                # Timers and soon-callbacks are checked inline: one turn per request or so, and three
                # method calls per turn showed in profiles.
                timeout = self._timeout() if soon or threadsafe or timers else -1.0
                try:
                    events = poll(timeout, MAX_EVENTS)
                except InterruptedError:
                    continue
                self._dispatch(events, readers, writers, wake_r)
                if timers and timers[0].when <= monotonic():
                    self._run_timers()
                if soon or threadsafe:
                    self._run_soon()
        finally:
            self._running = False

    def _dispatch(self, events: list[tuple[int, int]], readers: dict[int, Callable[[], None]],
                  writers: dict[int, Callable[[], None]], wake_r: int) -> None:
        # One try around the whole batch, not one per callback (a frame per event is measurable here);
        # after a failure the rest of the batch still runs.
        i = 0
        n = len(events)
        while i < n:
            try:
                while i < n:
                    fd, ev = events[i]
                    i += 1
                    if fd == wake_r:
                        self._drain_wake()
                        continue
                    if ev & _IN_READY:
                        cb = readers.get(fd)
                        if cb is not None:
                            cb()
                    if ev & _OUT_READY:
                        cb = writers.get(fd)
                        if cb is not None:
                            cb()
            except Exception:  # one bad callback must not stop every other connection
                self.errors += 1
                log.exception("reactor callback for fd %d failed", events[i - 1][0])

    def _timeout(self) -> float:
        if self._soon or self._threadsafe:
            return 0.0
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
            self._cancelled -= 1
        if not timers:
            return -1.0
        return max(0.0, timers[0].when - time.monotonic())

    def _run_timers(self) -> None:
        timers = self._timers
        if not timers:
            return
        now = time.monotonic()
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer.cancelled = True  # a later cancel() is a no-op, not counted
                timer._reactor = None
                cb, timer.cb = timer.cb, _noop
                self._call(cb)

    def _run_soon(self) -> None:
        if self._threadsafe:
            with self._lock:
                self._soon.extend(self._threadsafe)
                self._threadsafe.clear()
        for _ in range(len(self._soon)):  # callbacks added now run on the next turn
            self._call(self._soon.popleft())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _call(self, cb: Callable[[], None]) -> None:
        try:
            cb()
        except Exception:  # one bad callback must not stop every other connection
            self.errors += 1
            log.exception("reactor callback %r failed", cb)

    def stop(self) -> None:
        """Make `run()` return after the current turn; callable from any thread."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        """Release the epoll set and the wake pipe (after `run()` returned)."""
        if self.closed:
            return
        self.closed = True
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
