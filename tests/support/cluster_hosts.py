"""A VM fleet on one machine: one network namespace per host on a Linux bridge, one `meshagent agent` each.

    cluster = Cluster(tmp_path, servers=3, clients=5)   # hosts exist: namespaces, veths, bridge, dirs
    try:
        cluster.clients[0].write_service("db", DB_HCL)
        cluster.start()                                  # every agent answers HTTP, gossip has converged
        cluster.clients[1].cut()                         # link down; heal() brings it back
        cluster.wait_until(lambda: ..., 30, "what we wait for")
    finally:
        cluster.stop()                                   # kill every agent by PID, remove every namespace

Network, names and the registry are tests/support/netns.py's (the one namespace harness): each run takes
a free /24 of 198.18.0.0/15; the root namespace holds .1 on the bridge, so the test process reaches every
host directly (HTTP, `dig`); servers are .11, .12, ..., clients .21, .22, ... Namespaces are
`<run>-<host name>`.

Agents run on config rendered from vagrant/templates/{server,client}.hcl.tmpl by vagrant/render.py, the
same files the Vagrant VMs are provisioned with, in `<host>/config/agent.hcl`; services go beside it.
Each agent's output (debug level) goes to `<host>/agent.log`; `<host>/data` is its -data-dir.

Without root or `ip` (or when the bridge cannot be made) the hosts fall back to loopback addresses
127.18.K.11, .21, ... (one free K per run; all of 127.0.0.0/8 is local on Linux), with a warning and
`cluster.isolated == False`. Nothing separates those hosts, so `cut()` and `heal()` raise NotIsolated:
tests that need them check `cluster.isolated` (or call `cluster.require_isolation()`) and skip.
MESHAGENT_CLUSTER_NETNS=0 in the environment forces that fallback (to see what a machine without root
runs).

Cleanup, also when a test fails or the process dies: `stop()` (the fixtures call it in a finalizer),
an atexit hook for every cluster still up, and at the start of each run netns.cleanup_stale. Each run's
record also holds its agent PIDs (with start times, so a reused PID is never killed). Runs made by the
`up` command below are "detached" and left alone until `down`.

For poking at by hand (as root, from the repo root):

    .venv/bin/python -m tests.support.cluster_hosts up --servers 3 --clients 3 --dir /tmp/x \
        [--service vagrant/services/web.hcl]
    .venv/bin/python -m tests.support.cluster_hosts status --dir /tmp/x
    .venv/bin/python -m tests.support.cluster_hosts cut client-1 --dir /tmp/x     # and: heal client-1
    ip netns exec <namespace> dig @127.0.0.1 -p 8600 web.service.mesh
    .venv/bin/python -m tests.support.cluster_hosts down --dir /tmp/x
    .venv/bin/python -m tests.support.cluster_hosts cleanup                        # stale runs of crashed processes
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx

from .netns import (
    HOSTS_PREFIX,
    add_namespace,
    can_use_namespaces,
    check_prefix,
    cleanup_stale,
    cut_link,
    free_subnet,
    heal_link,
    make_bridge,
    new_run,
    proc_start_time,
    record_is_live,
    records,
    registry_dir,
    registry_lock,
    same_process,
    signal_agent,
    teardown,
    wait_gone,
    write_json,
)
from .ports import ports_free
from .wait import wait_for

__all__ = ["Cluster", "ClusterWarning", "DigError", "Host", "NotIsolated", "cleanup_stale", "layout",
           "meshagent_binary", "proc_start_time", "registry_dir", "render"]

log = logging.getLogger("tests.support.cluster_hosts")

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
TEMPLATES = VAGRANT / "templates"
SERVICES = VAGRANT / "services"

LOOPBACK_NET = "127.18"  # fallback hosts: 127.18.K.N
HTTP_PORT, DNS_PORT, SERF_PORT, SERVER_PORT = 8500, 8600, 8301, 8300
STATE_FILE = "cluster.json"
DEFAULT_PREFIX = "mvc"  # "meshagent VM cluster"; netns.Hosts runs use "mns"


class NotIsolated(RuntimeError):
    """cut()/heal() on a cluster without network namespaces (the loopback fallback)."""


class DigError(RuntimeError):
    """dig got no answer, or an error rcode (SERVFAIL, REFUSED, ...)."""


class ClusterWarning(UserWarning):
    """The harness had to fall back to loopback addresses."""


def meshagent_binary() -> str:
    """The `meshagent` of this venv ($MESHAGENT_BIN overrides)."""
    env = os.environ.get("MESHAGENT_BIN")
    if env:
        return env
    beside = Path(sys.executable).with_name("meshagent")
    if beside.exists():
        return str(beside)
    found = shutil.which("meshagent")
    if found is None:
        raise RuntimeError("no meshagent executable: install the project (make dev) or set MESHAGENT_BIN")
    return found


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshagent_vagrant_render", VAGRANT / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


# ---------------------------------------------------------------------- hosts


class Host:
    """One VM: a namespace (or a loopback address), a data dir, a config dir and one agent process."""

    def __init__(self, cluster: Cluster, index: int, name: str, role: str, address: str,
                 netns: str | None, veth: str | None) -> None:
        self.cluster = cluster
        self.index = index
        self.name = name
        self.role = role
        self.address = address
        self.netns = netns
        self.veth = veth
        self.dir = cluster.root / name
        self.data_dir = self.dir / "data"
        self.config_dir = self.dir / "config"
        self.log_path = self.dir / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_time: int | None = None  # /proc start time of `pid`
        self.returncode: int | None = None
        self.is_cut = False
        self._notify: socket.socket | None = None
        self.notifications: list[str] = []  # sd_notify messages received ("READY=1", ...)

    def __repr__(self) -> str:
        state = "running" if self.running else f"stopped ({self.returncode})"
        return f"<Host {self.name} {self.role} {self.address} {state}{' cut' if self.is_cut else ''}>"

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def http_addr(self) -> str:
        return f"http://{self.address}:{HTTP_PORT}"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "agent.hcl"

    # ---------------------------------------------------------------- config

    def template_values(self) -> dict[str, Any]:
        """The values the Vagrant provisioning gives the same template (see vagrant/provision.sh)."""
        values: dict[str, Any] = {
            "datacenter": self.cluster.datacenter,
            "node_name": self.name,
            "data_dir": str(self.data_dir),
            "log_level": self.cluster.log_level,
            "bind_addr": self.address,
            # In a namespace the agent sees only its own interfaces: 0.0.0.0 is its address and 127.0.0.1.
            "client_addr": "0.0.0.0" if self.netns else self.address,
            "retry_join": [s.address for s in self.cluster.servers],
        }
        if self.is_server:
            values["bootstrap_expect"] = len(self.cluster.servers)
        return values

    def write_config(self) -> Path:
        """Render <config_dir>/agent.hcl from vagrant/templates/<role>.hcl.tmpl."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        render.render_file(TEMPLATES / f"{self.role}.hcl.tmpl", self.template_values(), self.config_file)
        return self.config_file

    def _service_path(self, name: str, json_body: bool) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"service file name {name!r}")
        return self.config_dir / f"svc-{name}.{'json' if json_body else 'hcl'}"

    def write_service(self, name: str, body: str | dict[str, Any] | Path) -> Path:
        """Drop a service definition (HCL or JSON text, a dict, or a file such as vagrant/services/web.hcl)
        into the config dir; the agent reads it at start or on hup()."""
        if isinstance(body, Path):
            body = body.read_text()
        if isinstance(body, dict):
            body = json.dumps(body)
        is_json = body.lstrip().startswith("{") and body.rstrip().endswith("}") and _is_json(body)
        self.remove_service(name)
        path = self._service_path(name, is_json)
        path.write_text(body)
        return path

    def remove_service(self, name: str) -> None:
        """Remove a service file written by write_service (hup() to make the agent notice)."""
        for is_json in (False, True):
            self._service_path(name, is_json).unlink(missing_ok=True)

    # ---------------------------------------------------------------- process

    def argv(self) -> list[str]:
        return [*self.prefix, self.cluster.meshagent, "agent", "-config-dir", str(self.config_dir)]

    @property
    def running(self) -> bool:
        if self.process is not None:
            if self.process.poll() is None:
                return True
            self.returncode = self.process.returncode
            return False
        return same_process(self.pid, self.start_time)

    def start(self, wait: bool = True, timeout: float = 30.0) -> Host:
        """Start the agent (its output appended to log_path); with `wait`, until it answers HTTP."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.cluster._check_usable()
        if not self.config_file.exists():
            self.write_config()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if self._notify is not None:
            env["NOTIFY_SOCKET"] = self._notify.getsockname()
            self.drain_notifications()
            self.notifications.clear()
        with open(self.log_path, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv())}\n".encode())
            out.flush()
            # `ip netns exec` execs the command: the PID is the agent's. Its own session keeps a terminal's
            # Ctrl-C away from it and gives kill() a process group to clean up.
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=self.dir, env=env,
                                            start_new_session=True)
        self.pid = self.process.pid
        self.start_time = proc_start_time(self.pid)
        self.returncode = None
        self.cluster.save()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /v1/agent/self answers on the host's address (fails at once if the agent exits)."""
        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name}: agent exited with {self.returncode}:\n{self.log_tail(40)}")
            self.http("/v1/agent/self", timeout=2)
            return True
        self.cluster.wait_until(ready, timeout, f"{self.name} ({self.address}) to answer GET /v1/agent/self",
                                fatal=AssertionError)

    def _reap(self, timeout: float) -> int | None:
        if self.process is not None:
            try:
                self.returncode = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        elif self.pid is not None and not wait_gone(self.pid, self.start_time, timeout):
            return None
        self.cluster.save()
        return self.returncode

    def signal(self, sig: int) -> None:
        """Send a signal to the agent process (only the one this harness started)."""
        if not self.running or self.pid is None:
            raise RuntimeError(f"{self.name} is not running")
        signal_agent(self.pid, self.start_time, sig, group=False)

    def kill(self) -> int | None:
        """SIGKILL (a crash: no leave) to the agent and its process group; waits until it is gone."""
        if self.pid is None or not self.running:
            return self.returncode
        signal_agent(self.pid, self.start_time, signal.SIGKILL, group=True)
        code = self._reap(15)
        if self.running:
            raise RuntimeError(f"{self.name}: pid {self.pid} survived SIGKILL")
        return code

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a client leaves gracefully, a server does not) and wait; SIGKILL after `timeout`."""
        if self.pid is None or not self.running:
            return self.returncode
        self.signal(signal.SIGTERM)
        code = self._reap(timeout)
        if self.running:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM (killed):\n"
                                 f"{self.log_tail(40)}")
        return code

    def restart(self, graceful: bool = True, wait: bool = True) -> Host:
        """terminate() (or kill() without `graceful`), then start()."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        return self.start(wait=wait)

    def hup(self) -> None:
        """SIGHUP: reload config files (services added or removed)."""
        self.signal(signal.SIGHUP)

    def drain_notifications(self) -> list[str]:
        """sd_notify messages that arrived since the last call (also appended to `notifications`)."""
        got = []
        while self._notify is not None:
            try:
                got.append(self._notify.recv(4096).decode(errors="replace"))
            except BlockingIOError:
                break
        self.notifications.extend(got)
        return got

    @property
    def ready_notified(self) -> bool:
        """The agent sent READY=1 to its $NOTIFY_SOCKET (it does so once it has joined the cluster)."""
        self.drain_notifications()
        return any("READY=1" in m.split("\n") for m in self.notifications)

    # ---------------------------------------------------------------- network

    def cut(self) -> None:
        """Take the host off the network: both ends of its veth down. The agent keeps running."""
        if self.netns is None or self.veth is None:
            raise NotIsolated(f"{self.name}: no network namespaces here (loopback fallback), links cannot be cut")
        cut_link(self.netns, self.veth)
        self.is_cut = True

    def heal(self) -> None:
        """Put the host back on the network."""
        if self.netns is None or self.veth is None:
            raise NotIsolated(f"{self.name}: no network namespaces here (loopback fallback), links cannot be cut")
        heal_link(self.netns, self.veth)
        self.is_cut = False

    def exec(self, argv: Sequence[str], timeout: float = 30.0, check: bool = False,
             input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on this host (inside its namespace). A bare "meshagent" is this venv's, and
        MESH_HTTP_ADDR points at this host's agent (`env` adds to or overrides the environment)."""
        args = [self.cluster.meshagent if a == "meshagent" and i == 0 else a for i, a in enumerate(argv)]
        env = {**os.environ, "MESH_HTTP_ADDR": self.http_addr, **(env or {})}
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, env=env)

    def http(self, path: str, timeout: float = 5.0) -> Any:
        """GET the agent's HTTP API from the test process; the JSON body (text when not JSON). Raises on
        a non-2xx status or when the host cannot be reached."""
        resp = self.cluster.http_client.get(self.http_addr + path, timeout=timeout)
        resp.raise_for_status()
        return _body(resp)

    def http_put(self, path: str, body: bytes | str | dict[str, Any] | list[Any] | None = None,
                 timeout: float = 10.0) -> Any:
        """PUT to the agent's HTTP API: bytes/str as they are, anything else as JSON. The decoded reply."""
        if body is None or isinstance(body, bytes | str):
            resp = self.cluster.http_client.put(self.http_addr + path, content=body, timeout=timeout)
        else:
            resp = self.cluster.http_client.put(self.http_addr + path, json=body, timeout=timeout)
        resp.raise_for_status()
        return _body(resp)

    def members(self) -> dict[str, int]:
        """Gossip members as this agent sees them: name → Status (1 alive, 3 left, 4 failed)."""
        return {m["Name"]: m["Status"] for m in self.http("/v1/agent/members", timeout=3)}

    def dig(self, name: str, qtype: str = "A", timeout: float = 2.0) -> list[str]:
        """The answer records' data (rdata) of `dig @<address> -p 8600 NAME QTYPE`, run from the test
        process; [] for NXDOMAIN or an empty answer. DigError when no reply comes or the rcode is an
        error (SERVFAIL, REFUSED, ...)."""
        argv = ["dig", f"@{self.address}", "-p", str(DNS_PORT), f"+time={max(1, round(timeout))}", "+tries=1",
                "+noall", "+comments", "+answer", name, qtype]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
        m = re.search(r"status: ([A-Z]+)", proc.stdout)
        if proc.returncode != 0 or m is None:
            raise DigError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()}")
        if m.group(1) not in ("NOERROR", "NXDOMAIN"):
            raise DigError(f"{' '.join(argv)}: {m.group(1)}")
        answers = []
        for line in proc.stdout.splitlines():
            if not line.strip() or line.startswith(";"):
                continue
            parts = line.split(None, 4)  # name ttl class type rdata
            if len(parts) == 5 and (parts[3] == qtype.upper() or qtype.upper() == "ANY"):
                answers.append(parts[4].strip())
        return answers

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "address": self.address, "netns": self.netns,
                "veth": self.veth, "dir": str(self.dir), "log": str(self.log_path),
                "pid": self.pid if self.running else None, "start": self.start_time if self.running else None,
                "cut": self.is_cut}


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _body(resp: httpx.Response) -> Any:
    if "json" in resp.headers.get("content-type", ""):
        return resp.json()
    try:
        return resp.json()
    except ValueError:
        return resp.text


# ---------------------------------------------------------------------- the cluster


_LIVE: list[Cluster] = []


@atexit.register
def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


def layout(servers: int, clients: int) -> list[tuple[str, str, int]]:
    """(name, role, last octet) of every host: servers .11, .12, ..., clients .21, .22, ... (or right after
    the servers when there are more than nine)."""
    if servers < 1 or clients < 0:
        raise ValueError("at least one server, and no negative number of clients")
    first_client = max(21, 11 + servers)
    if first_client + clients - 1 > 254:
        raise ValueError(f"{servers} servers and {clients} clients do not fit in a /24")
    return ([(f"server-{i + 1}", "server", 11 + i) for i in range(servers)]
            + [(f"client-{i + 1}", "client", first_client + i) for i in range(clients)])


class Cluster:
    """N hosts in namespaces on one bridge (see the module docstring). Creating it makes the hosts and
    their network; start() starts the agents; stop() removes everything and may be called any number
    of times. Also a context manager."""

    def __init__(self, root: str | os.PathLike[str], servers: int = 3, clients: int = 5, *,
                 prefix: str = DEFAULT_PREFIX, isolate: bool | None = None, datacenter: str = "dc1",
                 log_level: str = "debug", detached: bool = False) -> None:
        """`isolate`: None = namespaces when possible, else the loopback fallback; False = loopback;
        True = namespaces or an error. `detached`: the cluster outlives this process (the `up` command):
        no atexit stop, and other runs' stale cleanup leaves it alone."""
        check_prefix(prefix)
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / STATE_FILE).exists():
            old = json.loads((self.root / STATE_FILE).read_text())
            if not old.get("stopped") and any(same_process(h.get("pid"), h.get("start")) for h in old["hosts"]):
                raise RuntimeError(f"{self.root} holds a cluster that is still running (run `down` first)")
        self.prefix = prefix
        self.datacenter = datacenter
        self.log_level = log_level
        self.detached = detached
        self.meshagent = meshagent_binary()
        self.http_client = httpx.Client(trust_env=False, timeout=5.0,
                                        limits=httpx.Limits(max_keepalive_connections=0))
        self.run = ""
        self.bridge: str | None = None
        self.subnet = ""
        self.gateway: str | None = None
        self.isolated = False
        self.stopped = False
        self.hosts: list[Host] = []
        self._notify_dir: Path | None = None
        plan = layout(servers, clients)
        if isolate is None and os.environ.get("MESHAGENT_CLUSTER_NETNS") == "0":
            isolate = False
        want_ns = can_use_namespaces() if isolate is None else isolate
        if not detached:
            _LIVE.append(self)
        try:
            cleanup_stale(prefix)
            if want_ns:
                try:
                    self._make_namespaces(plan)
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    if isolate:
                        raise
                    self._remove_network()
                    self._fallback(plan, f"cannot make network namespaces ({exc})")
            else:
                why = ("asked for loopback hosts (isolate=False or MESHAGENT_CLUSTER_NETNS=0)" if isolate is False
                       else "network namespaces need root and iproute2's `ip`")
                self._fallback(plan, why)
            if not detached:
                self._notify_dir = Path(tempfile.mkdtemp(prefix=f"{self.run}-"))
            for host in self.hosts:
                host.write_config()
                if self._notify_dir is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.bind(str(self._notify_dir / f"{host.index}.sock"))
                    sock.setblocking(False)
                    host._notify = sock
            self.save()
        except BaseException:
            self.stop()
            raise

    # ---------------------------------------------------------------- set-up

    def _make_namespaces(self, plan: list[tuple[str, str, int]]) -> None:
        self.isolated = True
        with registry_lock() as reg:
            self.run = new_run(reg, self.prefix)
            net = free_subnet(reg)
            self.subnet = str(net)
            self.gateway = str(net.network_address + 1)
            self.bridge = f"{self.run}b"
            for i, (name, role, octet) in enumerate(plan, start=1):
                self.hosts.append(Host(self, i, name, role, str(net.network_address + octet),
                                       f"{self.run}-{name}", f"{self.run}h{i}"))
            self.save(reg)  # the record first: a crash from here on leaves something cleanup_stale finds
            make_bridge(self.bridge, net)
        for host in self.hosts:
            assert host.netns and host.veth
            add_namespace(host.netns, host.veth, host.address, net.prefixlen, self.bridge)

    def _fallback(self, plan: list[tuple[str, str, int]], why: str) -> None:
        self.isolated = False
        self.hosts = []
        message = (f"{why}: hosts fall back to loopback addresses {LOOPBACK_NET}.K.N; "
                   "they are not isolated and cut()/heal() raise NotIsolated")
        log.warning(message)
        warnings.warn(message, ClusterWarning, stacklevel=3)
        with registry_lock() as reg:
            if not self.run:
                self.run = new_run(reg, self.prefix)
            taken = {r.get("subnet") for r in records(reg) if record_is_live(r) and r.get("run") != self.run}
            for k in range(256):
                subnet = f"{LOOPBACK_NET}.{k}.0/24"
                addresses = [f"{LOOPBACK_NET}.{k}.{octet}" for _, _, octet in plan]
                if subnet not in taken and all(_ports_free(a) for a in addresses):
                    break
            else:
                raise RuntimeError(f"no free {LOOPBACK_NET}.K.0/24 for {len(plan)} loopback hosts")
            self.subnet = subnet
            for i, ((name, role, _), address) in enumerate(zip(plan, addresses, strict=True), start=1):
                self.hosts.append(Host(self, i, name, role, address, None, None))
            self.save(reg)

    def _remove_network(self) -> list[str]:
        """Delete the namespaces, veths and the bridge; what could not be removed."""
        if not self.isolated:
            return []
        return teardown({"isolated": True, "bridge": self.bridge,
                          "hosts": [{"netns": h.netns, "veth": h.veth} for h in self.hosts]})

    def _check_usable(self) -> None:
        if self.stopped:
            raise RuntimeError("this cluster was stopped")

    # ---------------------------------------------------------------- hosts

    @property
    def servers(self) -> list[Host]:
        return [h for h in self.hosts if h.is_server]

    @property
    def clients(self) -> list[Host]:
        return [h for h in self.hosts if not h.is_server]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def running(self) -> list[Host]:
        """Hosts whose agent process runs (cut off or not)."""
        return [h for h in self.hosts if h.running]

    def reachable(self) -> list[Host]:
        """Running hosts that are not cut off."""
        return [h for h in self.hosts if h.running and not h.is_cut]

    def require_isolation(self) -> None:
        """pytest.skip unless hosts are in namespaces (cut/heal need it)."""
        if not self.isolated:
            import pytest
            pytest.skip("no network namespaces here (loopback fallback): links cannot be cut")

    # ---------------------------------------------------------------- running

    def start(self, timeout: float = 60.0, wait: bool = True) -> Cluster:
        """Start every agent not yet running (servers first); with `wait`, until each answers HTTP and
        every one of them lists all of them alive in gossip."""
        self._check_usable()
        for host in self.hosts:
            if not host.running:
                host.start(wait=False)
        if wait:
            deadline = time.monotonic() + timeout
            for host in self.hosts:
                host.wait_ready(max(1.0, deadline - time.monotonic()))
            self.wait_for_members(max(1.0, deadline - time.monotonic()))
        return self

    def members_converged(self, hosts: Sequence[Host] | None = None) -> bool:
        """Every given host (default: the reachable ones) lists every one of them alive."""
        hosts = list(self.reachable() if hosts is None else hosts)
        names = {h.name for h in hosts}
        for h in hosts:
            members = h.members()
            if any(members.get(n) != 1 for n in names):
                return False
        return True

    def wait_for_members(self, timeout: float = 30.0) -> None:
        self.wait_until(self.members_converged, timeout, "gossip to list every reachable agent alive on each")

    def wait_until(self, predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition",
                   interval: float = 0.05, fatal: type[BaseException] | tuple[type[BaseException], ...] = ()) -> T:
        """Poll `predicate` until it returns something truthy, and return that. An exception from it
        counts as "not yet" (unless it is `fatal`); after `timeout` seconds an AssertionError names
        `what`, the last exception and the state and log tail of every host."""
        __tracebackhide__ = True  # pytest shows the caller's line, not this loop
        return wait_for(predicate, timeout, interval, what, fatal=fatal, report=self.report)

    def report(self, lines: int = 15) -> str:
        """Every host's state and the tail of its log, for failure messages."""
        out = []
        for h in self.hosts:
            out.append(f"--- {h!r} log {h.log_path}:\n{h.log_tail(lines)}")
        return "\n".join(out)

    def stop(self) -> list[str]:
        """Kill every agent this cluster started (SIGKILL by PID, waited for), then delete the namespaces,
        veths and the bridge. Idempotent. Returns what could not be removed (also logged)."""
        problems: list[str] = []
        for host in self.hosts:
            try:
                host.kill()
            except Exception as exc:
                problems.append(f"{host.name}: {exc}")
            if host._notify is not None:
                host._notify.close()
                host._notify = None
        problems += self._remove_network()
        self.stopped = True
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)
            self._notify_dir = None
        with contextlib.suppress(Exception):
            self.http_client.close()
        if self.run:
            with contextlib.suppress(OSError), registry_lock() as reg:
                (reg / f"{self.run}.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                write_json(self.root / STATE_FILE, self.state())
        if self in _LIVE:
            _LIVE.remove(self)
        if problems:
            log.warning("cluster %s: could not remove %s", self.run, ", ".join(problems))
        return problems

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        return {"run": self.run, "prefix": self.prefix, "isolated": self.isolated, "detached": self.detached,
                "owner": None if self.detached else {"pid": os.getpid(), "start": proc_start_time(os.getpid())},
                "dir": str(self.root), "bridge": self.bridge, "subnet": self.subnet, "gateway": self.gateway,
                "stopped": self.stopped, "hosts": [h.state() for h in self.hosts]}

    def save(self, reg: Path | None = None) -> None:
        """Write the run's record (registry) and <root>/cluster.json."""
        if not self.run or self.stopped:
            return
        state = self.state()
        write_json(self.root / STATE_FILE, state)
        if reg is not None:
            write_json(reg / f"{self.run}.json", state)
        else:
            with registry_lock() as reg_:
                write_json(reg_ / f"{self.run}.json", state)

    @classmethod
    def attach(cls, root: str | os.PathLike[str]) -> Cluster:
        """The cluster recorded in <root>/cluster.json (made by `up`), to stop, cut or heal it."""
        path = Path(root).resolve() / STATE_FILE
        state = json.loads(path.read_text())
        self = cls.__new__(cls)
        self.root = path.parent
        self.prefix = state["prefix"]
        self.datacenter, self.log_level = "dc1", "debug"
        self.detached = state["detached"]
        self.meshagent = meshagent_binary()
        self.http_client = httpx.Client(trust_env=False, timeout=5.0,
                                        limits=httpx.Limits(max_keepalive_connections=0))
        self.run, self.bridge, self.subnet = state["run"], state["bridge"], state["subnet"]
        self.gateway, self.isolated, self.stopped = state["gateway"], state["isolated"], state["stopped"]
        self._notify_dir = None
        self.hosts = []
        for i, h in enumerate(state["hosts"], start=1):
            host = Host(self, i, h["name"], h["role"], h["address"], h["netns"], h["veth"])
            host.pid, host.start_time, host.is_cut = h["pid"], h["start"], h["cut"]
            self.hosts.append(host)
        return self


def _ports_free(address: str) -> bool:
    return ports_free(address, (HTTP_PORT, DNS_PORT, SERF_PORT, SERVER_PORT))


# ---------------------------------------------------------------------- command line


def _print_hosts(cluster: Cluster) -> None:
    mode = f"namespaces on bridge {cluster.bridge}, root at {cluster.gateway}" if cluster.isolated else "loopback"
    print(f"cluster {cluster.run} in {cluster.root} ({mode}, subnet {cluster.subnet})")
    print(f"{'host':<10} {'role':<7} {'address':<15} {'pid':>8}  {'state':<8} namespace / log")
    for h in cluster.hosts:
        state = ("cut" if h.is_cut else "running") if h.running else "stopped"
        print(f"{h.name:<10} {h.role:<7} {h.address:<15} {h.pid or '-':>8}  {state:<8} {h.netns or '-'}  {h.log_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster_hosts",
                                     description="Hosts in network namespaces running meshagent, for manual poking.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create the hosts and start the agents; they keep running after this exits")
    up.add_argument("--servers", type=int, default=3)
    up.add_argument("--clients", type=int, default=3)
    up.add_argument("--dir", required=True, help="cluster directory (state, logs, data and config dirs)")
    up.add_argument("--prefix", default=DEFAULT_PREFIX)
    up.add_argument("--loopback", action="store_true", help="127.18.K.N addresses instead of namespaces")
    up.add_argument("--service", action="append", default=[], metavar="FILE",
                    help="a service definition to put on every client (e.g. vagrant/services/web.hcl); repeatable")
    up.add_argument("--log-level", default="debug")
    for name, what in (("down", "kill the agents and remove the namespaces"), ("status", "show the hosts")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--dir", required=True)
    for name in ("cut", "heal"):
        p = sub.add_parser(name, help=f"{name} one host's link")
        p.add_argument("host")
        p.add_argument("--dir", required=True)
    clean = sub.add_parser("cleanup", help="remove what crashed runs left behind")
    clean.add_argument("--prefix", default=None,
                       help=f"default: {DEFAULT_PREFIX} (clusters) and {HOSTS_PREFIX} (bare hosts)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    if args.command == "up":
        cluster = Cluster(args.dir, args.servers, args.clients, prefix=args.prefix,
                          isolate=False if args.loopback else None, log_level=args.log_level, detached=True)
        try:
            for path in args.service:
                for client in cluster.clients:
                    client.write_service(Path(path).stem, Path(path))
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _print_hosts(cluster)
        print(f"\ndig @{cluster.hosts[0].address} -p {DNS_PORT} {cluster.hosts[0].name}.node.mesh"
              f"    curl http://{cluster.hosts[0].address}:{HTTP_PORT}/v1/agent/members")
        print(f"python -m tests.support.cluster_hosts down --dir {cluster.root}")
        return 0
    if args.command == "cleanup":
        prefixes = [args.prefix] if args.prefix else [DEFAULT_PREFIX, HOSTS_PREFIX]
        removed = [run for prefix in prefixes for run in cleanup_stale(prefix)]
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    cluster = Cluster.attach(args.dir)
    if args.command == "down":
        problems = cluster.stop()
        print(f"cluster {cluster.run} removed" + (f"; left behind: {', '.join(problems)}" if problems else ""))
        return 1 if problems else 0
    if args.command == "status":
        _print_hosts(cluster)
        return 0
    try:
        host = cluster.host(args.host)
        getattr(host, args.command)()
    except KeyError:
        print(f"no host {args.host!r}: one of {', '.join(h.name for h in cluster.hosts)}", file=sys.stderr)
        return 1
    except (NotIsolated, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    cluster.save()
    print(f"{host.name} ({host.address}): {'cut off' if host.is_cut else 'back on the network'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
