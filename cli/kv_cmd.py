"""`meshagent kv get|put|delete` with Consul's flags and messages."""

from __future__ import annotations

import base64
import json
import sys

import click

from .http_client import AgentClient, fail, http_options
from .output import format_option, print_json


@click.group()
def kv() -> None:
    """Read and write the key/value store."""


@kv.command("get")
@click.option("-recurse", "--recurse", is_flag=True)
@click.option("-keys", "--keys", "keys_only", is_flag=True)
@click.option("-separator", "--separator", default="/")
@click.option("-detailed", "--detailed", is_flag=True)
@format_option
@http_options
@click.argument("key", default="")
def kv_get(key: str, recurse: bool, keys_only: bool, separator: str, detailed: bool, fmt: str,
           http_addr: str | None, token: str | None) -> None:
    """Print a key's value (or keys under a prefix); -format json prints the API's entries (Value base64)."""
    client = AgentClient(http_addr, token)
    if keys_only:
        resp = client.request("GET", f"/v1/kv/{key}", params={"keys": "", "separator": separator}, ok404=True)
        keys = [] if resp.status_code == 404 else resp.json()
        if fmt == "json":
            print_json(keys)
            return
        for k in keys:
            click.echo(k)
        return
    resp = client.request("GET", f"/v1/kv/{key}", params={"recurse": ""} if recurse else None, ok404=True)
    if resp.status_code == 404:
        if fmt == "json" and recurse:
            print_json([])
            return
        fail(f"Error! No key exists at: {key}")
    entries = resp.json()
    if fmt == "json":  # one entry for a key, the list for -recurse (as `consul kv get` would show the API's)
        print_json(entries if recurse else (entries[0] if entries else None))
        return
    for entry in entries:
        value = base64.b64decode(entry["Value"] or "").decode(errors="replace")
        if detailed:
            for field in ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session"):
                click.echo(f"{field:<14} {entry.get(field, '')}")
            click.echo(f"{'Value':<14} {value}")
        elif recurse:
            click.echo(f"{entry['Key']}:{value}")
        else:
            click.echo(value)


@kv.command("put")
@click.option("-cas", "--cas", is_flag=True)
@click.option("-modify-index", "--modify-index", type=int, default=0)
@click.option("-flags", "--flags", type=int, default=0)
@click.option("-base64", "--base64", "is_base64", is_flag=True)
@http_options
@click.argument("key")
@click.argument("data", required=False, default="")
def kv_put(key: str, data: str, cas: bool, modify_index: int, flags: int, is_base64: bool,
           http_addr: str | None, token: str | None) -> None:
    """Write DATA (or @file, or - for stdin) to KEY."""
    if data == "-":
        raw = sys.stdin.buffer.read()
    elif data.startswith("@"):
        try:
            with open(data[1:], "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            fail(f"Failed to read file: {exc}")
    else:
        raw = data.encode()
    if is_base64:
        try:
            raw = base64.b64decode(raw, validate=True)
        except ValueError as exc:
            fail(f"Failed to base64 decode data: {exc}")
    params: dict[str, int] = {"flags": flags} if flags else {}
    if cas:
        params["cas"] = modify_index
    ok = AgentClient(http_addr, token).request("PUT", f"/v1/kv/{key}", params=params, content=raw).json()
    if not ok:
        fail(f"Error! Did not write to {key}: CAS failed")
    click.echo(f"Success! Data written to: {key}")


@kv.command("delete")
@click.option("-recurse", "--recurse", is_flag=True)
@click.option("-cas", "--cas", is_flag=True)
@click.option("-modify-index", "--modify-index", type=int, default=0)
@http_options
@click.argument("key", default="")
def kv_delete(key: str, recurse: bool, cas: bool, modify_index: int, http_addr: str | None,
              token: str | None) -> None:
    """Delete a key (or every key under a prefix with -recurse)."""
    params: dict[str, object] = {}
    if recurse:
        params["recurse"] = ""
    if cas:
        params["cas"] = modify_index
    ok = AgentClient(http_addr, token).request("DELETE", f"/v1/kv/{key}", params=params).json()
    if not ok:
        fail(f"Error! Did not delete key {key}: CAS failed")
    click.echo(f"Success! Deleted key{'s under prefix' if recurse else ''}: {key}")


def dumps(value: object) -> str:
    """JSON for -format json output."""
    return json.dumps(value, indent=2, sort_keys=True)
