"""`meshagent snapshot save|restore|inspect`: point-in-time archives of the servers' state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from meshagent.atomic_file import write_atomic
from meshagent.snapshot_archive import ArchiveError, inspect_file, unpack

from .http_client import AgentClient, fail, http_options
from .output import format_option, print_json


def _verify_file(path: str) -> tuple[dict[str, Any], int]:
    """(meta, state size) of a snapshot file, verified in bounded memory whatever its size."""
    try:
        return inspect_file(path)
    except OSError as exc:
        fail(f"Error opening snapshot file: {path}: {exc.strerror or exc}")
    except ArchiveError as exc:
        fail(f"Error verifying snapshot file: {exc}")


def _verify(data: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    try:
        return unpack(data)
    except ArchiveError as exc:
        fail(f"Error verifying {what}: {exc}")


@click.group()
def snapshot() -> None:
    """Save, restore and inspect snapshots of the servers' state."""


@snapshot.command("save")
@click.option("-stale", "--stale", is_flag=True, help="Let any server answer, even without a leader.")
@http_options
@click.argument("file")
def save(file: str, stale: bool, http_addr: str | None, token: str | None) -> None:
    """Save a snapshot of the cluster's state to FILE (verified before it is written)."""
    params = {"stale": ""} if stale else None
    data = AgentClient(http_addr, token).request("GET", "/v1/snapshot", params=params).content
    meta, _ = _verify(data, "snapshot from the agent")
    try:
        # Never leave a half-written file under the name an operator will later restore from.
        write_atomic(Path(file), data)
    except OSError as exc:
        fail(f"Error writing snapshot file: {file}: {exc.strerror or exc}")
    click.echo(f"Saved and verified snapshot to index {meta['Index']}")


@snapshot.command("restore")
@http_options
@click.argument("file")
def restore(file: str, http_addr: str | None, token: str | None) -> None:
    """Replace the cluster's state with the snapshot in FILE (disaster recovery)."""
    _verify_file(file)  # refuse a corrupt file before it reaches the servers
    try:
        handle = open(file, "rb")
    except OSError as exc:
        fail(f"Error opening snapshot file: {file}: {exc.strerror or exc}")
    with handle:
        # httpx streams a file body in chunks (with its Content-Length): a large snapshot is never in memory.
        AgentClient(http_addr, token).request("PUT", "/v1/snapshot", content=handle)  # type: ignore[arg-type]
    click.echo("Restored snapshot")


@snapshot.command("inspect")
@format_option
@click.argument("file")
def inspect(file: str, fmt: str) -> None:
    """Print a snapshot file's ID, Size, Index, Term and Version (no agent needed)."""
    meta, size = _verify_file(file)
    if fmt == "json":
        print_json({"ID": meta["ID"], "Size": size, "Index": meta["Index"], "Term": meta["Term"],
                    "Version": meta["Version"]})
        return
    rows = [("ID", meta["ID"]), ("Size", size), ("Index", meta["Index"]), ("Term", meta["Term"]),
            ("Version", meta["Version"])]
    width = max(len(key) for key, _ in rows) + 6  # Consul's tabwriter padding
    for key, value in rows:
        click.echo(f"{key:<{width}}{value}")
