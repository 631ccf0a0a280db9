"""`meshagent catalog services|nodes|datacenters` and `meshagent members`."""

from __future__ import annotations

import re

import click

from .http_client import AgentClient, fail, http_options
from .output import clean, format_option, print_json, print_table  # print_table: kept importable from here


@click.group()
def catalog() -> None:
    """Query the catalog."""


@catalog.command("services")
@click.option("-tags", "--tags", is_flag=True, help="Show tags.")
@click.option("-node", "--node", default=None, help="Only services on this node.")
@format_option
@http_options
def catalog_services(tags: bool, node: str | None, fmt: str, http_addr: str | None, token: str | None) -> None:
    """List service names (one per line)."""
    client = AgentClient(http_addr, token)
    if node:
        resp = client.request("GET", f"/v1/catalog/node/{node}", ok404=True)
        data = resp.json() if resp.status_code == 200 else None
        if not data:
            fail(f"Error listing services for node {node}: no such node")
        services: dict[str, list[str]] = {}
        for svc in (data.get("Services") or {}).values():
            services.setdefault(svc["Service"], []).extend(svc.get("Tags") or [])
    else:
        services = client.request("GET", "/v1/catalog/services").json()
    if fmt == "json":  # Consul's shape: service name -> tags
        print_json({name: sorted(set(services[name] or [])) for name in sorted(services)})
        return
    for name in sorted(services):
        click.echo(f"{name:<20} {','.join(sorted(set(services[name])))}" if tags else name)


@catalog.command("nodes")
@click.option("-detailed", "--detailed", is_flag=True)
@click.option("-service", "--service", default=None, help="Only nodes providing this service.")
@format_option
@http_options
def catalog_nodes(detailed: bool, service: str | None, fmt: str, http_addr: str | None, token: str | None) -> None:
    """List nodes: Node, ID, Address, DC."""
    client = AgentClient(http_addr, token)
    if service:
        entries = client.request("GET", f"/v1/catalog/service/{service}").json()
        nodes = [{"Node": e["Node"], "ID": e.get("ID", ""), "Address": e["Address"], "Datacenter": e["Datacenter"],
                  "Meta": e.get("NodeMeta") or {}} for e in entries]
    else:
        nodes = client.request("GET", "/v1/catalog/nodes").json()
    if fmt == "json":
        print_json(nodes)
        return
    if not nodes:
        fail("No nodes match the given query - try expanding your search.")
    headers = ["Node", "ID", "Address", "DC"] + (["Meta"] if detailed else [])
    rows = []
    for n in nodes:
        row = [n["Node"], n.get("ID", "") if detailed else n.get("ID", "")[:8], n["Address"], n["Datacenter"]]
        if detailed:
            row.append(",".join(f"{k}={v}" for k, v in sorted((n.get("Meta") or {}).items())))
        rows.append(row)
    print_table(headers, rows)


@catalog.command("datacenters")
@format_option
@http_options
def catalog_datacenters(fmt: str, http_addr: str | None, token: str | None) -> None:
    """List the known datacenters, one per line (nearest first, as the agent orders them)."""
    found = AgentClient(http_addr, token).request("GET", "/v1/catalog/datacenters").json()
    if not isinstance(found, list) or not all(isinstance(dc, str) for dc in found):
        fail("Error listing datacenters: the agent's answer is not a list of names")
    if fmt == "json":
        print_json(found)
        return
    if not found:
        fail("No datacenters found")
    for dc in found:
        click.echo(clean(dc))


@click.command()
@click.option("-detailed", "--detailed", is_flag=True)
@click.option("-status", "--status", "status_re", default=None, help="Regexp on the member status.")
@format_option
@http_options
def members(detailed: bool, status_re: str | None, fmt: str, http_addr: str | None, token: str | None) -> None:
    """List gossip members."""
    try:
        pattern = re.compile(status_re) if status_re else None
    except re.error as exc:
        fail(f"Failed to compile status regexp: {exc}")
    names = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    out = []
    for m in AgentClient(http_addr, token).request("GET", "/v1/agent/members").json():
        status = names.get(m.get("Status", 0), "unknown")
        if pattern and not pattern.search(status):
            continue
        out.append((m, status))
    if fmt == "json":
        print_json([m for m, _ in out])
        return
    if detailed:
        rows = [[m["Name"], f"{m['Addr']}:{m['Port']}", s,
                 ", ".join(f"{k}={v}" for k, v in sorted(m.get("Tags", {}).items()))] for m, s in out]
        print_table(["Node", "Address", "Status", "Tags"], rows)
        return
    rows = []
    for m, s in out:
        tags = m.get("Tags", {})
        rows.append([m["Name"], f"{m['Addr']}:{m['Port']}", s, "server" if tags.get("role") == "consul" else "client",
                     tags.get("build", ""), tags.get("vsn", ""), tags.get("dc", ""), "default",
                     tags.get("segment") or "<all>"])
    print_table(["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"], rows)
