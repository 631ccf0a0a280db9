"""The Connect CA endpoints over real HTTP, against the in-process API with a real -dev CAManager (the same CA
code a server runs): py-consul's connect.ca calls, the roots' Consul shape and PEM bundle, a leaf that Debian
openssl and Python ssl verify, blocking leaf renewal in the 60-90 % window, roots and the current leaf served
while the CA is unreachable, authorize decisions, and hostile bodies answered 400 (never 500)."""

from __future__ import annotations

import calendar
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshagent.agent.catalog import commands
from meshagent.agent.connect.ca_manager import CAManager
from meshagent.agent.connect.forwarded_ca import ForwardedCA
from meshagent.agent.rpc.client import RPCClient

from tests.support.agents import AgentProcess
from tests.support.http_harness import FakeAgent, ServerThread
from tests.support.ports import free_ports
from tests.support.wait import wait_for

LEAF_TTL = 6.0  # seconds: the CA's leaf_cert_ttl here (the 1 h minimum lowered, as tests may)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
ROOT_FIELDS = {"ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain", "NotBefore", "NotAfter",
               "RootCert", "IntermediateCerts", "Active", "PrivateKeyType", "PrivateKeyBits", "CreateIndex",
               "ModifyIndex"}
LEAF_FIELDS = {"SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI", "ValidAfter", "ValidBefore",
               "CreateIndex", "ModifyIndex"}


@pytest.fixture
def mesh() -> Iterator[ServerThread]:
    """The /v1 API with a real -dev CA (always the leader) initialized in its store."""
    agent = FakeAgent()
    agent.ca = CAManager(agent.store, agent.datacenter, ca_config={"leaf_cert_ttl": LEAF_TTL},
                         min_leaf_ttl=1.0)
    server = ServerThread(agent=agent).start()
    try:
        wait_for(lambda: agent.store.catalog.connect.active_root, 10, what="the CA's first root")
        yield server
    finally:
        server.stop()


@pytest.fixture
def http(mesh: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.url, timeout=30) as client:
        yield client


def pem_certs(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def test_py_consul_reads_roots_and_configuration_and_updates_it(mesh: ServerThread) -> None:
    c = consul.Consul(host="127.0.0.1", port=mesh.port)
    roots = c.connect.ca.roots()
    connect = mesh.agent.store.catalog.connect
    assert roots["TrustDomain"] == connect.trust_domain and roots["TrustDomain"].endswith(".mesh")
    assert roots["ActiveRootID"] == connect.active_root.id
    (root,) = roots["Roots"]
    assert set(root) == ROOT_FIELDS
    assert root["Active"] is True and root["ID"] == roots["ActiveRootID"] and root["IntermediateCerts"] is None
    assert isinstance(root["SerialNumber"], int) and 0 <= root["SerialNumber"] < 2**64
    assert RFC3339.fullmatch(root["NotBefore"]) and RFC3339.fullmatch(root["NotAfter"])
    assert (root["PrivateKeyType"], root["PrivateKeyBits"]) == ("ec", 256)
    cert = pem_certs(root["RootCert"])[0]
    assert cert.serial_number & (2**64 - 1) == root["SerialNumber"]
    assert cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") == root["NotAfter"]

    config = c.connect.ca.configuration()
    assert set(config) == {"Provider", "Config", "State", "ForceWithoutCrossSigning", "CreateIndex", "ModifyIndex"}
    assert config["Provider"] == "consul" and config["Config"]["LeafCertTTL"] == "6s"
    assert "PrivateKey" not in config["Config"]
    assert c.connect.ca.update_configuration("consul", {"LeafCertTTL": "2h", "CSRMaxPerSecond": 100}) is True
    updated = c.connect.ca.configuration()
    assert updated["Config"]["LeafCertTTL"] == "2h" and updated["Config"]["CSRMaxPerSecond"] == 100
    assert updated["ModifyIndex"] > config["ModifyIndex"]
    with pytest.raises(consul.ConsulException, match="LeafCertTTL"):
        c.connect.ca.update_configuration("consul", {"LeafCertTTL": "forever"})
    # Nothing of any response carries a private key.
    for path in ("/v1/connect/ca/roots", "/v1/agent/connect/ca/roots", "/v1/connect/ca/configuration",
                 "/v1/connect/ca/roots?pem=true"):
        assert "PRIVATE KEY" not in httpx.get(mesh.url + path).text


def test_a_rotation_wakes_a_blocking_roots_query_and_both_roots_are_in_the_bundle(mesh: ServerThread,
                                                                                 http: httpx.Client) -> None:
    first = http.get("/v1/agent/connect/ca/roots")
    index = int(first.headers["x-consul-index"])
    answer: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answer.append(
        http.get(f"/v1/agent/connect/ca/roots?index={index}&wait=30s")))
    waiter.start()
    wait_for(lambda: mesh.agent.store.hub.waiting >= 1, 5, what="the blocking roots query to park")
    assert http.put("/v1/connect/ca/configuration",
                    json={"Provider": "consul", "Config": {"PrivateKeyBits": 384}}).status_code == 200
    waiter.join(30)
    rotated = answer[0].json()
    assert int(answer[0].headers["x-consul-index"]) > index
    assert len(rotated["Roots"]) == 2 and rotated["ActiveRootID"] != first.json()["ActiveRootID"]
    active = next(r for r in rotated["Roots"] if r["Active"])
    assert (active["PrivateKeyType"], active["PrivateKeyBits"]) == ("ec", 384)
    assert len(active["IntermediateCerts"]) == 1  # cross-signed by the old root
    bundle = http.get("/v1/connect/ca/roots?pem=true")
    assert bundle.headers["content-type"] == "application/pem-certificate-chain"
    in_bundle = {c.fingerprint(c.signature_hash_algorithm) for c in pem_certs(bundle.text)}
    for root in rotated["Roots"]:
        cert = pem_certs(root["RootCert"])[0]
        assert cert.fingerprint(cert.signature_hash_algorithm) in in_bundle


def test_the_leaf_verifies_with_openssl_and_python_ssl_and_names_only_its_spiffe_id(
        mesh: ServerThread, http: httpx.Client, tmp_path: Path) -> None:
    response = http.get("/v1/agent/connect/ca/leaf/web")
    assert response.status_code == 200, response.text
    leaf = response.json()
    assert set(leaf) == LEAF_FIELDS
    trust_domain = mesh.agent.store.catalog.connect.trust_domain
    uri = f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web"
    assert leaf["Service"] == "web" and leaf["ServiceURI"] == uri
    assert int(response.headers["x-consul-index"]) == leaf["ModifyIndex"] == leaf["CreateIndex"] >= 1
    chain = pem_certs(leaf["CertPEM"])
    cert = chain[0]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier(uri)]
    assert leaf["SerialNumber"] == ":".join(f"{b:02x}" for b in cert.serial_number.to_bytes(
        (cert.serial_number.bit_length() + 7) // 8, "big"))
    assert RFC3339.fullmatch(leaf["ValidAfter"]) and RFC3339.fullmatch(leaf["ValidBefore"])

    roots = tmp_path / "roots.pem"
    roots.write_text(http.get("/v1/connect/ca/roots?pem=true").text)
    (tmp_path / "leaf.pem").write_text(leaf["CertPEM"])
    (tmp_path / "key.pem").write_text(leaf["PrivateKeyPEM"])
    (tmp_path / "inter.pem").write_text("".join(c.public_bytes(Encoding.PEM).decode() for c in chain[1:]))
    untrusted = ["-untrusted", str(tmp_path / "inter.pem")] if len(chain) > 1 else []
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(roots), *untrusted, str(tmp_path / "leaf.pem")],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr

    # Python ssl: a real mutual TLS handshake, both sides presenting this leaf and trusting only the roots.
    def context(side: ssl._SSLMethod) -> ssl.SSLContext:
        ctx = ssl.SSLContext(side)
        ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
        ctx.load_verify_locations(cafile=str(roots))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with context(ssl.PROTOCOL_TLS_SERVER).wrap_socket(b, server_side=True) as tls:
                tls.sendall(tls.recv(5))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    with context(ssl.PROTOCOL_TLS_CLIENT).wrap_socket(a) as tls:
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert peer.serial_number == cert.serial_number
    server.join(10)
    assert not errors, errors


@pytest.mark.slow  # 4-6 s: a whole leaf lifetime
def test_a_blocking_leaf_query_wakes_with_a_new_leaf_inside_the_60_to_90_percent_window(
        http: httpx.Client) -> None:
    first = http.get("/v1/agent/connect/ca/leaf/web")
    received = time.time()
    leaf = first.json()
    valid_before = _epoch(leaf["ValidBefore"])
    renewed = http.get(f"/v1/agent/connect/ca/leaf/web?index={first.headers['x-consul-index']}&wait=60s")
    woke = time.time()
    new = renewed.json()
    assert new["SerialNumber"] != leaf["SerialNumber"] and new["ModifyIndex"] > leaf["ModifyIndex"]
    assert int(renewed.headers["x-consul-index"]) == new["ModifyIndex"]
    # The CA backdates leaves by a minute (clock skew), so the lifetime counts from receipt; ValidBefore has
    # whole seconds, hence the tolerance.
    life = valid_before - received
    assert 0.6 * life - 1.0 <= woke - received <= 0.9 * life + 1.5, (woke - received, life)


class DeadServer:
    """A caller whose every RPC goes to a port nothing listens on: real connection refusals."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_ports(1)[0]}"
        self.calls = 0

    async def call(self, method: str, args: Any) -> Any:
        self.calls += 1
        async with trio.open_nursery() as nursery:
            return await RPCClient(self.address).call(nursery, method, args, timeout=2.0)


@pytest.mark.slow  # ~7 s: renewal attempts, then the renewal once the CA is back
def test_with_the_ca_unreachable_roots_and_the_current_leaf_are_still_served(mesh: ServerThread,
                                                                            http: httpx.Client) -> None:
    leaf = http.get("/v1/agent/connect/ca/leaf/web").json()
    live = mesh.agent.ca
    dead = DeadServer()
    mesh.agent.ca = ForwardedCA(dead)
    wait_for(lambda: dead.calls >= 2, 30, what="renewal attempts against the unreachable CA")
    assert time.time() > _epoch(leaf["ValidAfter"]) + 60 + 0.6 * LEAF_TTL  # past the renewal moment
    again = http.get("/v1/agent/connect/ca/leaf/web")
    assert again.status_code == 200 and again.json()["SerialNumber"] == leaf["SerialNumber"]
    assert again.json()["PrivateKeyPEM"] == leaf["PrivateKeyPEM"]
    assert http.get("/v1/agent/connect/ca/roots").json()["Roots"]
    assert http.get("/v1/connect/ca/roots").json()["Roots"]
    mesh.agent.ca = live
    renewed = http.get(f"/v1/agent/connect/ca/leaf/web?index={leaf['ModifyIndex']}&wait=30s").json()
    assert renewed["SerialNumber"] != leaf["SerialNumber"]


def _intentions(server: ServerThread, destination: str, sources: list[dict[str, Any]]) -> None:
    server.apply(commands.config_entry_set({"Kind": "service-intentions", "Name": destination,
                                            "Sources": sources}))


def _authorize(http: httpx.Client, target: str, uri: str) -> dict[str, Any]:
    response = http.post("/v1/agent/connect/authorize",
                         json={"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01:02"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert set(result) == {"Authorized", "Reason"}
    return result


def test_authorize_allows_denies_defaults_and_denies_l7_at_l4(mesh: ServerThread, http: httpx.Client) -> None:
    td = mesh.agent.store.catalog.connect.trust_domain

    def uri(service: str, trust_domain: str = td) -> str:
        return f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"

    _intentions(mesh, "db", [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}])
    _intentions(mesh, "api", [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}])
    allowed = _authorize(http, "db", uri("web"))
    assert allowed == {"Authorized": True, "Reason": "Matched L4 intention: web => db (allow)"}
    assert _authorize(http, "db", uri("billing")) == {"Authorized": False,
                                                      "Reason": "Matched L4 intention: * => db (deny)"}
    l7 = _authorize(http, "api", uri("web"))
    assert l7["Authorized"] is False and "L7" in l7["Reason"]
    assert _authorize(http, "cache", uri("web")) == {"Authorized": True,
                                                     "Reason": "Default behavior configured by ACLs"}
    foreign = _authorize(http, "db", uri("web", "other.mesh"))
    assert foreign["Authorized"] is False and "trust domain" in foreign["Reason"]
    # A change of the entries is seen by the next request (the compiled list follows the entries' index).
    _intentions(mesh, "db", [{"Name": "web", "Action": "deny"}])
    assert _authorize(http, "db", uri("web"))["Authorized"] is False
    mesh.agent.config.acl_default_policy = "deny"
    assert _authorize(http, "cache", uri("web")) == {"Authorized": False,
                                                     "Reason": "Default behavior configured by ACLs"}


HOSTILE_AUTHORIZE = [
    b"", b"not json", b"[]", b"null", b"42", b'"text"', b"{" * 5000, b"[" * 100_000,
    b'{"Target": 7, "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/web"}',
    b'{"Target": "db"}', b'{"ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/web"}',
    b'{"Target": "db", "ClientCertURI": "https://example.com/"}',
    b'{"Target": "db", "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/../etc"}',
    b'{"Target": "db", "ClientCertURI": "spiffe://X.MESH/ns/default/dc/dc1/svc/web"}',
    b'{"Target": "db", "ClientCertURI": ["spiffe://x.mesh/ns/default/dc/dc1/svc/web"]}',
    b'{"Target": "a/b", "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/web"}',
    b'{"Target": "db", "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/web", "ClientCertSerial": {}}',
    json.dumps({"Target": "db", "ClientCertURI": "spiffe://x.mesh/" + "a/" * 5000}).encode(),
    json.dumps({"Target": "d" * 100_000, "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/w"}).encode(),
    b'{"Target": "db", "ClientCertURI": "spiffe://x.mesh/ns/default/dc/dc1/svc/w\\u0000"}',
    b"\xff\xfe{}",
]

HOSTILE_CONFIG = [b"", b"[1]", b'{"Provider": 5}', b'{"Provider": "consul", "Config": [1]}',
                  b'{"Provider": "consul", "Config": {"LeafCertTTL": -5}}',
                  b'{"Provider": "consul", "Config": {"LeafCertTTL": "500ms"}}',
                  b'{"Provider": "vault", "Config": {}}', b'{"Provider": "consul", "ForceWithoutCrossSigning": "yes"}',
                  b'{"Provider": "consul", "Config": {"PrivateKey": "-----BEGIN nonsense"}}',
                  b'{"Provider": "consul", "Config": {"Unknown": 1}}', b"{" * 5000]


def test_hostile_bodies_and_names_are_400_never_500(http: httpx.Client) -> None:
    for body in HOSTILE_AUTHORIZE:
        response = http.post("/v1/agent/connect/authorize", content=body)
        assert response.status_code in (400, 413), (body[:80], response.status_code, response.text)
    for body in HOSTILE_CONFIG:
        response = http.put("/v1/connect/ca/configuration", content=body)
        assert response.status_code == 400, (body[:80], response.status_code, response.text)
    for name in ("", "a/b", "x" * 3000, "w%00b", "%C3%BC", "w b"):
        response = http.get(f"/v1/agent/connect/ca/leaf/{name}")
        assert response.status_code == 400, (name[:40], response.status_code, response.text)
    assert http.get("/v1/connect/ca/roots?pem=maybe").status_code == 400
    assert http.post("/v1/agent/connect/ca/roots").status_code == 405


@pytest.mark.slow  # a real agent process
def test_a_dev_agent_process_serves_roots_configuration_and_a_verifiable_leaf(dev_agent: AgentProcess,
                                                                             tmp_path: Path) -> None:
    c = consul.Consul(host=dev_agent.host, port=8500)
    roots = wait_for(lambda: c.connect.ca.roots()["Roots"], 20, what="the -dev agent's CA root")
    assert roots[0]["Active"] and c.connect.ca.configuration()["Config"]["LeafCertTTL"] == "72h"
    leaf = httpx.get(f"{dev_agent.http_addr}/v1/agent/connect/ca/leaf/web", timeout=30).json()
    (tmp_path / "roots.pem").write_text(httpx.get(f"{dev_agent.http_addr}/v1/connect/ca/roots?pem=true").text)
    (tmp_path / "leaf.pem").write_text(leaf["CertPEM"])
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"), str(tmp_path / "leaf.pem")],
                            capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    trust_domain = c.connect.ca.roots()["TrustDomain"]
    authorized = httpx.post(f"{dev_agent.http_addr}/v1/agent/connect/authorize",
                            json={"Target": "db", "ClientCertURI": leaf["ServiceURI"]}).json()
    assert leaf["ServiceURI"] == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web" and authorized["Authorized"]


def _epoch(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
