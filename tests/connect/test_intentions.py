"""Intention decisions: Consul's precedence table, deny wins ties, L7 intentions deny at L4, the default."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.connect.intentions import Action, Intention, IntentionIndex, decide_l4, ordered, precedence

# Consul's table: (source namespace, source name, destination namespace, destination name) → precedence;
# "e" is exact, "*" a wildcard. A wildcard namespace implies a wildcard name.
TABLE = [
    ("e", "e", "e", "e", 9),
    ("e", "*", "e", "e", 8),
    ("*", "*", "e", "e", 7),
    ("e", "e", "e", "*", 6),
    ("e", "*", "e", "*", 5),
    ("*", "*", "e", "*", 4),
    ("e", "e", "*", "*", 3),
    ("e", "*", "*", "*", 2),
    ("*", "*", "*", "*", 1),
]


def _v(kind: str, exact: str) -> str:
    return exact if kind == "e" else "*"


@pytest.mark.parametrize(("sns", "src", "dns", "dst", "expected"), TABLE)
def test_precedence_follows_consuls_table(sns: str, src: str, dns: str, dst: str, expected: int) -> None:
    assert precedence(_v(sns, "default"), _v(src, "web"), _v(dns, "default"), _v(dst, "db")) == expected


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(TABLE, 2)))
def test_of_two_matching_intentions_the_more_specific_decides(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    """Every pair of shapes from the table, both matching web → db, with opposite actions: the higher wins."""
    def intention(row: tuple[str, ...], action: Action) -> Intention:
        sns, src, dns, dst, _ = row
        return Intention(_v(src, "web"), _v(dst, "db"), action, source_ns=_v(sns, "default"),
                         destination_ns=_v(dns, "default"))

    for first, second in ((Action.ALLOW, Action.DENY), (Action.DENY, Action.ALLOW)):
        high, low = intention(a, first), intention(b, second)  # TABLE is in descending precedence
        decision = decide_l4([low, high], "web", "db")
        assert decision.matched == high
        assert decision.allowed is (first is Action.ALLOW)


def test_a_specific_allow_beats_a_wildcard_deny() -> None:
    rules = [Intention("*", "db", Action.DENY), Intention("web", "db", Action.ALLOW)]
    assert decide_l4(rules, "web", "db").allowed
    assert not decide_l4(rules, "api", "db").allowed


def test_deny_wins_a_tie() -> None:
    # Two intentions of equal precedence matching one call (only possible across namespaces).
    allow = Intention("*", "db", Action.ALLOW, source_ns="*")
    deny = Intention("*", "db", Action.DENY, source_ns="*", destination_ns="default")
    assert allow.precedence == deny.precedence
    for rules in ([allow, deny], [deny, allow]):
        decision = decide_l4(rules, "web", "db")
        assert not decision.allowed and decision.matched == deny
    assert ordered([allow, deny]) == [deny, allow]


def test_an_l7_intention_denies_at_l4() -> None:
    l7 = Intention("web", "db", None, permissions=({"Action": "allow", "HTTP": {"PathPrefix": "/"}},))
    decision = decide_l4([l7, Intention("*", "db", Action.ALLOW)], "web", "db")
    assert not decision.allowed and decision.matched == l7 and "L7" in decision.reason


@pytest.mark.parametrize("default_allow", [True, False])
def test_the_default_decides_when_nothing_matches(default_allow: bool) -> None:
    decision = decide_l4([Intention("web", "cache", Action.DENY)], "web", "db", default_allow)
    assert decision.allowed is default_allow and decision.matched is None


_NAMES = st.sampled_from(["web", "db", "api", "*"])
_NAMESPACES = st.sampled_from(["default", "default", "other", "*"])
_INTENTION = st.builds(Intention, source=_NAMES, destination=_NAMES,
                       action=st.sampled_from([Action.ALLOW, Action.DENY, None]),
                       source_ns=_NAMESPACES, destination_ns=_NAMESPACES)


@given(st.lists(_INTENTION, max_size=30), st.sampled_from(["web", "db", "api", "cache"]),
       st.sampled_from(["web", "db", "api", "cache"]), st.sampled_from(["default", "other"]),
       st.sampled_from(["default", "other"]), st.booleans())
def test_the_index_decides_as_decide_l4(intentions: list[Intention], source: str, destination: str,
                                        source_ns: str, destination_ns: str, default_allow: bool) -> None:
    index = IntentionIndex(intentions)
    want = decide_l4(intentions, source, destination, default_allow, source_ns=source_ns,
                     destination_ns=destination_ns)
    got = index.decide(source, destination, default_allow, source_ns=source_ns, destination_ns=destination_ns)
    assert (got.allowed, got.matched) == (want.allowed, want.matched)
    assert len(index) == len(intentions)
