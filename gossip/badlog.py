"""Logging of dropped input that a flood cannot turn into a flood of log lines (clock passed in).

Each source is named at most once per `every` seconds, and at most `burst` lines go out per `every`
seconds in all (spoofed UDP sources are free), with a count of what was left unsaid.
"""

from __future__ import annotations

import logging


class BadInputLog:
    """Rate-limited warnings about bad packets and streams, one line per source at a time."""

    def __init__(self, log: logging.Logger, every: float = 60.0, burst: int = 20, sources_max: int = 4096) -> None:
        self.log = log
        self.every = every
        self.burst = burst
        self.sources_max = sources_max
        self._last: dict[str, float] = {}  # source -> when we last named it
        self._window = -float("inf")
        self._lines = 0
        self.suppressed = 0

    def report(self, now: float, source: str, what: str, exc: BaseException) -> bool:
        """Log `what` from `source` unless this source or the whole log spoke too recently; True if logged."""
        if now - self._window >= self.every:
            if self.suppressed:
                self.log.warning("%d more bad gossip inputs were not logged in the last %.0f s", self.suppressed,
                                 self.every)
            self._window, self._lines, self.suppressed = now, 0, 0
        last = self._last.get(source)
        if (last is not None and now - last < self.every) or self._lines >= self.burst:
            self.suppressed += 1
            return False
        if len(self._last) >= self.sources_max:
            self._last.clear()  # forgetting only lets a source be named once more
        self._last[source] = now
        self._lines += 1
        self.log.warning("dropped %s from %s: %s: %s", what, source, type(exc).__name__, str(exc)[:200])
        return True
