"""`meshagent watch`: Consul's watch command. A blocking-query loop over one watch plan (meshagent/watch_plan.py);
with no handler the current data is printed once as JSON and the command ends (as Consul's); with a handler it
runs once per change with the data as JSON on stdin and CONSUL_INDEX in its environment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote

import click
from meshagent.watch_plan import MAX_BODY, QueryError, WatchError, WatchSpec, WatchState, parse_watch

from .http_client import AgentClient, fail, http_options

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h))+")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_READ_TIMEOUT = 15 * 60.0  # no -wait: the agent's default (5 min) or max_query_time (10 min) plus jitter
HANDLER_STOP_GRACE = 5.0  # seconds a handler gets after SIGTERM when the watch is stopped


def go_bool(name: str, value: str) -> bool:
    """Go's strconv.ParseBool for a flag value; a usage error naming the flag otherwise."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise click.BadParameter(f"{value[:40]!r} is not a boolean (true or false)", param_hint=f"-{name}")


def wait_seconds(text: str) -> float:
    """A -wait duration ("500ms", "2s", "1m") in seconds; a usage error otherwise."""
    if not _DURATION.fullmatch(text):
        raise click.BadParameter(f"{text[:40]!r} is not a duration such as 500ms, 10s or 5m", param_hint="-wait")
    return sum(float(n) * _UNIT[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)", text))


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("-type", "--type", "watch_type", default="",
              help="The watch type: key, keyprefix, services, nodes, service, checks or event.")
@click.option("-key", "--key", default="", help="The key to watch ('key' type).")
@click.option("-prefix", "--prefix", default="", help="The key prefix to watch ('keyprefix' type).")
@click.option("-service", "--service", default="",
              help="The service to watch (required for 'service', optional for 'checks').")
@click.option("-tag", "--tag", "tags", multiple=True, help="A service tag to filter on ('service'; repeatable).")
@click.option("-passingonly", "--passingonly", default="",
              help="true: only instances passing all their checks ('service' type).")
@click.option("-state", "--state", default="", help="The check state to watch ('checks' type): any, passing, ...")
@click.option("-name", "--name", default="", help="The event name to watch ('event' type).")
@click.option("-datacenter", "--datacenter", default="", help="The datacenter to query (default: the agent's).")
@click.option("-stale", "--stale", is_flag=False, flag_value="true", default="false",
              help="Let any server answer, even a stale one.")
@click.option("-shell", "--shell", is_flag=False, flag_value="true", default="true",
              help="Run the handler through $SHELL -c (default true; -shell=false runs it directly).")
@click.option("-wait", "--wait", default="",
              help="meshagent: the blocking queries' wait (a duration; default the agent's, 5m).")
@http_options
@click.argument("handler", nargs=-1, type=click.UNPROCESSED)
def watch(watch_type: str, key: str, prefix: str, service: str, tags: tuple[str, ...], passingonly: str,
          state: str, name: str, datacenter: str, stale: str, shell: str, wait: str, handler: tuple[str, ...],
          http_addr: str | None, token: str | None) -> None:
    """Watch a view of the catalog, KV or events; run HANDLER once per change (data on stdin), or print it.

    With no HANDLER the current data is printed once and the command ends, as Consul's does; a handler such as
    `cat` prints every change. A failing handler ends the watch with exit code 1."""
    handler_args = list(handler)
    # Go's bool flags never take the next word: `-shell ./h.sh` is -shell=true and a handler.
    if shell not in _TRUE | _FALSE:
        handler_args.insert(0, shell)
        shell = "true"
    if stale not in _TRUE | _FALSE:
        handler_args.insert(0, stale)
        stale = "true"
    if not watch_type:
        fail("Watch type must be specified")
    params: dict[str, Any] = {"type": watch_type}
    for field, value in (("key", key), ("prefix", prefix), ("service", service), ("state", state),
                         ("name", name), ("datacenter", datacenter)):
        if value:
            params[field] = value
    if tags:
        params["tag"] = list(tags)
    if passingonly:
        params["passingonly"] = go_bool("passingonly", passingonly)
    if go_bool("stale", stale):
        params["stale"] = True
    try:
        spec = parse_watch(params)
    except WatchError as exc:
        fail(exc.message if exc.field == "type" else f"Error in -{exc.field}: {exc.message}")
    timeout = wait_seconds(wait) * 1.1 + 10.0 if wait else DEFAULT_READ_TIMEOUT
    runner = _Runner(spec, AgentClient(http_addr, token), wait, timeout)
    if not handler_args:
        _, data = runner.first()
        click.echo(json.dumps(data, indent=4))
        return
    use_shell = go_bool("shell", shell)
    argv = ([os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(handler_args)] if use_shell else handler_args)
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        runner.run(lambda index, data: _run_handler(argv, index, data))
    except KeyboardInterrupt:
        sys.exit(0)  # Consul: a shutdown signal ends the watch with 0


def _exit_quietly(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _Runner:
    """The blocking-query loop of one plan over the agent's HTTP API."""

    def __init__(self, spec: WatchSpec, client: AgentClient, wait: str, timeout: float) -> None:
        self.state = WatchState(spec)
        self.client = client
        self.wait = wait
        self.timeout = timeout

    def first(self) -> tuple[int, Any]:
        """The first answer (exit 1 with the reason if there is none)."""
        try:
            _, index, data = self.state.answer(*self._query())
        except QueryError as exc:
            fail(f"Error querying agent: {exc}")
        return index, data

    def run(self, handle: Any) -> None:
        """Query forever; `handle(index, data)` on the first answer and on every change after it. The first
        query's error ends the command (a wrong address or token shows at once); later ones back off."""
        index, data = self.first()
        handle(index, data)
        while True:
            try:
                fire, index, data = self.state.answer(*self._query())
            except QueryError as exc:
                delay = self.state.failed()
                click.echo(f"Watch errored (type {self.state.spec.type}): {exc}; retry in {delay:g}s", err=True)
                time.sleep(delay)  # Consul's backoff between failed queries, not a synchronisation
                continue
            if fire:
                handle(index, data)

    def _query(self) -> tuple[int, str | None, bytes]:
        import httpx

        path, params = self.state.spec.query(self.state.next_index(), self.wait)
        headers = {"X-Consul-Token": self.state.spec.token} if self.state.spec.token else None
        try:
            with self.client.http.stream("GET", quote(path, safe="/"), params=tuple(params), headers=headers,
                                         timeout=httpx.Timeout(10.0, read=self.timeout)) as resp:
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise QueryError(f"answer larger than {MAX_BODY} bytes")
                return resp.status_code, resp.headers.get("x-consul-index"), bytes(body)
        except httpx.ConnectError as exc:
            raise QueryError(f"cannot connect to {self.client.addr} ({exc or 'refused'})") from None
        except httpx.HTTPError as exc:
            raise QueryError(f"{type(exc).__name__} talking to {self.client.addr}: {exc}") from None


def _run_handler(argv: list[str], index: int, data: Any) -> None:
    """Run the handler with the data on stdin; a handler that cannot start or fails ends the watch with 1."""
    env = {**os.environ, "CONSUL_INDEX": str(index)}
    try:
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)
    except OSError as exc:
        fail(f"Error starting handler: {exc}")
    try:
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps(data).encode() + b"\n")
            child.stdin.close()
        except BrokenPipeError:
            pass  # a handler that ignores its input is fine
        code = child.wait()
    except BaseException:
        # Stopped while the handler runs: pass the stop on to it, as Consul forwards signals.
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(HANDLER_STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    if code != 0:
        fail(f"Error executing handler: exit status {code}")
