"""The ACL rule language: HCL and JSON for every resource, errors naming line and field, bounds, identities."""

from __future__ import annotations

import json

import pytest
from meshagent.agent.acl.rules import (
    MAX_NAME,
    MAX_RULES,
    MAX_RULES_TEXT,
    Access,
    NamedRule,
    Policy,
    RulesError,
    node_identity_policy,
    parse_rules,
    service_identity_policy,
)

NAMED = ["agent", "event", "key", "node", "query", "service", "session"]
SINGLE = ["acl", "keyring", "mesh", "operator", "peering"]


@pytest.mark.parametrize("resource", NAMED)
@pytest.mark.parametrize("prefix", [False, True])
def test_named_resources_hcl_and_json(resource: str, prefix: bool) -> None:
    key = f"{resource}_prefix" if prefix else resource
    hcl = f'{key} "web" {{\n  policy = "write"\n}}\n{key} "db" {{ policy = "deny" }}\n'
    as_json = json.dumps({key: {"web": {"policy": "write"}, "db": {"policy": "deny"}}})
    expected = (NamedRule(resource, "web", prefix, Access.WRITE), NamedRule(resource, "db", prefix, Access.DENY))
    assert parse_rules(hcl).named == expected
    assert parse_rules(as_json).named == expected


@pytest.mark.parametrize("resource", SINGLE)
@pytest.mark.parametrize("word, access", [("read", Access.READ), ("write", Access.WRITE), ("deny", Access.DENY)])
def test_single_resources(resource: str, word: str, access: Access) -> None:
    assert parse_rules(f'{resource} = "{word}"').single == {resource: access}
    assert parse_rules(json.dumps({resource: word})).single == {resource: access}


def test_service_intentions_and_key_list() -> None:
    policy = parse_rules('service "web" {\n policy = "read"\n intentions = "write"\n}\n'
                         'key_prefix "app/" { policy = "list" }')
    assert policy.named == (
        NamedRule("service", "web", False, Access.READ, Access.WRITE),
        NamedRule("key", "app/", True, Access.LIST),
    )


def test_json_list_form_and_empty() -> None:
    text = json.dumps({"service_prefix": [{"": {"policy": "read"}}], "node": [{"n1": {"policy": "write"}}]})
    assert parse_rules(text).named == (NamedRule("service", "", True, Access.READ),
                                       NamedRule("node", "n1", False, Access.WRITE))
    assert parse_rules("") == Policy()
    assert parse_rules("  \n") == Policy()


@pytest.mark.parametrize("text, message", [
    ('service "web" {\n\n  policy = "wrte"\n}',
     'rules: line 3: service "web": policy "wrte" is not read, write or deny'),
    ('\n\nservice "web" { policy = "list" }', 'rules: line 3: service "web": policy "list" is not read, write or deny'),
    ('key "a" {\n  policy = "lst"\n}', 'rules: line 2: key "a": policy "lst" is not read, write, list or deny'),
    ('\noperator = "list"', 'rules: line 2: operator: policy "list" is not read, write or deny'),
    ('acl = "admin"', 'rules: line 1: acl: policy "admin" is not read, write or deny'),
    ('\n\nfoo "x" { policy = "read" }', "rules: line 3: unknown resource 'foo'"),
    ('acl_prefix "x" { policy = "read" }', "rules: line 1: unknown resource 'acl_prefix'"),
    ('node "x" {\n  polcy = "read"\n}', "rules: line 2: node \"x\": unknown field 'polcy'"),
    ('node "x" {\n  intentions = "read"\n}', "rules: line 2: node \"x\": unknown field 'intentions'"),
    ('service "x" {\n}', 'rules: line 1: service "x": policy is missing'),
    ('service "x" {\n policy = "read"\n intentions = "all"\n}',
     'rules: line 3: service "x": intentions "all" is not read, write or deny'),
    ('{\n "service": {\n  "web": {\n   "policy": "bad"\n  }\n }\n}',
     'rules: line 4: service "web": policy "bad" is not read, write or deny'),
    ('{"operator": 3}', "rules: line 1: operator: policy int is not read, write or deny"),
])
def test_bad_rules_name_line_and_field(text: str, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(text)
    assert str(err.value) == message


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(RulesError, match=r"^rules: line 2: invalid HCL"):
        parse_rules('service "a" { policy = "read" }\nservice "b" { policy = = }')
    with pytest.raises(RulesError, match=r"^rules: line 2: invalid JSON"):
        parse_rules('{"service":\n  {"web": }}')


def test_bounds() -> None:
    with pytest.raises(RulesError, match=f"longer than {MAX_RULES_TEXT} bytes"):
        parse_rules("#" * (MAX_RULES_TEXT + 1))
    with pytest.raises(RulesError, match=f"name longer than {MAX_NAME}"):
        parse_rules(json.dumps({"key": {"k" * (MAX_NAME + 1): {"policy": "read"}}}))
    many = json.dumps({"key": {f"k{i}": {"policy": "read"} for i in range(MAX_RULES + 1)}})
    with pytest.raises(RulesError, match=f"more than {MAX_RULES} rules"):
        parse_rules(many)
    assert len(parse_rules(json.dumps({"key": {f"k{i}": {"policy": "read"} for i in range(MAX_RULES)}})).named) \
        == MAX_RULES


def test_service_identity_policy_is_consuls() -> None:
    assert service_identity_policy("web") == parse_rules(
        'service "web" { policy = "write" }\nservice "web-sidecar-proxy" { policy = "write" }\n'
        'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    )


def test_node_identity_policy_is_consuls() -> None:
    expected = parse_rules('node "n1" { policy = "write" }\nservice_prefix "" { policy = "read" }')
    assert node_identity_policy("n1") == expected


@pytest.mark.parametrize("name", ["", "Web", "web!", "-web", "web-", "x" * 257])
def test_identity_names_are_checked(name: str) -> None:
    with pytest.raises(RulesError):
        service_identity_policy(name)
    with pytest.raises(RulesError):
        node_identity_policy(name)
