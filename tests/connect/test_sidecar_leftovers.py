"""Sidecar details Consul has and item 1 left out: the "Connect Sidecar Aliasing <parent>" alias check (its
status the worst of the parent's and the node's checks, Consul's outputs), alias_service checks in general
(files and API), the parent's Connect as Consul shows it (SidecarService is registration sugar: never shown;
user maps verbatim through the persisted body), and `ports { sidecar_min_port, sidecar_max_port }`
(accepted, checked, honoured; 0 turns picking off)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from meshagent.agent.catalog import Node, Service
from meshagent.agent.checks.alias import alias_status
from meshagent.agent.config.encode import service_to_api
from meshagent.agent.config.errors import ConfigErrors
from meshagent.agent.config.loader import load_config, parse_check, parse_service
from meshagent.agent.config.types import Source
from meshagent.agent.http.render import agent_service_json, catalog_service_json, service_json
from meshagent.agent.local_state import LocalState, LocalStateError
from meshagent.agent.store import CatalogStore

from tests.support.wait import wait_for_async

ALIAS = "service:web-sidecar-proxy:2"
WEB_TTL = "web-ttl"


@dataclass
class C:
    """A check as alias_status reads it."""

    service_id: str
    name: str
    status: str
    output: str = ""


# ---------------------------------------------------------------------- alias_status (pure)


@pytest.mark.parametrize("checks, expected", [
    ([], ("passing", "No checks found.")),
    ([C("web", "a", "passing")], ("passing", "All checks passing.")),
    ([C("web", "a", "passing"), C("web", "b", "warning", "slow")], ("warning", 'Aliased check "b" failing: slow')),
    ([C("web", "b", "warning", "slow"), C("web", "a", "passing")], ("warning", 'Aliased check "b" failing: slow')),
    ([C("web", "w", "warning"), C("web", "c", "critical", "down"), C("web", "w2", "warning")],
     ("critical", 'Aliased check "c" failing: down')),
    ([C("web", "a", "passing"), C("", "node", "critical", "disk")], ("critical", 'Aliased check "node" failing: disk')),
    ([C("web", "m", "maintenance", "planned")], ("critical", 'Aliased check "m" failing: planned')),
    ([C("api", "other", "critical"), C("web", "a", "passing")], ("passing", "All checks passing.")),
])
def test_alias_status_is_the_worst_of_the_service_and_node_checks(checks: list[C], expected: tuple[str, str]) -> None:
    assert alias_status("web", checks, True, "n1") == expected


def test_an_alias_of_a_missing_service_is_critical() -> None:
    assert alias_status("gone", [C("", "node", "passing")], False, "n1") == (
        "critical", "Service gone could not be found on node n1")


# ---------------------------------------------------------------------- alias checks through LocalState


def _state(store: CatalogStore, sidecar_ports: tuple[int, int] | None = None) -> LocalState:
    extra = {} if sidecar_ports is None else {"sidecar_ports": sidecar_ports}
    return LocalState(node=Node(node="n1", address="198.18.0.41"), store=store, data_dir=None,
                      enable_local_script_checks=False, enable_script_checks=False, **extra)


def _web(**connect: object) -> dict[str, object]:
    return {"Name": "web", "Port": 8080, "Check": {"CheckID": WEB_TTL, "Name": "web ttl", "TTL": "30s"},
            "Connect": connect or {"SidecarService": {}}}


def _scenario(body: Callable[[LocalState, CatalogStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = CatalogStore()
        local = _state(store)
        await local.start([], [])
        async with trio.open_nursery() as nursery:
            await nursery.start(local.run)
            await body(local, store)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _alias(local: LocalState) -> tuple[str, str]:
    check = local.checks()[ALIAS]
    return check.status, check.output


def _catalog_status(store: CatalogStore, check_id: str) -> str | None:
    return next((c.status for c in store.catalog.node_checks("n1") if c.check_id == check_id), None)


def test_the_sidecar_alias_check_follows_its_parent() -> None:
    async def body(local: LocalState, store: CatalogStore) -> None:
        await local.register_service(parse_service(_web(), Source("<api>")))
        check = local.checks()[ALIAS]
        assert (check.name, check.type, check.service_id) == ("Connect Sidecar Aliasing web", "alias",
                                                               "web-sidecar-proxy")
        assert _alias(local) == ("critical", 'Aliased check "web ttl" failing: ')  # the TTL starts critical
        assert _catalog_status(store, ALIAS) == "critical"
        await local.update_ttl(WEB_TTL, "passing", "ok")
        assert _alias(local) == ("passing", "All checks passing.")
        await wait_for_async(lambda: _catalog_status(store, ALIAS) == "passing", 30)
        await local.update_ttl(WEB_TTL, "warning", "slow")
        assert _alias(local) == ("warning", 'Aliased check "web ttl" failing: slow')
        await local.set_node_maintenance(True, "patching")
        assert _alias(local) == ("critical", 'Aliased check "Node Maintenance Mode" failing: ')
        await local.set_node_maintenance(False, "")
        assert _alias(local)[0] == "warning"
        await local.set_service_maintenance("web", True, "moving")
        assert _alias(local)[0] == "critical"
        await local.set_service_maintenance("web", False, "")
        await local.update_ttl(WEB_TTL, "passing", "")
        assert _alias(local)[0] == "passing"
        await wait_for_async(lambda: _catalog_status(store, ALIAS) == "passing", 30)
        # The listening check is unaffected; the TTL expiring turns the alias critical by itself.
        await trio.sleep(31)
        assert _alias(local) == ("critical", 'Aliased check "web ttl" failing: TTL expired')
        await wait_for_async(lambda: _catalog_status(store, ALIAS) == "critical", 30)

    _scenario(body)


def test_alias_checks_registered_on_their_own_and_chained() -> None:
    async def body(local: LocalState, store: CatalogStore) -> None:
        await local.register_service(parse_service({"Name": "db", "Port": 5432}, Source("<api>")))
        await local.register_service(parse_service(
            {"Name": "db-mirror", "Port": 1, "Check": {"CheckID": "mirror", "Name": "m", "AliasService": "db"}},
            Source("<api>")))
        assert local.checks()["mirror"].status == "passing"
        assert local.checks()["mirror"].output == "No checks found."
        # a node-level alias of the mirror: a chain settles in one call
        await local.register_check(parse_check({"Name": "chain", "AliasService": "db-mirror"}, Source("<api>")))
        await local.register_check(parse_check({"CheckID": "db-ttl", "Name": "db ttl", "TTL": "30s",
                                                "ServiceID": "db"}, Source("<api>")))
        assert local.checks()["mirror"].status == "critical"
        assert local.checks()["chain"].status == "critical"
        await local.update_ttl("db-ttl", "passing", "")
        assert local.checks()["mirror"].status == "passing" and local.checks()["chain"].status == "passing"
        await local.deregister_service("db")
        assert local.checks()["mirror"].output == "Service db could not be found on node n1"
        await wait_for_async(lambda: _catalog_status(store, "mirror") == "critical", 30)

    _scenario(body)


def test_alias_check_definitions_are_checked() -> None:
    check = parse_check({"Name": "a", "AliasService": "web"}, Source("<api>"))
    assert (check.type, check.alias_service, check.interval) == ("alias", "web", None)
    with pytest.raises(ConfigErrors, match="exactly one of http, tcp, args, ttl or alias_service"):
        parse_check({"Name": "a", "AliasService": "web", "TTL": "10s"}, Source("<api>"))
    with pytest.raises(ConfigErrors, match="alias_service: must be a string"):
        parse_check({"Name": "a", "AliasService": ["web"]}, Source("<api>"))
    with pytest.raises(ConfigErrors, match="alias_node: this check type is not supported yet"):
        parse_check({"Name": "a", "AliasNode": "n2"}, Source("<api>"))


def test_an_alias_check_survives_the_register_body_round_trip() -> None:
    defn = parse_service({"Name": "x", "Check": {"CheckID": "m", "Name": "m", "AliasService": "db"}},
                         Source("<api>"))
    again = parse_service(service_to_api(defn), Source("<api>"))
    assert again.checks[0].alias_service == "db" and again.checks[0].type == "alias"


# ---------------------------------------------------------------------- Connect as Consul shows it


HCL_WEB = """
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      port = 21500
      meta = { owner_team = "a" }
      proxy {
        config { protocol = "http" }
        upstreams {
          destination_name = "db"
          local_bind_port  = 9191
          config {
            connect_timeout_ms = 100
            limits { max_connections = 10 }
          }
        }
      }
    }
  }
}
"""
API_WEB = {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {
    "Port": 21500, "Meta": {"owner_team": "a"},
    "Proxy": {"Config": {"protocol": "http"},
              "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191,
                             "Config": {"connect_timeout_ms": 100, "limits": {"max_connections": 10}}}]}}}}


def test_sidecar_service_is_registration_sugar_never_shown(tmp_path: Path) -> None:
    """Consul drops SidecarService once the sidecar is registered (agent_endpoint.go: "registration syntax
    sugar"): /v1/agent/services shows no Connect for the parent; a native service shows {"Native": true}."""
    path = tmp_path / "web.hcl"
    path.write_text(HCL_WEB)
    [from_file] = load_config([str(path)], [], {}).services
    from_api = parse_service(API_WEB, Source("<api>"))
    for defn in (from_file, from_api):
        assert "sidecar_service" in defn.connect  # kept: reloads and restarts expand it again
        assert "Connect" not in agent_service_json(defn, "dc1")
    native = parse_service({"Name": "n", "Connect": {"Native": True}}, Source("<api>"))
    assert agent_service_json(native, "dc1")["Connect"] == {"Native": True}


def test_catalog_rows_show_connect_as_consul_does() -> None:
    node = Node(node="n1", address="198.18.0.41")
    for connect, shown in (({"sidecar_service": {"port": 1}}, {}), ({"native": True}, {"Native": True}),
                           ({"Native": True}, {"Native": True}), ({}, {})):
        svc = Service(node="n1", id="web", service="web", connect=connect)
        assert catalog_service_json(node, svc)["ServiceConnect"] == shown
        assert service_json(svc)["Connect"] == shown


def test_user_maps_survive_the_register_body_round_trip() -> None:
    """What is persisted for an API service comes back the same: keys under config/meta stay as written
    (camel_keys camel-cased maps nested in an upstream's config: limits.max_connections became
    MaxConnections)."""
    from_api = parse_service(API_WEB, Source("<api>"))
    again = parse_service(service_to_api(from_api), Source("<persisted>"))
    assert again.connect == from_api.connect
    upstream = again.connect["sidecar_service"]["proxy"]["upstreams"][0]
    assert upstream["config"] == {"connect_timeout_ms": 100, "limits": {"max_connections": 10}}


# ---------------------------------------------------------------------- ports { sidecar_min_port, ... }


def _config(tmp_path: Path, text: str) -> object:
    path = tmp_path / "ports.hcl"
    path.write_text(text)
    return load_config([str(path)], [], {})


def test_sidecar_port_range_is_accepted_and_checked(tmp_path: Path) -> None:
    config = _config(tmp_path, "ports {\n  sidecar_min_port = 22000\n  sidecar_max_port = 22001\n}\n")
    assert (config.ports.sidecar_min_port, config.ports.sidecar_max_port) == (22000, 22001)  # type: ignore[attr-defined]
    with pytest.raises(ConfigErrors, match=r"ports.hcl:1: ports.sidecar_min_port: 22002 is above "
                                           r"ports.sidecar_max_port \(22001\)"):
        _config(tmp_path, "ports {\n  sidecar_min_port = 22002\n  sidecar_max_port = 22001\n}\n")
    with pytest.raises(ConfigErrors, match=r"ports\.sidecar_max_port: -1 is not a port"):
        _config(tmp_path, "ports {\n  sidecar_max_port = -1\n}\n")
    with pytest.raises(ConfigErrors, match=r"ports\.sidecar_min_port: 70000 is not a port"):
        _config(tmp_path, "ports {\n  sidecar_min_port = 70000\n}\n")
    config = _config(tmp_path, "ports {\n  sidecar_min_port = 0\n}\n")
    assert config.ports.sidecar_min_port == 0  # type: ignore[attr-defined]


def test_sidecar_ports_come_from_the_configured_range() -> None:
    async def main() -> None:
        store = CatalogStore()
        local = _state(store, (22000, 22001))
        await local.start([], [])
        for name in ("a", "b"):
            await local.register_service(parse_service({"Name": name, "Connect": {"SidecarService": {}}},
                                                       Source("<api>")))
        assert {local.services()[f"{n}-sidecar-proxy"].port for n in "ab"} == {22000, 22001}
        with pytest.raises(LocalStateError, match="no free sidecar port left in 22000-22001"):
            await local.register_service(parse_service({"Name": "c", "Connect": {"SidecarService": {}}},
                                                       Source("<api>")))
        off = _state(CatalogStore(), (0, 0))
        await off.start([], [])
        with pytest.raises(LocalStateError, match="automatic sidecar ports are off"):
            await off.register_service(parse_service({"Name": "c", "Connect": {"SidecarService": {}}},
                                                     Source("<api>")))
        await off.register_service(parse_service({"Name": "c", "Connect": {"SidecarService": {"Port": 23000}}},
                                                 Source("<api>")))
        assert off.services()["c-sidecar-proxy"].port == 23000

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
