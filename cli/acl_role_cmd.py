"""`meshagent acl role create|read|update|delete|list`: Consul's flags, texts and outputs over /v1/acl/role."""

from __future__ import annotations

from typing import Any

import click

from . import acl_format
from .acl_common import (
    add_delete_and_list,
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
    seg,
    service_identities,
)
from .http_client import AgentClient, fail, http_options


def _grants(func: Any) -> Any:
    """-policy-id, -policy-name, -service-identity, -node-identity (each repeatable)."""
    for name, text in (("node-identity", "A node identity: NODENAME:DATACENTER (repeatable)."),
                       ("service-identity", "A service identity: NAME or NAME:DC1,DC2 (repeatable)."),
                       ("policy-name", "Name of a policy to link (repeatable)."),
                       ("policy-id", "ID (or unique prefix) of a policy to link (repeatable).")):
        func = click.option(f"-{name}", f"--{name}", name.replace("-", "_"), multiple=True, help=text)(func)
    return func


@click.group()
def role() -> None:
    """Create, read, update, delete and list ACL roles."""


@role.command("create")
@click.option("-name", "--name", default="", help="The role's name.")
@click.option("-description", "--description", default="", help="A description of the role.")
@_grants
@output_options
@http_options
def create(name: str, description: str, policy_id: tuple[str, ...], policy_name: tuple[str, ...],
           service_identity: tuple[str, ...], node_identity: tuple[str, ...], fmt: str, meta: bool,
           http_addr: str | None, token: str | None) -> None:
    """Create a role linking policies and identities."""
    check_format(fmt)
    if not name:
        fail("Missing required '-name' flag")
    if not (policy_id or policy_name or service_identity or node_identity):
        fail("Cannot create a role without specifying -policy-name, -policy-id, -service-identity, "
             "or -node-identity at least once")
    services, nodes = service_identities(service_identity), node_identities(node_identity)
    client = AgentClient(http_addr, token)
    body: dict[str, Any] = {"Name": name, "Description": description}
    for key, value in (("Policies", policy_links(client, policy_id, policy_name)),
                       ("ServiceIdentities", services), ("NodeIdentities", nodes)):
        if value:
            body[key] = value
    created = call(client, "PUT", "/v1/acl/role", "Failed to create new role", body=body)
    emit(created, fmt, acl_format.role_text, meta)


@role.command("read")
@click.option("-id", "--id", "role_id", default="", help="ID (or unique prefix) of the role.")
@click.option("-name", "--name", default="", help="Name of the role.")
@output_options
@http_options
def read(role_id: str, name: str, fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
    """Read one role by -id or -name."""
    check_format(fmt)
    if not role_id and not name:
        fail("Must specify either the -id or -name parameters")
    client = AgentClient(http_addr, token)
    if role_id:
        rid = resolve_id(client, "role", role_id)
        obj = call(client, "GET", f"/v1/acl/role/{seg(rid)}", f'Error reading role "{rid}"', ok=(200, 404))
        if obj is None:
            fail(f"Role not found with ID {rid!r}")
    else:
        obj = call(client, "GET", f"/v1/acl/role/name/{seg(name)}", f'Error reading role "{name}"', ok=(200, 404))
        if obj is None:
            fail(f"Role not found with name {acl_format.clean(name)!r}")
    emit(obj, fmt, acl_format.role_text, meta)


@role.command("update")
@click.option("-id", "--id", "role_id", default="", help="ID (or unique prefix) of the role to update.")
@click.option("-name", "--name", default="", help="The role's new name.")
@click.option("-description", "--description", default="", help="A new description.")
@_grants
@click.option("-no-merge", "--no-merge", "no_merge", is_flag=True,
              help="Replace every field with what is given instead of adding to the current role.")
@output_options
@http_options
def update(role_id: str, name: str, description: str, policy_id: tuple[str, ...], policy_name: tuple[str, ...],
           service_identity: tuple[str, ...], node_identity: tuple[str, ...], no_merge: bool, fmt: str,
           meta: bool, http_addr: str | None, token: str | None) -> None:
    """Update a role: given links and identities are added (replace all with -no-merge)."""
    check_format(fmt)
    if not role_id:
        fail("Cannot update a role without specifying the -id parameter")
    services, nodes = service_identities(service_identity), node_identities(node_identity)
    client = AgentClient(http_addr, token)
    rid = resolve_id(client, "role", role_id)
    policies = policy_links(client, policy_id, policy_name)
    if no_merge:
        body: dict[str, Any] = {"ID": rid, "Name": name, "Description": description, "Policies": policies,
                                "ServiceIdentities": services, "NodeIdentities": nodes}
    else:
        current = call(client, "GET", f"/v1/acl/role/{seg(rid)}", "Error when retrieving current role")
        if not isinstance(current, dict):
            fail("Error when retrieving current role: the agent's answer is not a role")
        body = {k: current[k] for k in ("ID", "Name", "Description", "Policies", "ServiceIdentities",
                                        "NodeIdentities") if k in current}
        if name:
            body["Name"] = name
        if description:
            body["Description"] = description
        body["Policies"] = merge_links(body.get("Policies"), policies)
        body["ServiceIdentities"] = merge_services(body.get("ServiceIdentities"), services)
        body["NodeIdentities"] = merge_nodes(body.get("NodeIdentities"), nodes)
    updated = call(client, "PUT", f"/v1/acl/role/{seg(rid)}", f"Failed to update role {rid}", body=body)
    emit(updated, fmt, acl_format.role_text, meta)


add_delete_and_list(role, "role", "/v1/acl/roles", acl_format.role_list_text)
