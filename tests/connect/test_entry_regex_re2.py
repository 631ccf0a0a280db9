"""Config entry regexes are checked as RE2, the language the data plane runs (red-team finding 15): a pattern
Python's re accepts but RE2 refuses (backreference, lookaround) is refused when the entry is written,
naming the entry and the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from meshagent.agent.connect.entry_validate import EntryError, normalize_entry

RE2_REFUSES = [r"/(a)\1", r"/(?=admin).*", r"/(?!public).*", r"(?<=x)/a", r"(?<!x)/a", r"/a{1001}"]


def _intentions_path(pattern: str) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": "db", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathRegex": pattern}}]}]}


def _intentions_header(pattern: str) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": "db", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"Header": [{"Name": "x", "Regex": pattern}]}}]}]}


def _router(pattern: str) -> dict[str, Any]:
    return {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathRegex": pattern}}, "Destination": {"Service": "api"}}]}


@pytest.mark.parametrize("pattern", RE2_REFUSES)
@pytest.mark.parametrize("make, field, title", [
    (_intentions_path, "Sources[0].Permissions[0].HTTP.PathRegex", "service-intentions db"),
    (_intentions_header, "Sources[0].Permissions[0].HTTP.Header[0].Regex", "service-intentions db"),
    (_router, "Routes[0].Match.HTTP.PathRegex", "service-router web"),
])
def test_a_pattern_re2_refuses_is_refused_naming_entry_and_field(pattern: str, make: Any, field: str,
                                                                 title: str) -> None:
    if not pattern.endswith("{1001}"):
        re.compile(pattern)  # Python's re accepts it: only an RE2 check refuses it
    with pytest.raises(EntryError) as err:
        normalize_entry(make(pattern))
    assert err.value.field == field
    assert str(err.value).startswith(f"{title}: field {field}: is not a valid RE2 regular expression: ")


@pytest.mark.parametrize("pattern", [r"^/v[0-9]+/.*$", r"/([a-z]+/?)*", r"/api/(?P<ver>v\d+)/\pL+", r"(?i)/ADMIN"])
def test_re2_patterns_are_accepted_as_written(pattern: str) -> None:
    entry = normalize_entry(_intentions_path(pattern))
    assert entry["Sources"][0]["Permissions"][0]["HTTP"]["PathRegex"] == pattern
