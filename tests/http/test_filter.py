"""`?filter=` parser and evaluator: the go-bexpr subset, type checks, and hypothesis round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.agent.http.filter import (
    CATALOG_SERVICE_SCHEMA,
    HEALTH_ENTRY_SCHEMA,
    BinOp,
    Expr,
    FilterError,
    Match,
    Not,
    compile_filter,
    evaluate,
    parse_filter,
)

ENTRY = {
    "Node": {"Node": "web-1", "Address": "10.0.0.1", "Meta": {"rack": "r1", "env": "prod"}},
    "Service": {"ID": "web-1a", "Service": "web", "Tags": ["primary", "v2"], "Port": 8080,
                "Meta": {"version": "v1.2"}, "EnableTagOverride": False, "Weights": {"Passing": 3}},
    "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "svc", "Status": "critical"}],
}


@pytest.mark.parametrize(("text", "expected"), [
    ("Service.Service == web", True),
    ('Service.Service == "web"', True),
    ("Service.Service == `web`", True),
    ("Service.Service != web", False),
    ("primary in Service.Tags", True),
    ('"primary" in Service.Tags', True),
    ("backup in Service.Tags", False),
    ("backup not in Service.Tags", True),
    ("Service.Meta.version == v1.2", True),
    ('Service.Meta["version"] == "v1.2"', True),
    ("Service.Meta.missing == x", False),
    ("Service.Meta.missing != x", True),
    ("Node.Meta.rack == r1 and Node.Meta.env == prod", True),
    ("Node.Meta.rack == r2 or Node.Meta.env == prod", True),
    ("not Node.Meta.rack == r2", True),
    ("not (Node.Meta.rack == r1 and Service.Port == 8080)", False),
    ("Service.Port == 8080", True),
    ("Service.EnableTagOverride == false", True),
    ("Service.Weights.Passing == 3", True),
    ("Checks.Status == critical", True),  # any check
    ("Checks.Status != warning", True),  # no check
    ("Checks.Status != critical", False),
    ("rack in Node.Meta", True),
    ("Service.Tags contains v2", True),
    ("Service.Tags is not empty", True),
    ("Service.Address is empty", True),
    ('Service.Service matches "^w.b$"', True),
    ("Service.Service not matches x", True),
    ("Node.Meta.rack == r1 and (Service.Port == 1 or primary in Service.Tags)", True),
    ("Node.Meta.rack == r1 and Service.Port == 1 or primary in Service.Tags", True),
    ("Node.Meta.rack == r2 and Service.Port == 1 or backup in Service.Tags", False),
])
def test_expressions(text: str, expected: bool) -> None:
    assert compile_filter(text, HEALTH_ENTRY_SCHEMA)(ENTRY) is expected


@pytest.mark.parametrize("text", [
    "", "   ", "Service.Service ==", "== web", "Service.Bogus == x", "Nope == 1", "Service.Port == abc",
    "Service.EnableTagOverride == maybe", "(Service.Service == web", "Service.Service == web)",
    "Service.Service = web", "Service.Service == web and", "x in Service.Port", "Checks == x",
    "Service.Tags == x", "Service.Service matches \"(\"", "Service.Service == web extra", "not",
    "Service.Meta.a.b == x", "\"unterminated == x", "Service.Service == 'single'", "and == or",
])
def test_bad_filters_are_one_line_errors(text: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text, HEALTH_ENTRY_SCHEMA)
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid filter")


def test_catalog_shape_selectors() -> None:
    row = {"ServiceName": "db", "ServiceTags": ["a"], "ServiceMeta": {"k": "v"}, "NodeMeta": {"z": "1"},
           "Node": "n1", "Address": "10.0.0.9"}
    pred = compile_filter('ServiceName == db and a in ServiceTags and ServiceMeta.k == v and NodeMeta.z == "1" '
                          "and Node == n1 and Address == 10.0.0.9", CATALOG_SERVICE_SCHEMA)
    assert pred(row)


# ---------------------------------------------------------------------- hypothesis

SELECTORS = {  # selector -> (values that may appear, type)
    ("Service", "Service"): ["web", "db", "api"],
    ("Service", "Port"): [80, 8080, 5432],
    ("Node", "Meta", "rack"): ["r1", "r2", "r 3"],
    ("Service", "Meta", "version"): ["v1", "v1.2", "two words"],
    ("Checks", "Status"): ["passing", "warning", "critical"],
}
LIST_SELECTORS = {("Service", "Tags"): ["primary", "v2", "backup", "with space"]}

words = st.sampled_from(sorted({v for vals in [*SELECTORS.values(), *LIST_SELECTORS.values()]
                                for v in vals if isinstance(v, str)}))


@st.composite
def matches(draw: st.DrawFn) -> Match:
    if draw(st.booleans()):
        sel = draw(st.sampled_from(sorted(SELECTORS)))
        return Match(draw(st.sampled_from(["==", "!="])), sel, draw(st.sampled_from(SELECTORS[sel])))
    sel = draw(st.sampled_from(sorted(LIST_SELECTORS)))
    return Match(draw(st.sampled_from(["in", "not in"])), sel, draw(st.sampled_from(LIST_SELECTORS[sel])))


exprs = st.recursive(matches(), lambda inner: st.one_of(
    st.builds(Not, inner),
    st.builds(BinOp, st.sampled_from(["and", "or"]), inner, inner)), max_leaves=8)


def render(expr: Expr) -> str:
    """An expression as filter text, fully parenthesised, values always quoted."""
    if isinstance(expr, BinOp):
        return f"({render(expr.left)} {expr.op} {render(expr.right)})"
    if isinstance(expr, Not):
        return f"not ({render(expr.expr)})"
    selector = ".".join(expr.selector)
    value = f'"{expr.value}"'
    if expr.op in ("in", "not in"):
        return f"{value} {expr.op} {selector}"
    return f"{selector} {expr.op} {value}"


entries = st.fixed_dictionaries({
    "Node": st.fixed_dictionaries({"Meta": st.dictionaries(st.just("rack"), st.sampled_from(["r1", "r2", "r 3"]))}),
    "Service": st.fixed_dictionaries({
        "Service": st.sampled_from(["web", "db", "api"]),
        "Port": st.sampled_from([80, 8080, 5432]),
        "Tags": st.lists(st.sampled_from(LIST_SELECTORS[("Service", "Tags")]), max_size=3),
        "Meta": st.dictionaries(st.just("version"), st.sampled_from(["v1", "v1.2", "two words"])),
    }),
    "Checks": st.lists(st.fixed_dictionaries({"Status": st.sampled_from(["passing", "warning", "critical"])}),
                       max_size=3),
})


def reference(expr: Expr, entry: dict) -> bool:  # type: ignore[type-arg]
    """Independent evaluator: Python semantics of the same AST."""
    if isinstance(expr, BinOp):
        a, b = reference(expr.left, entry), reference(expr.right, entry)
        return (a and b) if expr.op == "and" else (a or b)
    if isinstance(expr, Not):
        return not reference(expr.expr, entry)
    if expr.selector == ("Checks", "Status"):
        found = [c["Status"] for c in entry["Checks"]]
    else:
        node = entry
        for part in expr.selector:
            node = node.get(part) if isinstance(node, dict) else None
        found = [] if node is None else [node]
    if expr.op == "==":
        return expr.value in found
    if expr.op == "!=":
        return expr.value not in found
    tags = entry["Service"]["Tags"]
    return (expr.value in tags) == (expr.op == "in")


@settings(max_examples=400, deadline=None)
@given(exprs, entries)
def test_parse_of_rendered_expression_evaluates_like_the_reference(expr: Expr, entry: dict) -> None:  # type: ignore[type-arg]
    parsed = parse_filter(render(expr), HEALTH_ENTRY_SCHEMA)
    assert evaluate(parsed, entry) == reference(expr, entry)


FILTER_PIECES = [*'()"`[]=!. abcinotdSvNMe\\', " and ", " or ", "not ", " in ", "Service", ".Tags", "==",
                 "Checks.Status"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FILTER_PIECES), max_size=20).map("".join))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        expr = parse_filter(text, HEALTH_ENTRY_SCHEMA)
    except FilterError as exc:
        assert "\n" not in str(exc)
        return
    evaluate(expr, ENTRY)  # never raises


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_parses_or_fails_cleanly(text: str) -> None:
    try:
        evaluate(parse_filter(text, HEALTH_ENTRY_SCHEMA), ENTRY)
    except FilterError:
        pass
