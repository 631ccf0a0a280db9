"""`meshagent connect ca get-config|set-config`: the mesh CA's configuration through /v1/connect/ca/configuration."""

from __future__ import annotations

import json
from typing import Any

import click

from .config_cmd import MAX_FILE_BYTES
from .connect_proxy_cmd import proxy
from .http_client import AgentClient, api_call, fail, http_options, json_of
from .output import format_option


@click.group()
def connect() -> None:
    """The service mesh: its certificate authority, and a sidecar's data plane as its own process."""


connect.add_command(proxy)


@connect.group()
def ca() -> None:
    """Show or change the mesh CA's configuration."""


@ca.command("get-config")
@format_option
@http_options
def get_config(fmt: str, http_addr: str | None, token: str | None) -> None:
    """Print the CA configuration as JSON ({Provider, Config, ...})."""
    del fmt  # JSON either way, as Consul prints it: -format is accepted for scripts' sake
    what = "Error querying CA configuration"
    resp = api_call(AgentClient(http_addr, token), "GET", "/v1/connect/ca/configuration", what)
    click.echo(json.dumps(json_of(resp, what), indent="\t"))


def read_ca_config(path: str) -> dict[str, Any]:
    """The JSON file of -config-file: {Provider, Config, ForceWithoutCrossSigning}; exits on any problem."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        fail(f"Error reading config file: {path}: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        fail(f"Error reading config file: {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        fail(f"Error parsing config file: {path} is not UTF-8 text (byte {exc.start})")
    except json.JSONDecodeError as exc:
        fail(f"Error parsing config file: {path}:{exc.lineno}: {exc.msg} (column {exc.colno})")
    except RecursionError:
        fail(f"Error parsing config file: {path}: nested too deeply")
    if not isinstance(config, dict):
        fail(f"Error parsing config file: {path}: the top level must be an object ({{\"Provider\": ..., "
            "\"Config\": {...}})")
    if "Config" in config and not isinstance(config["Config"], dict):
        fail(f"Error parsing config file: {path}: Config must be an object")
    return config


@ca.command("set-config")
@click.option("-config-file", "--config-file", "config_file", default="",
              help="A JSON file: {\"Provider\": \"consul\", \"Config\": {\"LeafCertTTL\": \"72h\", ...}}.")
@click.option("-force-without-cross-signing", "--force-without-cross-signing", "force", is_flag=True,
              help="Rotate the root without cross-signing the new one by the old (connections may fail while "
              "proxies learn the new root).")
@http_options
def set_config(config_file: str, force: bool, http_addr: str | None, token: str | None) -> None:
    """Change the CA configuration (a new key or a supplied root rotates the CA)."""
    if not config_file:
        fail("The -config-file flag is required")
    config = read_ca_config(config_file)
    if force:
        config["ForceWithoutCrossSigning"] = True
    api_call(AgentClient(http_addr, token), "PUT", "/v1/connect/ca/configuration", "Error setting CA configuration",
             body=config)
    click.echo("Configuration updated!")
