"""`meshagent acl bootstrap | set-agent-token | policy … | token … | role …`: Consul's ACL commands over the
agent's /v1/acl/* and /v1/agent/token/* endpoints (outputs in acl_format.py, shared helpers in acl_common.py)."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import acl_format
from .acl_common import (
    add_delete_and_list,
    call,
    check_format,
    emit,
    load_rules,
    object_id,
    output_options,
    resolve_id,
    seg,
)
from .acl_role_cmd import role
from .acl_token_cmd import token as token_group
from .http_client import AgentClient, api_call, fail, http_options

# `acl set-agent-token` types -> the /v1/agent/token/<type> they set (Consul's aliases included).
AGENT_TOKEN_TYPES = {
    "default": "default",
    "agent": "agent",
    "agent_recovery": "agent_recovery",
    "agent_master": "agent_recovery",
    "master": "agent_recovery",
    "replication": "replication",
    "config_file_service_registration": "config_file_service_registration",
}
MAX_STDIN_TOKEN = 4096


@click.group()
def acl() -> None:
    """Bootstrap ACLs and manage tokens, policies and roles."""


acl.add_command(token_group)
acl.add_command(role)


@acl.command("bootstrap")
@output_options
@http_options
def bootstrap(fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
    """Create the initial management token (once per cluster)."""
    check_format(fmt)
    created = call(AgentClient(http_addr, token), "PUT", "/v1/acl/bootstrap", "Failed ACL bootstrapping")
    emit(created, fmt, acl_format.token_text, meta)


@acl.command("set-agent-token")
@http_options
@click.argument("args", nargs=-1)
def set_agent_token(args: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Set one of the agent's own tokens: TYPE TOKEN (TOKEN `-` reads it from stdin).

    TYPE: default, agent, agent_recovery (or agent_master), replication, config_file_service_registration.
    """
    if len(args) != 2:
        fail("Missing TYPE and TOKEN arguments")
    kind, secret = args
    path_type = AGENT_TOKEN_TYPES.get(kind)
    if path_type is None:
        fail(f"Unknown token type {acl_format.clean(kind)!r} (one of {', '.join(AGENT_TOKEN_TYPES)})")
    if secret == "-":  # keeps the secret out of the process list and shell history
        secret = sys.stdin.read(MAX_STDIN_TOKEN + 1).strip()
        if not secret or len(secret) > MAX_STDIN_TOKEN:
            fail("Failed setting the ACL token: no token (or more than 4096 characters) on stdin")
    # The agent answers an empty 200 (as Consul): the status is all there is to read.
    api_call(AgentClient(http_addr, token), "PUT", f"/v1/agent/token/{path_type}", "Failed setting the ACL token",
             body={"Token": secret})
    click.echo(f'ACL token "{kind}" set successfully')


# ---------------------------------------------------------------------------------------------- policy


@acl.group()
def policy() -> None:
    """Create, read, update, delete and list ACL policies."""


@policy.command("create")
@click.option("-name", "--name", default="", help="The policy's name.")
@click.option("-description", "--description", default="", help="A description of the policy.")
@click.option("-rules", "--rules", default="", help="The rules: text, @FILE, or - for stdin.")
@click.option("-valid-datacenter", "--valid-datacenter", "datacenters", multiple=True,
              help="A datacenter the policy is valid in (repeatable; default all).")
@output_options
@http_options
def policy_create(name: str, description: str, rules: str, datacenters: tuple[str, ...], fmt: str, meta: bool,
                  http_addr: str | None, token: str | None) -> None:
    """Create a policy from rules in Consul's rule language (HCL or JSON)."""
    check_format(fmt)
    if not name:
        fail("Missing require '-name' flag")
    body: dict[str, Any] = {"Name": name, "Description": description, "Rules": load_rules(rules)}
    if datacenters:
        body["Datacenters"] = list(datacenters)
    created = call(AgentClient(http_addr, token), "PUT", "/v1/acl/policy", "Failed to create new policy", body=body)
    emit(created, fmt, acl_format.policy_text, meta)


@policy.command("read")
@click.option("-id", "--id", "policy_id", default="", help="ID (or unique prefix) of the policy.")
@click.option("-name", "--name", default="", help="Name of the policy.")
@output_options
@http_options
def policy_read(policy_id: str, name: str, fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
    """Read one policy by -id or -name."""
    check_format(fmt)
    if not policy_id and not name:
        fail("Must specify either the -id or -name parameters")
    client = AgentClient(http_addr, token)
    if policy_id:
        pid = resolve_id(client, "policy", policy_id)
        obj = call(client, "GET", f"/v1/acl/policy/{seg(pid)}", f'Error reading policy "{pid}"')
    else:
        obj = call(client, "GET", f"/v1/acl/policy/name/{seg(name)}", f'Error reading policy "{name}"', ok=(200, 404))
        if obj is None:
            fail(f"Error reading policy: policy not found with name {acl_format.clean(name)!r}")
    emit(obj, fmt, acl_format.policy_text, meta)


@policy.command("update")
@click.option("-id", "--id", "policy_id", default="", help="ID (or unique prefix) of the policy to update.")
@click.option("-name", "--name", default="", help="The policy's (new) name; finds the policy when -id is not given.")
@click.option("-description", "--description", default="", help="A new description.")
@click.option("-rules", "--rules", default="", help="New rules: text, @FILE, or - for stdin.")
@click.option("-valid-datacenter", "--valid-datacenter", "datacenters", multiple=True,
              help="A datacenter the policy is valid in (repeatable).")
@click.option("-no-merge", "--no-merge", "no_merge", is_flag=True,
              help="Replace every field with what is given instead of merging with the current policy.")
@output_options
@http_options
def policy_update(policy_id: str, name: str, description: str, rules: str, datacenters: tuple[str, ...],
                  no_merge: bool, fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
    """Update a policy: given fields replace the current ones (all of them with -no-merge)."""
    check_format(fmt)
    if not policy_id and not name:
        fail("Cannot update a policy without specifying the -id or -name parameter")
    text = load_rules(rules) if rules else ""
    client = AgentClient(http_addr, token)
    pid = object_id(client, "policy", policy_id, name)
    if no_merge:
        body: dict[str, Any] = {"ID": pid, "Name": name, "Description": description, "Rules": text,
                                "Datacenters": list(datacenters)}
    else:
        current = call(client, "GET", f"/v1/acl/policy/{seg(pid)}", "Error when retrieving current policy")
        if not isinstance(current, dict):
            fail("Error when retrieving current policy: the agent's answer is not a policy")
        body = {k: current.get(k) for k in ("ID", "Name", "Description", "Rules", "Datacenters") if k in current}
        for key, value in (("Name", name), ("Description", description), ("Rules", text),
                           ("Datacenters", list(datacenters))):
            if value:
                body[key] = value
    updated = call(client, "PUT", f"/v1/acl/policy/{seg(pid)}", f"Failed to update policy {pid}", body=body)
    emit(updated, fmt, acl_format.policy_text, meta)


add_delete_and_list(policy, "policy", "/v1/acl/policies", acl_format.policy_list_text)
