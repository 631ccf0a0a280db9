"""`meshagent operator raft list-peers|remove-peer`: look at and change the Raft peer set."""

from __future__ import annotations

import click

from .http_client import AgentClient, fail, http_options
from .output import format_option, print_json, print_table


@click.group()
def operator() -> None:
    """Cluster-level tools for operators."""


@operator.group()
def raft() -> None:
    """Inspect and change the Raft peer set of the servers."""


@raft.command("list-peers")
@click.option("-stale", "--stale", is_flag=True, help="Let any server answer, even without a leader.")
@format_option
@http_options
def list_peers(stale: bool, fmt: str, http_addr: str | None, token: str | None) -> None:
    """List the Raft peers: Node, ID, Address, State, Voter, RaftProtocol."""
    params = {"stale": ""} if stale else None
    config = AgentClient(http_addr, token).request("GET", "/v1/operator/raft/configuration", params=params).json()
    if not isinstance(config, dict):
        fail("Error getting peers: the agent's answer is not a Raft configuration")
    if fmt == "json":  # the API's shape: {Servers: [{ID, Node, Address, Leader, Voter, ProtocolVersion}], Index}
        print_json(config)
        return
    rows = [[str(s.get("Node", "")), str(s.get("ID", "")), str(s.get("Address", "")),
             "leader" if s.get("Leader") else "follower", str(bool(s.get("Voter"))).lower(),
             str(s.get("ProtocolVersion") or "3")]
            for s in config.get("Servers") or [] if isinstance(s, dict)]
    print_table(["Node", "ID", "Address", "State", "Voter", "RaftProtocol"], rows)


@raft.command("remove-peer")
@click.option("-address", "--address", default="", help="IP:port of the server to remove (its Raft address).")
@click.option("-id", "--id", "server_id", default="", help="ID of the server to remove.")
@http_options
def remove_peer(address: str, server_id: str, http_addr: str | None, token: str | None) -> None:
    """Remove a server from the Raft configuration (prefer force-leave while it is still a member)."""
    if not address and not server_id:
        fail("Error removing peer: an address or id is required for the peer to remove")
    if address and server_id:
        fail("Error removing peer: cannot give both an address and id")
    params = {"id": server_id} if server_id else {"address": address}
    AgentClient(http_addr, token).request("DELETE", "/v1/operator/raft/peer", params=params)
    if server_id:
        click.echo(f'Removed peer with id "{server_id}"')
    else:
        click.echo(f'Removed peer with address "{address}"')
