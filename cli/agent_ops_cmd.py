"""Commands that act on the local agent: validate, reload, maint, leave, info, version."""

from __future__ import annotations

import click
import meshagent
from meshagent.agent.config.loader import validate_paths

from .http_client import AgentClient, fail, http_options


@click.command()
@click.option("-quiet", "--quiet", is_flag=True, help="Print nothing on success.")
@click.argument("paths", nargs=-1, required=True)
def validate(paths: tuple[str, ...], quiet: bool) -> None:
    """Check config files or directories; print every error with file, line and field."""
    errors, warnings = validate_paths(list(paths))
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)
    if errors:
        for err in errors:
            click.echo(f"Error: {err}", err=True)
        click.echo("Config validation failed.", err=True)
        raise SystemExit(1)
    if not quiet:
        click.echo("Configuration is valid!")


@click.command()
@http_options
def reload(http_addr: str | None, token: str | None) -> None:
    """Ask the agent to reload its configuration files."""
    AgentClient(http_addr, token).request("PUT", "/v1/agent/reload")
    click.echo("Configuration reload triggered")


@click.command()
@click.option("-enable", "--enable", is_flag=True)
@click.option("-disable", "--disable", is_flag=True)
@click.option("-reason", "--reason", default="")
@click.option("-service", "--service", "service_id", default="")
@http_options
def maint(enable: bool, disable: bool, reason: str, service_id: str, http_addr: str | None,
          token: str | None) -> None:
    """Put the node (or one service with -service) in or out of maintenance mode; no flags lists it."""
    if enable and disable:
        fail("Only one of -enable or -disable may be provided")
    client = AgentClient(http_addr, token)
    if not enable and not disable:
        for check in client.request("GET", "/v1/agent/checks").json().values():
            if check["CheckID"] == "_node_maintenance":
                click.echo(f"Node:\n  Name:   {check['Node']}\n  Reason: {check['Notes']}\n")
            elif check["CheckID"].startswith("_service_maintenance:"):
                click.echo(f"Service:\n  ID:     {check['ServiceID']}\n  Reason: {check['Notes']}\n")
        return
    params = {"enable": "true" if enable else "false", "reason": reason}
    if service_id:
        client.request("PUT", f"/v1/agent/service/maintenance/{service_id}", params=params)
        click.echo(f"Service maintenance is now {'enabled' if enable else 'disabled'}")
    else:
        client.request("PUT", "/v1/agent/maintenance", params=params)
        click.echo(f"Node maintenance is now {'enabled' if enable else 'disabled'}")


@click.command()
@http_options
def leave(http_addr: str | None, token: str | None) -> None:
    """Gracefully leave and shut down the agent."""
    AgentClient(http_addr, token).request("PUT", "/v1/agent/leave")
    click.echo("Graceful leave complete")


@click.command()
@http_options
def info(http_addr: str | None, token: str | None) -> None:
    """Print the agent's state for operators."""
    self_info = AgentClient(http_addr, token).request("GET", "/v1/agent/self").json()
    config = self_info.get("Config", {})
    sections = {
        "agent": {"server": str(config.get("Server", False)).lower(), "node_name": config.get("NodeName", ""),
                  "node_id": config.get("NodeID", ""), "datacenter": config.get("Datacenter", "")},
        "build": {"version": config.get("Version", ""), "revision": config.get("Revision", "")},
    }
    for key, value in (self_info.get("Stats") or {}).items():
        if isinstance(value, dict):
            sections.setdefault(key, {}).update({k: str(v) for k, v in value.items()})
    for name, values in sections.items():
        click.echo(f"{name}:")
        for key in sorted(values):
            click.echo(f"\t{key} = {values[key]}")


@click.command()
def version() -> None:
    """Print the version."""
    click.echo(f"meshagent v{meshagent.__version__}")
    click.echo("Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use protocol >2 "
               "when speaking to compatible agents)")
