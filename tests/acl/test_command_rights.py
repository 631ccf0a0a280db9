"""command_rights: what each catalog command needs from a token, every op both ways (pure, no IO).

The catalog is real (commands applied through Catalog.apply), so "the node is new or changes", "the stored
service's name" and "the stored check's service" are read as the servers read them.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from meshagent.agent.acl import command_rights
from meshagent.agent.acl.authorizer import Authorizer
from meshagent.agent.acl.command_rights import MalformedCommand, authorize, authorize_all, decode
from meshagent.agent.acl.identity import ALLOW_ALL, ACLIdentity
from meshagent.agent.acl.objects import Policy, Role, Token
from meshagent.agent.acl.rules import parse_rules
from meshagent.agent.catalog import commands
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.catalog.state import Catalog
from meshagent.agent.connect.entry_validate import named_services

ACCESSOR = "11111111-2222-3333-4444-555555555555"
NODE = Node(node="n1", address="127.0.41.1")
WEB = Service(node="n1", id="web-1", service="web", port=80)


def ident(*rules: str, default_allow: bool = False) -> ACLIdentity:
    return ACLIdentity(ACCESSOR, Authorizer([parse_rules(r) for r in rules], default_allow))


MANAGEMENT = ACLIdentity(ACCESSOR, Authorizer.management_token())
NOTHING = ident()


@pytest.fixture
def catalog() -> Catalog:
    cat = Catalog()
    cat.apply(1, commands.register(NODE, WEB, [Check(node="n1", check_id="web-alive", service_id="web-1"),
                                               Check(node="n1", check_id="serfHealth")]))
    return cat


def denied(identity: ACLIdentity, command: dict[str, Any], catalog: Catalog) -> str | None:
    """The 403 text, or None when allowed."""
    decision = authorize(identity, command, catalog)
    return None if decision is None else decision.denied_message(identity.accessor_id)


def msg(permission: str, name: str | None) -> str:
    on = f' on "{name}"' if name is not None else ""
    return f"Permission denied: token with AccessorID '{ACCESSOR}' lacks permission '{permission}'{on}"


# ------------------------------------------------------------------------------------------ register


def test_register_service_on_an_unchanged_node_needs_service_write_only(catalog: Catalog) -> None:
    cmd = commands.register(NODE, Service(node="n1", id="web-2", service="web"))
    assert denied(ident('service "web" { policy = "write" }'), cmd, catalog) is None
    assert denied(ident('service "web" { policy = "read" }', 'node "n1" { policy = "write" }'), cmd, catalog) == \
        msg("service:write", "web")


def test_register_of_a_new_or_changed_node_needs_node_write(catalog: Catalog) -> None:
    web_write = 'service "web" { policy = "write" }'
    for node in (Node(node="n2", address="127.0.41.2"), Node(node="n1", address="127.0.41.9")):
        cmd = commands.register(node, Service(node=node.node, id="web-1", service="web"))
        assert denied(ident(web_write), cmd, catalog) == msg("node:write", node.node)
        assert denied(ident(web_write, f'node "{node.node}" {{ policy = "write" }}'), cmd, catalog) is None


def test_register_connect_proxy_needs_write_on_its_destination(catalog: Catalog) -> None:
    proxy = Service(node="n1", id="web-sidecar-proxy", service="web-sidecar-proxy", kind="connect-proxy",
                    proxy={"destination_service_name": "web"})
    cmd = commands.register(NODE, proxy)
    assert denied(ident('service "web-sidecar-proxy" { policy = "write" }'), cmd, catalog) == \
        msg("service:write", "web")
    assert denied(ident('service_prefix "web" { policy = "write" }'), cmd, catalog) is None


def test_register_reusing_a_stored_service_id_needs_write_on_the_old_name(catalog: Catalog) -> None:
    cmd = commands.register(NODE, Service(node="n1", id="web-1", service="api"))
    assert denied(ident('service "api" { policy = "write" }'), cmd, catalog) == msg("service:write", "web")
    assert denied(ident('service "api" { policy = "write" }', 'service "web" { policy = "write" }'), cmd,
                  catalog) is None


def test_register_checks_node_check_node_write_service_check_service_write(catalog: Catalog) -> None:
    node_check = commands.register(NODE, None, [Check(node="n1", check_id="mem")])
    assert denied(ident('service_prefix "" { policy = "write" }'), node_check, catalog) == msg("node:write", "n1")
    assert denied(ident('node "n1" { policy = "write" }'), node_check, catalog) is None
    # A check of a stored service: write on that service's name.
    svc_check = commands.register(NODE, None, [Check(node="n1", check_id="web-x", service_id="web-1")])
    assert denied(ident('node "n1" { policy = "write" }'), svc_check, catalog) == msg("service:write", "web")
    assert denied(ident('service "web" { policy = "write" }'), svc_check, catalog) is None
    # A check of the service registered in the same command is covered by that service's write.
    with_svc = commands.register(NODE, Service(node="n1", id="db-1", service="db"),
                                 [Check(node="n1", check_id="db-x", service_id="db-1")])
    assert denied(ident('service "db" { policy = "write" }'), with_svc, catalog) is None
    # A check naming an unknown service: refused (as the node write it cannot be vetted against).
    unknown = commands.register(NODE, None, [Check(node="n1", check_id="x", service_id="nope")])
    assert denied(ident('service_prefix "" { policy = "write" }'), unknown, catalog) == msg("node:write", "n1")


# ------------------------------------------------------------------------------------------ deregister


def test_deregister_node_needs_node_write(catalog: Catalog) -> None:
    cmd = commands.deregister("n1")
    assert denied(ident('service_prefix "" { policy = "write" }'), cmd, catalog) == msg("node:write", "n1")
    assert denied(ident('node "n1" { policy = "write" }'), cmd, catalog) is None


def test_deregister_service_or_its_check_needs_write_on_the_stored_service(catalog: Catalog) -> None:
    for cmd in (commands.deregister("n1", service_id="web-1"), commands.deregister("n1", check_id="web-alive")):
        assert denied(ident('service "web" { policy = "write" }'), cmd, catalog) is None
        assert denied(ident('service "web" { policy = "read" }'), cmd, catalog) == msg("service:write", "web")
        assert denied(ident('node "n1" { policy = "write" }'), cmd, catalog) is None  # node write: anything on it


def test_deregister_node_check_or_unknown_ids_need_node_write(catalog: Catalog) -> None:
    for cmd in (commands.deregister("n1", check_id="serfHealth"), commands.deregister("n1", check_id="nope"),
                commands.deregister("n1", service_id="nope"), commands.deregister("n9", service_id="web-1")):
        assert denied(ident('service_prefix "" { policy = "write" }'), cmd, catalog) is not None
        assert denied(ident('node_prefix "n" { policy = "write" }'), cmd, catalog) is None


# ------------------------------------------------------------------------------------------ kv


@pytest.mark.parametrize("cmd", [commands.kv_set("app/x", b"1"), commands.kv_cas("app/x", b"1", 0),
                                 commands.kv_delete("app/x"), commands.kv_delete_cas("app/x", 3)])
def test_kv_writes_need_key_write(cmd: dict[str, Any], catalog: Catalog) -> None:
    assert denied(ident('key_prefix "app/" { policy = "write" }'), cmd, catalog) is None
    assert denied(ident('key_prefix "app/" { policy = "read" }'), cmd, catalog) == msg("key:write", "app/x")
    assert denied(ident('key_prefix "secret/" { policy = "write" }'), cmd, catalog) == msg("key:write", "app/x")


def test_kv_delete_tree_needs_write_on_every_key_under_the_prefix(catalog: Catalog) -> None:
    cmd = commands.kv_delete_tree("app/")
    assert denied(ident('key_prefix "app/" { policy = "write" }'), cmd, catalog) is None
    assert denied(ident('key_prefix "app/" { policy = "write" }\nkey "app/locked" { policy = "read" }'), cmd,
                  catalog) == msg("key:write", "app/")


def test_kv_unknown_verb_is_refused_even_for_management(catalog: Catalog) -> None:
    assert denied(MANAGEMENT, {"op": "kv", "verb": "acquire", "key": "k"}, catalog) is not None


# ------------------------------------------------------------------------------------------ config entries


def entry(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    return commands.config_entry_set({"Kind": kind, "Name": name, **fields})


@pytest.mark.parametrize("kind", ["service-defaults", "service-router", "service-splitter", "service-resolver"])
def test_service_kinds_need_service_write_on_the_name(kind: str, catalog: Catalog) -> None:
    for cmd in (entry(kind, "web"), commands.config_entry_delete(kind, "web")):
        assert denied(ident('service "web" { policy = "write" }'), cmd, catalog) is None
        assert denied(ident('service "web" { policy = "read" }'), cmd, catalog) == msg("service:write", "web")


def test_discovery_chain_entries_need_read_on_the_services_they_send_to(catalog: Catalog) -> None:
    cases = [
        entry("service-router", "web", Routes=[{"Destination": {"Service": "admin"}}]),
        entry("service-splitter", "web", Splits=[{"Weight": 50, "Service": "admin"}, {"Weight": 50}]),
        entry("service-resolver", "web", Redirect={"Service": "admin"}),
        entry("service-resolver", "web", Failover={"*": {"Targets": [{"Service": "admin"}]}}),
    ]
    for cmd in cases:
        assert denied(ident('service "web" { policy = "write" }'), cmd, catalog) == msg("service:read", "admin")
        assert denied(ident('service "web" { policy = "write" }', 'service "admin" { policy = "read" }'), cmd,
                      catalog) is None


@pytest.mark.parametrize("fields, related", [
    ({"Routes": ["x", {"Destination": "admin"}, {"Destination": {"Service": 5}}]}, set()),
    ({"Routes": {"Destination": {"Service": "admin"}}, "Splits": [None, 3, {"Service": ["a"]}]}, set()),
    ({"Redirect": "admin", "Failover": ["admin"]}, set()),
    ({"Failover": {"*": "admin", "dc2": {"Targets": ["x", {"Service": "api"}]}}}, {"api"}),
    # A field of another kind's is read too: the HTTP check and the re-check never read fewer than each other.
    ({"Routes": [{"Destination": {"Service": "admin"}}], "Redirect": {"Service": "api"}}, {"admin", "api"}),
])
@pytest.mark.parametrize("kind", ["service-router", "service-splitter", "service-resolver"])
def test_http_and_server_read_the_same_related_services(kind: str, fields: dict[str, Any], related: set[str],
                                                        catalog: Catalog) -> None:
    # Review F9: config_api's check (entry_validate.named_services, which crashed on shapes it did not expect)
    # and this re-check (its own copy, per kind) could disagree: a divergence is a bypass on a leader.
    assert named_services({"Kind": kind, "Name": "web", **fields}) == related
    cmd = entry(kind, "web", **fields)
    web = 'service "web" { policy = "write" }'
    reads = [f'service "{r}" {{ policy = "read" }}' for r in related]
    assert denied(ident(web, *reads), cmd, catalog) is None
    if related:
        assert denied(ident(web), cmd, catalog) == msg("service:read", min(related))


def test_service_intentions_need_intention_write_on_the_destination(catalog: Catalog) -> None:
    for cmd in (entry("service-intentions", "db", Sources=[{"Name": "web", "Action": "allow"}]),
                commands.config_entry_delete("service-intentions", "db")):
        assert denied(ident('service "db" { policy = "write" intentions = "write" }'), cmd, catalog) is None
        assert denied(ident('service "db" { policy = "write" intentions = "read" }'), cmd, catalog) is not None


@pytest.mark.parametrize("kind", ["proxy-defaults", "mesh"])
def test_proxy_defaults_and_mesh_need_mesh_write(kind: str, catalog: Catalog) -> None:
    for cmd in (entry(kind, "global"), commands.config_entry_delete(kind, "global")):
        assert denied(ident('mesh = "write"'), cmd, catalog) is None
        assert denied(ident('operator = "write"'), cmd, catalog) is None  # mesh falls back to operator
        assert denied(ident('mesh = "read"'), cmd, catalog) == msg("mesh:write", None)


def test_unknown_config_entry_kind_or_verb_is_refused(catalog: Catalog) -> None:
    assert denied(MANAGEMENT, entry("ingress-gateway", "gw"), catalog) is not None
    assert denied(MANAGEMENT, {"op": "config-entry", "verb": "merge", "kind": "mesh", "name": "x"}, catalog)


# ------------------------------------------------------------------------------------------ acl, others


@pytest.mark.parametrize("op", ["acl-token-set", "acl_token_set", "acl-policy-delete", "acl-role-set", "acl-init"])
def test_acl_writes_need_acl_write(op: str, catalog: Catalog) -> None:
    cmd = {"op": op, "token": {}}
    assert denied(ident('acl = "write"'), cmd, catalog) is None
    assert denied(ident('acl = "read"', 'service_prefix "" { policy = "write" }'), cmd, catalog) == \
        msg("acl:write", None)


POLICY = Policy(id="33333333-2222-3333-4444-555555555555", name="p", rules='key "a" { policy = "read" }')
TOKEN = Token(accessor_id=ACCESSOR, secret_id="44444444-2222-3333-4444-555555555555")


@pytest.mark.parametrize("cmd", [
    commands.acl_token_set(TOKEN), commands.acl_token_delete(ACCESSOR), commands.acl_policy_set(POLICY),
    commands.acl_policy_delete(POLICY.id), commands.acl_role_set(Role(id=POLICY.id, name="r")),
    commands.acl_role_delete(POLICY.id), commands.acl_init("55555555-2222-3333-4444-555555555555")])
def test_the_fsm_acl_commands_need_acl_write(cmd: dict[str, Any], catalog: Catalog) -> None:
    # acl_init too: it would create a management token with the caller's secret.
    assert denied(ident('acl = "write"'), cmd, catalog) is None
    assert denied(ident('acl = "read"', 'key_prefix "" { policy = "write" }'), cmd, catalog) == msg("acl:write", None)


@pytest.mark.parametrize("cmd", [commands.acl_bootstrap(TOKEN), {"op": "acl-bootstrap", "token": {}},
                                 {"op": "acl_bootstrap"}])
def test_acl_bootstrap_is_open_to_anyone(cmd: dict[str, Any], catalog: Catalog) -> None:
    assert denied(NOTHING, cmd, catalog) is None


@pytest.mark.parametrize("cmd", [{"op": "connect-ca", "action": "init"}, {"op": "restore", "state": b""},
                                 {"op": "batch", "commands": []}, {"op": "frobnicate"}, {"op": 7}, {}])
def test_unknown_and_privileged_ops_are_refused_for_every_token(cmd: dict[str, Any], catalog: Catalog) -> None:
    assert denied(MANAGEMENT, cmd, catalog) is not None


def test_acls_off_allow_everything(catalog: Catalog) -> None:
    assert authorize(ALLOW_ALL, commands.deregister("n1"), catalog) is None


def test_default_allow_lets_unmatched_writes_through(catalog: Catalog) -> None:
    allow = ident('key_prefix "secret/" { policy = "deny" }', default_allow=True)
    assert denied(allow, commands.kv_set("app/x", b""), catalog) is None
    assert denied(allow, commands.kv_set("secret/x", b""), catalog) == msg("key:write", "secret/x")


# ------------------------------------------------------------------------------------------ decoding


def pack(cmd: Any) -> bytes:
    return bytes(msgpack.packb(cmd, use_bin_type=True))


def test_batches_are_checked_command_by_command(catalog: Catalog) -> None:
    batch = pack({"op": "batch", "commands": [pack(commands.kv_set("app/a", b"")),
                                              pack(commands.kv_set("secret/b", b""))]})
    cmds = decode(batch)
    assert [c["key"] for c in cmds] == ["app/a", "secret/b"]
    decision = authorize_all(ident('key_prefix "app/" { policy = "write" }'), cmds, catalog)
    assert decision is not None and decision.name == "secret/b"
    assert authorize_all(ident('key_prefix "" { policy = "write" }'), cmds, catalog) is None


def test_a_batch_inside_a_batch_is_refused(catalog: Catalog) -> None:
    inner = pack({"op": "batch", "commands": [pack(commands.kv_set("a", b""))]})
    cmds = decode(pack({"op": "batch", "commands": [inner]}))
    assert authorize_all(MANAGEMENT, cmds, catalog) is not None


@pytest.mark.parametrize("data", [b"\xc1", b"", pack([1, 2]), pack("register"),
                                  pack({"op": "batch", "commands": "x"}),
                                  pack({"op": "batch", "commands": [7]}),
                                  pack({"op": "batch", "commands": [b"\xc1"]})])
def test_undecodable_bytes_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedCommand):
        decode(data)


@pytest.mark.parametrize("cmd", [
    {"op": "register", "node": "n1"},
    {"op": "register", "node": {"node": 5}},
    {"op": "register", "node": {"node": "n1", "bogus_field": 1, "address": "127.0.41.1"}, "service": [1]},
    {"op": "register", "node": {"node": "n1"}, "checks": "x"},
    {"op": "register", "node": {"node": "n1"}, "checks": [{"check_id": "c", "service_id": 3}]},
    {"op": "deregister", "node": ["n1"]},
    {"op": "kv", "verb": "set", "key": b"k"},
    {"op": "config-entry", "verb": "set", "entry": "x"},
    {"op": "config-entry", "verb": "delete", "kind": "mesh", "name": 3},
])
def test_hostile_fields_are_malformed_never_a_crash(cmd: dict[str, Any], catalog: Catalog) -> None:
    # Management: every decision is taken, so every field is read (a refusal could stop before a bad field).
    with pytest.raises(MalformedCommand):
        authorize(MANAGEMENT, cmd, catalog)


def test_unknown_op_name_is_cut_in_the_refusal(catalog: Catalog) -> None:
    decision = authorize(MANAGEMENT, {"op": "x" * 10_000}, catalog)
    assert decision is not None and decision.name is not None
    assert len(decision.name) == command_rights.MAX_OP_SHOWN
