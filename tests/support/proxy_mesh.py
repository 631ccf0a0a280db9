"""Helpers for the sidecar acceptance suite (tests/cluster/test_sidecar_*.py) on a namespace cluster: service
files with sidecars, the test application as a process in a host's namespace, curl/wrk/openssl s_client run
inside a host's namespace, the Prometheus text read and summed, and packet captures on the cluster bridge
(what crosses between hosts: TLS or not, and gossip suspicion messages).

Every tool runs as a real process (`ip netns exec`); nothing is mocked.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack

from .cluster_hosts import Cluster, Host
from .netns import proc_start_time, same_process, signal_agent, wait_gone

APPS = Path(__file__).resolve().with_name("mesh_apps.py")
MAX_CAPTURE = 64 * 1024 * 1024  # bytes of payload a capture keeps; a test's traffic is far less


# ---------------------------------------------------------------------- service files


def hcl_value(value: Any) -> str:
    """`value` as an HCL2 expression (strings, numbers, bools, lists, maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {hcl_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(hcl_value(v) for v in value) + "]"
    raise TypeError(f"no HCL form for {type(value).__name__}")


@dataclass(frozen=True)
class UpstreamSpec:
    """One `upstreams` block: a local listener on the caller's host for `destination`."""

    destination: str
    local_bind_port: int
    config: Mapping[str, Any] = field(default_factory=dict)


def service_hcl(name: str, port: int, *, service_id: str | None = None, upstreams: Sequence[UpstreamSpec] = (),
                proxy_config: Mapping[str, Any] | None = None, tcp_check: bool = True) -> str:
    """A service file for `name` on `port` (the app on 127.0.0.1) with `connect { sidecar_service { proxy
    { upstreams ... } } }`; a TCP check on the app every second (the sidecar's alias check follows it)."""
    lines = ["service {", f"  name = {json.dumps(name)}", f"  id   = {json.dumps(service_id or name)}",
             f"  port = {port}"]
    if tcp_check:
        lines += ["  check {", f'    id       = "{service_id or name}-app"', '    name     = "app listening"',
                  f'    tcp      = "127.0.0.1:{port}"', '    interval = "1s"', '    timeout  = "1s"', "  }"]
    lines += ["  connect {", "    sidecar_service {", "      proxy {"]
    if proxy_config:
        lines.append(f"        config = {hcl_value(proxy_config)}")
    for up in upstreams:
        lines += ["        upstreams {", f"          destination_name = {json.dumps(up.destination)}",
                  f"          local_bind_port  = {up.local_bind_port}"]
        if up.config:
            lines.append(f"          config = {hcl_value(up.config)}")
        lines.append("        }")
    lines += ["      }", "    }", "  }", "}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the test application


class App:
    """One mesh_apps.py process in a host's namespace: HTTP on 127.0.0.1:`port`, echo on `echo_port`, its
    control listener on the host's address (reached from the test process)."""

    def __init__(self, host: Host, name: str, port: int, control_port: int, echo_port: int | None = None) -> None:
        self.host, self.name, self.port, self.control_port, self.echo_port = host, name, port, control_port, echo_port
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_time: int | None = None
        self.log_path = host.dir / f"app-{name}.log"

    @property
    def control_url(self) -> str:
        return f"http://{self.host.address}:{self.control_port}"

    def start(self, timeout: float = 20.0) -> App:
        """Start the process and wait until its control listener answers."""
        argv = [*self.host.prefix, sys.executable, str(APPS), "--name", self.name, "--http", f"127.0.0.1:{self.port}",
                "--control", f"{self.host.address}:{self.control_port}"]
        if self.echo_port:
            argv += ["--echo", f"127.0.0.1:{self.echo_port}"]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pid = self.process.pid
        self.start_time = proc_start_time(self.pid)
        self.host.cluster.wait_until(self.stats, timeout, f"app {self.name} on {self.host.name} to answer")
        return self

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and same_process(self.pid, self.start_time)

    def kill(self) -> None:
        """SIGKILL the app (a crash), by the PID this object started; waits until it is gone."""
        if self.pid is None or not self.running:
            return
        signal_agent(self.pid, self.start_time, signal.SIGKILL, group=True)
        if self.process is not None:
            self.process.wait(15)
        else:
            wait_gone(self.pid, self.start_time, 15)

    def stats(self) -> dict[str, Any]:
        """The app's counters (served, active, max_active, codes, fail)."""
        body = httpx.get(self.control_url + "/stats", timeout=2, trust_env=False).json()
        assert isinstance(body, dict)
        return body

    def served(self) -> int:
        return int(self.stats()["served"])

    def served_between(self, since: float, until: float) -> int:
        """Mesh requests that reached the app in [since, until) by time.monotonic() (one clock for every
        namespace): exact however late it is asked, unlike two reads of `served` under load."""
        body = httpx.get(f"{self.control_url}/served", params={"since": repr(since), "until": repr(until)},
                         timeout=5, trust_env=False).json()
        return int(body["served"])

    def set_failing(self, on: bool) -> None:
        """Answer 500 to every mesh request (on) or serve normally (off)."""
        httpx.get(f"{self.control_url}/fail?on={1 if on else 0}", timeout=2, trust_env=False).raise_for_status()

    def reset(self) -> None:
        httpx.get(self.control_url + "/reset", timeout=2, trust_env=False).raise_for_status()


def stop_apps(apps: Sequence[App]) -> None:
    """Kill every app these objects started (only those PIDs)."""
    for app in apps:
        with contextlib.suppress(Exception):
            if app.pid is not None and same_process(app.pid, app.start_time):
                app.kill()


# ---------------------------------------------------------------------- catalog and listeners


def connect_instances(host: Host, service: str, passing: bool = True) -> list[dict[str, Any]]:
    """GET /v1/health/connect/<service>[?passing]: the sidecar instances of `service`."""
    body = host.http(f"/v1/health/connect/{service}" + ("?passing" if passing else ""), timeout=5)
    assert isinstance(body, list)
    return body


def public_listener(entry: dict[str, Any]) -> tuple[str, int]:
    """(address, port) of a sidecar's public listener from a /v1/health/connect entry."""
    svc = entry["Service"]
    return (svc.get("Address") or entry["Node"]["Address"]), int(svc["Port"])


def wait_passing(cluster: Cluster, via: Host, service: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Until `count` sidecars of `service` pass their checks; those entries."""
    def enough() -> list[dict[str, Any]] | None:
        got = connect_instances(via, service)
        return got if len(got) == count else None
    found = cluster.wait_until(enough, timeout, f"{count} passing sidecar(s) of {service}")
    assert found is not None
    return found


def listening(host: Host, port: int) -> bool:
    """Something in the host's namespace listens on TCP `port` (any address)."""
    out = host.exec(["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout
    return bool(out.strip())


def wait_listening(host: Host, ports: Sequence[int], timeout: float = 60.0) -> None:
    """Until every port listens in the host's namespace."""
    host.cluster.wait_until(lambda: all(listening(host, p) for p in ports), timeout,
                            f"ports {list(ports)} to listen on {host.name}")


# ---------------------------------------------------------------------- curl, wrk, openssl


@dataclass
class Curl:
    """What one curl run got: status (0 when there was no HTTP answer), headers, body, curl's exit code."""

    code: int
    headers: dict[str, str]
    body: str
    exit: int
    stderr: str


def curl(host: Host, url: str, *args: str, timeout: float = 15.0) -> Curl:
    """curl inside the host's namespace; never raises for HTTP or connection failures."""
    proc = host.exec(["curl", "-sS", "-D", "-", "--max-time", str(timeout), *args, url], timeout=timeout + 10)
    # Host.exec reads text with universal newlines: the header block ends with a blank line "\n\n".
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    m = re.match(r"HTTP/\S+ (\d{3})", head)
    headers = {}
    for line in head.split("\n")[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    return Curl(int(m.group(1)) if m else 0, headers, body, proc.returncode, proc.stderr)


@dataclass
class Wrk:
    """wrk's summary: completed requests, non-2xx/3xx answers, socket errors, requests per second."""

    requests: int
    non_2xx: int
    errors: dict[str, int]
    rps: float
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.errors.values())


def parse_wrk(text: str) -> Wrk:
    """Read wrk's plain summary."""
    m = re.search(r"(\d+) requests in", text)
    if m is None:
        raise AssertionError(f"wrk printed no summary:\n{text}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if e:
        errors = dict(zip(errors, map(int, e.groups()), strict=True))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r = re.search(r"Requests/sec:\s+([\d.]+)", text)
    return Wrk(int(m.group(1)), int(n.group(1)) if n else 0, errors, float(r.group(1)) if r else 0.0, text)


def wrk(host: Host, url: str, seconds: float, connections: int = 8, threads: int = 1, timeout_s: int = 10,
        nice: int = 0) -> Wrk:
    """`wrk -t -c -d --timeout` inside the host's namespace (keep-alive), at `nice` below normal priority;
    its summary."""
    niced = ["nice", "-n", str(nice)] if nice else []
    proc = host.exec([*niced, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s}s",
                      url], timeout=seconds + timeout_s + 30)
    return parse_wrk(proc.stdout + proc.stderr)


class Background:
    """A function run in a thread (a load while the test does something else); result() joins it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn, self._value, self._exc = fn, None, None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._exc = exc  # type: ignore[assignment]

    def result(self, timeout: float = 120.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background load did not finish"
        if self._exc is not None:
            raise self._exc
        return self._value


@dataclass
class Burst:
    """One request of a burst: status, seconds it took, headers (lower-cased)."""

    code: int
    seconds: float
    headers: dict[str, str]


def burst(host: Host, url: str, n: int, timeout: float = 30.0) -> list[Burst]:
    """`n` concurrent GETs (one connection each) from inside the host's namespace (mesh_apps.py burst)."""
    proc = host.exec([sys.executable, str(APPS), "burst", "--url", url, "-n", str(n), "--timeout", str(timeout)],
                     timeout=timeout + 30)
    if proc.returncode != 0:
        raise AssertionError(f"burst failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [Burst(r["code"], r["seconds"], r["headers"]) for r in json.loads(proc.stdout)]


@dataclass
class SClient:
    """What `openssl s_client` saw: whether the peer answered application data, and its output."""

    answered: bool
    handshake: bool
    output: str


def s_client(host: Host, address: str, port: int, *, send: bytes, expect: bytes, cert: Path | None = None,
             key: Path | None = None, timeout: float = 15.0) -> SClient:
    """Debian `openssl s_client` from inside the host's namespace: connect, present `cert` (if any), send
    `send`, and report whether `expect` came back before the peer closed (refused: it did not)."""
    argv = ["openssl", "s_client", "-connect", f"{address}:{port}", "-showcerts"]
    if cert is not None and key is not None:
        argv += ["-cert", str(cert), "-key", str(key)]
    proc = subprocess.Popen([*host.prefix, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)

    def read() -> None:
        while chunk := stdout.read1(65536):
            out.extend(chunk)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write(send)
        proc.stdin.flush()
    except OSError:
        pass  # the peer refused before we wrote: s_client is gone
    deadline = time.monotonic() + timeout
    # Done when the answer came back or when the peer closed (s_client exits); never longer than `timeout`.
    while expect not in out and proc.poll() is None and time.monotonic() < deadline:
        reader.join(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    reader.join(5)
    text = bytes(out).decode(errors="replace")
    return SClient(expect in out, "Cipher is" in text, text)


def peer_certificate(output: str) -> str:
    """The first PEM certificate `s_client -showcerts` printed (the server's leaf)."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", output, re.S)
    assert m, f"s_client printed no certificate:\n{output[-2000:]}"
    return m.group(0)


# ---------------------------------------------------------------------- Prometheus


def agent_prometheus(host: Host) -> str:
    """The agent's /v1/agent/metrics?format=prometheus text (its own metrics and its sidecars')."""
    resp = host.cluster.http_client.get(host.http_addr + "/v1/agent/metrics?format=prometheus", timeout=10)
    resp.raise_for_status()
    return resp.text


def families(text: str) -> list[Any]:
    """Parse Prometheus text with prometheus_client.parser (raises on malformed text)."""
    from prometheus_client.parser import text_string_to_metric_families
    return list(text_string_to_metric_families(text))


def sample_sum(fams: Sequence[Any], name: str, **labels: str) -> float:
    """The sum of every sample called `name` whose labels include `labels`."""
    total = 0.0
    for fam in fams:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def metric(host: Host, name: str, **labels: str) -> float:
    """`sample_sum` over the host agent's Prometheus text."""
    return sample_sum(families(agent_prometheus(host)), name, **labels)


def code_classes(host: Host, **labels: str) -> dict[str, float]:
    """requests_total by code_class (and retries, budget overflows, breaker trips, ejections) on the host's
    agent, for failure messages: where did the failed requests go."""
    out: dict[str, float] = {}
    for fam in families(agent_prometheus(host)):
        for s in fam.samples:
            if not all(s.labels.get(k) == v for k, v in labels.items()):
                continue
            if s.name == "meshagent_proxy_requests_total":
                key = f"{s.labels.get('direction')} {s.labels.get('code_class')}"
            elif s.name.endswith("_total") and s.name.split("_proxy_")[-1] in (
                    "retries_total", "retry_budget_overflows_total", "circuit_breaker_trips_total",
                    "ejections_total", "tls_handshake_failures_total"):
                key = s.name.split("_proxy_")[-1] + "".join(
                    f" {v}" for k, v in s.labels.items() if k in ("limit", "reason"))
            else:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


# ---------------------------------------------------------------------- packet capture on the bridge


@dataclass
class Segment:
    """The payload of one captured TCP segment or UDP datagram."""

    proto: str  # "tcp" | "udp"
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


class Capture:
    """Every IPv4 TCP/UDP payload arriving from the given interfaces (AF_PACKET, as root), kept while the block
    runs. Use the root-side veths of hosts (`Host.veth`): a bridge does not show frames it forwards.

        with Capture([host.veth], ports={8301}) as cap: ...
        cap.segments
    """

    def __init__(self, ifaces: Sequence[str], ports: set[int] | None = None, proto: str | None = None) -> None:
        self.ports, self.proto = ports, proto
        self.segments: list[Segment] = []
        self._kept = 0
        self._stop = threading.Event()
        self._socks = []
        for iface in ifaces:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sock.bind((iface, 0))
            sock.setblocking(False)
            self._socks.append(sock)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._socks:
            sock.close()

    def _run(self) -> None:
        import select
        while not self._stop.is_set():
            ready, _, _ = select.select(self._socks, [], [], 0.1)
            for sock in ready:
                while True:
                    try:
                        frame, meta = sock.recvfrom(65536)
                    except (BlockingIOError, OSError):
                        break
                    # Frames a namespace sends arrive on its veth's root end; each is kept once, there.
                    if meta[2] != socket.PACKET_OUTGOING:
                        self._keep(frame)

    def _keep(self, frame: bytes) -> None:
        seg = _segment(frame)
        if seg is None or (self.proto and seg.proto != self.proto):
            return
        if self.ports and seg.src[1] not in self.ports and seg.dst[1] not in self.ports:
            return
        if seg.payload and self._kept + len(seg.payload) <= MAX_CAPTURE:
            self._kept += len(seg.payload)
            self.segments.append(seg)


def _segment(frame: bytes) -> Segment | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    proto = ip[9]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    body = ip[ihl:total]
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack_from("!HH", body)
        off = (body[12] >> 4) * 4
        return Segment("tcp", (src, sport), (dst, dport), bytes(body[off:]))
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body)
        return Segment("udp", (src, sport), (dst, dport), bytes(body[8:]))
    return None


def tls_records_only(data: bytes) -> bool:
    """`data` (one direction of a connection, in order) parses as a run of TLS records (types 20-23, version
    3.x, length ≤ 2^14 + 2048)."""
    i = 0
    while i < len(data):
        if i + 5 > len(data):
            return True  # a record cut by the end of the capture
        ctype, major, length = data[i], data[i + 1], struct.unpack_from("!H", data, i + 3)[0]
        if ctype not in (20, 21, 22, 23) or major != 3 or length > 16384 + 2048:
            return False
        i += 5 + length
    return True


def gossip_messages(segments: Sequence[Segment]) -> list[bytes]:
    """Every SWIM/Serf message (type byte + body) in captured gossip datagrams (unencrypted gossip, as the
    test clusters run), split with the agent's own wire code."""
    from meshagent.gossip.wire import WireError, unpack_packet
    parts: list[bytes] = []
    for seg in segments:
        if seg.proto == "udp":
            with contextlib.suppress(WireError):
                parts.extend(unpack_packet(seg.payload))
    return parts


def gossip_suspicions(messages: Sequence[bytes]) -> list[tuple[str, str]]:
    """(suspected node, by node) of every suspect message among `messages`."""
    from meshagent.gossip.messages import MessageType
    found = []
    for part in messages:
        if part and part[0] == MessageType.SUSPECT:
            body = msgpack.unpackb(part[1:], raw=False, strict_map_key=False)
            found.append((str(body.get("Node")), str(body.get("From"))))
    return found


def pings(messages: Sequence[bytes]) -> int:
    """How many probes (ping messages) are among `messages`: a capture that decodes sees them every second."""
    from meshagent.gossip.messages import MessageType
    return sum(1 for part in messages if part and part[0] == MessageType.PING)
