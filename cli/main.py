"""The `meshagent` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import click
import meshagent

from .agent_cmd import agent


@click.group(context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(meshagent.__version__, "-v", "-version", "--version", prog_name="meshagent",
                      message="meshagent v%(version)s")
def cli() -> None:
    """meshagent: a service mesh agent for fleets of VMs (Consul-compatible API, DNS and CLI)."""


cli.add_command(agent)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshagent")
