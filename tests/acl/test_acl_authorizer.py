"""Authorizer precedence (Consul's docs as a table), merging, identities, management, the 403 wording."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.agent.acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID, Authorizer, Decision
from meshagent.agent.acl.rules import (
    Access,
    NamedRule,
    Policy,
    node_identity_policy,
    parse_rules,
    service_identity_policy,
)


def auth(*rules: str, default_allow: bool = False) -> Authorizer:
    return Authorizer([parse_rules(r) for r in rules], default_allow)


# (policies, method, argument, allowed): Consul's rules — exact beats prefix, the longest prefix wins,
# at the same name deny > write > list > read across policies, write implies read and list, read not list;
# None: no rule matches, so default_policy decides.
CASES = [
    (['service_prefix "" { policy = "write" }', 'service "db" { policy = "read" }'], "service_write", "db", False),
    (['service_prefix "" { policy = "write" }', 'service "db" { policy = "read" }'], "service_read", "db", True),
    (['service_prefix "" { policy = "write" }', 'service "db" { policy = "read" }'], "service_write", "web", True),
    (['service_prefix "" { policy = "deny" }\nservice_prefix "we" { policy = "read" }'], "service_read", "web", True),
    (['service_prefix "" { policy = "deny" }\nservice_prefix "we" { policy = "read" }'], "service_read", "db", False),
    (['service_prefix "w" { policy = "write" }\nservice_prefix "we" { policy = "deny" }'], "service_read", "web",
     False),
    (['service_prefix "w" { policy = "write" }\nservice_prefix "we" { policy = "deny" }'], "service_write", "wx", True),
    (['service "web" { policy = "read" }', 'service "web" { policy = "write" }'], "service_write", "web", True),
    (['service "web" { policy = "write" }', 'service "web" { policy = "deny" }'], "service_read", "web", False),
    (['service "web" { policy = "deny" }\nservice_prefix "" { policy = "write" }'], "service_read", "web", False),
    (['service "web" { policy = "deny" }'], "service_read", "web-sidecar-proxy", None),
    (['key_prefix "app/" { policy = "write" }'], "key_write", "app/x", True),
    (['key_prefix "app/" { policy = "write" }'], "key_write", "secret/x", None),
    (['key_prefix "app/" { policy = "write" }'], "key_list", "app/", True),
    (['key_prefix "app/" { policy = "read" }'], "key_list", "app/", False),
    (['key_prefix "app/" { policy = "read" }'], "key_read", "app/x", True),
    (['key_prefix "app/" { policy = "list" }'], "key_list", "app/", True),
    (['key_prefix "app/" { policy = "list" }'], "key_read", "app/x", True),
    (['key_prefix "app/" { policy = "list" }'], "key_write", "app/x", False),
    (['key_prefix "app/" { policy = "list" }', 'key_prefix "app/" { policy = "read" }'], "key_list", "app/", True),
    (['key_prefix "app/" { policy = "list" }', 'key_prefix "app/" { policy = "write" }'], "key_write", "app/", True),
    (['key "app/x" { policy = "read" }\nkey_prefix "app/" { policy = "write" }'], "key_write", "app/x", False),
    (['key "app/x" { policy = "read" }\nkey_prefix "app/" { policy = "write" }'], "key_write", "app/xy", True),
    (['node_prefix "" { policy = "read" }'], "node_read", "n1", True),
    (['node_prefix "" { policy = "read" }'], "node_write", "n1", False),
    (['agent "a1" { policy = "write" }'], "agent_read", "a1", True),
    (['agent "a1" { policy = "write" }'], "agent_read", "a2", None),
    (['event_prefix "deploy" { policy = "write" }'], "event_write", "deploy-web", True),
    (['query_prefix "" { policy = "read" }'], "query_write", "q", False),
    (['session_prefix "" { policy = "write" }'], "session_write", "n1", True),
]


@pytest.mark.parametrize("rules, method, arg, allowed", CASES)
def test_precedence(rules: list[str], method: str, arg: str, allowed: bool | None) -> None:
    # Under both defaults: a matching rule decides regardless of default_policy.
    for default in (False, True):
        decision: Decision = getattr(auth(*rules, default_allow=default), method)(arg)
        assert decision.allowed is (default if allowed is None else allowed), (rules, method, arg, default)


SINGLE_METHODS = ["operator", "keyring", "acl", "mesh", "peering"]


@pytest.mark.parametrize("resource", SINGLE_METHODS)
def test_single_resources(resource: str) -> None:
    read, write = f"{resource}_read", f"{resource}_write"
    assert getattr(auth(f'{resource} = "read"'), read)().allowed
    assert not getattr(auth(f'{resource} = "read"'), write)().allowed
    assert getattr(auth(f'{resource} = "write"'), read)().allowed
    assert not getattr(auth(f'{resource} = "write"', f'{resource} = "deny"', default_allow=True), read)().allowed
    # acl never takes default allow (Consul's AllowAll has allowManage false): F1, below.
    assert getattr(auth(default_allow=True), write)().allowed is (resource != "acl")
    assert not getattr(auth(), read)().allowed


def test_default_allow_never_grants_acl() -> None:
    # Review F1: under default_policy "allow" an anonymous caller could list every SecretID and mint a
    # global-management token. Only a policy's acl rule (or global-management) grants acl read/write.
    anyone = auth(default_allow=True)
    assert not anyone.acl_read().allowed and not anyone.acl_write().allowed
    assert anyone.operator_write().allowed and anyone.key_write("k").allowed  # the rest stays allowed
    assert auth('acl = "read"', default_allow=True).acl_read().allowed
    assert not auth('acl = "read"', default_allow=True).acl_write().allowed
    assert auth('acl = "write"', default_allow=True).acl_write().allowed
    assert Authorizer.for_policies([("p1", parse_rules(""))], default_allow=True).acl_read().allowed is False
    assert Authorizer.management_token().acl_write().allowed


def test_mesh_and_peering_fall_back_to_operator() -> None:
    a = auth('operator = "write"')
    assert a.mesh_write().allowed and a.peering_write().allowed
    assert not auth('operator = "write"\nmesh = "read"').mesh_write().allowed
    assert not auth('operator = "read"').peering_write().allowed
    assert not auth('operator = "write"').keyring_read().allowed


def test_default_when_nothing_matches() -> None:
    rules = 'service "web" { policy = "write" }'
    assert auth(rules, default_allow=True).service_write("db").allowed
    assert not auth(rules, default_allow=False).service_read("db").allowed
    assert auth(rules, default_allow=True).intention_write("db").allowed


def test_intentions() -> None:
    # Unset intentions: read when the service rule is read or write, deny otherwise (Consul's default).
    assert auth('service "web" { policy = "write" }').intention_read("web").allowed
    assert not auth('service "web" { policy = "write" }').intention_write("web").allowed
    assert not auth('service "web" { policy = "deny" }', default_allow=True).intention_read("web").allowed
    a = auth('service_prefix "" { policy = "read"\n intentions = "write" }\nservice "db" { policy = "read" }')
    assert a.intention_write("web").allowed
    assert not a.intention_write("db").allowed  # the exact rule governs db, and its intentions are read
    merged = auth('service "web" { policy = "read" }', 'service "web" { policy = "read"\n intentions = "write" }')
    assert merged.intention_write("web").allowed
    assert not auth('service "web" { policy = "write"\n intentions = "deny" }').intention_read("web").allowed


def test_key_write_prefix() -> None:
    a = auth('key_prefix "app/" { policy = "write" }')
    assert a.key_write_prefix("app/").allowed
    assert a.key_write_prefix("app/sub/").allowed
    assert not a.key_write_prefix("").allowed  # "" is governed by no rule: the default (deny)
    assert auth('key_prefix "app/" { policy = "write" }', default_allow=True).key_write_prefix("").allowed
    # A rule under the prefix that does not grant write denies the whole tree.
    b = auth('key_prefix "app/" { policy = "write" }\nkey "app/locked" { policy = "read" }')
    assert not b.key_write_prefix("app/").allowed
    assert b.key_write_prefix("app/other/").allowed
    c = auth('key_prefix "" { policy = "write" }\nkey_prefix "app/secret/" { policy = "deny" }', default_allow=True)
    assert not c.key_write_prefix("app/").allowed
    assert not auth('key_prefix "app/" { policy = "deny" }', default_allow=True).key_write_prefix("").allowed


def test_service_identity() -> None:
    a = Authorizer([service_identity_policy("web")], default_allow=False)
    assert a.service_write("web").allowed and a.service_write("web-sidecar-proxy").allowed
    assert not a.service_write("db").allowed and a.service_read("db").allowed
    assert a.node_read("n1").allowed and not a.node_write("n1").allowed
    assert not a.key_read("x").allowed


def test_node_identity() -> None:
    a = Authorizer([node_identity_policy("n1")], default_allow=False)
    assert a.node_write("n1").allowed and not a.node_write("n2").allowed and not a.node_read("n2").allowed
    assert a.service_read("web").allowed and not a.service_write("web").allowed


def test_management() -> None:
    deny_all = parse_rules('service_prefix "" { policy = "deny" }\nacl = "deny"')
    m = Authorizer.for_policies([("p1", deny_all), (GLOBAL_MANAGEMENT_POLICY_ID, Policy())], default_allow=False)
    assert m.service_write("web").allowed and m.acl_write().allowed and m.key_write_prefix("").allowed
    assert m.intention_write("web").allowed and m.key_list("").allowed
    assert Authorizer.management_token().operator_write().allowed
    plain = Authorizer.for_policies([("p1", deny_all)], default_allow=True)
    assert not plain.service_read("web").allowed and not plain.acl_read().allowed


def test_denied_messages_are_consuls() -> None:
    a = auth()
    accessor = "a1b2c3d4-0000-4000-8000-000000000000"
    assert a.service_write("web").denied_message(accessor) == (
        f"Permission denied: token with AccessorID '{accessor}' lacks permission 'service:write' on \"web\"")
    assert a.key_list("app/").permission == "key:list"
    assert a.intention_write("db").permission == "intention:write"
    assert a.operator_read().denied_message(accessor) == (
        f"Permission denied: token with AccessorID '{accessor}' lacks permission 'operator:read'")


RESOURCES = ["service", "node", "key", "agent"]
NAMES = ["", "w", "we", "web", "db"]
rules_st = st.builds(
    NamedRule,
    resource=st.sampled_from(RESOURCES),
    name=st.sampled_from(NAMES),
    prefix=st.booleans(),
    access=st.sampled_from([Access.READ, Access.WRITE, Access.DENY]),
    intentions=st.sampled_from([None, Access.READ, Access.WRITE, Access.DENY]),
)
policy_st = st.builds(
    Policy,
    named=st.lists(rules_st, max_size=6).map(tuple),
    single=st.dictionaries(st.sampled_from(["acl", "operator", "mesh"]),
                           st.sampled_from([Access.READ, Access.WRITE, Access.DENY]), max_size=3),
)


def _all_decisions(a: Authorizer) -> list[bool]:
    out = [a.acl_read().allowed, a.acl_write().allowed, a.operator_write().allowed, a.mesh_write().allowed]
    for name in [*NAMES, "webx", "x"]:
        out += [a.service_read(name).allowed, a.service_write(name).allowed, a.intention_read(name).allowed,
                a.intention_write(name).allowed, a.node_write(name).allowed, a.key_list(name).allowed,
                a.key_write(name).allowed, a.key_write_prefix(name).allowed, a.agent_read(name).allowed]
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(policy_st, min_size=1, max_size=4), st.randoms(use_true_random=False), st.booleans())
def test_merging_is_order_independent(policies: list[Policy], rnd: object, default: bool) -> None:
    shuffled = list(policies)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a = Authorizer(policies, default_allow=default)
    b = Authorizer(shuffled, default_allow=default)
    assert a.snapshot() == b.snapshot()
    assert _all_decisions(a) == _all_decisions(b)
    # Splitting one policy's rules over several policies changes nothing either.
    flat = Policy(tuple(r for p in policies for r in p.named), {})
    split = [Policy((r,), {}) for p in reversed(policies) for r in p.named]
    assert _all_decisions(Authorizer([flat], default)) == _all_decisions(Authorizer(split, default))
