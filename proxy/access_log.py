"""Access logs: one JSON line per request or connection, off unless the snapshot's `access_log.enabled`.

Handlers call `logger_for(dp.snapshot.access_log)` (None when off: one attribute test per request) and
`AccessLogger.log(...)`; lines are buffered and written by `flush_all()`, which the worker runs on a short
timer, so a request never waits on a disk or pipe. The buffer is bounded: when the output cannot keep up,
lines are dropped and counted rather than growing the worker's memory.
"""

from __future__ import annotations

import json
import logging
import os
import time

from .snapshot import AccessLog

MAX_LINE = 8192  # bytes of one JSON line
MAX_FIELD = 2048  # characters of one string field (a path, a host)
MAX_BUFFER = 4 * 1024 * 1024  # bytes waiting for the next flush
FLUSH_INTERVAL_S = 0.2

log = logging.getLogger("meshagent.proxy.access_log")


class AccessLogger:
    """JSON lines to a file (appended) or to stderr (path "")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf: list[bytes] = []
        self._size = 0
        self.dropped = 0
        self.written = 0
        self._fd = 2
        self._own_fd = False
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._own_fd = True

    def log(self, *, start: float, duration_s: float, source: str, destination: str, method: str = "",
            path: str = "", code: int = 0, bytes_received: int = 0, bytes_sent: int = 0,
            upstream_host: str = "", flags: str = "", direction: str = "") -> None:
        """Queue one entry (`start`: wall-clock epoch seconds; `flags`: short markers such as "UF" upstream
        failure, "URX" retries exhausted, "UO" breaker overflow, "DENY")."""
        entry = {
            "start_time": _iso(start), "duration_ms": round(duration_s * 1000.0, 3),
            "direction": direction, "source": source[:MAX_FIELD], "destination": destination[:MAX_FIELD],
            "method": method[:32], "path": path[:MAX_FIELD], "code": code,
            "bytes_received": bytes_received, "bytes_sent": bytes_sent,
            "upstream_host": upstream_host[:MAX_FIELD], "flags": flags[:64],
        }
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:  # only a path of many escaped characters gets here
            entry["path"] = path[:256]
            line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode()[:MAX_LINE - 1] + b"\n"
        if self._size + len(line) > MAX_BUFFER:
            self.dropped += 1
            return
        self._buf.append(line)
        self._size += len(line)

    def flush(self) -> None:
        """Write what is buffered; a full pipe or disk keeps the rest for the next flush."""
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:  # a full disk or a closed stderr: drop, say so once per flush
            self.dropped += data.count(b"\n")
            log.warning("access log %s: write failed: %s", self.path or "stderr", exc)
            return
        self.written += data.count(b"\n", 0, n)
        if n < len(data):
            rest = data[n:]
            self._buf.append(rest)
            self._size = len(rest)

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False


_loggers: dict[str, AccessLogger] = {}
_failed: set[str] = set()  # paths that could not be opened: not retried per request


def logger_for(cfg: AccessLog) -> AccessLogger | None:
    """The process's logger for this configuration, or None when access logs are off (opened on first use;
    a path that cannot be opened is logged once and treated as off)."""
    if not cfg.enabled:
        return None
    found = _loggers.get(cfg.path)
    if found is None:
        if cfg.path in _failed:
            return None
        try:
            found = AccessLogger(cfg.path)
        except OSError as exc:
            log.error("access log %s cannot be opened: %s; access logs stay off", cfg.path, exc)
            _failed.add(cfg.path)
            return None
        _loggers[cfg.path] = found
    return found


def flush_all() -> None:
    """Write every logger's buffered lines (the worker's timer)."""
    for found in _loggers.values():
        found.flush()


def close_all() -> None:
    """Flush and close every logger (worker exit)."""
    for found in _loggers.values():
        found.close()
    _loggers.clear()
    _failed.clear()


def _iso(epoch: float) -> str:
    secs = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((epoch - secs) * 1000):03d}Z"
