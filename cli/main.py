"""The `meshagent` command: a click group; each subcommand lives in its own module.

Subcommands are imported only when invoked. `meshagent agent` is a long-running process, and the client
commands' libraries (httpx) would otherwise sit in its memory for nothing; `meshagent --help` lists every command
from SUMMARY without importing one (importing them all took ~0.3 s; tests/cli/test_cli_startup.py keeps SUMMARY
equal to each command's own short help). A new command: add it to COMMANDS and its one-line help to SUMMARY.
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
    "lock": ("lock_cmd", "lock"),
    "maint": ("agent_ops_cmd", "maint"),
    "members": ("catalog_cmd", "members"),
    "monitor": ("monitor_cmd", "monitor"),
    "operator": ("operator_cmd", "operator"),
    "reload": ("agent_ops_cmd", "reload"),
    "services": ("services_cmd", "services"),
    "snapshot": ("snapshot_cmd", "snapshot"),
    "tls": ("tls_cmd", "tls"),
    "troubleshoot": ("troubleshoot_cmd", "troubleshoot"),
    "validate": ("agent_ops_cmd", "validate"),
    "version": ("agent_ops_cmd", "version"),
    "watch": ("watch_cmd", "watch"),
}


# command name -> its short help, as `meshagent --help` lists it (the first sentence of its docstring)
SUMMARY: dict[str, str] = {
    "acl": "Bootstrap ACLs and manage tokens, policies and roles.",
    "agent": "Run a meshagent agent.",
    "catalog": "Query the catalog.",
    "config": "Create, read, list and delete config entries (service-defaults, service-intentions, ...).",
    "connect": "The service mesh: its certificate authority, and a sidecar's data plane as its own process.",
    "event": "Fire a user event to every member: `meshagent event NAME [PAYLOAD]` or `-name NAME [PAYLOAD]`.",
    "force-leave": "Force a failed NODE into the left state (with -prune, forget it at once).",
    "info": "Print the agent's state for operators.",
    "intention": "Create, check and manage intentions: which service may connect to which.",
    "join": "Tell the local agent to join the cluster through ADDRESSES (host or host:port, Serf LAN port 8301).",
    "keygen": 'Print a new 32-byte gossip encryption key, base64-encoded (for -encrypt / "encrypt").',
    "keyring": "Manage gossip encryption keys: exactly one of -install, -use, -remove, -list.",
    "kv": "Read and write the key/value store.",
    "leave": "Gracefully leave and shut down the agent.",
    "lock": "Run CHILD (through `sh -c`) while holding the lock at PREFIX; exit with the child's code.",
    "maint": "Put the node (or one service with -service) in or out of maintenance mode; no flags lists it.",
    "members": "List gossip members.",
    "monitor": "Stream the agent's log lines (at -log-level, more verbose than its own if asked) until Ctrl-C.",
    "operator": "Cluster-level tools for operators.",
    "reload": "Ask the agent to reload its configuration files.",
    "services": "Register and deregister services with the local agent.",
    "snapshot": "Save, restore and inspect snapshots of the servers' state.",
    "tls": "Create a CA and certificates for TLS on the server port (:8300).",
    "troubleshoot": "Diagnose the service mesh from this agent's point of view.",
    "validate": "Check config files or directories; print every error with file, line and field.",
    "version": "Print the version.",
    "watch": "Watch a view of the catalog, KV or events; run HANDLER once per change (data on stdin), or print it.",
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list as click prints it, from SUMMARY (a command missing there is imported for its help)."""
        names = [name for name in self.list_commands(ctx) if name in COMMANDS]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in SUMMARY:
                # a bare Command shortens the text exactly as the real one would
                rows.append((name, click.Command(name, help=SUMMARY[name]).get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "-help", "--help"]})
@click.version_option(meshagent.__version__, "-v", "-version", "--version", prog_name="meshagent",
                      message="meshagent v%(version)s")
def cli() -> None:
    """meshagent: a service mesh agent for fleets of VMs (Consul-compatible API, DNS and CLI)."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshagent")
