"""The `meshagent` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import click
import meshagent

from .agent_cmd import agent
from .agent_ops_cmd import info, leave, maint, reload, validate, version
from .catalog_cmd import catalog, members
from .gossip_cmd import event, force_leave, join
from .keygen_cmd import keygen
from .keyring_cmd import keyring
from .kv_cmd import kv
from .operator_cmd import operator
from .services_cmd import services
from .snapshot_cmd import snapshot


@click.group(context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(meshagent.__version__, "-v", "-version", "--version", prog_name="meshagent",
                      message="meshagent v%(version)s")
def cli() -> None:
    """meshagent: a service mesh agent for fleets of VMs (Consul-compatible API, DNS and CLI)."""


for command in (agent, catalog, event, force_leave, info, join, keygen, keyring, kv, leave, maint, members,
                operator, reload, services, snapshot, validate, version):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshagent")
