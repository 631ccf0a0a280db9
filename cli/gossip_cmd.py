"""`meshagent join` and `meshagent force-leave`: the gossip pool, through the local agent's HTTP API."""

from __future__ import annotations

import click
import httpx

from .http_client import AgentClient, fail, http_options


@click.command()
@http_options
@click.argument("addresses", nargs=-1, required=True)
def join(addresses: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Tell the local agent to join the cluster through ADDRESSES (host or host:port, Serf LAN port 8301)."""
    client = AgentClient(http_addr, token)
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
