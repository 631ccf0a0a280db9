"""The linear Rules reader (agent/acl/rules_scanner.py) against python-hcl2: same Policy or the same error,
on generated policies and mutations of them; the per-text cache parses a policy once per process."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from meshagent.agent.acl import rules as rules_mod
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.acl.rules import (
    MAX_RULES_TEXT,
    Access,
    NamedRule,
    RulesError,
    parse_rules,
    parse_rules_slow,
    parse_rules_uncached,
)
from meshagent.agent.acl.rules_scanner import scan_hcl, scan_json
from meshagent.agent.catalog import commands
from meshagent.agent.config.syntax import load_hcl
from meshagent.agent.config.types import AgentConfig
from meshagent.agent.store import CatalogStore

GOOD_KEYS = ["service", "service_prefix", "key", "key_prefix", "node", "node_prefix", "agent", "agent_prefix",
             "event", "event_prefix", "query", "query_prefix", "session", "session_prefix"]
SINGLE_KEYS = ["operator", "acl", "keyring", "mesh", "peering"]
ODD_KEYS = ["sevice", "in", "for", "__lines__", "policy", "x-y", "_"]
GOOD_ATTRS = ["policy", "intentions"]
ODD_ATTRS = ["foo", "__start_line__", "if"]
GOOD_VALUES = ["read", "write", "deny", "list"]
ODD_VALUES = ["", "wrte", "Read", "${x}", "$${x}", "a\\\"b", "r\\nx", "$", "é", "re\nad"]
GOOD_SEPS = [" ", "\n", "\n  ", "\t", "# c\n", "// c\n", "/* c */", "/* a\nb */", "\n\n", ""]
ODD_SEPS = ["\r\n", "#", "/", ";", ",", "\f", "\u00a0", "/* x", "*/"]
GOOD_LABEL = [*"abz09-_/. *éÄ#{}$%", "//", "/*", "*/", "", "web", "db-1"]
ODD_LABEL = ["\\", '\\"', "\\\\", "\\n", "\\t", "\\u0041", "\n", "\r", "\t", "__", "${", "$${", "%{", '"']
EQUALS = [" = ", "=", "\t=\t", "  =  "]
ODD_EQUALS = [" : ", " == ", " =>", ""]
SYNTAX = ["{", "}", '"', "=", "\n", "#", "/", "*", " ", "\\", "$", "\r", "[", "]", ",", ":", "==", "=>", "_"]
KEYS = GOOD_KEYS + SINGLE_KEYS + ODD_KEYS
ATTRS = GOOD_ATTRS + ODD_ATTRS
VALUES = GOOD_VALUES + ODD_VALUES


def pick(draw: st.DrawFn, good: list[str], odd: list[str], chaos: int) -> str:
    """One of `good`; with `chaos` > 0, one of `odd` about once in `chaos` draws."""
    # Not 0: hypothesis draws the bounds of a range far more often than the rest.
    odd_now = chaos > 0 and draw(st.integers(0, chaos)) == chaos // 2
    return draw(st.sampled_from(odd if odd_now else good))


def outcome(parse: Any, text: str) -> Any:
    """A comparable result: the Policy, or the error's type and message."""
    try:
        return parse(text)
    except Exception as exc:  # both paths must fail the same way, whatever the failure
        return (type(exc).__name__, str(exc))


def assert_same(text: str) -> None:
    fast, slow = outcome(parse_rules_uncached, text), outcome(parse_rules_slow, text)
    assert fast == slow, text


def strip_annotations(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: strip_annotations(v) for k, v in tree.items() if not k.startswith("__")}
    if isinstance(tree, list):
        return [strip_annotations(v) for v in tree]
    return tree


@st.composite
def hcl_policy(draw: st.DrawFn) -> str:
    """Rules text in the shapes operators write, now and then with odd separators, names, values or items."""
    out: list[str] = []
    chaos = draw(st.sampled_from([0, 0, 0, 40, 12, 4]))  # most policies are well formed
    singles = list(SINGLE_KEYS)
    for _ in range(draw(st.integers(0, 6))):
        out.append(pick(draw, ["", "\n", "\n", "# top\n", "/* x */\n", " "], ODD_SEPS, chaos))
        if draw(st.integers(0, 5)) == 0 and singles:
            key = pick(draw, singles, GOOD_KEYS + ODD_KEYS + SINGLE_KEYS, chaos)
            if key in singles:
                singles.remove(key)  # twice is python-hcl2's "already defined"
            value = pick(draw, ["read", "write", "deny"], [*ODD_VALUES, "list"], chaos)
            out.append(f'{key}{pick(draw, EQUALS, ODD_EQUALS, chaos)}"{value}"')
            continue
        key = pick(draw, GOOD_KEYS, SINGLE_KEYS + ODD_KEYS, chaos)
        out.append(key)
        for _ in range(draw(st.sampled_from([1, 2, 0] if chaos else [1]))):
            label = "".join(pick(draw, GOOD_LABEL, ODD_LABEL, 10) for _ in range(draw(st.integers(0, 6))))
            out.append(pick(draw, [" ", "\t", ""], ["\n", "# c\n", "/* c */"], chaos) + f'"{label}"')
        out.append(pick(draw, [" ", "", "\t", " # c\n", " /* c */ ", "\n"], [" = ", "\r\n"], chaos) + "{")
        attrs = draw(st.sampled_from([["policy"], ["policy", "intentions"], ["intentions", "policy"]]
                                     if key.startswith("service") else [["policy"]]))
        if chaos and draw(st.integers(0, 8)) == 4:
            attrs = [pick(draw, GOOD_ATTRS, ODD_ATTRS, chaos) for _ in range(draw(st.integers(0, 3)))]
        for attr in attrs:
            out.append(pick(draw, GOOD_SEPS, ODD_SEPS, chaos))
            values = GOOD_VALUES if key.startswith("key") and attr == "policy" else ["read", "write", "deny"]
            out.append(f'{attr}{pick(draw, EQUALS, ODD_EQUALS, chaos)}"{pick(draw, values, ODD_VALUES, chaos)}"')
            if chaos and draw(st.integers(0, 30)) == 15:
                out.append(f'{pick(draw, GOOD_SEPS, ODD_SEPS, chaos)}inner "x" {{ policy = "read" }}')
        out.append(pick(draw, GOOD_SEPS, ODD_SEPS, chaos) + "}")
        out.append(pick(draw, ["\n", "", " ", " # c", "\n\n", "// x\n"], ["}", " x", "{", ";"], chaos))
    return "".join(out)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A policy with a few characters inserted, deleted or replaced."""
    text = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        what = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(SYNTAX))
        if what == "insert":
            text = text[:pos] + piece + text[pos:]
        elif what == "delete":
            text = text[:pos] + text[pos + 1:]
        else:
            text = text[:pos] + piece + text[pos + 1:]
    return text


# The fast suite runs each property on FAST's examples (+ the explicit ones): the four take ~1 s together on the
# shared CI machine (~3.5 s at 60 each); the slow suite runs them again on THOROUGH's (the *_thorough tests).
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(FAST, max_examples=300)


@FAST
@given(hcl_policy())
@example('service "web" { policy = "read" intentions = "write" }\nnode_prefix "" { policy = "read" }')
@example('service "a" {}\nservice "a" { policy = "deny" }\noperator = "read"')
@example('service "a" "b" { policy = "read" }')
@example('key_prefix "" {\n  policy = "list" # c\n} // d\n/* e */ acl = "write"')
def test_hcl_policies_agree(text: str) -> None:
    assert_same_and_scanned_alike(text)


def assert_same_and_scanned_alike(text: str) -> None:
    """assert_same, and what the scanner reads it reads as python-hcl2 does."""
    assert_same(text)
    tree = scan_hcl(text)
    if tree is not None:
        assert tree == strip_annotations(load_hcl(text))


@FAST
@given(mutated(hcl_policy()))
@example('service "a" { policy = "read" }\nservice "b" { policy = = }')
@example('service /* c */ "a" { policy = "read" }')
@example('service "a" {\r\n policy = "read"\r\n}\r\n')
@example('service "a" { policy = "read" } }')
@example('service "a" { policy = "read" }; node "b" { policy = "read" }')
@example('operator = "read"\noperator = "write"')
def test_mutated_hcl_agrees(text: str) -> None:
    assert_same(text)


@st.composite
def json_rules(draw: st.DrawFn) -> Any:
    """Rules as JSON values: the object form and the list-of-objects form, now and then odd."""
    chaos = draw(st.sampled_from([0, 0, 0, 40, 12, 4]))
    odd_value = st.one_of(st.sampled_from(ODD_VALUES), st.integers(), st.none(), st.just([]), st.just({}))
    tree: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 4)) == 0:
            key = pick(draw, SINGLE_KEYS, GOOD_KEYS + ODD_KEYS, chaos)
            tree[key] = draw(odd_value) if chaos and draw(st.integers(0, chaos)) == 1 else \
                pick(draw, ["read", "write", "deny"], ["list"], chaos)
            continue
        key = pick(draw, GOOD_KEYS, SINGLE_KEYS + ODD_KEYS, chaos)
        blocks = []
        for _ in range(draw(st.integers(1, 2))):
            block: dict[str, Any] = {}
            for _ in range(draw(st.integers(0, 3))):
                name = "".join(pick(draw, GOOD_LABEL, ODD_LABEL, 10) for _ in range(draw(st.integers(0, 5))))
                values = GOOD_VALUES if key.startswith("key") else ["read", "write", "deny"]
                body: Any = {"policy": pick(draw, values, ODD_VALUES, chaos)}
                if key.startswith("service") and draw(st.booleans()):
                    body["intentions"] = pick(draw, ["read", "write", "deny"], ODD_VALUES, chaos)
                if chaos and draw(st.integers(0, chaos)) == 1:
                    body = draw(st.one_of(odd_value, st.dictionaries(st.sampled_from(ATTRS), odd_value)))
                block[name] = body
            blocks.append(block)
        tree[key] = blocks[0] if len(blocks) == 1 and draw(st.booleans()) else blocks
    return tree


@FAST
@given(json_rules(), st.sampled_from([None, 1, 0]))
def test_json_policies_agree(tree: Any, indent: int | None) -> None:
    assert_same(json.dumps(tree, indent=indent))


@FAST
@given(mutated(json_rules().map(json.dumps)))
@example('{"service": {"web": {"policy": "read"}, "web": {"policy": "write"}}}')
@example('{"service": {"web": {"policy": "read", "__lines__": 1}}}')
@example('{"operator": "read"} x')
@example('{"operator": NaN}')
@example('{"key": {"a": {"policy": "list"}}, "key": {"b": {"policy": "read"}}}')
def test_mutated_json_agrees(text: str) -> None:
    assert_same(text)


@pytest.mark.slow
@THOROUGH
@given(hcl_policy())
def test_hcl_policies_agree_thorough(text: str) -> None:
    assert_same_and_scanned_alike(text)


@pytest.mark.slow
@THOROUGH
@given(mutated(hcl_policy()))
def test_mutated_hcl_agrees_thorough(text: str) -> None:
    assert_same(text)


@pytest.mark.slow
@THOROUGH
@given(json_rules(), st.sampled_from([None, 1, 0]))
def test_json_policies_agree_thorough(tree: Any, indent: int | None) -> None:
    assert_same(json.dumps(tree, indent=indent))


@pytest.mark.slow
@THOROUGH
@given(mutated(json_rules().map(json.dumps)))
def test_mutated_json_agrees_thorough(text: str) -> None:
    assert_same(text)


def test_errors_are_the_slow_paths_with_lines() -> None:
    text = 'service "a" { policy = "read" }\nservice "b" {\n  policy = "wrte"\n}'
    with pytest.raises(RulesError, match=r'line 3: service "b": policy "wrte" is not read, write or deny'):
        parse_rules_uncached(text)
    assert scan_hcl(text) is not None  # the scanner read it; the error comes from the annotated path


def test_scanner_leaves_what_it_does_not_know() -> None:
    for text in ['service "a\\"b" { policy = "read" }', 'service "${x}" { policy = "read" }',
                 "service web { policy = \"read\" }", 'service "a" { policy = <<EOF\nread\nEOF\n}',
                 'service "a" {\r\n policy = "read"\r\n}', 'operator = ["read"]', 'service = { a = 1 }']:
        assert scan_hcl(text) is None, text
        assert_same(text)
    assert scan_json('{"a": {"__start_line__": 1}}') is None
    assert scan_json('{"a": 1} x') is None


def test_hostile_text_is_a_rules_error_never_a_crash() -> None:
    with pytest.raises(RulesError, match="not valid UTF-8"):
        parse_rules('service "\ud800" { policy = "read" }')
    with pytest.raises(RulesError, match="invalid JSON: Exceeds the limit"):  # was a bare ValueError
        parse_rules('{"operator": 1' + "1" * 5000 + "}")
    with pytest.raises(RulesError, match="nested too deeply"):
        parse_rules('{"a": ' * 5000 + "1" + "}" * 5000)


def big_policy() -> str:
    """About 64 KiB and 1000 rules, the bounds."""
    out = [f'service_prefix "svc-{i}-padding-padding-" {{ policy = "read" }}\n'
           f'key_prefix "team/{i}/padding/padding/" {{ policy = "write" }}\n' for i in range(500)]
    return "".join(out)


def no_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes python-hcl2 and the annotated JSON reader fail the test if used."""
    def refuse(text: str) -> Any:
        raise AssertionError("the slow path was taken")
    monkeypatch.setattr(rules_mod, "load_hcl", refuse)
    monkeypatch.setattr(rules_mod, "load_json", refuse)


def test_big_policies_take_the_linear_path(monkeypatch: pytest.MonkeyPatch) -> None:
    text = big_policy()
    assert len(text) <= MAX_RULES_TEXT
    slow = parse_rules_slow(text)  # about 0.3 s
    as_json = json.dumps({"service_prefix": {r.name: {"policy": "read"} for r in slow.named if r.resource == "service"},
                          "key_prefix": {r.name: {"policy": "write"} for r in slow.named if r.resource == "key"}},
                         indent=1)
    no_slow_path(monkeypatch)
    fast = parse_rules_uncached(text)  # about 12 ms (bench/acl/rules_parse.py)
    assert len(fast.named) == 1000 and fast == slow
    assert fast.named[0] == NamedRule("service", "svc-0-padding-padding-", True, Access.READ)
    from_json = parse_rules_uncached(as_json)
    assert sorted(from_json.named, key=repr) == sorted(fast.named, key=repr)


def test_too_many_rules_is_refused_without_python_hcl2(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(f'key "{i}" {{ policy = "read" }}\n' for i in range(1001))
    no_slow_path(monkeypatch)  # python-hcl2 takes about 0.3 s to say the same (no line in the message)
    with pytest.raises(RulesError, match=r"^rules: more than 1000 rules$"):
        parse_rules_uncached(text)


def test_cache_parses_each_text_once_and_keeps_errors() -> None:
    text = f'service "{uuid.uuid4()}" {{ policy = "write" }}'
    misses = rules_mod._cache.misses
    first = parse_rules(text)
    assert parse_rules(text) is first
    assert rules_mod._cache.misses == misses + 1
    bad = f'service "{uuid.uuid4()}" {{ policy = "nope" }}'
    for _ in range(2):
        with pytest.raises(RulesError, match=r'line 1: service ".*": policy "nope"'):
            parse_rules(bad)
    assert rules_mod._cache.misses == misses + 2


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = rules_mod._RulesCache()
    monkeypatch.setattr(rules_mod, "MAX_CACHED", 3)
    monkeypatch.setattr(rules_mod, "MAX_CACHED_TEXT", 200)
    texts = [f'key "{i}" {{ policy = "read" }}' for i in range(5)]
    for text in texts:
        cache.get(text)
    assert list(cache._entries) == texts[-3:]
    cache.get("#" * 150 + '\nkey "x" { policy = "read" }')
    assert cache._chars <= 200 and len(cache._entries) == 1


def test_an_agent_parses_a_policy_once() -> None:
    """The FSM's check on apply and the resolver's first resolve share one parse."""
    cfg = AgentConfig(node_name="n1", datacenter="dc1", server=True)
    cfg.acl.enabled = True
    cfg.acl.default_policy = cfg.acl_default_policy = "deny"
    store = CatalogStore()
    policy = Policy(id=str(uuid.uuid4()), name="p", rules=f'service "{uuid.uuid4()}" {{ policy = "read" }}')
    secret = str(uuid.uuid4())
    misses = rules_mod._cache.misses
    for cmd in (commands.acl_policy_set(policy),
                commands.acl_token_set(Token(accessor_id=str(uuid.uuid4()), secret_id=secret,
                                             policies=(Link(policy.id, ""),)))):
        store.catalog.apply(store.catalog.last_index + 1, cmd)
    resolver = ACLResolver(cfg, store)
    assert resolver.resolve(secret).accessor_id
    assert rules_mod._cache.misses == misses + 1
