"""GET /v1/agent/monitor over real HTTP: the agent's log lines streamed (chunked, a line as soon as it is
logged), at the level asked for (more verbose than the agent's), as JSON with ?logjson; a bad level is a 400;
agent:read is required; a client that hangs up ends its subscription. In-process server on 127.0.54.1-9;
the slow test runs a real `meshagent agent -dev` on 127.0.54.10+ and `meshagent monitor` against it (~3 s)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshagent.agent.catalog import commands
from meshagent.agent.logs import FANOUT

from tests.support.acl_objects import add_token
from tests.support.agents import AgentProcess
from tests.support.http_harness import FakeAgent, ServerThread
from tests.support.ports import free_host_in
from tests.support.wait import wait_for

log = logging.getLogger("meshagent.monitor-test")
MGMT = "5d7fb7b6-3c4e-4d4e-9a53-6a0d2b7f0001"


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    host = free_host_in("127.0.54", 1, 9, ports=(0,))
    agent = FakeAgent()
    agent.config.acl.enabled = True
    agent.config.acl.default_policy = "deny"
    agent.config.acl.tokens.initial_management = MGMT
    thread = ServerThread(agent=agent, host=host, hangup_check_interval=0.05).start()
    try:
        thread.apply(commands.acl_init(MGMT))
        yield thread
    finally:
        thread.stop()


def _subscribed(n: int) -> bool:
    return len(FANOUT.subscribers) == n


def test_lines_stream_at_the_level_asked_and_a_hang_up_ends_it(srv: ServerThread) -> None:
    before = len(FANOUT.subscribers)
    with httpx.Client(base_url=srv.url, headers={"X-Consul-Token": MGMT}, timeout=10) as http, \
            http.stream("GET", "/v1/agent/monitor", params={"loglevel": "debug"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.headers["content-type"].startswith("text/plain")
        wait_for(lambda: _subscribed(before + 1), 5, what="the monitor's subscription")
        log.debug("first %s", "line")
        log.info("second line")
        lines = resp.iter_lines()
        first, second = next(lines), next(lines)
        assert first.endswith("[DEBUG] monitor-test: first line")
        assert second.endswith("[INFO]  monitor-test: second line")
    # The client is gone: the server's hang-up sweep ends the stream and its subscription.
    wait_for(lambda: _subscribed(before), 5, what="the subscription to end after the client hung up")


def test_logjson_lines_are_json(srv: ServerThread) -> None:
    before = len(FANOUT.subscribers)
    with httpx.Client(base_url=srv.url, headers={"X-Consul-Token": MGMT}, timeout=10) as http, \
            http.stream("GET", "/v1/agent/monitor?loglevel=WARN&logjson") as resp:
        wait_for(lambda: _subscribed(before + 1), 5, what="the monitor's subscription")
        log.info("not at warn")
        log.warning("as %s", "json")
        line = json.loads(next(resp.iter_lines()))
        assert (line["@level"], line["@message"], line["@module"]) == ("warn", "as json", "monitor-test")
    wait_for(lambda: _subscribed(before), 5, what="the subscription to end")


@pytest.mark.parametrize("query", ["loglevel=verbose", "loglevel=" + "x" * 5000, "logjson=maybe"])
def test_bad_parameters_are_400s(srv: ServerThread, query: str) -> None:
    resp = httpx.get(f"{srv.url}/v1/agent/monitor?{query}", headers={"X-Consul-Token": MGMT}, timeout=10)
    assert resp.status_code == 400, resp.text
    assert len(resp.text) < 300


def test_agent_read_is_required(srv: ServerThread) -> None:
    assert httpx.get(f"{srv.url}/v1/agent/monitor", timeout=10).status_code == 403
    secret = add_token(srv.apply, "kv-only", 'key_prefix "" { policy = "read" }')
    assert httpx.get(f"{srv.url}/v1/agent/monitor", headers={"X-Consul-Token": secret}, timeout=10).status_code == 403


# ------------------------------------------------------------------------------------------ a real agent


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    host = free_host_in("127.0.54", 10, 40)
    workdir = Path(tmp_path_factory.mktemp("monitor"))
    agent = AgentProcess(host=host, workdir=workdir, args=["-dev", "-client", host, "-bind", host, "-node", "mon"])
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.slow
def test_meshagent_monitor_prints_a_dev_agents_lines_until_interrupted(dev: AgentProcess) -> None:
    env = {**os.environ, "MESH_HTTP_ADDR": dev.http_addr}
    cli = subprocess.Popen([str(Path(sys.executable).parent / "meshagent"), "monitor", "-log-level", "debug"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    seen: list[str] = []
    assert cli.stdout is not None
    out = cli.stdout

    def read() -> None:
        for line in out:
            seen.append(line.decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        def clients() -> float:
            gauges = httpx.get(f"{dev.http_addr}/v1/agent/metrics", timeout=5).json()["Gauges"]
            return float(next(g["Value"] for g in gauges if g["Name"] == "meshagent.agent.monitor.clients"))

        wait_for(lambda: clients() == 1, 10, what="meshagent monitor to be subscribed")
        httpx.put(f"{dev.http_addr}/v1/agent/reload", timeout=5).raise_for_status()  # logs "reload complete"
        wait_for(lambda: any("[INFO]  agent: reload complete" in line for line in seen), 10,
                 what="the reload's log line from meshagent monitor", report=lambda: "".join(seen))
        cli.send_signal(signal.SIGINT)
        assert cli.wait(10) == 0
        wait_for(lambda: clients() == 0, 10, what="the agent to drop the monitor after Ctrl-C")
        # The monitor asked for debug; the agent's own output stays at its level (info).
        assert not any("[DEBUG]" in line for line in dev.log().splitlines()), dev.log()[-2000:]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        reader.join(10)
