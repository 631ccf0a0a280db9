"""The CLI's connection to an agent's HTTP API: address from -http-addr / MESH_HTTP_ADDR, one-line errors."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click
import httpx

DEFAULT_ADDR = "http://127.0.0.1:8500"


def fail(message: str) -> NoReturn:
    """Print one line to stderr and exit 1."""
    click.echo(message, err=True)
    sys.exit(1)


def http_options(func: Any) -> Any:
    """Add -http-addr and -token to a command."""
    func = click.option("-http-addr", "--http-addr", "http_addr", default=None,
                        help="Agent HTTP address (env MESH_HTTP_ADDR, default http://127.0.0.1:8500).")(func)
    func = click.option("-token", "--token", "token", default=None, help="ACL token (env MESH_HTTP_TOKEN).")(func)
    return func


class AgentClient:
    """Thin httpx wrapper: every failure becomes one clear line and exit 1."""

    def __init__(self, http_addr: str | None, token: str | None = None) -> None:
        addr = http_addr or os.environ.get("MESH_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
        if "://" not in addr:
            addr = "http://" + addr
        self.addr = addr.rstrip("/")
        headers = {}
        token = token or os.environ.get("MESH_HTTP_TOKEN")
        if token:
            headers["X-Consul-Token"] = token
        self._client = httpx.Client(base_url=self.addr, headers=headers, timeout=30.0)

    @property
    def http(self) -> httpx.Client:
        """The underlying client, for commands that handle statuses themselves."""
        return self._client

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                content: bytes | None = None, ok404: bool = False) -> httpx.Response:
        """Send a request; connection problems and error statuses end the command with one line."""
        try:
            resp = self._client.request(method, path, params=params, json=json, content=content)
        except httpx.ConnectError as exc:
            fail(f"Error querying agent: cannot connect to {self.addr} ({_reason(exc)}). Is the agent running?")
        except httpx.HTTPError as exc:
            fail(f"Error querying agent at {self.addr}: {exc}")
        if resp.status_code == 404 and ok404:
            return resp
        if resp.status_code >= 400:
            text = resp.text.strip().splitlines()[0] if resp.text.strip() else resp.reason_phrase
            fail(f"Unexpected response code: {resp.status_code} ({text})")
        return resp


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or type(exc).__name__
