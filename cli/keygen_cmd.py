"""`meshagent keygen`: a new gossip encryption key."""

from __future__ import annotations

import base64
import secrets

import click


@click.command()
def keygen() -> None:
    """Print a new 32-byte gossip encryption key, base64-encoded (for -encrypt / "encrypt")."""
    click.echo(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
