"""`meshagent agent`: parse Consul's agent flags, load config, run the agent until a signal stops it."""

from __future__ import annotations

import sys
from typing import Any

import click
from meshagent.cli.deferred_modules import defer_rarely_used_modules

defer_rarely_used_modules()  # before trio and dnspython load

from meshagent.agent.config.types import AgentConfig  # noqa: E402


def _opt(name: str, **kwargs: Any) -> Any:
    """An option spelled Consul's way (-name) that also accepts --name."""
    return click.option(f"-{name}", f"--{name}", name.replace("-", "_"), **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "-help", "--help"]})
@_opt("dev", is_flag=True, default=None, help="Development mode: in-memory single-node server.")
@_opt("server", is_flag=True, default=None, help="Run as a server.")
@_opt("bootstrap-expect", type=int, default=None, help="Servers to wait for before bootstrapping.")
@_opt("node", default=None, help="Node name (default: hostname).")
@_opt("node-id", default=None, help="Node UUID (default: generated and persisted).")
@_opt("datacenter", default=None, help="Datacenter (default dc1).")
@_opt("data-dir", default=None, help="Directory for state (required unless -dev).")
@_opt("bind", default=None, help="Cluster bind address (default 0.0.0.0).")
@_opt("advertise", default=None, help="Cluster address advertised to other nodes.")
@_opt("client", default=None, help="HTTP and DNS bind address (default 127.0.0.1).")
@_opt("config-file", multiple=True, help="Config file (HCL or JSON); repeatable.")
@_opt("config-dir", multiple=True, help="Directory of *.hcl / *.json config files; repeatable.")
@_opt("http-port", type=click.IntRange(-1, 65535), default=None, help="HTTP API port (default 8500).")
@_opt("dns-port", type=click.IntRange(-1, 65535), default=None, help="DNS port (default 8600).")
@_opt("domain", default=None, help="DNS domain (default mesh.).")
@_opt("log-level", default=None, help="trace, debug, info, warn or error.")
@_opt("log-json", is_flag=True, default=None, help="Log in JSON.")
@_opt("enable-local-script-checks", is_flag=True, default=None, help="Allow script checks from config files.")
@_opt("enable-script-checks", is_flag=True, default=None, help="Allow script checks from anywhere (unsafe).")
@_opt("recursor", multiple=True, help="Upstream DNS server for names outside the domain; repeatable.")
@_opt("retry-join", multiple=True, help="Address to join at start; repeatable.")
@_opt("join", multiple=True, help="Alias of -retry-join.")
@_opt("rejoin", is_flag=True, default=None, help="Rejoin the last run's peers even after a graceful leave.")
@_opt("retry-interval", default=None, help="Time between join attempts (default 30s).")
@_opt("retry-max", type=int, default=None, help="Join attempts before giving up and exiting (default 0: forever).")
@_opt("encrypt", default=None, help="Gossip encryption key (base64).")
@_opt("node-meta", multiple=True, help="key:value node metadata; repeatable.")
def agent(**opts: Any) -> None:
    """Run a meshagent agent."""
    from meshagent.agent.config.loader import ConfigErrors, load_config
    from meshagent.agent.entry import run_agent

    flags = _flags(opts)
    files, dirs = list(opts["config_file"]), list(opts["config_dir"])

    ports = {"http": flags.pop("http_port"), "dns": flags.pop("dns_port")}

    def load() -> AgentConfig:
        config = load_config(files, dirs, flags)
        for name, port in ports.items():
            if port is not None:  # flags beat files
                setattr(config.ports, name, port)
        return config

    try:
        config = load()
    except ConfigErrors as exc:
        for err in exc.errors:
            click.echo(f"==> Error: {err}", err=True)
        sys.exit(1)
    errors = run_agent(config, load)
    for line in errors:
        click.echo(line, err=True)
    if errors:
        sys.exit(1)


def _flags(opts: dict[str, Any]) -> dict[str, Any]:
    """Command-line flags as AgentConfig field names; None means 'not given' (files or defaults decide)."""
    meta: dict[str, str] | None = None
    if opts["node_meta"]:
        meta = {}
        for item in opts["node_meta"]:
            key, sep, value = item.partition(":")
            if not sep:
                raise click.BadParameter(f"{item!r} is not key:value", param_hint="-node-meta")
            meta[key] = value
    dev = opts["dev"]
    flags: dict[str, Any] = {
        "dev": dev,
        "server": True if dev else opts["server"],
        "bootstrap_expect": opts["bootstrap_expect"],
        "node_name": opts["node"],
        "node_id": opts["node_id"],
        "datacenter": opts["datacenter"],
        "data_dir": opts["data_dir"],
        "bind_addr": opts["bind"] or ("127.0.0.1" if dev else None),
        "advertise_addr": opts["advertise"],
        "client_addr": opts["client"],
        "http_port": opts["http_port"],
        "dns_port": opts["dns_port"],
        "domain": opts["domain"],
        "log_level": opts["log_level"],
        "log_json": opts["log_json"],
        "enable_local_script_checks": opts["enable_local_script_checks"],
        "enable_script_checks": opts["enable_script_checks"],
        "recursors": list(opts["recursor"]) or None,
        "retry_join": list(opts["retry_join"]) + list(opts["join"]) or None,
        "encrypt": opts["encrypt"],
        "retry_max": opts["retry_max"],
        "rejoin_after_leave": opts["rejoin"],
        "retry_interval": _seconds(opts["retry_interval"]) if opts["retry_interval"] else None,
        "node_meta": meta,
    }
    return flags


def _seconds(text: str) -> float:
    """A Go duration flag ("30s", "1m") in seconds; a clear error otherwise."""
    from meshagent.agent.config.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-retry-interval") from None
