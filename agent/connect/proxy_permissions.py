"""Stored L7 intention permissions as snapshot Permissions, pure; a malformed one fails closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...proxy.snapshot import MAX_LIST, MAX_STR, HeaderMatch, Permission


class _Malformed(Exception):
    """A stored permission that cannot be read as written."""


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise _Malformed
    return value


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
        raise _Malformed
    return value


DENY_ALL = Permission(action="deny")


def permission(raw: Any) -> Permission:
    """One stored L7 permission. Stored entries were validated at write, but the FSM checks only structure: a
    malformed one becomes an unconditional deny (fail closed: never a shortened match, which could widen an
    allow) instead of an error that freezes every rule."""
    if not isinstance(raw, Mapping) or raw.get("Action") not in ("allow", "deny"):
        return DENY_ALL
    http = raw.get("HTTP")
    if http is None:
        return Permission(action=str(raw["Action"]))
    if not isinstance(http, Mapping):
        return DENY_ALL
    try:
        methods = tuple(m.upper() for m in _strings(http.get("Methods")))
        headers_raw = http.get("Header")
        if headers_raw is not None and (not isinstance(headers_raw, list) or len(headers_raw) > MAX_LIST):
            raise _Malformed
        headers: list[HeaderMatch] = []
        for h in headers_raw or ():
            if not isinstance(h, Mapping) or not isinstance(h.get("Name"), str) or len(h["Name"]) > MAX_STR:
                raise _Malformed
            exact, prefix, suffix, regex = (_opt_str(h.get(k)) for k in ("Exact", "Prefix", "Suffix", "Regex"))
            present = h.get("Present") is True or (exact, prefix, suffix, regex) == (None, None, None, None)
            headers.append(HeaderMatch(name=h["Name"], present=present, exact=exact, prefix=prefix, suffix=suffix,
                                       regex=regex, invert=h.get("Invert") is True))
        return Permission(action=str(raw["Action"]), path_exact=_opt_str(http.get("PathExact")),
                          path_prefix=_opt_str(http.get("PathPrefix")), path_regex=_opt_str(http.get("PathRegex")),
                          methods=methods, headers=tuple(headers))
    except _Malformed:
        return DENY_ALL
