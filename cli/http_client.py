"""The CLI's connection to an agent's HTTP API: address from -http-addr / MESH_HTTP_ADDR / CONSUL_HTTP_ADDR, the ACL
token from -token / -token-file / CONSUL_HTTP_TOKEN(_FILE), one-line errors, and the shared -format option.

httpx is imported on first use (load_httpx): `meshagent --help` and `meshagent version` must start fast
(bench/cli/run.py), and httpx costs ~140 ms of imports plus a CA bundle load for every client it builds.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .output import FORMATS, format_option, print_json  # noqa: F401  (the shared -format, re-exported)

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDR = "http://127.0.0.1:8500"
MAX_ERROR_TEXT = 1000  # characters of an error answer shown: the agent's messages are short, others need not be


def load_httpx() -> ModuleType:
    """httpx, imported without its own command-line tool: httpx/__init__ imports httpx._main, which loads rich and
    pygments (~45 ms) for `httpx` the console script; with them unimportable for the moment it skips that."""
    if "httpx" in sys.modules:
        return sys.modules["httpx"]
    blocked = [name for name in ("rich", "pygments") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import machinery's "not importable" marker
    try:
        import httpx
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return httpx


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    click.echo(message, err=True)
    sys.exit(code)


TOKEN_ENV = ("MESH_HTTP_TOKEN", "CONSUL_HTTP_TOKEN")
TOKEN_FILE_ENV = ("MESH_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN_FILE")
MAX_TOKEN_FILE = 4096  # bytes: a secret is a 36-character UUID; anything near this is the wrong file


def http_options(func: Any) -> Any:
    """Add -http-addr, -token and -token-file to a command; the command gets `token` already resolved
    (flag > -token-file > MESH_/CONSUL_HTTP_TOKEN > MESH_/CONSUL_HTTP_TOKEN_FILE), never `token_file`."""

    @functools.wraps(func)
    def with_token(*args: Any, token_file: str | None = None, **kwargs: Any) -> Any:
        kwargs["token"] = resolve_token(kwargs.get("token"), token_file)
        return func(*args, **kwargs)

    cmd: Any = with_token
    cmd = click.option("-http-addr", "--http-addr", "http_addr", default=None,
                       help="Agent HTTP address (env MESH_HTTP_ADDR, CONSUL_HTTP_ADDR; "
                            "default http://127.0.0.1:8500).")(cmd)
    cmd = click.option("-token", "--token", "token", default=None,
                       help="ACL token for the request (env CONSUL_HTTP_TOKEN or MESH_HTTP_TOKEN).")(cmd)
    cmd = click.option("-token-file", "--token-file", "token_file", default=None,
                       help="File holding the ACL token (env CONSUL_HTTP_TOKEN_FILE or MESH_HTTP_TOKEN_FILE); "
                            "-token wins over it.")(cmd)
    return cmd


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The token a request carries, by Consul's precedence: -token, -token-file, CONSUL_HTTP_TOKEN (or our
    MESH_HTTP_TOKEN), CONSUL_HTTP_TOKEN_FILE (or MESH_HTTP_TOKEN_FILE). None: no token (anonymous)."""
    if token:
        return _checked(token, "-token")
    if token_file:
        return read_token_file(token_file, "-token-file")
    for name in TOKEN_ENV:
        if os.environ.get(name):
            return _checked(os.environ[name], name)
    for name in TOKEN_FILE_ENV:
        if os.environ.get(name):
            return read_token_file(os.environ[name], name)
    return None


def read_token_file(path: str, source: str) -> str:
    """The token in `path` (surrounding whitespace trimmed, as Consul does); a clear error naming the file
    when it is missing, unreadable, empty or not a token. The file's content is never shown."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        fail(f"Error loading token file {path!r} (from {source}): {exc.strerror or type(exc).__name__}")
    if len(raw) > MAX_TOKEN_FILE:
        fail(f"Error loading token file {path!r} (from {source}): larger than {MAX_TOKEN_FILE} bytes, "
             "not a token")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        fail(f"Error loading token file {path!r} (from {source}): not an ASCII token")
    if not text:
        fail(f"Error loading token file {path!r} (from {source}): the file is empty")
    return _checked(text, f"token file {path!r} (from {source})")


def _checked(token: str, source: str) -> str:
    # An HTTP header value: printable ASCII only. A token with a newline could otherwise smuggle a header,
    # and httpx's own error would quote it. The value itself is never shown.
    if len(token) > MAX_TOKEN_FILE or not all(" " < ch <= "~" for ch in token):
        fail(f"Error: the ACL token from {source} is not usable: it must be printable ASCII without spaces, "
             f"at most {MAX_TOKEN_FILE} characters")
    return token


def agent_address(http_addr: str | None) -> str:
    """The agent's base URL: -http-addr, else MESH_HTTP_ADDR, else Consul's CONSUL_HTTP_ADDR, else the default;
    a bare host:port gets http://."""
    addr = http_addr or os.environ.get("MESH_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
    addr = addr.strip()
    if "://" not in addr:
        addr = "http://" + addr
    return addr.rstrip("/")


class AgentClient:
    """Thin httpx wrapper: every failure becomes one clear line and exit 1."""

    def __init__(self, http_addr: str | None, token: str | None = None) -> None:
        load_httpx()
        import httpx

        self.addr = agent_address(http_addr)
        headers = {}
        token = resolve_token(token, None)
        if token:
            headers["X-Consul-Token"] = token
        # Plain HTTP needs no TLS context: httpx would otherwise load the CA bundle (~20 ms) for nothing.
        verify = self.addr.startswith("https://")
        self._client = httpx.Client(base_url=self.addr, headers=headers, timeout=30.0, verify=verify)

    @property
    def http(self) -> httpx.Client:
        """The underlying client, for commands that handle statuses themselves."""
        return self._client

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                content: bytes | None = None, ok404: bool = False) -> httpx.Response:
        """Send a request; connection problems and error statuses end the command with one line."""
        load_httpx()
        import httpx

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
    load_httpx()
    import httpx

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
