"""The data plane's Authorizer decides as Consul does: peers by SPIFFE ID in our trust domain only, L4 by the
first matching intention (an L7 one denies), L7 by the first matching permission of the first matching
intention with the default policy when none matches, Envoy's path/method/header matching."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from meshagent.agent.connect.intentions import Action, Intention, decide_ordered, ordered
from meshagent.proxy.authorize import Authorizer, normalize_path
from meshagent.proxy.snapshot import HeaderMatch, IntentionRule, Intentions, Permission

SEED = int(os.environ.get("PROXY_TEST_SEED", random.randrange(2**32)))
print(f"test_authorize seed: PROXY_TEST_SEED={SEED}")

TD = "11111111-2222-3333-4444-555555555555.consul"


def _id(svc: str, *, td: str = TD, ns: str = "default", dc: str = "dc1") -> str:
    return f"spiffe://{td}/ns/{ns}/dc/{dc}/svc/{svc}"


def _auth(*rules: IntentionRule, default_allow: bool = True) -> Authorizer:
    return Authorizer(Intentions(default_allow, rules), "db", TD)


# ---------------------------------------------------------------------- source_of


@pytest.mark.parametrize("spiffe_id, expected", [
    (_id("web"), "web"),
    (_id("web", dc="dc2"), "web"),  # another datacenter of the same trust domain is a peer
    (_id("web", td="other.consul"), None),
    (_id("web", ns="team"), None),  # only the default namespace exists in this mesh
    (f"spiffe://{TD}/ap/default/ns/default/dc/dc1/svc/web", None),  # partitions: refused for now
    (f"spiffe://{TD}/ns/default/dc/dc1/svc/web/extra", None),
    (f"spiffe://{TD}/ns/default/dc/dc1/svc/", None),
    (f"spiffe://{TD}/ns/default/dc/dc1/svc/..", None),
    (f"spiffe://{TD}/ns/default/dc/dc1/agent/web", None),
    (f"spiffe://{TD}.evil/ns/default/dc/dc1/svc/web", None),
    (f"spiffe://{TD}/ns/default/dc/dc1/svc/we b", None),
    (f"https://{TD}/ns/default/dc/dc1/svc/web", None),
    (_id("w" * 3000), None),
    ("", None),
    (None, None),
])
def test_source_of(spiffe_id: str | None, expected: str | None) -> None:
    assert _auth().source_of(spiffe_id) == expected


def test_source_of_cache_stays_bounded() -> None:
    auth = _auth()
    for i in range(10_000):
        assert auth.source_of(_id(f"s{i}")) == f"s{i}"
    assert len(auth._ids) <= 4096


# ---------------------------------------------------------------------- L4


def test_l4_first_match_decides_and_names_the_rule() -> None:
    auth = _auth(IntentionRule("web", "allow", name="web => db"), IntentionRule("*", "deny", name="* => db"),
                 default_allow=True)
    v = auth.l4("web")
    assert (v.allowed, v.reason, v.rule) == (True, "matched allow intention web => db", "web => db")
    v = auth.l4("api")
    assert (v.allowed, v.reason, v.rule) == (False, "matched deny intention * => db", "* => db")


def test_l4_default_and_l7_rule_denies() -> None:
    auth = _auth(IntentionRule("api", None, (Permission("allow"),), name="api => db"), default_allow=True)
    v = auth.l4("api")
    assert not v.allowed and v.rule == "api => db" and "L7" in v.reason
    v = auth.l4("web")
    assert (v.allowed, v.reason, v.rule) == (True, "no intention matched; default allow", "")
    assert not _auth(default_allow=False).l4("web").allowed


def test_l4_rule_name_defaults_and_other_namespaces_never_match() -> None:
    auth = _auth(IntentionRule("web", "allow", source_ns="team"), IntentionRule("web", "deny"),
                 default_allow=True)
    v = auth.l4("web")
    assert (v.allowed, v.rule) == (False, "web => db")


_names = st.sampled_from(["web", "api", "db", "*"])
_intention = st.builds(
    lambda src, dst, act: Intention(src, dst, None if act is None else Action(act),
                                    permissions=() if act is not None else ("p",)),
    _names, st.sampled_from(["db", "*"]), st.sampled_from(["allow", "deny", None]))


@seed(SEED)
@settings(max_examples=300, deadline=None)
@given(st.lists(_intention, max_size=8, unique_by=lambda i: (i.source, i.destination)),
       st.booleans(), st.sampled_from(["web", "api", "db", "other"]))
def test_l4_decides_as_the_agent_does(intentions: list[Intention], default_allow: bool, source: str) -> None:
    """The agent sorts with `ordered` and feeds the rules; the proxy's verdict equals decide_ordered's."""
    order = ordered(intentions)
    rules = tuple(IntentionRule(i.source, None if i.action is None else i.action.value,
                                () if i.action is not None else (Permission("allow"),),
                                name=f"{i.source} => {i.destination}") for i in order)
    # The feeder passes only intentions that can match this destination ("db"): all of these.
    expected = decide_ordered(order, source, "db", default_allow)
    got = Authorizer(Intentions(default_allow, rules), "db", TD).l4(source)
    assert got.allowed == expected.allowed, (SEED, order, source)
    if expected.matched is None:
        assert got.rule == "" and got.reason == expected.reason
    else:
        assert got.rule == f"{expected.matched.source} => {expected.matched.destination}"
        if expected.matched.action is not None:
            assert got.reason == expected.reason


# ---------------------------------------------------------------------- L7


def _l7(*perms: Permission, default_allow: bool = False) -> Authorizer:
    return _auth(IntentionRule("web", None, perms, name="web => db"), IntentionRule("*", "allow", name="* => db"),
                 default_allow=default_allow)


def test_l7_first_matching_permission_decides() -> None:
    auth = _l7(Permission("deny", path_exact="/admin"), Permission("allow", path_prefix="/"))
    v = auth.l7("web", "GET", "/admin", [])
    assert (v.allowed, v.reason, v.rule) == (False, "matched deny permission 1 of intention web => db", "web => db")
    v = auth.l7("web", "GET", "/admin/x", [])
    assert (v.allowed, v.reason) == (True, "matched allow permission 2 of intention web => db")


def test_l7_no_permission_matches_falls_to_default_not_to_lower_rules() -> None:
    """Consul: unmatched requests get the default policy; the lower `* => db allow` is not consulted."""
    for default_allow in (False, True):
        auth = _l7(Permission("allow", path_exact="/ok"), default_allow=default_allow)
        v = auth.l7("web", "GET", "/other", [])
        assert v.allowed is default_allow and v.rule == ""
        assert "no permission of intention web => db matched" in v.reason
    # Other sources reach the L4 rule below, which decides every request.
    v = _l7(Permission("deny")).l7("api", "DELETE", "/anything", [])
    assert (v.allowed, v.rule) == (True, "* => db")


def test_l7_without_rule_uses_default() -> None:
    v = _auth(default_allow=False).l7("web", "GET", "/", [])
    assert (v.allowed, v.rule) == (False, "")


def test_l7_query_and_fragment_are_not_part_of_the_path() -> None:
    auth = _l7(Permission("allow", path_exact="/v1/reconcile"))
    assert auth.l7("web", "POST", "/v1/reconcile?force=1", []).allowed
    assert auth.l7("web", "POST", "/v1/reconcile#x", []).allowed
    assert not auth.l7("web", "POST", "/v1/reconcile/x", []).allowed


def test_l7_path_regex_is_a_full_match() -> None:
    auth = _l7(Permission("allow", path_regex=r"/api/v[0-9]+/items"))
    assert auth.l7("web", "GET", "/api/v12/items", []).allowed
    assert not auth.l7("web", "GET", "/api/v12/items/1", []).allowed
    assert not auth.l7("web", "GET", "/x/api/v1/items", []).allowed


def test_l7_dot_segments_and_escapes_cannot_dodge_a_deny() -> None:
    auth = _l7(Permission("deny", path_prefix="/admin"), Permission("allow"))
    for path in ("/public/../admin", "/./admin", "/%61dmin", "/%2e%2e/admin", "/public/%2E%2E/admin/x"):
        assert not auth.l7("web", "GET", path, []).allowed, path
    assert auth.l7("web", "GET", "/public/admin", []).allowed


@pytest.mark.parametrize("target, path", [
    ("/a/b/../c", "/a/c"), ("/a/./b", "/a/b"), ("/..", "/"), ("/a/..", "/"), ("/a/.", "/a/"),
    ("/a%2fb", "/a%2Fb"), ("/%7euser", "/~user"), ("/x?y=/../z", "/x"), ("/", "/"), ("/a//b", "/a//b"),
])
def test_normalize_path(target: str, path: str) -> None:
    assert normalize_path(target) == path


def test_l7_methods_exact_and_case_sensitive() -> None:
    auth = _l7(Permission("allow", methods=("get", "HEAD")))  # rule methods are upper-cased on construction
    assert auth.l7("web", "GET", "/", []).allowed
    assert auth.l7("web", "HEAD", "/", []).allowed
    assert not auth.l7("web", "POST", "/", []).allowed
    assert not auth.l7("web", "get", "/", []).allowed  # HTTP methods are case-sensitive, as Envoy's :method


@pytest.mark.parametrize("match, headers, expected", [
    (HeaderMatch("x-a", present=True), [(b"X-A", b"")], True),
    (HeaderMatch("x-a", present=True), [], False),
    (HeaderMatch("x-a", present=True, invert=True), [], True),
    (HeaderMatch("x-a", present=True, invert=True), [(b"x-a", b"1")], False),
    (HeaderMatch("X-A", exact="v"), [(b"x-a", b"v")], True),
    (HeaderMatch("x-a", exact="v"), [(b"x-a", b"v2")], False),
    (HeaderMatch("x-a", exact="v", invert=True), [(b"x-a", b"v2")], True),
    (HeaderMatch("x-a", exact="v", invert=True), [], False),  # absent: only inverted Present matches
    (HeaderMatch("x-a", exact="1,2"), [(b"x-a", b"1"), (b"other", b"z"), (b"X-a", b"2")], True),
    (HeaderMatch("x-a", prefix="Bea"), [(b"x-a", b"Bearer t")], True),
    (HeaderMatch("x-a", suffix=".com"), [(b"x-a", b"a.org")], False),
    (HeaderMatch("x-a", regex="[0-9]+"), [(b"x-a", b"123")], True),
    (HeaderMatch("x-a", regex="[0-9]+"), [(b"x-a", b"123a")], False),
    (HeaderMatch("host", exact="db.local"), [(b":authority", b"db.local")], True),
    (HeaderMatch(":authority", exact="db.local"), [(b"Host", b"db.local")], True),
])
def test_l7_headers(match: HeaderMatch, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    auth = _l7(Permission("allow", headers=(match,)))
    assert auth.l7("web", "GET", "/", headers).allowed is expected


def test_l7_all_parts_of_a_permission_must_match() -> None:
    auth = _l7(Permission("allow", path_prefix="/v2", methods=("GET",),
                          headers=(HeaderMatch("x-team", exact="a"), HeaderMatch("x-debug", present=True,
                                                                                   invert=True))))
    ok = [(b"x-team", b"a")]
    assert auth.l7("web", "GET", "/v2/x", ok).allowed
    assert not auth.l7("web", "PUT", "/v2/x", ok).allowed
    assert not auth.l7("web", "GET", "/v1/x", ok).allowed
    assert not auth.l7("web", "GET", "/v2/x", [*ok, (b"x-debug", b"1")]).allowed


def test_l7_broken_regex_fails_closed() -> None:
    """A regex that does not compile never widens access: a deny matches everything, an allow nothing."""
    auth = _l7(Permission("deny", path_regex="(unclosed"), Permission("allow"), default_allow=True)
    assert not auth.l7("web", "GET", "/", []).allowed
    auth = _l7(Permission("allow", headers=(HeaderMatch("x", regex="[bad"),)), default_allow=False)
    assert not auth.l7("web", "GET", "/", [(b"x", b"[bad")]).allowed


def test_l7_empty_permissions_use_default() -> None:
    assert not _l7(default_allow=False).l7("web", "GET", "/", []).allowed
    assert _l7(default_allow=True).l7("web", "GET", "/", []).allowed


def test_l7_verdicts_are_prebuilt() -> None:
    """The hot path allocates no verdicts: the same object comes back for the same decision."""
    auth = _l7(Permission("deny", path_exact="/a"), Permission("allow"))
    assert auth.l7("web", "GET", "/a", []) is auth.l7("web", "GET", "/a?x", [])
    assert auth.l4("api") is auth.l4("api")


_hostile = st.text(max_size=200) | st.sampled_from(["/%", "/%zz", "/%2", "..", ".", "/../../..", "?", "#"])


@seed(SEED)
@settings(max_examples=400, deadline=None)
@given(_hostile, st.text(max_size=10), st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)),
                                               max_size=6))
def test_l7_never_crashes_on_hostile_requests(path: str, method: str,
                                               headers: list[tuple[bytes, bytes]]) -> None:
    auth = _l7(Permission("deny", path_regex=r"/a.*", headers=(HeaderMatch("x", regex=r"\d+"),)),
               Permission("allow", path_prefix="/", headers=(HeaderMatch("y", suffix="z", invert=True),)))
    v = auth.l7("web", method, path, headers)
    assert isinstance(v.allowed, bool)
    assert normalize_path(path).count("?") == 0
