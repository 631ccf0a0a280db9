"""The `meshagent` command: a click group; each subcommand lives in its own module.

Subcommands are imported only when invoked (or listed by --help). `meshagent agent` is a long-running
process, and the client commands' libraries (httpx, rich) would otherwise sit in its memory for nothing.
"""

from __future__ import annotations

import importlib

import click
import meshagent

# command name -> (module in this package, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "acl": ("acl_cmd", "acl"),
    "agent": ("agent_cmd", "agent"),
    "catalog": ("catalog_cmd", "catalog"),
    "config": ("config_cmd", "config"),
    "connect": ("connect_cmd", "connect"),
    "event": ("gossip_cmd", "event"),
    "force-leave": ("gossip_cmd", "force_leave"),
    "info": ("agent_ops_cmd", "info"),
    "intention": ("intention_cmd", "intention"),
    "join": ("gossip_cmd", "join"),
    "keygen": ("keygen_cmd", "keygen"),
    "keyring": ("keyring_cmd", "keyring"),
    "kv": ("kv_cmd", "kv"),
    "leave": ("agent_ops_cmd", "leave"),
    "maint": ("agent_ops_cmd", "maint"),
    "members": ("catalog_cmd", "members"),
    "operator": ("operator_cmd", "operator"),
    "reload": ("agent_ops_cmd", "reload"),
    "services": ("services_cmd", "services"),
    "snapshot": ("snapshot_cmd", "snapshot"),
    "tls": ("tls_cmd", "tls"),
    "troubleshoot": ("troubleshoot_cmd", "troubleshoot"),
    "validate": ("agent_ops_cmd", "validate"),
    "version": ("agent_ops_cmd", "version"),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        command = getattr(importlib.import_module(f"{__package__}.{spec[0]}"), spec[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(meshagent.__version__, "-v", "-version", "--version", prog_name="meshagent",
                      message="meshagent v%(version)s")
def cli() -> None:
    """meshagent: a service mesh agent for fleets of VMs (Consul-compatible API, DNS and CLI)."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshagent")
