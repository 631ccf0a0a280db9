"""The proxy benchmark's topology on loopback 127.0.20.0/24: identities, the apps, our sidecar pairs and the
haproxy pairs, each a process stopped by its PID, with the CPU time of each read from /proc.

    wrk → client side (plain upstream listener) → mTLS → server side (public listener) → app

Addresses: .1 the apps, .2 our server sidecars, .3 our client sidecars, .4 haproxy server sides, .5 haproxy
client sides. Identities: client `web`, server `db`, leaves of one tests/support/mesh_certs.py MeshCA.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import haproxy  # bench/proxy/haproxy.py (run.py puts bench/proxy on sys.path)
from meshagent.proxy.snapshot import (
    Endpoint,
    IntentionRule,
    Intentions,
    Permission,
    ProxySnapshot,
    TLSMaterial,
    Upstream,
)

from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

NET = "127.0.20."
APP_HOST, OURS_SERVER, OURS_CLIENT, HAP_SERVER, HAP_CLIENT = (f"{NET}{n}" for n in range(1, 6))
CLIENT, SERVER = "web", "db"
WORKER = "meshagent.proxy.worker"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_ANSWER = 1 << 20


class Proc:
    """One benchmark process: started with its output in a log file, stopped by its PID (and only it)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        """Exit the benchmark with this process's log tail when it has died."""
        if not self.alive():
            sys.exit(f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """utime + stime of this process and its live descendants (a worker may fork its own)."""
        return sum(_cpu_of(pid) for pid in [self.pid, *_descendants(self.pid)])

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


_ports: dict[str, list[int]] = {}


def port(host: str) -> int:
    """A free port on `host`, distinct from every other one this run handed out for it: taken from one batch
    the kernel gave while all were held open, since our listeners bind later, in their own processes."""
    if not _ports.get(host):
        _ports[host] = free_ports(8, host)
    return _ports[host].pop()


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def _cpu_of(pid: int) -> float:
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0  # gone between the listing and the read
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parents.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Identities:
    """The mesh CA and the two leaves, as PEM strings and as files haproxy reads."""

    ca: MeshCA
    files: Path
    web_pem: Path = field(init=False)  # cert + key in one file: haproxy's `crt`
    db_pem: Path = field(init=False)
    roots: Path = field(init=False)

    def __post_init__(self) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        self.web, self.db = self.ca.leaf(CLIENT), self.ca.leaf(SERVER)
        self.web_pem, self.db_pem = self.files / "web.pem", self.files / "db.pem"
        self.web_pem.write_text(self.web.cert_pem + self.web.key_pem)
        self.db_pem.write_text(self.db.cert_pem + self.db.key_pem)
        self.roots = self.files / "roots.pem"
        self.roots.write_text(self.ca.root_pem)

    def material(self, service: str) -> TLSMaterial:
        leaf = self.web if service == CLIENT else self.db
        return TLSMaterial(leaf.cert_pem, leaf.key_pem, (self.ca.root_pem,), self.ca.trust_domain, leaf.spiffe_id)


@dataclass
class Pair:
    """A client side and a server side in front of one app: `url` is where wrk sends its load."""

    impl: str  # "ours" | "haproxy"
    mode: str  # "l4" | "l7" | "bulk"
    listen: tuple[str, int]  # the client side's plain listener
    public: tuple[str, int]  # the server side's mTLS listener
    procs: list[Proc] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}{path}"

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()


def snapshots(ids: Identities, mode: str, public: tuple[str, int], listen: tuple[str, int],
              client_public: tuple[str, int], app: tuple[str, int]) -> tuple[ProxySnapshot, ProxySnapshot]:
    """Our (server, client) snapshots: db's sidecar in front of the app, web's sidecar with one upstream to
    it. L7: both speak http, and db's intentions hold one L7 rule for web, checked on every request."""
    protocol = "http" if mode == "l7" else "tcp"
    if mode == "l7":
        rule = IntentionRule(source=CLIENT, action=None, name=f"{CLIENT} => {SERVER}", permissions=(
            Permission(action="deny", path_prefix="/admin"), Permission(action="allow", path_prefix="/")))
    else:
        rule = IntentionRule(source=CLIENT, action="allow", name=f"{CLIENT} => {SERVER}")
    server = ProxySnapshot(
        proxy_id=f"{SERVER}-sidecar-proxy", service=SERVER, datacenter=ids.ca.datacenter,
        tls=ids.material(SERVER), public_address=public[0], public_port=public[1],
        local_service_address=app[0], local_service_port=app[1], protocol=protocol,
        intentions=Intentions(default_allow=False, rules=(rule,)), workers=1, version=1)
    upstream = Upstream(destination_name=SERVER, local_bind_address=listen[0], local_bind_port=listen[1],
                        datacenter=ids.ca.datacenter, protocol=protocol, spiffe_ids=(ids.db.spiffe_id,),
                        endpoints=(Endpoint(public[0], public[1], node="bench", service_id=server.proxy_id),))
    client = ProxySnapshot(
        proxy_id=f"{CLIENT}-sidecar-proxy", service=CLIENT, datacenter=ids.ca.datacenter,
        tls=ids.material(CLIENT), public_address=client_public[0], public_port=client_public[1],
        local_service_port=0, protocol=protocol, upstreams=(upstream,), workers=1, version=1)
    return server, client


def start_ours(ids: Identities, mode: str, app: tuple[str, int], work: Path) -> Pair:
    """Our pair for `mode`: two `python -m meshagent.proxy.worker --snapshot FILE.json` processes."""
    public = (OURS_SERVER, port(OURS_SERVER))
    listen_port, client_public_port = port(OURS_CLIENT), port(OURS_CLIENT)
    server, client = snapshots(ids, mode, public, (OURS_CLIENT, listen_port),
                               (OURS_CLIENT, client_public_port), app)
    pair = Pair("ours", mode, (OURS_CLIENT, listen_port), public)
    for side, snap in (("server", server), ("client", client)):
        path = work / f"ours-{mode}-{side}.json"
        path.write_text(json.dumps(snap.to_wire()))
        pair.procs.append(Proc(f"ours-{mode}-{side}", [sys.executable, "-m", WORKER, "--snapshot", str(path)], work))
    return pair


def start_haproxy(binary: str, ids: Identities, mode: str, app: tuple[str, int], work: Path) -> Pair:
    """The haproxy pair for `mode` (http mode for l7, tcp otherwise)."""
    hmode = "http" if mode == "l7" else "tcp"
    public = (HAP_SERVER, port(HAP_SERVER))
    listen = (HAP_CLIENT, port(HAP_CLIENT))
    pair = Pair("haproxy", mode, listen, public)
    configs = (("server", haproxy.server_config(hmode, public, ids.db_pem, ids.roots, app)),
               ("client", haproxy.client_config(hmode, listen, ids.web_pem, ids.roots, public)))
    for side, text in configs:
        path = work / f"haproxy-{mode}-{side}.cfg"
        path.write_text(text)
        haproxy.check_config(binary, path)
        pair.procs.append(Proc(f"haproxy-{mode}-{side}", haproxy.command(binary, path), work))
    return pair


def start_app(binary: str, work: Path) -> tuple[Proc, tuple[str, int]]:
    """haproxy as the small-request app."""
    app = (APP_HOST, port(APP_HOST))
    path = work / "app.cfg"
    path.write_text(haproxy.app_config(*app))
    haproxy.check_config(binary, path)
    return Proc("app", haproxy.command(binary, path), work), app


def start_bulk_app(size: int, work: Path) -> tuple[Proc, tuple[str, int]]:
    """bench/proxy/bulk_app.py serving `size` bytes at /bulk."""
    app = (APP_HOST, port(APP_HOST))
    script = Path(__file__).resolve().parent / "bulk_app.py"
    return Proc("bulk-app", [sys.executable, str(script), app[0], str(app[1]), str(size)], work), app


# ---------------------------------------------------------------------- probes


def http_get(address: tuple[str, int], path: str = "/", timeout: float = 5.0) -> int:
    """The status code of one `GET path` on a new connection (`Connection: close`), read to the end."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < MAX_ANSWER:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer from {address[0]}:{address[1]}{path}: {data[:60]!r}")
    return int(data[9:12])


def wait_serving(address: tuple[str, int], procs: list[Proc], what: str, timeout: float = 30.0) -> None:
    """Wait until `GET /` through `address` answers 200; exit with the logs if a process died or time ran out."""
    def up() -> bool:
        for proc in procs:
            if not proc.alive():
                raise SystemExit(f"{proc.name} (pid {proc.pid}) exited with {proc.popen.returncode}:\n{proc.tail()}")
        return http_get(address, "/", timeout=2.0) == 200
    try:
        wait_for(up, timeout, 0.05, what, fatal=SystemExit)
    except AssertionError as exc:
        logs = "\n".join(f"--- {p.name} (pid {p.pid})\n{p.tail()}" for p in procs)
        raise SystemExit(f"{exc}\n{logs}") from None


def tls_of(public: tuple[str, int], ids: Identities) -> str:
    """The TLS version and cipher a server side negotiates with web's leaf (what the client side would get)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ids.roots))
    ctx.load_cert_chain(str(ids.web_pem))
    with socket.create_connection(public, timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else '?'}"
