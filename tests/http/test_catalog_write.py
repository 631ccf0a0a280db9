"""PUT /v1/catalog/register and /v1/catalog/deregister through py-consul, against a real -dev agent."""

from __future__ import annotations

import consul
import dns.message
import dns.query
import httpx

from tests.support.agents import AgentProcess


def _a(agent: AgentProcess, name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), agent.host, port=8600, timeout=2)
    return [rr.address for rrset in reply.answer for rr in rrset]


def test_an_external_service_registers_resolves_and_deregisters(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host=dev_agent.host, port=8500)
    assert c.catalog.register("rds-1", "198.18.5.5", service={"Service": "pg", "Port": 5432, "Tags": ["primary"]},
                              check={"CheckID": "pg-alive", "Name": "pg", "Status": "passing", "ServiceID": "pg"})
    _, nodes = c.catalog.service("pg")
    assert [(n["Node"], n["ServiceAddress"] or n["Address"], n["ServicePort"]) for n in nodes] == [
        ("rds-1", "198.18.5.5", 5432)]
    assert _a(dev_agent, "pg.service.mesh") == ["198.18.5.5"]
    assert c.catalog.deregister("rds-1", check_id="pg-alive")
    _, checks = c.health.checks("pg")
    assert checks == []
    assert c.catalog.deregister("rds-1", service_id="pg")
    assert c.catalog.service("pg")[1] == []
    assert c.catalog.deregister("rds-1")
    assert c.catalog.node("rds-1")[1] is None


def test_bad_registrations_are_400_with_the_reason(dev_agent: AgentProcess) -> None:
    url = f"{dev_agent.http_addr}/v1/catalog/register"
    for body, reason in [({"Address": "198.18.5.5"}, "Missing node name"),
                         ({"Node": "x"}, "Missing node address"),
                         ({"Node": "x", "Address": "a", "Service": {"Port": 1}}, "Service.Service"),
                         ({"Node": "x", "Address": "a", "Check": {"CheckID": "c", "Status": "sad"}}, "Status"),
                         ({"Node": "x", "Address": "a", "Check": {"CheckID": "c", "ServiceID": "nope"}}, "unknown")]:
        resp = httpx.put(url, json=body, timeout=5)
        assert resp.status_code == 400 and reason in resp.text, (body, resp.text)
    assert httpx.put(url, content=b"{not json", timeout=5).status_code == 400
    assert httpx.put(f"{dev_agent.http_addr}/v1/catalog/deregister", json={}, timeout=5).status_code == 400
