"""`meshagent intention create|check|get|list|match|delete`: Consul's intention commands over the legacy
intention API (/v1/connect/intentions...), which the agent keeps as service-intentions config entries.

Exit codes as Consul's: `check` 0 allowed, 1 denied, 2 on an error; `list` 2 when there are no intentions;
every other failure 1.
"""

from __future__ import annotations

import datetime
from typing import Any

import click

from .config_cmd import segment
from .http_client import AgentClient, api_call, fail, http_options, json_of
from .output import format_option, print_json

DEFAULT_NS = "default"


def target(text: str, side: str) -> tuple[str, str]:
    """(namespace, name) of a SRC or DST argument: `name` or `namespace/name` (namespace "" when not given)."""
    if text.count("/") > 1:
        fail(f"Error: Invalid intention {side}: target can contain at most one '/'")
    ns, _, name = text.rpartition("/")
    if not name:
        fail(f"Error: Invalid intention {side}: the service name is empty")
    return ns, name


def _side(ns: Any, name: Any) -> str:
    """`name`, or `ns/name` outside the default namespace (Consul's SourceString)."""
    return f"{ns}/{name}" if ns and ns != DEFAULT_NS else str(name)


def describe(ixn: dict[str, Any]) -> str:
    """Consul's one-line form: `web => db (allow)`, or `(2 permissions)` for an L7 intention."""
    permissions = ixn.get("Permissions") or []
    count = len(permissions) if isinstance(permissions, list) else 0
    detail = str(ixn.get("Action", "")) if count == 0 else ("1 permission" if count == 1 else f"{count} permissions")
    return (f"{_side(ixn.get('SourceNS'), ixn.get('SourceName'))} => "
            f"{_side(ixn.get('DestinationNS'), ixn.get('DestinationName'))} ({detail})")


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"Error: invalid -meta {pair!r}: must be key=value")
        meta[key] = value
    return meta


@click.group()
def intention() -> None:
    """Create, check and manage intentions: which service may connect to which."""


@intention.command("create")
@click.option("-allow", "--allow", is_flag=True, help="Create an intention that allows when matched (the default).")
@click.option("-deny", "--deny", is_flag=True, help="Create an intention that denies when matched.")
@click.option("-replace", "--replace", is_flag=True, help="Replace an intention of the same source and destination.")
@click.option("-meta", "--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata for the intention (repeatable).")
@click.option("-description", "--description", default="", help="A description of the intention.")
@http_options
@click.argument("src")
@click.argument("dst")
def create(src: str, dst: str, allow: bool, deny: bool, replace: bool, meta: tuple[str, ...], description: str,
           http_addr: str | None, token: str | None) -> None:
    """Create an intention from SRC to DST (allow unless -deny)."""
    if allow and deny:
        fail("Only one of -allow or -deny may be specified.")
    src_ns, src_name = target(src, "source")
    dst_ns, dst_name = target(dst, "destination")
    body: dict[str, Any] = {"SourceName": src_name, "DestinationName": dst_name, "SourceType": "consul",
                            "Action": "deny" if deny else "allow", "Meta": _meta(meta), "Description": description}
    if src_ns:
        body["SourceNS"] = src_ns
    if dst_ns:
        body["DestinationNS"] = dst_ns
    shown = describe(body)
    client = AgentClient(http_addr, token)
    if replace:
        # Consul's -replace: the intention found for the pair is overwritten whole (by its ID), else created.
        what = f"Error looking up intention for replacement with source {src!r} and destination {dst!r}"
        resp = api_call(client, "GET", "/v1/connect/intentions/exact", what,
                        params={"source": src, "destination": dst}, ok=(200, 404))
        old = json_of(resp, what) if resp.status_code == 200 else None
        if isinstance(old, dict) and old.get("ID"):
            api_call(client, "PUT", f"/v1/connect/intentions/{segment(str(old['ID']))}",
                     f"Error replacing intention with source {src!r} and destination {dst!r}", body=body)
            click.echo(f"Created: {shown}")
            return
    api_call(client, "POST", "/v1/connect/intentions", f'Error creating intention "{shown}"', body=body)
    click.echo(f"Created: {shown}")


@intention.command("check")
@http_options
@click.argument("src")
@click.argument("dst")
def check(src: str, dst: str, http_addr: str | None, token: str | None) -> None:
    """Whether a connection from SRC to DST would be allowed (exit 0: Allowed, 1: Denied, 2: error)."""
    what = "Error checking the connection"
    resp = api_call(AgentClient(http_addr, token), "GET", "/v1/connect/intentions/check", what,
                    params={"source": src, "destination": dst}, code=2)
    answer = json_of(resp, what)
    if not isinstance(answer, dict) or not isinstance(answer.get("Allowed"), bool):
        fail(f"{what}: the agent's answer has no Allowed field", 2)
    click.echo("Allowed" if answer["Allowed"] else "Denied")
    raise SystemExit(0 if answer["Allowed"] else 1)


def _fetch(client: AgentClient, args: tuple[str, ...]) -> dict[str, Any]:
    """One intention by SRC DST or by ID (Consul's GetFromArgs)."""
    if len(args) == 1:
        what = f"Error reading the intention with ID {args[0]!r}"
        resp = api_call(client, "GET", f"/v1/connect/intentions/{segment(args[0])}", what, ok=(200, 404))
        if resp.status_code == 404:
            fail(f"Intention with ID {args[0]!r} not found")
    elif len(args) == 2:
        what = f"Error reading the intention from {args[0]!r} to {args[1]!r}"
        resp = api_call(client, "GET", "/v1/connect/intentions/exact", what,
                        params={"source": args[0], "destination": args[1]})
    else:
        fail("command requires exactly 1 or 2 arguments")
    found = json_of(resp, what)
    if not isinstance(found, dict):
        fail(f"{what}: the agent's answer is not an intention")
    return found


@intention.command("get")
@format_option
@http_options
@click.argument("args", nargs=-1, metavar="SRC DST | ID")
def get(args: tuple[str, ...], fmt: str, http_addr: str | None, token: str | None) -> None:
    """Show one intention, by source and destination or by ID."""
    ixn = _fetch(AgentClient(http_addr, token), args)
    if fmt == "json":
        print_json(ixn)
        return
    rows = [("Source:", _side(ixn.get("SourceNS"), ixn.get("SourceName"))),
            ("Destination:", _side(ixn.get("DestinationNS"), ixn.get("DestinationName")))]
    if ixn.get("Action"):
        rows.append(("Action:", str(ixn["Action"])))
    if ixn.get("ID"):
        rows.append(("ID:", str(ixn["ID"])))
    if ixn.get("Description"):
        rows.append(("Description:", str(ixn["Description"])))
    meta = ixn.get("Meta")
    if isinstance(meta, dict):
        rows += [(f"Meta[{key}]:", str(meta[key])) for key in sorted(meta)]
    rows.append(("Created At:", created_at(ixn.get("CreatedAt"))))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
    if ixn.get("Permissions"):
        import json

        click.echo("Permissions:\n" + json.dumps(ixn["Permissions"], indent=2))


def created_at(value: Any) -> str:
    """An RFC 3339 time as Go's RFC 850 in local time (`Monday, 02-Jan-06 15:04:05 UTC`), as Consul prints it."""
    text = str(value or "")
    try:
        head, _, rest = text.partition(".")
        if rest:  # Go writes up to 9 fractional digits; Python parses at most 6
            zone = rest.lstrip("0123456789")
            text = head + "." + rest[: len(rest) - len(zone)][:6] + zone
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return when.astimezone().strftime("%A, %d-%b-%y %H:%M:%S %Z")
    except (ValueError, OverflowError):
        return str(value or "")


@intention.command("list")
@format_option
@http_options
def list_(fmt: str, http_addr: str | None, token: str | None) -> None:
    """List every intention: ID, Source, Action, Destination, Precedence."""
    what = "Failed to retrieve the intentions list"
    items = json_of(api_call(AgentClient(http_addr, token), "GET", "/v1/connect/intentions", what), what)
    if not isinstance(items, list):
        fail(f"{what}: the agent's answer is not a list")
    if fmt == "json":  # an empty list is an answer here, not an error: scripts read it
        print_json(items)
        return
    if not items:
        fail("There are no intentions.", 2)
    rows = [["ID", "Source", "Action", "Destination", "Precedence"]]
    rows += [[str(i.get("ID", "")), str(i.get("SourceName", "")), str(i.get("Action", "")),
              str(i.get("DestinationName", "")), str(i.get("Precedence", ""))] for i in items if isinstance(i, dict)]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@intention.command("match")
@click.option("-source", "--source", "by_source", is_flag=True, help="Match intentions with the given source.")
@click.option("-destination", "--destination", "by_destination", is_flag=True,
              help="Match intentions with the given destination (the default).")
@format_option
@http_options
@click.argument("name", metavar="SRC|DST")
def match(name: str, by_source: bool, by_destination: bool, fmt: str, http_addr: str | None,
          token: str | None) -> None:
    """Show the intentions that apply to a source or destination, in evaluation order."""
    if by_source and by_destination:
        fail("Error: only one of -source or -destination may be specified")
    what = "Error matching the connection"
    resp = api_call(AgentClient(http_addr, token), "GET", "/v1/connect/intentions/match", what,
                    params={"by": "source" if by_source else "destination", "name": name})
    found = json_of(resp, what)
    matches = found.get(name) if isinstance(found, dict) else None
    if fmt == "json":
        print_json([i for i in matches if isinstance(i, dict)] if isinstance(matches, list) else [])
        return
    for ixn in matches if isinstance(matches, list) else []:
        if isinstance(ixn, dict):
            click.echo(describe(ixn))


@intention.command("delete")
@http_options
@click.argument("args", nargs=-1, metavar="SRC DST | ID")
def delete(args: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Delete an intention, by source and destination or by ID."""
    client = AgentClient(http_addr, token)
    what = "Error deleting the intention"
    if len(args) == 1:
        api_call(client, "DELETE", f"/v1/connect/intentions/{segment(args[0])}", what)
    elif len(args) == 2:
        api_call(client, "DELETE", "/v1/connect/intentions/exact", what,
                 params={"source": args[0], "destination": args[1]})
    else:
        fail("command requires exactly 1 or 2 arguments")
    click.echo("Intention deleted.")
