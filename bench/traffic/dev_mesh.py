"""The chain benchmark's topology: one real `-dev` agent on 127.0.34.N running its sidecars' data plane.

    wrk → web's sidecar (upstream listener :9191) → mTLS → db-v1's or db-v2's sidecar → the app (haproxy, 200)

db has two instances, `db-v1` and `db-v2` (Service.Meta.version v1 / v2), both in front of the same app, each
with its own sidecar; web's sidecar has one upstream, db. Config entries (PUT /v1/config, as an operator
writes them): db is `http` (service-defaults) with one L7 intention for web (deny /admin, allow /: the L7 path
of bench/proxy). The chain adds a service-router (one match, PathPrefix /bench → db), a 50/50 splitter to the
subsets v1 and v2 and the resolver defining them by Service.Meta.version. Without the chain the upstream is
flat: both instances in one balancer, so the server sidecars carry the same load either way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.agents import AgentProcess, proxy_workers_of
from tests.support.ports import ports_free
from tests.support.wait import wait_for

NET = "127.0.34."
CLIENT_PROXY = "web-sidecar-proxy"
SERVER_PROXIES = ("db-v1-sidecar-proxy", "db-v2-sidecar-proxy")
PUBLIC = {"db-v1": 21000, "db-v2": 21001, "web": 21002}
UPSTREAM_PORT, APP_PORT = 9191, 8088
AGENT_PORTS = (8500, 8600, 8300, 8301, 8302)
PATH = "/bench"  # the router's one match; wrk's requests take it
MAX_LOG = 8 << 20  # the agent log is read from the last offset, at most this much per look

# The worker's log line (proxy/worker.py) once a snapshot is in effect; asctime has milliseconds.
APPLIED = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[INFO\] proxy (\S+) worker (\d+): "
                     rb"\S+: applied snapshot version (\d+) ", re.M)

TARGET_SERIES = re.compile(r'^meshagent_proxy_target_requests_total\{[^}\n]*\btarget="([^"]*)"[^}\n]*\} (\S+)$', re.M)

BASE_ENTRIES: tuple[dict[str, Any], ...] = (
    {"Kind": "service-defaults", "Name": "db", "Protocol": "http"},
    {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Permissions": [
        {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
        {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]},
)


def chain_entries(weight_v1: float = 50.0) -> tuple[dict[str, Any], ...]:
    """Router (one match), splitter (v1/v2 at `weight_v1`/rest) and the resolver defining the subsets."""
    splits = [{"Weight": weight_v1, "ServiceSubset": "v1"}, {"Weight": round(100.0 - weight_v1, 2),
                                                            "ServiceSubset": "v2"}]
    return (
        {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v1", "Subsets": {
            "v1": {"Filter": 'Service.Meta.version == "v1"'}, "v2": {"Filter": 'Service.Meta.version == "v2"'}}},
        {"Kind": "service-splitter", "Name": "db", "Splits": splits},
        {"Kind": "service-router", "Name": "db", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": PATH}}, "Destination": {"Service": "db"}}]},
    )


def services_hcl(host: str, app_port: int) -> str:
    """db-v1, db-v2 (same app) and web, each with a sidecar on a fixed port; db's checked every second (the
    minimum) so a fresh agent routes to them at once (the default sidecar check runs every 10 s)."""
    out = []
    for sid in ("db-v1", "db-v2"):
        port = PUBLIC[sid]
        out.append(f"""service {{
  id      = "{sid}"
  name    = "db"
  address = "{host}"
  port    = {app_port}
  meta    = {{ version = "{sid[3:]}" }}
  connect {{
    sidecar_service {{
      port = {port}
      check {{
        tcp      = "{host}:{port}"
        interval = "1s"
      }}
      proxy {{ local_service_address = "{host}" }}
    }}
  }}
}}""")
    out.append(f"""service {{
  name = "web"
  port = 7002
  connect {{
    sidecar_service {{
      port = {PUBLIC["web"]}
      proxy {{
        upstreams {{
          destination_name   = "db"
          local_bind_address = "{host}"
          local_bind_port    = {UPSTREAM_PORT}
        }}
      }}
    }}
  }}
}}""")
    return "\n".join(out) + "\n"


def free_host() -> str:
    """A 127.0.34.N (N in 10..249) where the agent's, the sidecars' and the app's ports are all free."""
    wanted = (*AGENT_PORTS, *PUBLIC.values(), UPSTREAM_PORT, APP_PORT)
    for n in range(10, 250):
        host = f"{NET}{n}"
        if ports_free(host, wanted):
            return host
    raise SystemExit(f"no {NET}N with ports {wanted} free")


@dataclass
class Applied:
    """One `applied snapshot version` line of a worker: when (epoch seconds, ms resolution) and which."""

    at: float
    proxy: str
    worker: int
    version: int


class AgentLog:
    """The applied lines of the agent's log (its workers write to its stderr), read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.lines: list[Applied] = []

    def scan(self) -> list[Applied]:
        """Read what was appended since the last scan (whole lines only); every applied line so far."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(MAX_LOG)
        except OSError:
            return self.lines
        end = data.rfind(b"\n") + 1
        for m in APPLIED.finditer(data[:end]):
            stamp, ms = m.group(1).decode().split(",")
            at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
            self.lines.append(Applied(at, m.group(2).decode(), int(m.group(3)), int(m.group(4))))
        self.offset += end
        return self.lines

    def applied(self, proxy: str, version: int) -> Applied | None:
        """The first line saying a worker of `proxy` applied `version` or later."""
        return next((a for a in self.scan() if a.proxy == proxy and a.version >= version), None)


@dataclass
class DevMesh:
    """The -dev agent and its sidecars' workers; `cpu_seconds`/`check_alive` as bench/proxy's Pair."""

    agent: AgentProcess
    host: str
    log: AgentLog = field(init=False)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.log = AgentLog(self.agent.log_path)
        self.http = httpx.Client(base_url=self.agent.http_addr, timeout=10)

    @property
    def listen(self) -> tuple[str, int]:
        return (self.host, UPSTREAM_PORT)

    def url(self, path: str = PATH) -> str:
        return f"http://{self.host}:{UPSTREAM_PORT}{path}"

    def workers(self) -> list[int]:
        assert self.agent.proc is not None
        return proxy_workers_of(self.agent.proc.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of every sidecar worker (the agent's own CPU is not the data path's)."""
        from topology import _cpu_of  # bench/proxy/topology.py (run.py puts it on sys.path)
        return sum(_cpu_of(pid) for pid in self.workers())

    def check_alive(self) -> None:
        assert self.agent.proc is not None
        if self.agent.proc.poll() is not None:
            raise SystemExit(f"the agent exited with {self.agent.proc.returncode}:\n{self.agent.log()[-3000:]}")

    def put(self, entry: dict[str, Any]) -> None:
        resp = self.http.put("/v1/config", json=entry)
        if resp.status_code != 200:
            raise SystemExit(f"PUT /v1/config {entry['Kind']} {entry['Name']}: {resp.status_code} {resp.text}")

    def delete(self, kind: str, name: str) -> None:
        resp = self.http.delete(f"/v1/config/{kind}/{name}")
        if resp.status_code not in (200, 404):
            raise SystemExit(f"DELETE /v1/config/{kind}/{name}: {resp.status_code} {resp.text}")

    def snapshot(self, proxy: str = CLIENT_PROXY) -> tuple[int, dict[str, Any]] | None:
        resp = self.http.get(f"/v1/agent/connect/proxy/{proxy}")
        if resp.status_code != 200:
            return None
        return int(resp.headers["X-Consul-Index"]), resp.json()

    def set_chain(self, on: bool, timeout: float = 15.0) -> bool:
        """Write (on) or delete the chain's entries and wait until web's worker applied the snapshot they
        made; True when that snapshot has routes (False: the agent built no chain, the upstream is flat)."""
        before = self.snapshot()
        if before is not None and bool((before[1].get("upstreams") or [{}])[0].get("routes")) == on:
            return self.wait_applied(on, 0, timeout)  # already so: the entries are as we left them
        if on:
            for entry in chain_entries():
                self.put(entry)
        else:
            for kind in ("service-router", "service-splitter", "service-resolver"):
                self.delete(kind, "db")
        return self.wait_applied(on, before[0] if before else 0, timeout)

    def wait_applied(self, chain: bool, after: int, timeout: float) -> bool:
        """Until web's snapshot has (or lacks) routes, with its db endpoints in place, and a worker applied it;
        when the snapshot does not change in `timeout` (no chain compiled), the current one."""
        found: dict[str, Any] = {}

        def built() -> bool:
            current = self.snapshot()
            if current is None:
                return False
            version, wire = current
            ups = wire.get("upstreams") or [{}]
            routed = bool(ups[0].get("routes"))
            ready = (all(t.get("endpoints") for t in ups[0].get("targets", ())) if routed
                     else len(ups[0].get("endpoints", ())) == 2)
            found.update(version=version, routed=routed)
            return ready and ups[0].get("protocol") == "http" and routed == chain and (version > after or after == 0)

        try:
            wait_for(built, timeout, 0.02, f"web's snapshot {'with' if chain else 'without'} routes")
        except AssertionError:
            if not found:
                raise
        wait_for(lambda: self.log.applied(CLIENT_PROXY, found["version"]) is not None, timeout, 0.02,
                 f"web's worker to apply version {found['version']}")
        return bool(found["routed"])

    def target_requests(self) -> dict[str, float]:
        """Requests web's sidecar sent through the chain, by target (proxy metric target_requests_total)."""
        text = self.http.get("/v1/agent/metrics?format=prometheus").text
        out: dict[str, float] = {}
        for m in TARGET_SERIES.finditer(text):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out

    def close(self) -> None:
        self.http.close()
        self.agent.stop()


def start(work: Path, app_port: int, host: str, wait_app: Callable[[], None]) -> DevMesh:
    """Write the services, start the agent, the base entries, and wait until web's sidecar serves db."""
    conf = work / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "services.hcl").write_text(services_hcl(host, app_port))
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "bench-traffic",
                                          "-config-dir", str(conf)], workdir=work)
    agent.start(timeout=30)
    mesh = DevMesh(agent, host)
    try:
        wait_app()
        for entry in BASE_ENTRIES:
            mesh.put(entry)
        mesh.wait_applied(False, 0, 30)
    except BaseException:
        mesh.close()
        raise
    return mesh
