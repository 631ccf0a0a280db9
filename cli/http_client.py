"""The CLI's connection to an agent's HTTP API: address from -http-addr / MESH_HTTP_ADDR, one-line errors."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click
import httpx

DEFAULT_ADDR = "http://127.0.0.1:8500"
MAX_ERROR_TEXT = 1000  # characters of an error answer shown: the agent's messages are short, others need not be


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    click.echo(message, err=True)
    sys.exit(code)


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


def api_call(client: AgentClient, method: str, path: str, what: str, *, params: dict[str, Any] | None = None,
             body: Any = None, ok: tuple[int, ...] = (200,), code: int = 1) -> httpx.Response:
    """One API request; anything but a status in `ok` ends the command with "<what>: <problem>" and exit `code`."""
    try:
        resp = client.http.request(method, path, params=params,
                                   content=None if body is None else json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"} if body is not None else None)
    except httpx.ConnectError:
        fail(f"{what}: cannot connect to the agent at {client.addr} (connection refused). Is the agent running?", code)
    except httpx.HTTPError as exc:
        fail(f"{what}: {type(exc).__name__} talking to the agent at {client.addr}: {exc}", code)
    if resp.status_code not in ok:
        fail(f"{what}: Unexpected response code: {resp.status_code} ({error_text(resp)})", code)
    return resp


def error_text(resp: httpx.Response) -> str:
    """The agent's error answer as one bounded line (its body, or the status phrase when empty)."""
    text = " ".join(resp.text.split())  # one line: newlines and control whitespace folded
    text = "".join(ch for ch in text if ch.isprintable())
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "..."
    return text or resp.reason_phrase


def json_of(resp: httpx.Response, what: str) -> Any:
    """The decoded JSON answer, or a clear error when the agent sent something else."""
    try:
        return resp.json()
    except ValueError:
        fail(f"{what}: the agent's answer is not JSON: {error_text(resp)[:200]}")
