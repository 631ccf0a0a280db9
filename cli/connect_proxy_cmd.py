"""`meshagent connect proxy -sidecar-for <id>`: one sidecar's data plane as its own foreground process.

It finds the sidecar among the agent's services (as Consul's command does), checks that the agent does not
run that sidecar itself (`proxy { config { embedded = false } }`, docs/sidecar-proxy.md), then feeds the
same ProxySupervisor the agent would run from /v1/agent/connect/proxy/:id (blocking queries; the last good
configuration stays while the agent is away) until SIGINT or SIGTERM (exit 0), or until the sidecar is
deregistered, stops being a connect-proxy or is taken back by the agent (`embedded`): exit 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from .http_client import AgentClient, api_call, fail, http_options, json_of

if TYPE_CHECKING:
    from ..proxy.http_feed import HTTPFeed
    from ..proxy.snapshot import ProxySnapshot

PROXY_KIND = "connect-proxy"
LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "err": logging.ERROR, "error": logging.ERROR}
EMBEDDED_HINT = ("the agent runs its data plane itself; to run it here instead, register it with "
                 "proxy { config { embedded = false } } (JSON: \"Proxy\": {\"Config\": {\"embedded\": false}}) "
                 "and start this command again")

WORKER_LOG_ENV = "MESHAGENT_PROXY_LOG_LEVEL"  # proxy/worker.py's default for --log-level

log = logging.getLogger("meshagent.proxy.cmd")


def _services(client: AgentClient) -> dict[str, dict[str, Any]]:
    what = "Failed looking up the proxy's service"
    data = json_of(api_call(client, "GET", "/v1/agent/services", what), what)
    if not isinstance(data, dict):
        fail(f"{what}: the agent's /v1/agent/services is not an object")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, dict)}


def _proxy_of(svc: dict[str, Any]) -> dict[str, Any]:
    proxy = svc.get("Proxy")
    return proxy if isinstance(proxy, dict) else {}


def resolve_proxy(services: dict[str, dict[str, Any]], sidecar_for: str, proxy_id: str) -> tuple[str, dict[str, Any]]:
    """(proxy id, its /v1/agent/services entry) for -sidecar-for or -proxy-id; exits with Consul's message
    when there is no such proxy, more than one, or the service is not a connect-proxy."""
    if proxy_id:
        svc = services.get(proxy_id)
        if svc is None:
            fail(f"Unknown proxy service ID {proxy_id!r}: no such service is registered with this agent")
        if svc.get("Kind") != PROXY_KIND:
            fail(f"Service {proxy_id!r} is not a connect-proxy (its kind is {svc.get('Kind') or 'typical'})")
        return proxy_id, svc
    found = sorted(sid for sid, svc in services.items()
                   if svc.get("Kind") == PROXY_KIND and _proxy_of(svc).get("DestinationServiceID") == sidecar_for)
    if not found:
        target = services.get(sidecar_for)
        if target is not None and target.get("Kind") == PROXY_KIND:
            fail(f"Service {sidecar_for!r} is itself a connect-proxy: use -proxy-id {sidecar_for}")
        fail(f"No sidecar proxy registered for {sidecar_for}")
    if len(found) > 1:
        fail(f"More than one sidecar proxy registered for {sidecar_for}.\n"
             f"    Start proxy with -proxy-id and one of the following IDs: {', '.join(found)}")
    return found[0], services[found[0]]


def embedded(svc: dict[str, Any]) -> bool:
    """Whether the agent runs this proxy's data plane itself (the default; Config.embedded = false opts out)."""
    config = _proxy_of(svc).get("Config")
    return not (isinstance(config, dict) and config.get("embedded") is False)


def _log_level(text: str) -> int:
    level = LOG_LEVELS.get(text.strip().lower())
    if level is None:
        fail(f"Invalid -log-level {text!r}: one of trace, debug, info, warn, error")
    return level


@click.command("proxy")
@click.option("-sidecar-for", "--sidecar-for", "sidecar_for", default="",
              help="The ID of the service whose sidecar proxy to run (the agent finds the proxy's ID).")
@click.option("-proxy-id", "--proxy-id", "proxy_id", default="", help="The proxy's own service ID.")
@click.option("-log-level", "--log-level", "log_level", default="info",
              help="trace, debug, info, warn or error.")
@http_options
def proxy(sidecar_for: str, proxy_id: str, log_level: str, http_addr: str | None, token: str | None) -> None:
    """Run a sidecar's mTLS data plane in the foreground, fed by the local agent, until SIGINT/SIGTERM."""
    level = _log_level(log_level)
    if bool(sidecar_for) == bool(proxy_id):
        fail("One of -sidecar-for or -proxy-id is required (not both)")
    client = AgentClient(http_addr, token)
    pid, svc = resolve_proxy(_services(client), sidecar_for, proxy_id)
    if embedded(svc):
        fail(f"Proxy {pid!r}: {EMBEDDED_HINT}")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    # The workers are started by ProxySupervisor, which passes no --log-level: proxy/worker.py reads this.
    os.environ[WORKER_LOG_ENV] = logging.getLevelName(level)
    import trio  # the data plane's libraries are loaded only by the command that runs it

    code = trio.run(_run, client.addr, pid, token or "")
    sys.exit(code)


async def _run(addr: str, proxy_id: str, token: str) -> int:
    import trio

    from ..proxy.http_feed import FeedStopped, HTTPFeed
    from ..proxy.supervisor import ProxySupervisor

    feed = HTTPFeed(addr, proxy_id, token=token)
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_when_gone(watch: Callable[..., Awaitable[None]], *args: Any) -> None:
                nonlocal code
                try:
                    await watch(*args)
                except FeedStopped as exc:  # the supervisor's workers stop as the nursery unwinds
                    click.echo(f"Stopping proxy {proxy_id!r}: {exc}", err=True)
                    code = 1
                    nursery.cancel_scope.cancel()

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("proxy %s: %s, stopping", proxy_id, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            first = await _first(feed, proxy_id)
            if first is None:
                code = 1
                nursery.cancel_scope.cancel()
                return code
            supervisor = ProxySupervisor(proxy_id)
            await nursery.start(supervisor.run)
            supervisor.update(first)
            log.info("proxy %s: running version %d (public listener %s:%d, %d upstreams, %d workers)",
                     proxy_id, first.version, first.public_address, first.public_port, len(first.upstreams),
                     first.workers)
            nursery.start_soon(stop_when_gone, feed.run, supervisor.update, first)
            nursery.start_soon(stop_when_gone, feed.watch_registration)
    return code


async def _first(feed: HTTPFeed, proxy_id: str) -> ProxySnapshot | None:
    """The first snapshot; None after printing why there is none. An agent that answers but has not built
    the configuration yet (503: the leaf is being signed, or no CA yet) is waited for, without bound (the
    agent retries the leaf itself), saying so once; anything else ends the command."""
    import trio

    from ..proxy.http_feed import FeedError

    waited = 0
    while True:
        try:
            return await feed.first()
        except FeedError as exc:
            if exc.fatal or exc.status != 503:
                click.echo(f"Error starting proxy {proxy_id!r}: {exc}", err=True)
                return None
            if not waited:
                click.echo(f"Proxy {proxy_id!r}: waiting for the agent to sign its leaf certificate "
                           f"(the agent answered: {exc})", err=True)
            waited += 1
            await trio.sleep(min(5.0, 0.5 * waited))
