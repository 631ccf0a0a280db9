"""Issue 2 acceptance, end to end: real agent processes, real files, `dig`, dnspython, httpx."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from tests.support.agents import MESHAGENT, AgentProcess, start_agent
from tests.support.ports import ports_free
from tests.support.wait import wait_for


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class CheckTarget:
    """A real HTTP server a health check points at; stop() makes the check fail."""

    def __init__(self, host: str) -> None:
        self.server = http.server.ThreadingHTTPServer((host, 0), _Quiet)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets() -> Iterator[list[CheckTarget]]:
    made: list[CheckTarget] = []
    yield made
    for t in made:
        try:
            t.stop()
        except OSError:
            pass


def dig_srv(agent: AgentProcess, name: str) -> list[tuple[int, int, int, str]]:
    out = subprocess.run(["dig", "+short", f"@{agent.host}", "-p", str(agent.dns_port), name, "SRV"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    records = []
    for line in out.split("\n"):
        if line.strip():
            prio, weight, port, target = line.split()
            records.append((int(prio), int(weight), int(port), target))
    return sorted(records, key=lambda r: r[2])


def dnspython_query(agent: AgentProcess, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, agent.host, port=agent.dns_port, timeout=3)


def write_db_services(config_dir: Path, ports: list[int], host: str) -> None:
    services = [{
        "name": "db", "id": f"db-{i}", "port": port, "tags": ["primary" if i == 0 else "replica"],
        "check": {"http": f"http://{host}:{port}/health", "interval": "1s", "timeout": "1s",
                  "failures_before_critical": 2, "status": "passing" if i < 2 else "critical"},
    } for i, port in enumerate(ports)]
    (config_dir / "db.json").write_text(json.dumps({"services": services}, indent=2))


def test_dig_and_dnspython_return_exactly_passing_instances(tmp_path: Path, targets: list[CheckTarget]) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    host_probe = start_agent(tmp_path, "-config-dir", str(config_dir))  # learn a free host, then restart
    host = host_probe.host
    host_probe.stop()
    targets.extend(CheckTarget(host) for _ in range(2))
    dead_port = targets[0].port + 1 if targets[0].port + 1 != targets[1].port else targets[1].port + 1
    write_db_services(config_dir, [targets[0].port, targets[1].port, dead_port], host)
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "alpha",
                                          "-config-dir", str(config_dir)], workdir=tmp_path).start()
    try:
        want = {targets[0].port, targets[1].port}
        wait_for(lambda: {r[2] for r in dig_srv(agent, "db.service.mesh")} == want, 15,
                 what="dig to list the two passing instances")
        records = dig_srv(agent, "db.service.mesh")
        assert all(r[0] == 1 and r[1] == 1 and r[3] == "alpha.node.dc1.mesh." for r in records)
        reply = dnspython_query(agent, "db.service.mesh", "SRV")
        assert {rr.port for rrset in reply.answer for rr in rrset} == want
        assert any(rrset.rdtype == dns.rdatatype.A for rrset in reply.additional)
        tagged = dnspython_query(agent, "primary.db.service.mesh", "SRV")
        assert {rr.port for rrset in tagged.answer for rr in rrset} == {targets[0].port}

        # Stop the server behind one check: after failures_before_critical intervals it leaves DNS.
        stopped = time.monotonic()
        targets[1].stop()
        wait_for(lambda: {r[2] for r in dig_srv(agent, "db.service.mesh")} == {targets[0].port}, 20,
                 what="the failed instance to leave DNS")
        # Two failures 1 s apart are needed; one interval is a safe lower bound on any machine.
        assert time.monotonic() - stopped >= 1.0

        nx = dnspython_query(agent, "nosuch.service.mesh", "A")
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert nx.authority and nx.authority[0].rdtype == dns.rdatatype.SOA
    finally:
        agent.stop()


BROKEN_HCL = """service {
  name = "web"
  port = 80
  check {
    http     = "http://127.0.0.1:80/"
    interval = "10q"
  }
}
"""


def test_broken_service_file_is_named_by_validate_start_and_reload(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "web.hcl").write_text(BROKEN_HCL)
    validate = subprocess.run([MESHAGENT, "validate", str(config_dir)], capture_output=True, text=True,
                              timeout=30)
    assert validate.returncode == 1
    message = validate.stdout + validate.stderr
    assert "web.hcl:6: service.check.interval" in message, message

    agent = AgentProcess(host="127.0.0.1", args=["-dev", "-config-dir", str(config_dir), "-http-port", "0",
                                                 "-dns-port", "0"], workdir=tmp_path)
    proc = subprocess.run([MESHAGENT, "agent", *agent.args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "web.hcl" in proc.stderr and "interval" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    # A good file, a running agent, then a broken edit + SIGHUP: old services stay, the error is logged.
    (config_dir / "web.hcl").write_text(BROKEN_HCL.replace("10q", "10s"))
    running = start_agent(tmp_path, "-config-dir", str(config_dir))
    try:
        def services() -> dict[str, object]:
            return httpx.get(f"{running.http_addr}/v1/agent/services").json()  # type: ignore[no-any-return]
        wait_for(lambda: "web" in services(), 10, what="web to be registered")
        (config_dir / "web.hcl").write_text(BROKEN_HCL)
        (config_dir / "api.hcl").write_text('service {\n  name = "api"\n}\n')
        running.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in running.log() and "web.hcl" in running.log(), 10,
                 what="the reload error in the log")
        assert set(services()) == {"web"}
        assert running.proc is not None and running.proc.poll() is None
    finally:
        running.stop()


def test_restart_with_data_dir_keeps_api_services_kv_and_ttl_status(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    agent = start_agent(tmp_path, "-data-dir", str(data_dir), "-server", "-bootstrap-expect", "1", dev=False,
                        node="keeper")
    base = agent.http_addr
    body = {"Name": "cache", "ID": "cache-1", "Port": 6379, "Tags": ["a"],
            "Check": {"CheckID": "cache-ttl", "Name": "cache ttl", "TTL": "10m"}}
    assert httpx.put(f"{base}/v1/agent/service/register", json=body).status_code == 200
    assert httpx.put(f"{base}/v1/agent/check/warn/cache-ttl", params={"note": "slow"}).status_code == 200
    assert httpx.put(f"{base}/v1/kv/app/config", content=b"v1").json() is True
    assert agent.stop() == 0

    again = AgentProcess(host=agent.host, args=agent.args, workdir=tmp_path).start()
    try:
        services = httpx.get(f"{base}/v1/agent/services").json()
        assert services["cache-1"]["Port"] == 6379 and services["cache-1"]["Tags"] == ["a"]
        checks = httpx.get(f"{base}/v1/agent/checks").json()
        assert checks["cache-ttl"]["Status"] == "warning"
        assert checks["cache-ttl"]["Output"] == "slow"
        assert httpx.get(f"{base}/v1/kv/app/config", params={"raw": ""}).content == b"v1"
        health = httpx.get(f"{base}/v1/health/service/cache").json()
        assert [e["Service"]["ID"] for e in health] == ["cache-1"]
    finally:
        again.stop()


def test_second_agent_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_agent(tmp_path, "-data-dir", str(data_dir), dev=False)
    try:
        proc = subprocess.run([MESHAGENT, "agent", "-data-dir", str(data_dir), "-client", "127.0.0.1",
                               "-http-port", "0", "-dns-port", "0", "-bind", "127.0.0.1"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and "in use" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        first.stop()


def test_readme_make_dev_starts_a_working_agent(tmp_path: Path) -> None:
    """The README's first command: `make dev` sets up and starts an agent that answers DNS and HTTP."""
    repo = Path(__file__).resolve().parents[2]
    if not ports_free("127.0.0.1", (8500, 8600)):
        pytest.fail("127.0.0.1:8500/8600 are taken; `make dev` needs them (stop the other agent)")
    log = open(tmp_path / "make-dev.log", "wb")
    proc = subprocess.Popen(["make", "dev"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "VENV": os.environ.get("VENV", ".venv")})
    try:
        wait_for(lambda: httpx.get("http://127.0.0.1:8500/v1/catalog/services").status_code == 200, 120,
                 what="make dev's agent to answer HTTP")
        reply = wait_for(lambda: _a_records("web.service.mesh"), 30, what="web.service.mesh to resolve")
        assert reply
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        log.close()


def _a_records(name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=8600, timeout=2)
    return [rr.address for rrset in reply.answer for rr in rrset]
