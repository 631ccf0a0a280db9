"""Mesh control plane checks against real agents (issue 13): Connect HTTP calls in Consul's shapes, openssl
verification of leaves and chains, and a scan of data dirs for private keys.

Used by tests/cluster/test_mesh_control_plane.py, tests/server/test_ca_persistence.py and bench/connect/.
Every call goes to a `cluster_hosts.Host` over its real HTTP API.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .cluster_hosts import Cluster, Host

PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----([A-Za-z0-9+/=\s\\n]+?)-----END \1PRIVATE KEY-----")
MAX_SCANNED_FILE = 256 * 1024 * 1024  # data dirs of test clusters are small; a bigger file is a finding itself


def connect_hcl(min_leaf_ttl: str = "1s", **ca_config: str | int | float) -> str:
    """A config file for every agent of a test cluster: the mesh on, leaf TTLs down to `min_leaf_ttl`
    allowed (connect.test_min_leaf_ttl, for tests only) and any `ca_config` keys."""
    lines = ["connect {", "  enabled = true", f'  test_min_leaf_ttl = "{min_leaf_ttl}"']
    if ca_config:
        lines.append("  ca_config {")
        for key, value in ca_config.items():
            lines.append(f'    {key} = "{value}"' if isinstance(value, str) else f"    {key} = {value}")
        lines.append("  }")
    return "\n".join([*lines, "}", ""])


def write_extra_config(cluster: Cluster, name: str, text: str, servers_only: bool = False) -> None:
    """Put `name` (an HCL file) beside every host's agent.hcl: the agent reads its whole config dir."""
    for host in cluster.hosts:
        if servers_only and not host.is_server:
            continue
        host.config_dir.mkdir(parents=True, exist_ok=True)
        (host.config_dir / name).write_text(text)


# ---------------------------------------------------------------------- HTTP in Consul's shapes


def post(host: Host, path: str, body: Any, timeout: float = 5.0) -> Any:
    """POST JSON to the host's API; the decoded JSON reply (raises on non-2xx)."""
    resp = host.cluster.http_client.post(host.http_addr + path, json=body, timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def delete(host: Host, path: str, timeout: float = 5.0) -> Any:
    """DELETE on the host's API; the decoded reply."""
    resp = host.cluster.http_client.delete(host.http_addr + path, timeout=timeout)
    resp.raise_for_status()
    return resp.json() if resp.content else None


def leader(cluster: Cluster, timeout: float = 60.0, exclude: Host | None = None) -> Host:
    """The running server that reports itself Raft leader (waits for one)."""
    def find() -> Host | None:
        for s in cluster.servers:
            if s is exclude or not s.running or s.is_cut:
                continue
            if s.http("/v1/agent/self", timeout=2)["Stats"]["raft"].get("state") == "leader":
                return s
        return None
    return cluster.wait_until(find, timeout, "a Raft leader")


def roots(host: Host, agent: bool = False, timeout: float = 5.0) -> dict[str, Any]:
    """GET /v1/connect/ca/roots (or the agent's cached /v1/agent/connect/ca/roots)."""
    path = "/v1/agent/connect/ca/roots" if agent else "/v1/connect/ca/roots"
    body = host.http(path, timeout=timeout)
    assert isinstance(body, dict), f"{path} answered {body!r}"
    return body


def wait_ca(cluster: Cluster, hosts: Sequence[Host] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Until every host (default: the running ones) serves the same roots with an active root; those roots."""
    def same() -> dict[str, Any] | None:
        seen = [roots(h, agent=True) for h in (hosts if hosts is not None else cluster.running())]
        ids = {r.get("ActiveRootID") for r in seen}
        if len(ids) == 1 and "" not in ids and None not in ids and seen[0].get("Roots"):
            return seen[0]
        return None
    return cluster.wait_until(same, timeout, "every agent to serve the same CA roots")


def active_root(body: dict[str, Any]) -> dict[str, Any]:
    """The root of a roots answer whose ID is ActiveRootID."""
    return next(r for r in body["Roots"] if r["ID"] == body["ActiveRootID"])


def leaf(host: Host, service: str, index: int | None = None, wait: str = "", timeout: float = 30.0) -> dict[str, Any]:
    """GET /v1/agent/connect/ca/leaf/<service> (blocking with `index`)."""
    query = f"?index={index}" + (f"&wait={wait}" if wait else "") if index is not None else ""
    body = host.http(f"/v1/agent/connect/ca/leaf/{service}{query}", timeout=timeout)
    assert isinstance(body, dict) and "CertPEM" in body, f"leaf for {service} answered {body!r}"
    return body


def service_uri(trust_domain: str, service: str, dc: str = "dc1") -> str:
    """Consul's service SPIFFE ID."""
    return f"spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{service}"


def authorize(host: Host, target: str, client_uri: str, timeout: float = 2.0) -> dict[str, Any]:
    """POST /v1/agent/connect/authorize → {Authorized, Reason}."""
    body = post(host, "/v1/agent/connect/authorize",
                {"Target": target, "ClientCertURI": client_uri, "ClientCertSerial": "01"}, timeout=timeout)
    assert isinstance(body, dict) and isinstance(body.get("Authorized"), bool), f"authorize answered {body!r}"
    return body


def put_entry(host: Host, entry: dict[str, Any]) -> None:
    """PUT /v1/config (answers true)."""
    assert host.http_put("/v1/config", entry) is True, f"PUT /v1/config {entry} was not applied"


def put_intention(host: Host, source: str, destination: str, action: str) -> None:
    """The legacy upsert: PUT /v1/connect/intentions/exact?source=&destination= {Action}."""
    got = host.http_put(f"/v1/connect/intentions/exact?source={source}&destination={destination}",
                        {"Action": action})
    assert got is True or isinstance(got, dict), f"intention upsert answered {got!r}"


def entries(host: Host, kind: str) -> dict[str, dict[str, Any]]:
    """GET /v1/config/<kind>: name → entry."""
    return {e["Name"]: e for e in host.http(f"/v1/config/{kind}")}


def intentions(host: Host) -> set[tuple[str, str, str]]:
    """GET /v1/connect/intentions as (source, destination, action) triples (Action "" for L7 ones)."""
    return {(i["SourceName"], i["DestinationName"], i.get("Action") or "") for i in host.http("/v1/connect/intentions")}


# ---------------------------------------------------------------------- certificates


def split_pem(text: str | bytes) -> list[str]:
    """Every PEM certificate in `text`, in order."""
    data = text.encode() if isinstance(text, str) else text
    return [m.group(0).decode() + "\n" for m in PEM_CERT.finditer(data)]


def bundle(body: dict[str, Any]) -> list[str]:
    """Every root certificate of a roots answer."""
    return [r["RootCert"] for r in body["Roots"]]


def intermediates(body: dict[str, Any]) -> list[str]:
    """Every intermediate certificate a roots answer carries (the cross-signed ones after a rotation)."""
    return [c for r in body["Roots"] for c in (r.get("IntermediateCerts") or [])]


@dataclass
class Verdict:
    """What `openssl verify` said."""

    ok: bool
    output: str


def openssl_verify(leaf_pem: str, trusted: Iterable[str], untrusted: Iterable[str] = (),
                   purpose: str | None = None) -> Verdict:
    """Debian openssl's `openssl verify -CAfile <trusted> [-untrusted <untrusted>] <leaf>` (no system roots)."""
    with tempfile.TemporaryDirectory(prefix="meshverify-") as tmp:
        d = Path(tmp)
        (d / "ca.pem").write_text("".join(trusted))
        (d / "leaf.pem").write_text(split_pem(leaf_pem)[0])
        argv = ["openssl", "verify", "-no-CApath", "-no-CAstore", "-CAfile", str(d / "ca.pem")]
        extra = list(untrusted)
        if extra:
            (d / "untrusted.pem").write_text("".join(extra))
            argv += ["-untrusted", str(d / "untrusted.pem")]
        if purpose:
            argv += ["-purpose", purpose]
        proc = subprocess.run([*argv, str(d / "leaf.pem")], capture_output=True, text=True, timeout=30)
    out = (proc.stdout + proc.stderr).strip()
    return Verdict(proc.returncode == 0 and out.endswith(": OK"), out)


def uri_sans(cert_pem: str) -> list[str]:
    """The URI subject alternative names of the first certificate in `cert_pem`."""
    cert = x509.load_pem_x509_certificate(split_pem(cert_pem)[0].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def public_numbers(cert_pem: str) -> tuple[int, int]:
    """The (x, y) of the certificate's EC public key."""
    key = x509.load_pem_x509_certificate(split_pem(cert_pem)[0].encode()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    n = key.public_numbers()
    return n.x, n.y


# ---------------------------------------------------------------------- key search


@dataclass
class FoundKey:
    """A PEM private key block found in a file, with the public key it belongs to (None: unparsable)."""

    path: Path
    public: tuple[int, int] | None


def private_key_der(key_pem: str) -> tuple[bytes, bytes]:
    """(the PEM body's DER, the raw 32-byte private scalar) of an EC P-256 key: what a leak could look like."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return der, key.private_numbers().private_value.to_bytes(32, "big")


def files_under(dirs: Iterable[Path]) -> list[Path]:
    """Every regular file below the given directories."""
    return sorted(p for d in dirs for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def find_key_material(dirs: Iterable[Path], key_pem: str) -> list[str]:
    """Where any form of this private key (PEM body text, any 64-character line of it, DER, raw scalar)
    occurs in files under `dirs`; [] when nowhere."""
    body = "".join(line for line in key_pem.strip().splitlines() if not line.startswith("-----"))
    lines = [line.encode() for line in key_pem.strip().splitlines()
             if not line.startswith("-----") and len(line) >= 40]
    der, scalar = private_key_der(key_pem)
    needles = {"PEM body": body.encode(), "DER": der, "raw scalar": scalar,
               **{f"PEM line {i}": line for i, line in enumerate(lines)}}
    hits = []
    for path in files_under(dirs):
        data = _read(path)
        for what, needle in needles.items():
            if needle in data:
                hits.append(f"{path}: {what}")
    return hits


def private_keys_in(dirs: Iterable[Path]) -> list[FoundKey]:
    """Every PEM private key block in files under `dirs` (also inside binary msgpack, where a string is
    stored as it is), with its public key."""
    found = []
    for path in files_under(dirs):
        for m in PEM_KEY.finditer(_read(path)):
            text = m.group(0).replace(b"\\n", b"\n").decode(errors="replace")
            try:
                key = serialization.load_pem_private_key(text.encode(), password=None)
            except (ValueError, TypeError):
                found.append(FoundKey(path, None))
                continue
            pub = key.public_key()
            found.append(FoundKey(path, (pub.public_numbers().x, pub.public_numbers().y)
                                  if isinstance(pub, ec.EllipticCurvePublicKey) else None))
    return found


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    assert size <= MAX_SCANNED_FILE, f"{path} is {size} bytes: larger than any test cluster's data should be"
    return path.read_bytes()


def ssl_handshake(cert_pem: str, key_pem: str, trusted: Iterable[str]) -> Verdict:
    """A TLS handshake over a socket pair with Python's ssl: one end presents `cert_pem` (leaf and chain)
    with `key_pem`, the other trusts only `trusted` and requires a certificate. ok when it completes."""
    with tempfile.TemporaryDirectory(prefix="meshssl-") as tmp:
        d = Path(tmp)
        (d / "chain.pem").write_text(cert_pem)
        (d / "key.pem").write_text(key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(d / "chain.pem"), str(d / "key.pem"))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False  # a SPIFFE leaf names no host: the URI SAN is checked by the caller
    client_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx.load_verify_locations(cadata="".join(trusted))
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(b) as tls:
            tls.sendall(b"x")
        return Verdict(True, "handshake completed")
    except (OSError, ssl.SSLError) as exc:
        return Verdict(False, f"{exc!r}")
    finally:
        thread.join(10)
        a.close()
        b.close()
