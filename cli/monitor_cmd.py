"""`meshagent monitor`: print the agent's log lines as they are written, until Ctrl-C (GET /v1/agent/monitor)."""

from __future__ import annotations

import sys

import click

from .http_client import AgentClient, error_text, fail, http_options, load_httpx

ENDED = "Remote side ended the monitor! This usually means that the remote side has exited or crashed."


@click.command()
@click.option("-log-level", "--log-level", "log_level", default="info", show_default=True,
              help="Lowest level shown (trace, debug, info, warn, error); may be more verbose than the agent's.")
@click.option("-log-json", "--log-json", "log_json", is_flag=True, help="Lines as JSON objects (@level, @message...).")
@http_options
def monitor(log_level: str, log_json: bool, http_addr: str | None, token: str | None) -> None:
    """Stream the agent's log lines (at -log-level, more verbose than its own if asked) until Ctrl-C."""
    httpx = load_httpx()  # without its console tool's imports, as every command loads it
    client = AgentClient(http_addr, token)
    params: dict[str, str] = {"loglevel": log_level}
    if log_json:
        params["logjson"] = ""
    out = sys.stdout
    try:
        with client.http.stream("GET", "/v1/agent/monitor", params=params,
                                timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                fail(f"Error starting monitor: Unexpected response code: {resp.status_code} ({error_text(resp)})")
            for line in resp.iter_lines():
                out.write(line + "\n")
                out.flush()
    except KeyboardInterrupt:
        return
    except httpx.ConnectError:
        fail(f"Error starting monitor: cannot connect to {client.addr}. Is the agent running?")
    except httpx.HTTPError:
        pass  # the agent went away mid-stream
    click.echo(ENDED, err=True)
