"""Commands that act on the local agent: validate, reload, maint, leave, info, version."""

from __future__ import annotations

from typing import Any

import click
import meshagent

from .http_client import AgentClient, fail, http_options
from .output import format_option, print_json


@click.command()
@click.option("-quiet", "--quiet", is_flag=True, help="Print nothing on success.")
@click.argument("paths", nargs=-1, required=True)
def validate(paths: tuple[str, ...], quiet: bool) -> None:
    """Check config files or directories; print every error with file, line and field."""
    from meshagent.agent.config.loader import validate_paths  # ~70 ms of imports: not for `meshagent version`

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
@format_option
@http_options
def info(fmt: str, http_addr: str | None, token: str | None) -> None:
    """Print the agent's state for operators."""
    client = AgentClient(http_addr, token)
    self_info = client.request("GET", "/v1/agent/self").json()
    if not isinstance(self_info, dict):
        fail("Error querying agent: /v1/agent/self is not a JSON object")
    counts = {}
    for name, path in (("checks", "/v1/agent/checks"), ("services", "/v1/agent/services")):
        found = client.request("GET", path, ok404=True)
        counts[name] = len(found.json()) if found.status_code == 200 else 0
    sections = info_sections(self_info, counts)
    if fmt == "json":
        print_json(sections)
        return
    for name in sorted(sections):
        click.echo(f"{name}:")
        for key in sorted(sections[name]):
            click.echo(f"\t{key} = {sections[name][key]}")


def info_sections(self_info: dict[str, Any], counts: dict[str, int]) -> dict[str, dict[str, str]]:
    """Consul's `consul info` sections (agent, build, consul, raft, serf_lan) from /v1/agent/self, as text."""
    config = self_info.get("Config")
    config = config if isinstance(config, dict) else {}
    stats = self_info.get("Stats")
    stats = stats if isinstance(stats, dict) else {}
    server = config.get("Server") is True
    sections: dict[str, dict[str, str]] = {
        "agent": {"server": go_text(server), "node_name": go_text(config.get("NodeName", "")),
                  "node_id": go_text(config.get("NodeID", "")), "datacenter": go_text(config.get("Datacenter", "")),
                  "checks": str(counts.get("checks", 0)), "services": str(counts.get("services", 0))},
        "build": {"version": go_text(config.get("Version", "")), "prerelease": "",
                  "revision": go_text(config.get("Revision") or f"v{config.get('Version', '')}")},
    }
    raft = stats.get("raft") if isinstance(stats.get("raft"), dict) else None
    sections["consul"] = {"server": go_text(server), "known_datacenters": "1"}
    if raft:
        sections["consul"].update({"leader": go_text(raft.get("state") == "leader"),
                                   "leader_addr": go_text(raft.get("leader_addr", ""))})
    for key, value in stats.items():
        if isinstance(value, dict):
            section = sections.setdefault(str(key), {})
            section.update({str(k): go_text(v, str(k)) for k, v in value.items()})
    return sections


def go_text(value: Any, key: str = "") -> str:
    """A stat as Consul's Go prints it: true/false, plain numbers, lists as [a b], Raft's configuration as
    [{Suffrage:Voter ID:... Address:...}]; never a Python repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return "[" + " ".join(go_text(v, key) for v in value) + "]"
    if isinstance(value, dict):
        if key == "latest_configuration" and {"id", "address"} <= set(value):
            return (f"{{Suffrage:{'Voter' if value.get('voter', True) else 'Nonvoter'} ID:{go_text(value['id'])} "
                    f"Address:{go_text(value['address'])}}}")
        return "{" + " ".join(f"{k}:{go_text(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if text.isprintable() else "".join(ch if ch.isprintable() else " " for ch in text)


@click.command()
@format_option
def version(fmt: str) -> None:
    """Print the version."""
    from meshagent.build_info import revision

    if fmt == "json":  # Consul's `version -format=json` shape
        print_json({"Version": meshagent.__version__, "Revision": revision(), "Prerelease": "", "BuildDate": "",
                    "RPC": {"Default": 2, "Min": 2, "Max": 3}})
        return
    click.echo(f"meshagent v{meshagent.__version__}")
    click.echo(f"Revision {revision()}")
    click.echo("Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use protocol >2 "
               "when speaking to compatible agents)")
