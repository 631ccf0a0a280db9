"""`meshagent join` and `meshagent force-leave`: the gossip pool, through the local agent's HTTP API."""

from __future__ import annotations

import click

from .http_client import AgentClient, fail, http_options, load_httpx


@click.command()
@http_options
@click.argument("addresses", nargs=-1, required=True)
def join(addresses: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Tell the local agent to join the cluster through ADDRESSES (host or host:port, Serf LAN port 8301)."""
    client = AgentClient(http_addr, token)
    httpx = load_httpx()
    joined = 0
    for address in addresses:
        try:
            resp = client.http.put(f"/v1/agent/join/{address}")
        except httpx.HTTPError as exc:
            fail(f"Error querying agent at {client.addr}: {exc}")
        if resp.status_code == 200:
            joined += 1
        else:
            click.echo(f"Error joining address '{address}': {resp.text.strip() or resp.reason_phrase}", err=True)
    if not joined:
        fail("Failed to join any nodes.")
    click.echo(f"Successfully joined cluster by contacting {joined} nodes.")


@click.command("force-leave")
@click.option("-prune", "--prune", is_flag=True, help="Remove the node from the member list entirely.")
@http_options
@click.argument("node")
def force_leave(node: str, prune: bool, http_addr: str | None, token: str | None) -> None:
    """Force a failed NODE into the left state (with -prune, forget it at once)."""
    AgentClient(http_addr, token).request("PUT", f"/v1/agent/force-leave/{node}",
                                          params={"prune": ""} if prune else None)


@click.command()
@click.option("-name", "--name", "name_opt", default=None, help="Event name (or give it as the first argument).")
@http_options
@click.argument("args", nargs=-1)
def event(name_opt: str | None, args: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Fire a user event to every member: `meshagent event NAME [PAYLOAD]` or `-name NAME [PAYLOAD]`."""
    rest = list(args)
    name = name_opt or (rest.pop(0) if rest else "")
    if not name:
        fail("Event name must be specified")
    if len(rest) > 1:
        fail("Too many command line arguments: give one payload")
    payload = rest[0].encode() if rest else b""
    record = AgentClient(http_addr, token).request("PUT", f"/v1/event/fire/{name}", content=payload).json()
    click.echo(f"Event ID: {record['ID']}")
