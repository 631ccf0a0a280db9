"""Log output in Consul's shape: `2026-11-25T10:00:00.000Z [INFO]  agent: message`, or JSON with -log-json; and
the fan-out of the same lines to /v1/agent/monitor clients (LogFanout)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import trio

LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
logging.addLevelName(5, "TRACE")


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _module(record: logging.LogRecord) -> str:
    return record.name.removeprefix("meshagent.")


class TextFormatter(logging.Formatter):
    """hclog-style text lines."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"[{record.levelname.replace('WARNING', 'WARN')}]"
        line = f"{_timestamp(record)} {level:<7} {_module(record)}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """hclog-style JSON lines (`@level`, `@message`, `@module`, `@timestamp`)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"@level": record.levelname.lower().replace("warning", "warn"), "@message": record.getMessage(),
               "@module": _module(record), "@timestamp": _timestamp(record)}
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def parse_level(name: str) -> int:
    """A -log-level name as a logging level; ValueError names the allowed values."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"invalid log level {name!r}: use trace, debug, info, warn or error") from None


def setup_logging(level: str, as_json: bool) -> None:
    """Send meshagent's logs to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if as_json else TextFormatter())
    root = logging.getLogger("meshagent")
    root.handlers[:] = [handler, FANOUT]  # FANOUT: /v1/agent/monitor's clients
    root.propagate = False
    set_agent_level(parse_level(level))


# ---------------------------------------------------------------------- fan-out for /v1/agent/monitor

MONITOR_QUEUE = 512  # lines held per monitor client; beyond that, lines are dropped (and counted) for it
# The agent's own level (what stderr shows), whatever monitors ask for; NOTSET until setup_logging (an agent in
# a test process: the logger is left as the test harness set it once no monitor is subscribed).
_STDERR_LEVEL = [logging.NOTSET]


class LogSubscriber:
    """One monitor client: lines at `level` or above, formatted once, in a bounded queue read by `lines()`."""

    def __init__(self, fanout: LogFanout, level: int, as_json: bool, limit: int = MONITOR_QUEUE) -> None:
        self.fanout = fanout
        self.level = level
        self.formatter: logging.Formatter = JSONFormatter() if as_json else TextFormatter()
        self.limit = limit
        self.queue: deque[str] = deque()
        self.dropped = 0  # lines dropped since the last drop notice
        self.dropped_total = 0
        self._wake = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()

    def offer(self, record: logging.LogRecord) -> None:
        """Queue a record's line (any thread; from another one the trio thread is handed the line)."""
        if record.levelno < self.level:
            return
        try:
            line = self.formatter.format(record)
        except Exception:  # a record whose arguments do not format must not break logging elsewhere
            line = f"(unformattable log record from {record.name})"
        if threading.get_ident() == self._thread:
            self._push(line)
        else:
            try:
                self._token.run_sync_soon(self._push, line)
            except trio.RunFinishedError:
                pass

    def _push(self, line: str) -> None:
        if len(self.queue) >= self.limit:
            self.dropped += 1
            self.dropped_total += 1
            self.fanout.dropped += 1
            return
        self.queue.append(line)
        self._wake.set()

    async def lines(self) -> AsyncIterator[str]:
        """Lines as they come; after a drop, a line saying how many were lost once the client caught up."""
        while True:
            while self.queue:
                yield self.queue.popleft()
                if self.dropped and not self.queue:
                    yield f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.000Z [WARN]  monitor: " \
                          f"{self.dropped} log lines dropped: this client reads too slowly"
                    self.dropped = 0
            self._wake = trio.Event()
            if not self.queue:
                await self._wake.wait()


class LogFanout(logging.Handler):
    """Every `meshagent` log record to each monitor subscriber; the logger's level follows the most verbose
    of the agent's own level and every subscriber's, while stderr keeps the agent's level."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.subscribers: list[LogSubscriber] = []
        self.dropped = 0  # lines dropped for slow monitor clients, over all of them

    def emit(self, record: logging.LogRecord) -> None:
        """Hand the record to every subscriber (each filters by its own level)."""
        for subscriber in self.subscribers:
            subscriber.offer(record)

    @contextmanager
    def subscribe(self, level: int, as_json: bool, limit: int = MONITOR_QUEUE) -> Iterator[LogSubscriber]:
        """A subscriber for the body's duration (in the trio thread)."""
        subscriber = LogSubscriber(self, level, as_json, limit)
        self.subscribers.append(subscriber)
        _apply_levels()
        try:
            yield subscriber
        finally:
            self.subscribers.remove(subscriber)
            _apply_levels()


FANOUT = LogFanout()


def _apply_levels() -> None:
    root = logging.getLogger("meshagent")
    if FANOUT not in root.handlers:
        root.addHandler(FANOUT)
    levels = [s.level for s in FANOUT.subscribers]
    if _STDERR_LEVEL[0] != logging.NOTSET:
        levels.append(_STDERR_LEVEL[0])
    root.setLevel(min(levels) if levels else logging.NOTSET)


def set_agent_level(level: int) -> None:
    """The agent's own log level (flags, config, reload): stderr shows it; monitors may ask for more."""
    _STDERR_LEVEL[0] = level
    for handler in logging.getLogger("meshagent").handlers:
        if handler is not FANOUT:
            handler.setLevel(level)
    _apply_levels()
