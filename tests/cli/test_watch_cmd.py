"""`meshagent watch` and the config's `watches` against one real -dev agent (127.0.53.N): handlers run once per
change (register, health change, deregister), never per blocking timeout; no handler prints once and exits; a
failing handler ends the command but not an agent watch."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from meshagent.cli.watch_cmd import watch

from tests.support.agents import MESHAGENT, AgentProcess, scratch_dir
from tests.support.ports import free_host_in, free_ports
from tests.support.wait import wait_for

HANDLER = """#!/bin/sh
# One line per run: the index, then the data as one JSON line.
printf 'INDEX=%s ' "$CONSUL_INDEX" >> "$0.out"
cat >> "$0.out"
"""


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """A -dev agent with config watches: service web (recording handler), key fail/k (a handler that fails)."""
    workdir = scratch_dir()
    handler = _script(workdir / "agent-web.sh")
    config = workdir / "watches.json"
    config.write_text(json.dumps({"watches": [
        {"type": "service", "service": "web", "args": [str(handler)]},
        {"type": "key", "key": "fail/k", "handler": "echo handler-said-this; exit 7"},
        {"type": "keyprefix", "prefix": "ok/", "handler": "echo output-of-ok"},
    ]}))
    host = free_host_in("127.0.53", 1, 60)
    proc = AgentProcess(host=host, workdir=workdir, args=[
        "-dev", "-client", host, "-bind", host, "-node", "watch-node", "-config-file", str(config),
        "-log-level", "debug"]).start()
    try:
        yield proc
    finally:
        proc.stop()


def _script(path: Path) -> Path:
    path.write_text(HANDLER)
    path.chmod(0o755)
    return path


def _runs(handler: Path) -> list[tuple[int, object]]:
    """(CONSUL_INDEX, data) of every run of a recording handler so far."""
    out = Path(f"{handler}.out")
    lines = out.read_text().splitlines() if out.exists() else []
    runs = []
    for line in lines:
        head, _, body = line.partition(" ")
        runs.append((int(head.removeprefix("INDEX=")), json.loads(body)))
    return runs


class CountingProxy:
    """A forwarding HTTP proxy in front of the agent that counts the requests it receives per path: the
    watch sends its next query only after it has handled the previous answer, so N arrivals prove N-1
    answers handled (blocking timeouts included)."""

    def __init__(self, upstream: str, host: str) -> None:
        self.arrivals: dict[str, int] = {}
        lock = threading.Lock()
        target = urlsplit(upstream)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    path = self.path.split("?")[0]
                    outer.arrivals[path] = outer.arrivals.get(path, 0) + 1
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request("GET", self.path, headers=dict(self.headers))
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, free_ports(1, host)[0]), Handler)
        self.server.daemon_threads = True
        self.addr = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        """Requests received for `path` so far."""
        return self.arrivals.get(path, 0)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _api(agent: AgentProcess, method: str, path: str, body: object = None) -> None:
    resp = httpx.request(method, f"{agent.http_addr}{path}", json=body, timeout=10)
    assert resp.status_code == 200, resp.text


def test_handler_runs_once_per_change_not_per_blocking_timeout(agent: AgentProcess, tmp_path: Path) -> None:
    handler = _script(tmp_path / "db.sh")
    proxy = CountingProxy(agent.http_addr, agent.host)
    path = "/v1/health/service/db"
    watcher = subprocess.Popen([MESHAGENT, "watch", "-http-addr", proxy.addr, "-type", "service", "-service", "db",
                                "-wait", "100ms", str(handler)], stderr=subprocess.PIPE, start_new_session=True)
    try:
        def settled(expected: int) -> list[tuple[int, object]]:
            """Wait for `expected` runs, then for two more answered queries (blocking timeouts): still
            `expected` runs."""
            wait_for(lambda: len(_runs(handler)) >= expected, what=f"{expected} handler runs")
            base = proxy.count(path)
            wait_for(lambda: proxy.count(path) >= base + 3, what="two blocking timeouts")
            runs = _runs(handler)
            assert len(runs) == expected, runs
            return runs

        runs = settled(1)
        assert runs[0][1] == []  # Consul's watch runs the handler with the first answer
        _api(agent, "PUT", "/v1/agent/service/register", {"Name": "db", "ID": "db", "Port": 5432})
        runs = settled(2)
        assert [e["Service"]["ID"] for e in runs[1][1]] == ["db"]  # type: ignore[union-attr,index]
        _api(agent, "PUT", "/v1/agent/check/register", {"Name": "db-ttl", "CheckID": "db-ttl", "ServiceID": "db",
                                                       "TTL": "60s", "Status": "passing"})
        runs = settled(3)
        _api(agent, "PUT", "/v1/agent/check/fail/db-ttl?note=down")
        runs = settled(4)
        checks = {c["CheckID"]: c["Status"] for c in runs[3][1][0]["Checks"]}  # type: ignore[index]
        assert checks["db-ttl"] == "critical"
        _api(agent, "PUT", "/v1/agent/service/deregister/db")
        runs = settled(5)
        assert runs[4][1] == []
        indexes = [index for index, _ in runs]
        assert indexes == sorted(indexes) and len(set(indexes)) == 5 and indexes[0] > 0  # CONSUL_INDEX
        assert watcher.poll() is None
    finally:
        watcher.terminate()
        watcher.wait(10)
        proxy.close()
    assert watcher.returncode == 0, watcher.stderr.read() if watcher.stderr else ""


def _watch(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHAGENT, "watch", "-http-addr", agent.http_addr, *args], capture_output=True,
                          text=True, timeout=20)


def test_no_handler_prints_the_data_once_and_exits(agent: AgentProcess) -> None:
    _api(agent, "PUT", "/v1/kv/print/me", None)
    done = _watch(agent, "-type", "key", "-key", "print/me")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Key"] == "print/me" and done.stdout.startswith("{\n    ")  # Consul's indent
    missing = _watch(agent, "-type", "keyprefix", "-prefix", "no/such/")
    assert (missing.returncode, missing.stdout.strip()) == (0, "null")


def test_failing_handler_ends_the_watch_with_1(agent: AgentProcess, tmp_path: Path) -> None:
    done = _watch(agent, "-type", "nodes", "cat >/dev/null; exit 3")
    assert done.returncode == 1
    assert "Error executing handler: exit status 3" in done.stderr
    direct = _watch(agent, "-type", "nodes", "-shell=false", str(tmp_path / "missing"))
    assert direct.returncode == 1 and "Error starting handler" in direct.stderr


def test_an_unreachable_agent_is_one_line_and_exit_1() -> None:
    host = "127.0.53.250"
    done = subprocess.run([MESHAGENT, "watch", "-http-addr", f"{host}:{free_ports(1, host)[0]}", "-type", "nodes"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and done.stderr.startswith("Error querying agent: cannot connect")


@pytest.mark.parametrize(("args", "text"), [
    ([], "Watch type must be specified"),
    (["-type", "things"], "Unsupported watch type: 'things'"),
    (["-type", "service"], "Error in -service: Must specify a single service"),
    (["-type", "checks", "-service", "db", "-state", "critical"], "Cannot specify service and state"),
    (["-type", "key", "-key", "a", "-prefix", "b"], "Invalid parameters for a key watch"),
    (["-type", "service", "-service", "db", "-passingonly=maybe"], "'maybe' is not a boolean"),
    (["-type", "nodes", "-wait", "soon"], "is not a duration"),
])
def test_bad_flags_are_one_clear_line(args: list[str], text: str) -> None:
    result = CliRunner().invoke(watch, [*args, "-http-addr", "127.0.53.250:1"])
    assert result.exit_code in (1, 2)
    assert text in result.output


def test_agent_config_watches_run_once_per_change_and_survive_failing_handlers(agent: AgentProcess) -> None:
    handler = agent.workdir / "agent-web.sh"
    wait_for(lambda: len(_runs(handler)) == 1, what="the agent's service watch's first run")
    _api(agent, "PUT", "/v1/agent/service/register", {"Name": "web", "Port": 80})
    runs = wait_for(lambda: (r := _runs(handler)) and len(r) == 2 and r, what="a run for the registration")
    assert [e["Service"]["Service"] for e in runs[1][1]] == ["web"]  # type: ignore[union-attr,index]
    wait_for(lambda: agent.log().count("exited with 7") >= 1, what="the failing handler's first run logged",
             report=agent.log)
    for n, value in enumerate(("one", "two"), start=2):  # the handler fails each time; the watch carries on
        _api(agent, "PUT", "/v1/kv/fail/k", value)
        wait_for(lambda n=n: agent.log().count("exited with 7") >= n, what=f"failing run {n} logged",
                 report=agent.log)
    assert "handler-said-this" in agent.log()
    wait_for(lambda: "output-of-ok" in agent.log(), what="the prefix watch's first run")
    _api(agent, "PUT", "/v1/kv/ok/x", "1")
    wait_for(lambda: agent.log().count("output-of-ok") >= 2, what="a handler's output in the debug log")
    assert len(_runs(handler)) == 2  # none of those writes touched the web service's data
