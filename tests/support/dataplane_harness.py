"""In-process data-plane test harness shared by tests/proxy and bench/proxy: a Reactor in a thread (`Loop`),
a threaded echo application, TLS material and snapshot builders, mesh TLS clients, forged certificates,
metric readers and a static or control-fed worker process. Addresses are the caller's (its own range).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from meshagent.proxy.control import FrameDecoder, encode
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import Endpoint, Intentions, ProxySnapshot, TLSMaterial, Upstream

from tests.support.ports import free_ports
from tests.support.wait import wait_for

if TYPE_CHECKING:  # annotations only: a worker importing a test module (a stand-in) loads no agent code
    from tests.support.mesh_certs import MeshCA

T = TypeVar("T")


# ---------------------------------------------------------------------- the reactor in a thread


class Loop:
    """A Reactor running in a thread (a new one, or `reactor` as the test prepared it); `call(fn)` runs fn in
    the loop thread and returns its result."""

    def __init__(self, reactor: Reactor | None = None) -> None:
        self.reactor = reactor if reactor is not None else Reactor()
        self.thread = threading.Thread(target=self.reactor.run, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the loop thread; its result, or its exception raised here."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["v"] = fn()
            except BaseException as exc:
                box["e"] = exc
            done.set()

        self.reactor.call_soon_threadsafe(run)
        assert done.wait(timeout), "the reactor did not run the call"
        if "e" in box:
            raise box["e"]
        return box["v"]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the reactor, join its thread (it must end) and close it."""
        self.reactor.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the reactor thread did not stop"
        self.reactor.close()


# ---------------------------------------------------------------------- applications


class ThreadedServer:
    """A plain TCP server on `host`: a thread accepts, `handle(conn)` runs in a thread per connection; counts
    and keeps the accepted connections."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        """Serve one accepted connection (in its own thread); closes it by default."""
        conn.close()

    def close(self) -> None:
        """Stop accepting (open connections end with their clients)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread: close alone does not
        except OSError:
            pass
        self.sock.close()


class EchoServer(ThreadedServer):
    """A plain threaded echo application on `host`; half-closes when the client does; counts connections
    and bytes received."""

    def __init__(self, host: str) -> None:
        self.received = 0  # bytes from every connection
        super().__init__(host)

    def handle(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.received += len(data)
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()


# ---------------------------------------------------------------------- identities and snapshots


def material(ca: MeshCA, service: str) -> TLSMaterial:
    """A fresh leaf for `service` from `ca`, as the snapshot's TLS material."""
    leaf = ca.leaf(service)
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, (ca.root_pem,), ca.trust_domain, leaf.spiffe_id)


def server_snapshot(ca: MeshCA, host: str, public_port: int, app_port: int, *, service: str = "db",
                    intentions: Intentions = Intentions(), tls: TLSMaterial | None = None,
                    **kw: Any) -> ProxySnapshot:
    """`service`'s sidecar: a public mTLS listener on host:public_port in front of the app on host:app_port."""
    return ProxySnapshot(proxy_id=f"{service}-sidecar-proxy", service=service, datacenter="dc1",
                         tls=tls or material(ca, service), public_address=host, public_port=public_port,
                         local_service_address=host, local_service_port=app_port, intentions=intentions, **kw)


def client_snapshot(ca: MeshCA, host: str, bind_port: int, endpoints: tuple[Endpoint, ...], *,
                    destination: str = "db", tls: TLSMaterial | None = None, **upstream: Any) -> ProxySnapshot:
    """web's sidecar with one upstream listener on host:bind_port for `destination` (connect timeout 2 s
    unless given)."""
    upstream.setdefault("connect_timeout_ms", 2000)
    up = Upstream(destination_name=destination, local_bind_address=host, local_bind_port=bind_port,
                  endpoints=endpoints, **upstream)
    return ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                         tls=tls or material(ca, "web"), public_address=host, public_port=21000,
                         local_service_port=0, upstreams=(up,))


def client_ctx(ca: MeshCA, tmp: Path | None = None, cert_pem: str | None = None, key_pem: str | None = None,
               **attrs: Any) -> ssl.SSLContext:
    """A TLS client context trusting the mesh root, presenting (cert_pem, key_pem) when given (written
    under `tmp`); `attrs` are set on the context (e.g. maximum_version)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.root_pem)
    if cert_pem is not None and key_pem is not None:
        assert tmp is not None, "a client certificate needs a directory to load from"
        tmp.mkdir(parents=True, exist_ok=True)
        n = len(list(tmp.iterdir()))
        cert, key = tmp / f"c{n}.crt", tmp / f"c{n}.key"
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    for name, value in attrs.items():
        setattr(ctx, name, value)
    return ctx


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def forge(ca: MeshCA | None, uris: list[str], *, is_ca: bool = False, valid_from_h: float = -1,
          valid_for_h: float = 24) -> tuple[str, str]:
    """A certificate (PEM) and its key for `uris`, signed by `ca`'s root key, or self-signed when ca is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")])
    if ca is None:
        issuer, signer = subject, key
    else:
        root = x509.load_pem_x509_certificate(ca.root.root_cert.encode())
        issuer = root.subject
        signer = serialization.load_pem_private_key(ca.root.private_key.encode(), None)  # type: ignore[assignment]
    start = now + datetime.timedelta(hours=valid_from_h)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(start + datetime.timedelta(hours=valid_for_h))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                      data_encipherment=False, key_agreement=True, key_cert_sign=is_ca,
                                      crl_sign=is_ca, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        critical=False))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                            critical=False)
    cert = b.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


# ---------------------------------------------------------------------- clients


def roundtrip(host: str, port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send `payload`, half-close, read to EOF (a thread sends while we read: no deadlock on big payloads)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # refused connections are closed by the proxy before we finish
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # the proxy refused us with our bytes unread: the kernel resets
            pass
        sender.join(timeout)
        return b"".join(chunks)


def echo_exchange(host: str, port: int, payload: bytes, ctx: ssl.SSLContext | None = None,
                  timeout: float = 10.0) -> bytes:
    """Send `payload` (over TLS with `ctx`) and read until as many bytes came back or the peer closed: b""
    when the proxy refused us."""
    got = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = ctx.wrap_socket(raw) if ctx is not None else raw
            with sock:
                sock.sendall(payload)
                while len(got) < len(payload):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
    except (ssl.SSLError, ConnectionError, TimeoutError):
        pass
    return got


# ---------------------------------------------------------------------- metrics


def counter(metrics: ProxyMetrics, name: str) -> int:
    """A counter's total over all its labels."""
    return sum(int(v) for _labels, v in metrics.to_wire()["counter"][name])


def counts(metrics: ProxyMetrics, name: str, index: int = -1) -> dict[str, int]:
    """One counter's values keyed by one of its labels (the last by default: reason / layer), summed."""
    out: dict[str, int] = {}
    for labels, v in metrics.to_wire()["counter"].get(name, []):
        out[labels[index]] = out.get(labels[index], 0) + int(v)
    return out


# ---------------------------------------------------------------------- worker processes


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rss_kib(pid: int) -> int:
    """A process's resident set size (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class StaticWorker:
    """A sidecar as `python -m meshagent.proxy.worker --snapshot FILE` with its metrics listener on host."""

    def __init__(self, tmp: Path, snap: ProxySnapshot, host: str) -> None:
        self.host = host
        self.metrics_port = free_ports(1, host)[0]
        path = tmp / "snapshot.json"
        path.write_text(json.dumps(snap.to_wire()))
        self.proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--snapshot", str(path),
                                      "--metrics-bind", f"{host}:{self.metrics_port}", "--log-level", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.metrics, what="the worker's metrics listener", fatal=AssertionError)

    def metrics(self) -> str:
        """The worker's Prometheus text (fails with its log when it died)."""
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else b""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """The sum of `meshagent_proxy_<name>` samples carrying `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(f"meshagent_proxy_{name}") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_kib(self) -> int:
        """The worker's resident set size (KiB)."""
        return rss_kib(self.proc.pid)

    def fds(self) -> int:
        """How many descriptors the worker holds."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self) -> None:
        """Terminate the worker (kill it when it does not exit within 10 s)."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class ControlledWorker:
    """A worker process on a control socketpair; the test plays the supervisor."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--control-fd",
                                      str(child.fileno())], pass_fds=(child.fileno(),),
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.close()
        self.sock.settimeout(20)
        self.dec = FrameDecoder()
        self.queue: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        """One control frame to the worker."""
        self.sock.sendall(encode(msg))

    def recv(self) -> dict[str, Any]:
        """The worker's next control message (fails when it closed the channel)."""
        while not self.queue:
            data = self.sock.recv(1 << 16)
            assert data, "worker closed the control channel"
            self.queue += self.dec.feed(data)
        return self.queue.pop(0)

    def rss_kib(self) -> int:
        """The worker's resident set size (KiB)."""
        return rss_kib(self.proc.pid)

    def kill(self) -> None:
        """Kill the worker if it still runs, and close its log pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def close(self) -> None:
        """Kill the worker and close our end of the control channel."""
        self.kill()
        self.sock.close()
