"""Intention regexes are RE2 (red-team finding 15): linear time whatever the input, full matches, refused
patterns fail closed, and header values that are not UTF-8 cannot dodge a deny."""

from __future__ import annotations

import time

import pytest
import re2  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.proxy.authorize import Authorizer, compile_fullmatch
from meshagent.proxy.snapshot import HeaderMatch, IntentionRule, Intentions, Permission

# Patterns a backtracking engine takes exponential time on; RE2 answers each in linear time.
CATASTROPHIC = [r"/([a-z]+/?)*", r"(a+)+b", r"(a|aa)*c", r"(x+x+)+y", r"/(.*a){20}"]


def _l7(*perms: Permission, default_allow: bool = False) -> Authorizer:
    rules = Intentions(default_allow=default_allow,
                       rules=(IntentionRule(source="web", action=None, name="web => db", permissions=perms),))
    return Authorizer(rules, "db", "11111111-2222-3333-4444-555555555555.consul")


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_crafted_path_is_decided_in_linear_time(pattern: str) -> None:
    auth = _l7(Permission("allow", path_regex=pattern), default_allow=False)
    path = "/" + "a" * 100_000 + "!"
    t0 = time.process_time()
    assert not auth.l7("web", "GET", path, []).allowed
    # Python's re needs ~1 s at 24 letters for the first pattern and doubles per letter; RE2 takes < 10 ms.
    assert time.process_time() - t0 < 0.5


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a_crafted_header_is_decided_in_linear_time(pattern: str) -> None:
    auth = _l7(Permission("deny", headers=(HeaderMatch("x-a", regex=pattern),)), Permission("allow"))
    value = b"/" + b"a" * 100_000 + b"!"
    t0 = time.process_time()
    assert auth.l7("web", "GET", "/", [(b"x-a", value)]).allowed
    assert time.process_time() - t0 < 0.5


def test_matches_are_full_matches_over_the_path_and_header() -> None:
    auth = _l7(Permission("allow", path_regex=r"/v[0-9]+", headers=(HeaderMatch("x-a", regex="ab|cd"),)))
    assert auth.l7("web", "GET", "/v12", [(b"x-a", b"cd")]).allowed
    assert not auth.l7("web", "GET", "/v12/x", [(b"x-a", b"cd")]).allowed
    assert not auth.l7("web", "GET", "/x/v12", [(b"x-a", b"cd")]).allowed
    assert not auth.l7("web", "GET", "/v12", [(b"x-a", b"abcd")]).allowed
    assert not auth.l7("web", "GET", "/v12", [(b"x-a", b"cdx")]).allowed


@pytest.mark.parametrize("pattern", [r"/(a)\1", r"/(?=admin).*", r"/(?!public).*", r"(?<=x)/a", r"/a{1001}",
                                     r"/(unclosed", r"/[z-a]"])
def test_a_pattern_re2_refuses_fails_closed(pattern: str) -> None:
    """Python's re accepts the first four (backreference, lookaround); RE2 does not. A deny with one matches
    every request, an allow none: a bad rule can only refuse more."""
    with pytest.raises(ValueError):
        compile_fullmatch(pattern)
    deny = _l7(Permission("deny", path_regex=pattern), Permission("allow"), default_allow=True)
    assert not deny.l7("web", "GET", "/public", []).allowed
    allow = _l7(Permission("allow", headers=(HeaderMatch("x", regex=pattern),)), default_allow=False)
    assert not allow.l7("web", "GET", "/", [(b"x", b"/aa")]).allowed


def test_invalid_utf8_in_a_header_value_cannot_dodge_a_deny() -> None:
    """RE2 matches no character at an invalid UTF-8 byte; each becomes U+FFFD first, so `.` still matches
    it and a deny on "anything" holds."""
    auth = _l7(Permission("deny", headers=(HeaderMatch("x-a", regex=r"adm.n"),)),
               Permission("deny", headers=(HeaderMatch("x-b", regex=r".+"),)), Permission("allow"))
    assert not auth.l7("web", "GET", "/", [(b"x-a", b"adm\xffn")]).allowed
    assert not auth.l7("web", "GET", "/", [(b"x-b", b"\xff\xfe")]).allowed
    assert not auth.l7("web", "GET", "/", [(b"x-b", "caf\u00e9".encode())]).allowed
    assert auth.l7("web", "GET", "/", [(b"x-c", b"\xff")]).allowed


def test_utf8_is_matched_by_character() -> None:
    auth = _l7(Permission("allow", path_regex="/caf.", headers=(HeaderMatch("x-a", regex="[é]+"),)))
    assert auth.l7("web", "GET", "/café", [(b"x-a", "éé".encode())]).allowed
    assert not auth.l7("web", "GET", "/cafés", [(b"x-a", "éé".encode())]).allowed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.binary(max_size=40))
def test_the_fast_path_agrees_with_google_re2s_public_fullmatch(pattern: str, data: bytes) -> None:
    """authorize.py calls the compiled RE2's anchored Match directly (a third of the cost); this pins it to
    the package's documented fullmatch, so a google-re2 release that changes the private API fails here."""
    try:
        fast = compile_fullmatch(pattern)
    except ValueError:
        return
    options = re2.Options()
    options.log_errors = False
    public = re2.compile(pattern.encode("utf-8", "surrogatepass"), options)
    assert fast(data) is (public.fullmatch(data) is not None)
    for probe in (b"", b"a", b"/api/v1", data + data):
        assert fast(probe) is (public.fullmatch(probe) is not None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_compile_never_raises_anything_but_value_error(pattern: str) -> None:
    try:
        fast = compile_fullmatch(pattern)
    except ValueError:
        return
    assert fast(b"x") in (True, False)
