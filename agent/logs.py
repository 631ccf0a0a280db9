"""Log output in Consul's shape: `2026-11-25T10:00:00.000Z [INFO]  agent: message`, or JSON with -log-json."""

from __future__ import annotations

import json
import logging
import sys
import time

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
    root.handlers[:] = [handler]
    root.setLevel(parse_level(level))
    root.propagate = False
