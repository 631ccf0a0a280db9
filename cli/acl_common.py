"""What every `meshagent acl …` command shares: output flags, calls to /v1/acl/*, ID prefixes, rules sources,
identity flags. Errors are Consul's one-line texts; a secret given on the command line is never echoed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click

from . import acl_format
from .http_client import AgentClient, api_call, fail, http_options, json_of

ANONYMOUS_TOKEN_ID = "00000000-0000-0000-0000-000000000002"
GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
UUID_LEN = 36
MAX_RULES_FILE = 1024 * 1024  # bytes read from -rules @file or stdin; the agent refuses rules over 64 KiB anyway
MAX_LIST = 100_000  # objects of a list answer scanned for an ID prefix


def output_options(func: Any) -> Any:
    """Add Consul's -format (pretty|json) and -meta to a command that prints ACL objects."""
    func = click.option("-meta", "--meta", "meta", is_flag=True,
                        help="Show metadata (content hash and Raft indexes) for each object.")(func)
    func = click.option("-format", "--format", "fmt", default="pretty",
                        help="Output format {pretty|json}.")(func)
    return func


def emit(value: Any, fmt: str, pretty: Callable[[Any, bool], str], meta: bool) -> None:
    """Print an object (or list) as -format asks."""
    if fmt not in acl_format.FORMATS:
        fail(f"Unknown format: {acl_format.clean(fmt)}")
    text = acl_format.to_json(value) if fmt == "json" else pretty(value, meta)
    if text:
        click.echo(text)


def check_format(fmt: str) -> None:
    """Refuse an unknown -format before anything is written (a create must not run, then fail to print)."""
    if fmt not in acl_format.FORMATS:
        fail(f"Unknown format: {acl_format.clean(fmt)}")


def seg(text: str) -> str:
    """One URL path segment, escaped: an ID or name cannot reach another endpoint."""
    return quote(text, safe="")


def call(client: AgentClient, method: str, path: str, what: str, *, params: dict[str, Any] | None = None,
         body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
    """One /v1/acl request; its JSON answer (None for a status other than 200 that `ok` allows)."""
    resp = api_call(client, method, path, what, params=params, body=body, ok=ok)
    return json_of(resp, what) if resp.status_code == 200 else None


def resolve_id(client: AgentClient, kind: str, partial: str) -> str:
    """A full ID from an ID or unique prefix of one (Consul's GetTokenAccessorIDFromPartial and kin);
    `anonymous` and `global-management` name the builtins."""
    if kind == "token" and partial == "anonymous":
        return ANONYMOUS_TOKEN_ID
    if kind == "policy" and partial == "global-management":
        return GLOBAL_MANAGEMENT_ID
    if len(partial) == UUID_LEN:
        return partial
    if not partial or any(ch not in "0123456789abcdefABCDEF-" for ch in partial):
        fail(f"Error determining {kind} ID: {acl_format.clean(partial)!r} is not an ID or a prefix of one")
    listed = call(client, "GET", f"/v1/acl/{'policies' if kind == 'policy' else kind + 's'}",
                  f"Error determining {kind} ID")
    key = "AccessorID" if kind == "token" else "ID"
    found = ""
    for item in listed[:MAX_LIST] if isinstance(listed, list) else []:
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str) and value.lower().startswith(partial.lower()):
            if found:
                fail(f"Error determining {kind} ID: Partial {kind} ID is not unique")
            found = value
    if not found:
        fail(f"Error determining {kind} ID: No such {kind} ID with prefix: {partial}")
    return found


def id_by_name(client: AgentClient, kind: str, name: str) -> str:
    """The ID of the policy or role called `name` (Consul's GetPolicyIDByName / GetRoleIDByName)."""
    what = f"Error determining {kind} ID"
    obj = call(client, "GET", f"/v1/acl/{kind}/name/{seg(name)}", what, ok=(200, 404))
    if not isinstance(obj, dict) or not isinstance(obj.get("ID"), str):
        fail(f"{what}: No such {kind} with name {acl_format.clean(name)}")
    return str(obj["ID"])


def object_id(client: AgentClient, kind: str, obj_id: str, name: str) -> str:
    """The policy's or role's ID: -id (an ID or unique prefix) wins, else the one called -name."""
    return resolve_id(client, kind, obj_id) if obj_id else id_by_name(client, kind, name)


def add_delete_and_list(group: click.Group, kind: str, list_path: str, pretty: Callable[[Any, bool], str]) -> None:
    """Add Consul's `delete` (by -id or -name) and `list` to the `acl policy` or `acl role` group."""

    @group.command("delete", help=f"Delete a {kind} by -id or -name.")
    @click.option("-id", "--id", "obj_id", default="", help=f"ID (or unique prefix) of the {kind}.")
    @click.option("-name", "--name", default="", help=f"Name of the {kind}.")
    @http_options
    def delete(obj_id: str, name: str, http_addr: str | None, token: str | None) -> None:
        if not obj_id and not name:
            fail("Must specify either the -id or -name parameters")
        client = AgentClient(http_addr, token)
        oid = object_id(client, kind, obj_id, name)
        call(client, "DELETE", f"/v1/acl/{kind}/{seg(oid)}", f'Error deleting {kind} "{oid}"')
        click.echo(f'{kind.capitalize()} "{oid}" deleted successfully')

    @group.command("list", help=f"List {list_path.rsplit('/', 1)[1]}.")
    @output_options
    @http_options
    def list_(fmt: str, meta: bool, http_addr: str | None, token: str | None) -> None:
        check_format(fmt)
        listed = call(AgentClient(http_addr, token), "GET", list_path, f"Failed to retrieve the {kind} list")
        emit(listed, fmt, pretty, meta)


def load_rules(value: str) -> str:
    """-rules: the text, `@file` to read a file, or `-` for stdin (Consul's LoadDataSource)."""
    if value == "-":
        raw = sys.stdin.buffer.read(MAX_RULES_FILE + 1)
        source = "stdin"
    elif value.startswith("@"):
        source = value[1:]
        try:
            with open(source, "rb") as fh:
                raw = fh.read(MAX_RULES_FILE + 1)
        except OSError as exc:
            fail(f"Error loading rules: Failed to read file {source!r}: {exc.strerror or type(exc).__name__}")
    else:
        return value
    if len(raw) > MAX_RULES_FILE:
        fail(f"Error loading rules: {source} holds more than {MAX_RULES_FILE} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        fail(f"Error loading rules: {source} is not UTF-8 text")


def service_identities(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """-service-identity NAME or NAME:DC1,DC2 (Consul's ExtractServiceIdentities)."""
    out: list[dict[str, Any]] = []
    for raw in values:
        parts = raw.split(":")
        if len(parts) > 2 or not parts[0]:
            fail(f"Malformed -service-identity argument: {acl_format.clean(raw)!r}")
        ident: dict[str, Any] = {"ServiceName": parts[0]}
        if len(parts) == 2:
            ident["Datacenters"] = parts[1].split(",")
        out.append(ident)
    return out


def node_identities(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """-node-identity NODENAME:DATACENTER (Consul's ExtractNodeIdentities)."""
    out: list[dict[str, Any]] = []
    for raw in values:
        parts = raw.split(":")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            fail(f"Malformed -node-identity argument: {acl_format.clean(raw)!r}")
        out.append({"NodeName": parts[0], "Datacenter": parts[1]})
    return out


def policy_links(client: AgentClient, ids: tuple[str, ...], names: tuple[str, ...]) -> list[dict[str, str]]:
    """Links for -policy-id (prefixes resolved) and -policy-name (left to the agent, as Consul does)."""
    return [{"Name": n} for n in names] + [{"ID": resolve_id(client, "policy", i)} for i in ids]


def role_links(client: AgentClient, ids: tuple[str, ...], names: tuple[str, ...]) -> list[dict[str, str]]:
    """Links for -role-id (prefixes resolved) and -role-name."""
    return [{"Name": n} for n in names] + [{"ID": resolve_id(client, "role", i)} for i in ids]


def merge_links(old: Any, new: list[dict[str, str]]) -> list[dict[str, Any]]:
    """`old` links plus those of `new` not already linked (by ID or by Name)."""
    out = [link for link in old if isinstance(link, dict)] if isinstance(old, list) else []
    for link in new:
        if not any(link.get(k) and link.get(k) == o.get(k) for o in out for k in ("ID", "Name")):
            out.append(link)
    return out


def merge_services(old: Any, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` service identities with those of `new` added, or replacing the one of the same name."""
    out = [i for i in old if isinstance(i, dict)] if isinstance(old, list) else []
    for ident in new:
        out = [o for o in out if o.get("ServiceName") != ident["ServiceName"]] + [ident]
    return out


def merge_nodes(old: Any, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` node identities plus those of `new` not already there."""
    out = [i for i in old if isinstance(i, dict)] if isinstance(old, list) else []
    return out + [n for n in new if n not in out]
