"""`meshagent acl token create|read|update|delete|list`: Consul's flags, texts and outputs over /v1/acl/token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import acl_format
from .acl_common import (
    call,
    check_format,
    emit,
    merge_links,
    merge_nodes,
    merge_services,
    node_identities,
    output_options,
    policy_links,
    resolve_id,
    role_links,
    seg,
    service_identities,
)
from .http_client import AgentClient, fail, http_options

F = TypeVar("F", bound=Callable[..., Any])

# Fields of a read token the agent sets itself: not sent back on update.
SERVER_FIELDS = ("Hash", "CreateIndex", "ModifyIndex", "CreateTime")


def _multi(name: str, help_text: str) -> Callable[[F], F]:
    return click.option(f"-{name}", f"--{name}", name.replace("-", "_"), multiple=True, help=help_text)


def _token_id(token_id: str, accessor_id: str) -> str:
    chosen = accessor_id or token_id
    if not chosen:
        fail("Must specify the -id parameter")
    return chosen


@click.group()
def token() -> None:
    """Create, read, update, delete and list ACL tokens."""


@token.command("create")
@click.option("-description", "--description", default="", help="A description of the token.")
@_multi("policy-id", "ID (or unique prefix) of a policy to link (repeatable).")
@_multi("policy-name", "Name of a policy to link (repeatable).")
@_multi("role-id", "ID (or unique prefix) of a role to link (repeatable).")
@_multi("role-name", "Name of a role to link (repeatable).")
@_multi("service-identity", "A service identity: NAME or NAME:DC1,DC2 (repeatable).")
@_multi("node-identity", "A node identity: NODENAME:DATACENTER (repeatable).")
@click.option("-accessor", "--accessor", default="", help="Create the token with this AccessorID (a UUID).")
@click.option("-secret", "--secret", default="", help="Create the token with this SecretID (a UUID).")
@click.option("-expires-ttl", "--expires-ttl", "expires_ttl", default="",
              help="How long the token is valid for (e.g. 1h; 1m to 24h).")
@click.option("-local", "--local", is_flag=True, help="Create a datacenter-local token.")
@output_options
@http_options
def create(description: str, policy_id: tuple[str, ...], policy_name: tuple[str, ...], role_id: tuple[str, ...],
           role_name: tuple[str, ...], service_identity: tuple[str, ...], node_identity: tuple[str, ...],
           accessor: str, secret: str, expires_ttl: str, local: bool, fmt: str, meta: bool,
           http_addr: str | None, token: str | None) -> None:
    """Create a token linked to policies, roles and identities."""
    check_format(fmt)
    services, nodes = service_identities(service_identity), node_identities(node_identity)
    if expires_ttl:
        from ..agent.config.duration import parse_duration  # loaded only by the command that needs it
        try:
            parse_duration(expires_ttl)
        except ValueError as exc:
            fail(f"invalid value for -expires-ttl: {exc}")
    client = AgentClient(http_addr, token)
    body: dict[str, Any] = {"Description": description, "Local": local}
    for key, value in (("Policies", policy_links(client, policy_id, policy_name)),
                       ("Roles", role_links(client, role_id, role_name)),
                       ("ServiceIdentities", services), ("NodeIdentities", nodes)):
        if value:
            body[key] = value
    if accessor:
        body["AccessorID"] = accessor
    if secret:
        body["SecretID"] = secret
    if expires_ttl:
        body["ExpirationTTL"] = expires_ttl
    created = call(client, "PUT", "/v1/acl/token", "Failed to create new token", body=body)
    emit(created, fmt, acl_format.token_text, meta)


@token.command("read")
@click.option("-id", "--id", "token_id", default="", help="AccessorID (or unique prefix, or 'anonymous').")
@click.option("-accessor-id", "--accessor-id", "accessor_id", default="", help="The same as -id.")
@click.option("-self", "--self", "self_", is_flag=True, help="Read the token the request is made with.")
@output_options
@http_options
def read(token_id: str, accessor_id: str, self_: bool, fmt: str, meta: bool, http_addr: str | None,
         token: str | None) -> None:
    """Read one token (its SecretID is shown only to acl:write)."""
    check_format(fmt)
    if not self_ and not (token_id or accessor_id):
        fail("Must specify the -id parameter")
    client = AgentClient(http_addr, token)
    if self_:
        obj = call(client, "GET", "/v1/acl/token/self", "Error reading token")
    else:
        tid = resolve_id(client, "token", _token_id(token_id, accessor_id))
        obj = call(client, "GET", f"/v1/acl/token/{seg(tid)}", f'Error reading token "{tid}"')
    emit(obj, fmt, acl_format.token_text, meta)


@token.command("update")
@click.option("-id", "--id", "token_id", default="", help="AccessorID (or unique prefix) of the token.")
@click.option("-accessor-id", "--accessor-id", "accessor_id", default="", help="The same as -id.")
@click.option("-description", "--description", default="", help="A new description (kept when not given).")
@_multi("policy-id", "Policy ID to link; replaces the token's policies (repeatable).")
@_multi("policy-name", "Policy name to link; replaces the token's policies (repeatable).")
@_multi("append-policy-id", "Policy ID to add to the token's policies (repeatable).")
@_multi("append-policy-name", "Policy name to add to the token's policies (repeatable).")
@click.option("-merge-policies", "--merge-policies", is_flag=True, help="Deprecated: -policy-* add, not replace.")
@_multi("role-id", "Role ID to link; replaces the token's roles (repeatable).")
@_multi("role-name", "Role name to link; replaces the token's roles (repeatable).")
@_multi("append-role-id", "Role ID to add to the token's roles (repeatable).")
@_multi("append-role-name", "Role name to add to the token's roles (repeatable).")
@click.option("-merge-roles", "--merge-roles", is_flag=True, help="Deprecated: -role-* add, not replace.")
@_multi("service-identity", "Service identity; replaces the token's (repeatable).")
@_multi("append-service-identity", "Service identity to add (repeatable).")
@click.option("-merge-service-identities", "--merge-service-identities", is_flag=True,
              help="Deprecated: -service-identity adds, not replaces.")
@_multi("node-identity", "Node identity; replaces the token's (repeatable).")
@_multi("append-node-identity", "Node identity to add (repeatable).")
@click.option("-merge-node-identities", "--merge-node-identities", is_flag=True,
              help="Deprecated: -node-identity adds, not replaces.")
@output_options
@http_options
def update(token_id: str, accessor_id: str, description: str, policy_id: tuple[str, ...],
           policy_name: tuple[str, ...], append_policy_id: tuple[str, ...], append_policy_name: tuple[str, ...],
           merge_policies: bool, role_id: tuple[str, ...], role_name: tuple[str, ...],
           append_role_id: tuple[str, ...], append_role_name: tuple[str, ...], merge_roles: bool,
           service_identity: tuple[str, ...], append_service_identity: tuple[str, ...],
           merge_service_identities: bool, node_identity: tuple[str, ...], append_node_identity: tuple[str, ...],
           merge_node_identities: bool, fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
    """Update a token: what is not given is kept; -policy-*/-role-*/identities replace, -append-* add."""
    check_format(fmt)
    for kind, plain, extra in (("policy-id/policy-name", policy_id + policy_name,
                                append_policy_id + append_policy_name),
                               ("role-id/role-name", role_id + role_name, append_role_id + append_role_name),
                               ("service-identity", service_identity, append_service_identity),
                               ("node-identity", node_identity, append_node_identity)):
        if plain and extra:
            fail(f"Cannot combine the use of {kind} flags with append- variants.")
    services = service_identities(service_identity + append_service_identity)
    nodes = node_identities(node_identity + append_node_identity)
    wanted = _token_id(token_id, accessor_id)
    client = AgentClient(http_addr, token)
    tid = resolve_id(client, "token", wanted)
    current = call(client, "GET", f"/v1/acl/token/{seg(tid)}", "Error when retrieving current token")
    if not isinstance(current, dict):
        fail("Error when retrieving current token: the agent's answer is not a token")
    body = {k: v for k, v in current.items() if k not in SERVER_FIELDS}
    if body.get("SecretID") == "<hidden>":  # read without acl:write: the agent keeps the secret it has
        body.pop("SecretID")
    if description:
        body["Description"] = description
    policies = policy_links(client, policy_id + append_policy_id, policy_name + append_policy_name)
    if policies:
        replace = bool(policy_id or policy_name) and not merge_policies
        body["Policies"] = policies if replace else merge_links(body.get("Policies"), policies)
    roles = role_links(client, role_id + append_role_id, role_name + append_role_name)
    if roles:
        replace = bool(role_id or role_name) and not merge_roles
        body["Roles"] = roles if replace else merge_links(body.get("Roles"), roles)
    if services:
        replace = bool(service_identity) and not merge_service_identities
        body["ServiceIdentities"] = services if replace else merge_services(body.get("ServiceIdentities"), services)
    if nodes:
        replace = bool(node_identity) and not merge_node_identities
        body["NodeIdentities"] = nodes if replace else merge_nodes(body.get("NodeIdentities"), nodes)
    updated = call(client, "PUT", f"/v1/acl/token/{seg(tid)}", f"Failed to update token {tid}", body=body)
    emit(updated, fmt, acl_format.token_text, meta)


@token.command("delete")
@click.option("-id", "--id", "token_id", default="", help="AccessorID (or unique prefix) of the token.")
@click.option("-accessor-id", "--accessor-id", "accessor_id", default="", help="The same as -id.")
@http_options
def delete(token_id: str, accessor_id: str, http_addr: str | None, token: str | None) -> None:
    """Delete a token."""
    wanted = _token_id(token_id, accessor_id)
    client = AgentClient(http_addr, token)
    tid = resolve_id(client, "token", wanted)
    call(client, "DELETE", f"/v1/acl/token/{seg(tid)}", f'Error deleting token "{tid}"')
    click.echo(f'Token "{tid}" deleted successfully')


@token.command("clone")
@click.option("-id", "--id", "token_id", default="", help="AccessorID (or unique prefix) of the token to clone.")
@click.option("-accessor-id", "--accessor-id", "accessor_id", default="", help="The same as -id.")
@click.option("-description", "--description", default="", help="A description of the new token.")
@output_options
@http_options
def clone(token_id: str, accessor_id: str, description: str, fmt: str, meta: bool, http_addr: str | None,
          token: str | None) -> None:
    """Create a new token with the same links and identities as an existing one."""
    check_format(fmt)
    wanted = _token_id(token_id, accessor_id)
    client = AgentClient(http_addr, token)
    tid = resolve_id(client, "token", wanted)
    body = {"Description": description} if description else {}
    cloned = call(client, "PUT", f"/v1/acl/token/{seg(tid)}/clone", "Failed to clone token", body=body)
    emit(cloned, fmt, acl_format.token_text, meta)


@token.command("list")
@click.option("-policy-id", "--policy-id", "policy_id", default="", help="Only tokens linking this policy.")
@click.option("-role-id", "--role-id", "role_id", default="", help="Only tokens linking this role.")
@click.option("-service-name", "--service-name", "service_name", default="",
              help="Only tokens with this service identity.")
@output_options
@http_options
def list_(policy_id: str, role_id: str, service_name: str, fmt: str, meta: bool, http_addr: str | None,
          token: str | None) -> None:
    """List tokens (SecretIDs shown only to acl:write)."""
    check_format(fmt)
    client = AgentClient(http_addr, token)
    params = {k: v for k, v in (("policy", policy_id and resolve_id(client, "policy", policy_id)),
                                ("role", role_id and resolve_id(client, "role", role_id)),
                                ("servicename", service_name)) if v}
    tokens = call(client, "GET", "/v1/acl/tokens", "Failed to retrieve the token list", params=params or None)
    emit(tokens, fmt, acl_format.token_list_text, meta)
