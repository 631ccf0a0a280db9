"""`meshagent services register|deregister` from files or flags."""

from __future__ import annotations

import click
from meshagent.agent.config.encode import service_to_api
from meshagent.agent.config.loader import ConfigErrors, load_config

from .http_client import AgentClient, fail, http_options


def _file_services(files: tuple[str, ...]) -> list[dict[str, object]]:
    try:
        config = load_config(list(files), [], {})
    except ConfigErrors as exc:
        fail(str(exc.errors[0]) if len(exc.errors) == 1 else "\n".join(map(str, exc.errors)))
    if not config.services:
        fail("No service definitions found in the given files")
    return [service_to_api(s) for s in config.services]


@click.group()
def services() -> None:
    """Register and deregister services with the local agent."""


@services.command("register")
@click.option("-id", "--id", "sid", default="")
@click.option("-name", "--name", default="")
@click.option("-address", "--address", default="")
@click.option("-port", "--port", type=int, default=0)
@click.option("-tag", "--tag", multiple=True)
@click.option("-meta", "--meta", multiple=True, help="key=value; repeatable.")
@http_options
@click.argument("files", nargs=-1)
def register(sid: str, name: str, address: str, port: int, tag: tuple[str, ...], meta: tuple[str, ...],
             files: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Register services from FILES, or one service from flags."""
    if files:
        bodies = _file_services(files)
    elif name:
        metadata = {}
        for item in meta:
            key, sep, value = item.partition("=")
            if not sep:
                fail(f"Invalid -meta {item!r}: use key=value")
            metadata[key] = value
        bodies = [{"Name": name, "ID": sid or name, "Address": address, "Port": port, "Tags": list(tag),
                   "Meta": metadata}]
    else:
        fail("Service registration requires at least one argument or flags.")
    client = AgentClient(http_addr, token)
    for body in bodies:
        client.request("PUT", "/v1/agent/service/register", json=body)
        click.echo(f"Registered service: {body['Name']}")


@services.command("deregister")
@click.option("-id", "--id", "sid", default="")
@http_options
@click.argument("files", nargs=-1)
def deregister(sid: str, files: tuple[str, ...], http_addr: str | None, token: str | None) -> None:
    """Deregister services by -id or by the ids in FILES."""
    ids = [str(b["ID"]) for b in _file_services(files)] if files else ([sid] if sid else [])
    if not ids:
        fail("Service deregistration requires at least one argument or -id.")
    client = AgentClient(http_addr, token)
    for service_id in ids:
        client.request("PUT", f"/v1/agent/service/deregister/{service_id}")
        click.echo(f"Deregistered service: {service_id}")
