"""An upstream that refuses our leaf (its bundle lacks our root: the pruned-root case of issue 17 part T) is a
connect failure (127.0.36.3): with `retry_on_connect_failure` the request goes to another endpoint, as
Envoy's `connect-failure`; without retries it is the caller's 503. Under TLS 1.3 the refusal arrives after
our side of the handshake, as a reset before any response byte, which counts the same."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import (
    Endpoint,
    Intentions,
    LoadBalancer,
    ProxySnapshot,
    Retries,
    TLSMaterial,
    Upstream,
)

from tests.support.dataplane_harness import Loop
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports

HOST = "127.0.36.3"


def _material(ca: MeshCA, service: str, roots: tuple[str, ...]) -> TLSMaterial:
    leaf = ca.leaf(service)
    return TLSMaterial(leaf.cert_pem, leaf.key_pem, roots, ca.trust_domain, leaf.spiffe_id)


class _App:
    """An HTTP app answering its name."""

    def __init__(self, name: str) -> None:
        body = f"{name}\n".encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Pair:
    """db-0's sidecar trusts only a root our leaf is not of; db-1's trusts ours; web's sidecar in front."""

    def __init__(self, loop: Loop, retries: Retries) -> None:
        self.loop = loop
        ours, other = MeshCA(), MeshCA()
        self.apps = [_App("db-0"), _App("db-1")]
        bind, *public = free_ports(3, HOST)
        self.bind = bind
        self.server_metrics = [ProxyMetrics("db", "dc1") for _ in range(2)]
        self.servers: list[DataPlane] = []
        for i, roots in enumerate(((other.root_pem,), (ours.root_pem,))):
            dp = loop.call(lambda i=i: DataPlane(loop.reactor, self.server_metrics[i]))
            snap = ProxySnapshot(proxy_id=f"db-{i}-sidecar-proxy", service="db", datacenter="dc1",
                                 tls=_material(ours, "db", roots), public_address=HOST, public_port=public[i],
                                 local_service_address=HOST, local_service_port=self.apps[i].port, protocol="http",
                                 intentions=Intentions(default_allow=True))
            assert loop.call(lambda dp=dp, snap=snap: dp.apply(snap)) == []
            self.servers.append(dp)
        self.metrics = ProxyMetrics("web", "dc1")
        self.client = loop.call(lambda: DataPlane(loop.reactor, self.metrics))
        up = Upstream(destination_name="db", local_bind_address=HOST, local_bind_port=bind, protocol="http",
                      endpoints=tuple(Endpoint(HOST, p) for p in public), retries=retries,
                      load_balancer=LoadBalancer(policy="round_robin"), connect_timeout_ms=2000)
        snap = ProxySnapshot(proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
                             tls=_material(ours, "web", (ours.root_pem,)), public_address=HOST, public_port=21000,
                             local_service_port=0, upstreams=(up,))
        assert loop.call(lambda: self.client.apply(snap)) == []

    def get(self) -> tuple[int, bytes]:
        c = http.client.HTTPConnection(HOST, self.bind, timeout=20)
        try:
            c.request("GET", "/")
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def refused(self) -> int:
        """Handshakes db-0's sidecar refused."""
        return sum(int(v) for labels, v in self.server_metrics[0].to_wire()["counter"].get(
            "tls_handshake_failures_total", []) if "inbound" in labels)

    def close(self) -> None:
        for dp in (self.client, *self.servers):
            self.loop.call(dp.close)
        for app in self.apps:
            app.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def test_a_refused_handshake_is_retried_on_another_endpoint(loop: Loop) -> None:
    pair = _Pair(loop, Retries(num_retries=2, retry_on_connect_failure=True))
    try:
        results = [pair.get() for _ in range(12)]
        assert results == [(200, b"db-1\n")] * 12
        assert pair.refused() >= 1  # db-0 was tried and refused us: the retries hid it
        retried = sum(int(v) for _labels, v in pair.metrics.to_wire()["counter"].get("retries_total", []))
        assert retried >= 1
    finally:
        pair.close()


def test_without_retries_a_refused_handshake_is_the_callers_503(loop: Loop) -> None:
    pair = _Pair(loop, Retries(num_retries=0))
    try:
        codes = [pair.get()[0] for _ in range(8)]
        assert 503 in codes and 200 in codes, codes  # round robin: db-0 refuses, db-1 answers
    finally:
        pair.close()
