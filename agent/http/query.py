"""Query-string options shared by every endpoint: blocking (`index`, `wait`), consistency, filter, pretty."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from .messages import Headers, Response, simple_response


class HTTPError(Exception):
    """An error answer: status plus a one-line message (never a traceback)."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message.replace("\n", "; ").replace("\r", "")
        self.headers = headers or []

    def response(self) -> Response:
        """The text/plain response for this error."""
        return simple_response(self.status, self.message, self.headers)


def bad_request(message: str) -> HTTPError:
    """A 400 with a one-line reason."""
    return HTTPError(400, message)


_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (`300ms`, `2m`, `1h30m`, `0`) in seconds; ValueError when malformed."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(name: str, value: str) -> bool:
    """Go's strconv.ParseBool, with a 400 naming the parameter."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(f"Invalid value for ?{name}: {value[:40]!r} is not a boolean")


def parse_uint(name: str, value: str) -> int:
    """A uint64 parameter, with a 400 naming it."""
    if not value.isdigit() or len(value) > 20 or int(value) >= 2**64:
        raise bad_request(f"Invalid {name}: {value[:40]!r} is not an unsigned integer")
    return int(value)


@dataclass(slots=True)
class Query:
    """Parsed query parameters plus the common options every read understands."""

    params: dict[str, list[str]] = field(default_factory=dict)
    index: int = 0
    wait: float = 300.0
    consistency: bytes = b"leader"
    pretty: bool = False
    filter: str = ""

    def has(self, name: str) -> bool:
        """Whether the parameter is present (with or without a value)."""
        return name in self.params

    def get(self, name: str, default: str = "") -> str:
        """The first value of a parameter, or default."""
        values = self.params.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        """Every value of a repeated parameter."""
        return self.params.get(name, [])

    def flag(self, name: str) -> bool:
        """A presence flag like `?recurse` or `?passing`; `?passing=false` turns it off."""
        values = self.params.get(name)
        if values is None:
            return False
        return values[0] == "" or parse_bool(name, values[0])


def parse_query(text: str, default_wait: float = 300.0, max_wait: float = 600.0) -> Query:
    """Parse a raw query string; raises HTTPError(400) for malformed common options."""
    if not text:
        return Query(wait=default_wait)
    try:
        params = parse_qs(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=100)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Invalid query string: {str(exc)[:80]}") from None
    q = Query(params=params, wait=default_wait)
    if "index" in params:
        q.index = parse_uint("index", params["index"][0])
    if "wait" in params:
        try:
            wait = parse_duration(params["wait"][0])
        except ValueError:
            raise bad_request("Invalid wait time") from None
        if wait < 0:
            raise bad_request("Invalid wait time")
        # Consul: no wait means the default, and a wait above the maximum is cut to the maximum.
        q.wait = min(wait, max_wait) if wait > 0 else default_wait
    stale, consistent = "stale" in params, "consistent" in params
    if stale and consistent:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if stale:
        q.consistency = b"stale"
    elif consistent:
        q.consistency = b"consistent"
    q.pretty = "pretty" in params
    if "filter" in params:
        q.filter = params["filter"][0]
    return q
