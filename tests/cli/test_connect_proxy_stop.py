"""`meshagent connect proxy` stops when its sidecar is gone or taken back (review findings 9 and 10), against
the real /v1 API with a stand-in ProxyRunner (tests/support/proxy_api_harness.py) on 127.0.28.N:

- the feed raises FeedStopped after 404s in a row (deregistered) instead of serving the old leaf and
  intentions forever; watch_registration stops on deregistration, a kind change or `embedded` no longer false;
- end to end: the command waits for a first snapshot saying so once, passes -log-level to its workers
  (MESHAGENT_PROXY_LOG_LEVEL), and exits 1 with its workers stopped when `embedded` turns true or the sidecar
  is deregistered.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from meshagent.proxy.http_feed import FeedStopped, HTTPFeed, registration_problem
from meshagent.proxy.snapshot import ProxySnapshot

from tests.support.agents import MESHAGENT
from tests.support.ports import free_ports
from tests.support.proxy_api_harness import PROXY_ID, ProxyAPIServer, web_snapshot
from tests.support.wait import wait_for, wait_for_async

HOST = "127.0.28.10"  # the API under test
PUBLIC_HOST = "127.0.28.20"  # the command's public listener


@pytest.fixture
def agent() -> Iterator[ProxyAPIServer]:
    server = ProxyAPIServer(HOST).start()
    try:
        yield server
    finally:
        server.stop()


def _set_proxy(server: ProxyAPIServer, **changes: object) -> None:
    """Replace the sidecar's registration (None: deregister it) on the server's loop, as the agent would."""

    async def change() -> None:
        services = server.agent.local._services
        if changes.get("gone"):
            services.pop(PROXY_ID, None)
            server.runner.snaps.pop(PROXY_ID, None)
        else:
            services[PROXY_ID] = dataclasses.replace(services[PROXY_ID], **changes)  # type: ignore[arg-type]
        server.runner.poke()

    server.run(change)


def test_registration_problems_are_named() -> None:
    ok = {"Kind": "connect-proxy", "Proxy": {"Config": {"embedded": False}}}
    assert registration_problem(ok, PROXY_ID) == ""
    assert "embedded = false" in registration_problem({"Kind": "connect-proxy", "Proxy": {}}, PROXY_ID)
    assert "embedded = false" in registration_problem(
        {"Kind": "connect-proxy", "Proxy": {"Config": {"embedded": True}}}, PROXY_ID)
    assert "no longer a connect-proxy (its kind is typical)" in registration_problem({"Kind": ""}, PROXY_ID)
    assert registration_problem(["hostile"], PROXY_ID) == ""  # an odd answer is an outage, not a stop


def test_the_feed_stops_when_the_sidecar_is_deregistered(agent: ProxyAPIServer) -> None:
    agent.publish(web_snapshot(1))
    seen: list[ProxySnapshot] = []

    async def main() -> None:
        feed = HTTPFeed(agent.url, PROXY_ID, wait_s=1, backoff_min_s=0.02, backoff_max_s=0.05)
        first = await feed.first()
        with trio.fail_after(20), pytest.RaisesGroup(
                pytest.RaisesExc(FeedStopped, match="'web-sidecar-proxy' was deregistered from the agent .*unknown")):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed.run, seen.append, first)
                await wait_for_async(lambda: agent.runner.waiters == 1, 15)
                await trio.to_thread.run_sync(lambda: _set_proxy(agent, gone=True))
        assert seen == [] and feed.status.errors >= 2  # two 404s were retried before the third stopped it

    trio.run(main)


@pytest.mark.parametrize(("change", "message"), [
    ({"gone": True}, "was deregistered from the agent"),
    ({"proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web"}}, "embedded = false"),
    ({"proxy": {"DestinationServiceName": "web", "Config": {"embedded": True}}}, "embedded = false"),
    ({"kind": ""}, "no longer a connect-proxy"),
])
def test_the_registration_watch_stops_on(agent: ProxyAPIServer, change: dict[str, object], message: str) -> None:
    async def main() -> None:
        feed = HTTPFeed(agent.url, PROXY_ID)
        reads = 0
        real = feed._registration

        async def counted(client: object) -> str:
            nonlocal reads
            reads += 1
            return await real(client)  # type: ignore[arg-type]

        feed._registration = counted  # type: ignore[method-assign]
        with trio.fail_after(20), pytest.RaisesGroup(pytest.RaisesExc(FeedStopped, match=message)):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed.watch_registration, 0.02)
                await wait_for_async(lambda: reads >= 3, 15)  # a sidecar that is fine is read, not stopped
                await trio.to_thread.run_sync(lambda: _set_proxy(agent, **change))

    trio.run(main)


def test_the_registration_watch_rides_out_an_agent_outage() -> None:
    port = free_ports(1, HOST)[0]

    async def main() -> None:
        feed = HTTPFeed(f"http://{HOST}:{port}", PROXY_ID)  # nothing listens: an outage, not a stop
        with trio.move_on_after(0.5) as scope:
            await feed.watch_registration(0.02)
        assert scope.cancelled_caught

    trio.run(main)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _exec_done(pid: int) -> bool:
    """Whether child `pid` runs the worker (its command line names meshagent.proxy.worker) yet."""
    try:
        return b"meshagent.proxy.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message"), [
    ({"proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web"}}, "the agent runs its data plane"),
    ({"gone": True}, "deregistered"),
])
def test_the_command_stops_with_its_workers(tmp_path: Path, change: dict[str, object], message: str) -> None:
    public = free_ports(1, PUBLIC_HOST)[0]
    server = ProxyAPIServer(HOST).start()
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen([MESHAGENT, "connect", "proxy", "-proxy-id", PROXY_ID, "-http-addr", server.url,
                             "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)

    def report() -> str:
        return (tmp_path / "proxy.log").read_text(errors="replace")[-3000:]

    try:
        wait_for(lambda: "waiting for the agent to sign its leaf certificate" in report(), 30,
                 what="the command saying it waits for a first snapshot", report=report)
        server.publish(web_snapshot(1, public=(PUBLIC_HOST, public), upstreams=()))
        # A child is listed from its fork, before its exec gives it the worker's environment: wait for the
        # exec (python's argv) rather than read the parent's copy of the environment.
        wait_for(lambda: _children(proc.pid) and all(_exec_done(pid) for pid in _children(proc.pid)), 30,
                 what="the command's workers", report=report)
        workers = _children(proc.pid)
        assert all(_environ(pid).get("MESHAGENT_PROXY_LOG_LEVEL") == "WARNING" for pid in workers)
        wait_for(lambda: _listening(public), 30, what="the public listener", report=report)
        _set_proxy(server, **change)
        assert proc.wait(30) == 1, report()
        assert report().count("waiting for the agent to sign") == 1
        assert f"Stopping proxy {PROXY_ID!r}" in report() and message in report()
        for pid in workers:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, what=f"worker {pid} gone")
        assert not _listening(public)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        log.close()
        server.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection((PUBLIC_HOST, port), timeout=2).close()
    except OSError:
        return False
    return True
