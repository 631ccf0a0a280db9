"""The leader's membership → catalog rules (agent/server/reconcile.py), on a real Catalog."""

from __future__ import annotations

from meshagent.agent.catalog import CRITICAL, PASSING, SERF_CHECK_ID, Catalog, Node, Service, commands
from meshagent.agent.server.reconcile import (
    ALIVE,
    FAILED,
    LEFT,
    MemberView,
    forget_commands,
    member_commands,
    reap_commands,
)


def _apply_all(catalog: Catalog, cmds: list[dict]) -> None:
    for cmd in cmds:
        catalog.apply(catalog.last_index + 1, cmd)


def _serf_status(catalog: Catalog, node: str) -> str | None:
    return next((c.status for c in catalog.node_checks(node) if c.check_id == SERF_CHECK_ID), None)


def member(status: int, name: str = "web-1", addr: str = "198.18.0.21", dc: str = "dc1") -> MemberView:
    return MemberView(name, addr, status, {"dc": dc, "id": "0b3c-id", "role": "node"})


def test_alive_registers_the_node_with_a_passing_serf_check_then_nothing_more() -> None:
    catalog = Catalog()
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    node = catalog.node("web-1")
    assert node is not None and node.address == "198.18.0.21" and node.id == "0b3c-id"
    assert _serf_status(catalog, "web-1") == PASSING
    assert member_commands(catalog, member(ALIVE), "dc1") == []  # idempotent: no write, no index bump


def test_failed_makes_serf_health_critical_and_the_service_unhealthy() -> None:
    catalog = Catalog()
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    _apply_all(catalog, [commands.register(catalog.node("web-1"), Service(node="web-1", id="db", service="db"))])
    _apply_all(catalog, member_commands(catalog, member(FAILED), "dc1"))
    assert _serf_status(catalog, "web-1") == CRITICAL
    assert [i.status for i in catalog.service_instances("db")] == [CRITICAL]
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    assert [i.status for i in catalog.service_instances("db")] == [PASSING]


def test_registration_by_the_agent_is_kept_unless_the_address_moved() -> None:
    catalog = Catalog()
    _apply_all(catalog, [commands.register(Node(node="web-1", address="198.18.0.21", meta={"rack": "r1"}))])
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    assert catalog.node("web-1").meta == {"rack": "r1"}  # type: ignore[union-attr]
    _apply_all(catalog, member_commands(catalog, member(ALIVE, addr="198.18.0.99"), "dc1"))
    node = catalog.node("web-1")
    assert node is not None and node.address == "198.18.0.99" and node.meta == {"rack": "r1"}


def test_left_deregisters_the_node_and_its_services() -> None:
    catalog = Catalog()
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    _apply_all(catalog, [commands.register(catalog.node("web-1"), Service(node="web-1", id="db", service="db"))])
    _apply_all(catalog, member_commands(catalog, member(LEFT), "dc1"))
    assert catalog.node("web-1") is None and catalog.service_instances("db") == []


def test_external_nodes_without_serf_health_are_never_touched() -> None:
    catalog = Catalog()
    _apply_all(catalog, [commands.register(Node(node="rds", address="10.0.0.5"),
                                           Service(node="rds", id="pg", service="pg"))])
    assert member_commands(catalog, member(LEFT, name="rds"), "dc1") == []
    assert forget_commands(catalog, "rds") == []
    assert reap_commands(catalog, set(), may_reap=True) == []


def test_reaping_waits_until_the_leader_may_know_every_member() -> None:
    catalog = Catalog()
    _apply_all(catalog, member_commands(catalog, member(ALIVE), "dc1"))
    assert reap_commands(catalog, set(), may_reap=False) == []
    assert reap_commands(catalog, {"web-1"}, may_reap=True) == []
    assert reap_commands(catalog, {"other"}, may_reap=True) == [commands.deregister("web-1")]


def test_members_of_another_datacenter_are_ignored() -> None:
    catalog = Catalog()
    assert member_commands(catalog, member(ALIVE, dc="dc2"), "dc1") == []
