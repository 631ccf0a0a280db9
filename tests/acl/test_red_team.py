"""Red team of the ACL system below HTTP (issue 15): the servers' re-check of forwarded writes
(command_rights) and the FSM's ACL state, attacked as a weak token holder or a :8300 caller would. Pure and
fast; each test names the attack, and those that found a hole fail without its fix."""

from __future__ import annotations

from typing import Any

import pytest
from meshagent.agent.acl.authorizer import Authorizer
from meshagent.agent.acl.command_rights import authorize
from meshagent.agent.acl.identity import ACLIdentity
from meshagent.agent.acl.objects import Link, Token
from meshagent.agent.acl.rules import parse_rules
from meshagent.agent.catalog import commands
from meshagent.agent.catalog.acl_state import GLOBAL_MANAGEMENT_POLICY_ID
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.catalog.state import Catalog

ACCESSOR = "46464646-4646-4646-8646-464646464646"
EVIL = "e0e0e0e0-0000-4000-8000-000000000001"
EVIL_SECRET = "e0e0e0e0-0000-4000-8000-000000000002"
N2 = Node(node="n2", address="127.0.46.2")
DB = Service(node="n2", id="db1", service="db", port=5432)
WEB_TOKEN = ACLIdentity(ACCESSOR, Authorizer([parse_rules('service "web" { policy = "write" }\n'
                                                          'node_prefix "" { policy = "read" }\n')], False))


@pytest.fixture
def catalog() -> Catalog:
    cat = Catalog()
    cat.apply(1, commands.register(N2, DB, [Check(node="n2", check_id="service:db1", service_id="db1",
                                                  status="critical"),
                                            Check(node="n2", check_id="serfHealth")]))
    return cat


@pytest.mark.parametrize("check_id", ["service:db1", "serfHealth"])
def test_the_server_recheck_refuses_taking_over_another_owners_check_id(catalog: Catalog, check_id: str) -> None:
    """Finding: a forwarded register re-pointing db1's (or the node's) check at web's instance passed the
    servers' re-check: db1 lost its critical check and read healthy."""
    web = Service(node="n2", id="web-n2", service="web", port=80)
    cmd = commands.register(N2, web, [Check(node="n2", check_id=check_id, service_id="web-n2")])
    decision = authorize(WEB_TOKEN, cmd, catalog)
    assert decision is not None and not decision.allowed
    own = commands.register(N2, web, [Check(node="n2", check_id="web-n2-alive", service_id="web-n2")])
    assert authorize(WEB_TOKEN, own, catalog) is None
    catalog.apply(2, own)
    assert authorize(WEB_TOKEN, own, catalog) is None  # re-registering its own check stays allowed


@pytest.mark.parametrize("cmd", [
    {**commands.acl_token_set(Token(accessor_id=EVIL, secret_id=EVIL_SECRET,
                                    policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, ""),))), "action": "bootstrap"},
    {**commands.acl_policy_delete(GLOBAL_MANAGEMENT_POLICY_ID), "action": "bootstrap"},
    {**commands.acl_init(EVIL_SECRET), "action": "bootstrap"},
])
def test_an_acl_write_dressed_as_a_bootstrap_needs_acl_write(cmd: dict[str, Any]) -> None:
    """Finding: the re-check took any "acl" command carrying action = "bootstrap" for a bootstrap (open to
    anyone) while the FSM applies by verb, so a :8300 caller with no token could write a management token."""
    catalog = Catalog()
    decision = authorize(WEB_TOKEN, cmd, catalog)
    assert decision is not None and not decision.allowed and decision.denied_message(ACCESSOR).endswith(
        "lacks permission 'acl:write'")
    assert authorize(WEB_TOKEN, commands.acl_bootstrap(Token(accessor_id=EVIL, secret_id=EVIL_SECRET)), catalog) \
        is None  # a real bootstrap stays open: the FSM applies it once only
