"""`<svc>.connect.<domain>`: the healthy sidecars (and Connect-native instances) of a service over real
DNS (dnspython and dig), with the service lookup's health rules and negative answers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import dns.rcode
import dns.rdatatype
from meshagent.agent.catalog import CRITICAL, PASSING, WARNING, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig

from tests.support.dns_harness import Running, answers, q, register


def sidecar(r: Running, node: str, address: str, dest: str, port: int, status: str = PASSING,
            svc_address: str = "", key: str = "DestinationServiceName") -> None:
    """A node with serfHealth and a connect-proxy for `dest` whose check has `status`."""
    sid = f"{dest}-sidecar-proxy"
    svc = Service(node=node, id=sid, service=sid, kind="connect-proxy", port=port, address=svc_address,
                  proxy={key: dest, "LocalServicePort": 8080})
    r.call(r.store.apply, commands.register(Node(node=node, address=address), svc, [
        Check(node=node, check_id="serfHealth", status=PASSING),
        Check(node=node, check_id=f"service:{sid}", status=status, service_id=sid)]))


def a_set(r: Running, name: str) -> set[str]:
    return {rr.address for rr in answers(q(r, name), dns.rdatatype.A)}  # type: ignore[attr-defined]


def srv_set(r: Running, name: str) -> set[tuple[str, int]]:
    return {(rr.target.to_text(), rr.port)  # type: ignore[attr-defined]
            for rr in answers(q(r, name, "SRV"), dns.rdatatype.SRV)}


def test_connect_name_answers_the_healthy_sidecars(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "127.0.0.1", "web-1", name="web", port=8080)  # the application: not a mesh endpoint
    sidecar(r, "n1", "127.0.0.1", "web", 21000)
    sidecar(r, "n2", "127.0.0.2", "web", 21001, status=WARNING, key="destination_service_name")
    sidecar(r, "n3", "127.0.0.3", "web", 21002, status=CRITICAL)
    want = {"127.0.0.1", "127.0.0.2"}
    for name in ("web.connect.mesh", "WEB.Connect.MESH", "web.connect.dc1.mesh", "web.connect.dc1.dc.mesh"):
        assert a_set(r, name) == want, name
    assert srv_set(r, "web.connect.mesh") == {("n1.node.dc1.mesh.", 21000), ("n2.node.dc1.mesh.", 21001)}
    # the service lookup is unchanged: the application's own address and port
    assert srv_set(r, "web.service.mesh") == {("n1.node.dc1.mesh.", 8080)}


def test_sidecar_service_address_is_the_srv_target(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    sidecar(r, "n1", "127.0.0.1", "web", 21000, svc_address="127.0.0.9")
    assert a_set(r, "web.connect.mesh") == {"127.0.0.9"}
    assert srv_set(r, "web.connect.mesh") == {("7f000009.addr.dc1.mesh.", 21000)}


def test_connect_native_service_answers_for_itself(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    svc = Service(node="n4", id="api-1", service="api", port=9000, connect={"Native": True})
    r.call(r.store.apply, commands.register(Node(node="n4", address="127.0.0.4"), svc))
    assert srv_set(r, "api.connect.mesh") == {("n4.node.dc1.mesh.", 9000)}


def test_only_passing_applies_to_sidecars(dns_server: Callable[..., Running]) -> None:
    config = AgentConfig()
    config.dns_config.only_passing = True
    r = dns_server(config)
    sidecar(r, "n1", "127.0.0.1", "web", 21000)
    sidecar(r, "n2", "127.0.0.2", "web", 21001, status=WARNING)
    assert a_set(r, "web.connect.mesh") == {"127.0.0.1"}


def test_negative_answers(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "127.0.0.1", "db-1", name="db")  # a service without sidecars
    sidecar(r, "n2", "127.0.0.2", "web", 21000, status=CRITICAL)  # only a critical sidecar
    for name in ("db.connect.mesh", "web.connect.mesh", "nothing.connect.mesh",
                 "v1.web.connect.mesh",  # no tags on connect names, as in Consul
                 "connect.mesh", "web.connect.dc2.mesh", "web-sidecar-proxy.connect.mesh"):
        msg = q(r, name)
        assert msg.rcode() == dns.rcode.NXDOMAIN, name
        assert msg.authority and msg.authority[0].rdtype == dns.rdatatype.SOA, name
    sidecar(r, "n2", "127.0.0.2", "web", 21000)
    nodata = q(r, "web.connect.mesh", "AAAA")  # the name exists, not this type
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_a_service_named_connect_keeps_its_tagged_lookup(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    register(r, "n1", "127.0.0.1", "c-1", name="connect", tags=["v1"])
    assert a_set(r, "v1.connect.service.mesh") == {"127.0.0.1"}
    assert a_set(r, "connect.service.mesh") == {"127.0.0.1"}


def test_answers_follow_catalog_changes(dns_server: Callable[..., Running]) -> None:
    """The server's cache and the resolver's memo key on the catalog index: a sidecar that fails or leaves
    is gone from the very next answer."""
    r = dns_server()
    sidecar(r, "n1", "127.0.0.1", "web", 21000)
    sidecar(r, "n2", "127.0.0.2", "web", 21001)
    assert a_set(r, "web.connect.mesh") == {"127.0.0.1", "127.0.0.2"}
    r.call(r.store.apply, commands.register(Node(node="n1", address="127.0.0.1"), None,
                                            [Check(node="n1", check_id="serfHealth", status=CRITICAL)]))
    assert a_set(r, "web.connect.mesh") == {"127.0.0.2"}
    r.call(r.store.apply, commands.deregister("n2", service_id="web-sidecar-proxy"))
    assert q(r, "web.connect.mesh").rcode() == dns.rcode.NXDOMAIN


def test_dig_sees_the_sidecars(dns_server: Callable[..., Running]) -> None:
    r = dns_server()
    sidecar(r, "n1", "127.0.0.1", "web", 21000)
    out = subprocess.run(["dig", "+short", f"@{r.host}", "-p", str(r.port), "web.connect.mesh", "SRV"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert out.split() == ["1", "1", "21000", "n1.node.dc1.mesh."]
