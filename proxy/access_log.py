"""Access logs: one JSON line per request or connection, off unless the snapshot's `access_log.enabled`.

The worker calls `configure(snapshot.access_log)` when it applies a snapshot: the file is opened then
(O_NONBLOCK, O_NOFOLLOW, O_APPEND, O_CREAT; anything but a regular file is refused, with an error the
worker reports in its `applied` message), never on a request. Stderr is written through a non-blocking
descriptor of its own. Handlers call `logger_for(cfg)` (None when off or not open: one dict lookup) and
`AccessLogger.log(...)`; lines are buffered and written by `flush_all()` on the worker's short timer, at most
FLUSH_MAX bytes per flush and never blocking: when the output cannot keep up, the buffer fills and further
lines are dropped and counted rather than stalling the worker or growing its memory.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import stat
import time
from collections.abc import Callable

from .snapshot import AccessLog

MAX_LINE = 8192  # bytes of one JSON line
MAX_FIELD = 2048  # characters of one string field (a path, a host)
MAX_BUFFER = 4 * 1024 * 1024  # bytes waiting for the next flush
FLUSH_INTERVAL_S = 0.2
WRITE_CHUNK = 64 * 1024  # bytes per write call
FLUSH_MAX = 1024 * 1024  # bytes per flush: a slow disk costs one flush at most this much
DROP_WARNING_S = 60.0  # dropped lines are logged at most this often
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC

log = logging.getLogger("meshagent.proxy.access_log")


class AccessLogError(Exception):
    """An access log that cannot be used (the message names the path and why)."""


def open_output(path: str) -> tuple[int, Callable[[int, bytes], int]]:
    """A descriptor of our own for `path` ("" = stderr) and the non-blocking write to use on it."""
    if path:
        try:
            fd = os.open(path, OPEN_FLAGS, 0o640)
        except OSError as exc:
            raise AccessLogError(f"access log {path!r} cannot be opened: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AccessLogError(f"access log {path!r} is not a regular file")
        return fd, os.write
    return _stderr()


def _stderr() -> tuple[int, Callable[[int, bytes], int]]:
    # Not a dup with O_NONBLOCK: that flag lives in the shared open file, so fd 2 (the worker's own log)
    # would turn non-blocking too. A new open of the same pipe or terminal is a file of our own; a socket
    # (e.g. a journal stream) cannot be reopened, so it is sent to with MSG_DONTWAIT instead.
    try:
        mode = os.fstat(2).st_mode
    except OSError as exc:
        raise AccessLogError(f"access log to stderr: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return os.dup(2), os.write  # a file never blocks on space
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(2))
        return sock.detach(), _sock_send
    try:
        return os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC), os.write
    except OSError as exc:
        raise AccessLogError(f"access log to stderr: {exc.strerror or exc}") from None


def _sock_send(fd: int, data: bytes) -> int:
    """send(MSG_DONTWAIT): non-blocking for this call only, the descriptor's flags untouched."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    finally:
        sock.detach()


class AccessLogger:
    """JSON lines to a file (appended) or to stderr (path "")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf: list[bytes] = []
        self._size = 0
        self.dropped = 0
        self.written = 0
        self._reported_drops = 0
        self._warned_at = -math.inf
        self._fd, self._write = open_output(path)  # AccessLogError when it cannot be used

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
        """Write what is buffered, up to FLUSH_MAX bytes, without blocking; the rest waits for the next flush."""
        if self._fd < 0:
            return
        if self.dropped != self._reported_drops and self.path:
            # Said at most once a minute, and never when the output is stderr: the worker's own log goes
            # there too, and a blocking write to a stuck stderr is what dropping lines avoids.
            now = time.monotonic()
            if now - self._warned_at >= DROP_WARNING_S:
                self._warned_at = now
                log.warning("access log %s: %d lines dropped (output too slow)", self.path,
                            self.dropped - self._reported_drops)
                self._reported_drops = self.dropped
        if not self._buf:
            return
        data = b"".join(self._buf) if len(self._buf) > 1 else self._buf[0]
        done = 0
        limit = min(len(data), FLUSH_MAX)
        try:
            while done < limit:
                n = self._write(self._fd, data[done:done + min(WRITE_CHUNK, limit - done)])
                if n <= 0:
                    break
                done += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # a full disk, a closed pipe: this batch is lost, said once per flush
            lost = data.count(b"\n", done)
            self.dropped += lost
            now = time.monotonic()
            if self.path and now - self._warned_at >= DROP_WARNING_S:
                self._warned_at = now
                self._reported_drops = self.dropped
                log.warning("access log %s: write failed: %s; %d lines dropped", self.path,
                            exc.strerror if exc.errno != errno.EPIPE else "broken pipe", lost)
            self.written += data.count(b"\n", 0, done)
            self._buf, self._size = [], 0
            return
        self.written += data.count(b"\n", 0, done)
        rest = data[done:]
        self._buf = [rest] if rest else []
        self._size = len(rest)

    def close(self) -> None:
        """Flush once and close the descriptor."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_loggers: dict[str, AccessLogger] = {}


def configure(cfg: AccessLog) -> list[str]:
    """Open the access log of a snapshot being applied (if enabled) and close the ones no longer configured;
    the errors to report with the snapshot (then access logs stay off until a snapshot that works)."""
    wanted = cfg.path if cfg.enabled else None
    for path in [p for p in _loggers if p != wanted]:
        _loggers.pop(path).close()
    if wanted is None or wanted in _loggers:
        return []
    try:
        _loggers[wanted] = AccessLogger(wanted)
    except AccessLogError as exc:
        log.error("%s; access logs stay off", exc)
        return [str(exc)]
    return []


def logger_for(cfg: AccessLog) -> AccessLogger | None:
    """The logger `configure` opened for this configuration, or None (off, or it could not be opened)."""
    if not cfg.enabled:
        return None
    return _loggers.get(cfg.path)


def flush_all() -> None:
    """Write every logger's buffered lines (the worker's timer)."""
    for found in _loggers.values():
        found.flush()


def close_all() -> None:
    """Flush and close every logger (worker exit)."""
    for found in _loggers.values():
        found.close()
    _loggers.clear()


def _iso(epoch: float) -> str:
    secs = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((epoch - secs) * 1000):03d}Z"
