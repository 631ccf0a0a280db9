"""`meshagent keyring`: gossip encryption keys across the cluster, as `consul keyring` does it."""

from __future__ import annotations

import click

from .http_client import AgentClient, fail, http_options
from .output import format_option, print_json


@click.command()
@click.option("-install", "--install", "install", default=None, help="Install a new key on every member.")
@click.option("-use", "--use", "use", default=None, help="Make an installed key the primary on every member.")
@click.option("-remove", "--remove", "remove", default=None, help="Remove a key from every member.")
@click.option("-list", "--list", "list_", is_flag=True, help="List the keys installed across the cluster.")
@format_option
@http_options
def keyring(install: str | None, use: str | None, remove: str | None, list_: bool, fmt: str,
            http_addr: str | None, token: str | None) -> None:
    """Manage gossip encryption keys: exactly one of -install, -use, -remove, -list."""
    chosen = [name for name, value in (("install", install), ("use", use), ("remove", remove), ("list", list_))
              if value]
    if len(chosen) != 1:
        fail("Exactly one of -list, -install, -use, or -remove must be provided")
    client = AgentClient(http_addr, token)
    if list_:
        pools = client.request("GET", "/v1/operator/keyring").json()
        if fmt == "json":
            print_json(pools)
            return
        click.echo("==> Gathering installed encryption keys...")
        for pool in pools:
            click.echo("")
            click.echo(f"{'WAN' if pool.get('WAN') else 'LAN'}:")
            for key, count in sorted(pool.get("Keys", {}).items()):
                click.echo(f"  {key} [{count}/{pool.get('NumNodes', 0)}]")
        return
    method, key, verb = (("POST", install, "Installing new gossip encryption key...") if install else
                         ("PUT", use, "Changing primary gossip encryption key...") if use else
                         ("DELETE", remove, "Removing gossip encryption key..."))
    click.echo(f"==> {verb}")
    client.request(method, "/v1/operator/keyring", json={"Key": key})
