"""Go duration strings ("10s", "1m30s", "500ms", "72h") to and from float seconds."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_HINT = "use a duration such as 10s, 1m30s, 500ms or 72h"


def parse_duration(value: Any) -> float:
    """A Go duration string as float seconds; raises ValueError naming the bad value.

    A bare number other than 0 is refused: Consul reads one as nanoseconds, people mean seconds.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid duration {_show(value)} ({_HINT})")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f'invalid duration {value!r}: a number needs a unit, e.g. "{value}s"')
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {_show(value)} ({_HINT})")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("-", "+") else text
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        if body and body.replace(".", "", 1).isdigit():
            raise ValueError(f'invalid duration "{value}": missing unit, e.g. "{body}s"')
        raise ValueError(f'invalid duration "{value}" ({_HINT})')
    return sign * total


def format_duration(seconds: float) -> str:
    """Seconds as a Go duration string that parse_duration reads back exactly."""
    if seconds == 0:
        return "0s"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    millis = f"{round(seconds * 1000)}ms"
    if parse_duration(millis) == seconds:
        return millis
    return f"{Decimal(repr(seconds)):f}s"  # never exponent notation, which Go durations lack


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
