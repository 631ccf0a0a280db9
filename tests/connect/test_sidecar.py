"""Sidecar expansion and proxy-block validation (agent/connect/sidecar.py): Consul's defaults, overrides,
port choice, and errors that name the field; hostile bodies give ConfigErrors, never a crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.agent.config.errors import ConfigErrors
from meshagent.agent.config.loader import parse_service
from meshagent.agent.config.types import ServiceDefinition, Source
from meshagent.agent.connect.sidecar import (
    MAX_UPSTREAMS,
    SIDECAR_PORT_RANGE,
    expand_sidecar,
    pick_port,
    sidecar_for,
    sidecar_ids,
)


def _svc(body: dict[str, Any]) -> ServiceDefinition:
    return parse_service(body, Source("<test>"))


def _errors(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        _svc(body)
    return [(e.field, e.reason) for e in info.value.errors]


WEB = {"name": "web", "id": "web-1", "port": 8080, "address": "10.0.0.5", "tags": ["v1"], "meta": {"team": "a"}}


def test_an_empty_sidecar_service_gets_consuls_defaults() -> None:
    side = expand_sidecar(_svc({**WEB, "connect": {"sidecar_service": {}}}), used_ports=[])
    assert side is not None
    assert (side.id, side.name, side.kind, side.port) == ("web-1-sidecar-proxy", "web-sidecar-proxy",
                                                          "connect-proxy", SIDECAR_PORT_RANGE[0])
    assert (side.tags, side.meta, side.connect) == (["v1"], {"team": "a"}, {})
    assert side.proxy == {"DestinationServiceName": "web", "DestinationServiceID": "web-1",
                          "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
                          "MeshGateway": {}, "Expose": {}}
    check, alias = side.checks
    assert (check.id, check.name, check.tcp, check.interval, check.service_id) == (
        "service:web-1-sidecar-proxy:1", "Connect Sidecar Listening", "127.0.0.1:21000", 10.0, "web-1-sidecar-proxy")
    assert (alias.id, alias.name, alias.alias_service, alias.type, alias.service_id) == (
        "service:web-1-sidecar-proxy:2", "Connect Sidecar Aliasing web-1", "web-1", "alias", "web-1-sidecar-proxy")


def test_the_listening_check_dials_where_the_data_plane_binds_an_address_less_sidecar() -> None:
    # The agent binds such a sidecar's public listener on its own bind address: a check on 127.0.0.1 would
    # never pass on a host whose agent binds 198.18.0.22, and no upstream would ever see the sidecar.
    bare = {k: v for k, v in WEB.items() if k != "address"}
    side = expand_sidecar(_svc({**bare, "connect": {"sidecar_service": {}}}), used_ports=[],
                          listen_address="198.18.0.22")
    assert side is not None and side.checks[0].tcp == "198.18.0.22:21000"
    side = expand_sidecar(_svc({**bare, "connect": {"sidecar_service": {}}}), used_ports=[])
    assert side is not None and side.checks[0].tcp == "127.0.0.1:21000"


def test_the_listening_check_ignores_the_parents_address_and_follows_bind_settings() -> None:
    # review finding 5: the data plane binds Config.bind_address, else the sidecar's address, else the agent's
    # bind address, never the parent's: a parent on 127.0.0.1 under an agent bound to 198.18.0.9 was dialled
    # on 127.0.0.1 where nothing listened, and the check never passed.
    parent = {**WEB, "address": "127.0.0.1", "connect": {"sidecar_service": {}}}
    side = expand_sidecar(_svc(parent), used_ports=[], listen_address="198.18.0.9")
    assert side is not None and side.checks[0].tcp == "198.18.0.9:21000"
    bound = {**WEB, "connect": {"sidecar_service": {"proxy": {"config": {"bind_address": "0.0.0.0",
                                                                          "bind_port": 21500}}}}}
    side = expand_sidecar(_svc(bound), used_ports=[], listen_address="198.18.0.9")
    assert side is not None and side.checks[0].tcp == "127.0.0.1:21500"
    own = {**WEB, "connect": {"sidecar_service": {"address": "198.18.0.10", "proxy": {"config": {"BindPort": 21501}}}}}
    side = expand_sidecar(_svc(own), used_ports=[], listen_address="198.18.0.9")
    assert side is not None and side.checks[0].tcp == "198.18.0.10:21501"


def test_given_fields_win_over_the_defaults() -> None:
    parent = _svc({**WEB, "connect": {"sidecar_service": {
        "name": "edge", "port": 9999, "tags": [], "meta": {"x": "y"}, "address": "::1",
        "check": {"tcp": "127.0.0.1:9999", "interval": "5s"},
        "proxy": {"local_service_address": "127.0.0.2", "local_service_port": 81, "mode": "direct",
                  "config": {"protocol": "http", "BindAddr": "x"},
                  "upstreams": [{"destination_name": "db", "local_bind_port": 9191, "datacenter": "dc2",
                                 "destination_type": "prepared_query", "config": {"KeepCase": 1}}]}}}})
    side = expand_sidecar(parent, used_ports=[9999])
    assert side is not None
    assert (side.id, side.name, side.port, side.tags, side.meta, side.address) == (
        "web-1-sidecar-proxy", "edge", 9999, [], {"x": "y"}, "::1")
    assert [c.tcp for c in side.checks] == ["127.0.0.1:9999"]
    assert side.proxy["LocalServiceAddress"] == "127.0.0.2" and side.proxy["LocalServicePort"] == 81
    assert side.proxy["Mode"] == "direct" and side.proxy["Config"] == {"protocol": "http", "BindAddr": "x"}
    assert side.proxy["Upstreams"] == [{"DestinationType": "prepared_query", "DestinationName": "db",
                                        "Datacenter": "dc2", "LocalBindPort": 9191, "Config": {"KeepCase": 1},
                                        "MeshGateway": {}}]


def test_a_service_without_a_sidecar_block_has_none() -> None:
    assert expand_sidecar(_svc(WEB), used_ports=[]) is None
    assert sidecar_ids([_svc(WEB), _svc({"name": "api", "connect": {"sidecar_service": {}}})]) == {
        "api-sidecar-proxy"}


def test_ports_skip_other_sidecars_and_stay_when_free() -> None:
    low, high = SIDECAR_PORT_RANGE
    assert pick_port([]) == low
    assert pick_port([low, low + 1]) == low + 2
    assert pick_port([low], previous=low + 7) == low + 7
    assert pick_port([low + 7], previous=low + 7) == low
    assert pick_port([], previous=80) == low  # outside the range: not kept
    assert pick_port(range(low, high + 1)) is None
    parent = _svc({**WEB, "connect": {"sidecar_service": {}}})
    with pytest.raises(ConfigErrors, match="no free sidecar port"):
        expand_sidecar(parent, used_ports=range(low, high + 1))


def test_sidecar_for_reads_the_local_services() -> None:
    web = _svc({**WEB, "connect": {"sidecar_service": {}}})
    api = _svc({"name": "api", "port": 1, "connect": {"sidecar_service": {}}})
    local: dict[str, ServiceDefinition] = {}
    for parent in (web, api):
        side = sidecar_for(parent, local)
        assert side is not None
        local[parent.id], local[side.id] = parent, side
    assert (local["web-1-sidecar-proxy"].port, local["api-sidecar-proxy"].port) == (21000, 21001)
    again = sidecar_for(api, local)  # a reload: the port it holds is kept
    assert again is not None and again.port == 21001


def test_camel_case_api_body_expands_the_same_as_snake_case() -> None:
    snake = _svc({**WEB, "connect": {"sidecar_service": {"proxy": {
        "upstreams": [{"destination_name": "db", "local_bind_port": 9191}]}}}})
    camel = _svc({"Name": "web", "ID": "web-1", "Port": 8080, "Address": "10.0.0.5", "Tags": ["v1"],
                  "Meta": {"team": "a"}, "Connect": {"SidecarService": {"Proxy": {
                      "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}}}})
    a, b = expand_sidecar(snake, []), expand_sidecar(camel, [])
    assert a is not None and b is not None
    assert (a.proxy, a.port, a.tags) == (b.proxy, b.port, b.tags)


@pytest.mark.parametrize("sidecar,field,reason", [
    ({"id": "other"}, "service.connect.sidecar_service.id", "always 'web-1-sidecar-proxy'"),
    ({"kind": "mesh-gateway"}, "service.connect.sidecar_service.kind", "always 'connect-proxy'"),
    ({"port": 70000}, "service.connect.sidecar_service.port", "not a port"),
    ({"connect": {"sidecar_service": {}}}, "service.connect.sidecar_service.connect.sidecar_service",
     "cannot have its own sidecar"),
    ({"proxy": {"upstreams": [{"local_bind_port": 1}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].destination_name", "required"),
    ({"proxy": {"upstreams": [{"destination_name": "db"}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].local_bind_port", "required"),
    ({"proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 0}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].local_bind_port", "not a port"),
    ({"proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 1, "bogus": 1}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].bogus", "unknown field"),
    ({"proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 1, "destination_type": "x"}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].destination_type", "service or prepared_query"),
    ({"proxy": {"upstreams": "db"}}, "service.connect.sidecar_service.proxy.upstreams", "list of blocks"),
    ({"proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 1, "mesh_gateway": "local"}]}},
     "service.connect.sidecar_service.proxy.upstreams[0].mesh_gateway", "must be a map"),
    ({"proxy": {"mode": "magic"}}, "service.connect.sidecar_service.proxy.mode", "direct or transparent"),
    ({"proxy": {"local_service_port": "http"}}, "service.connect.sidecar_service.proxy.local_service_port",
     "whole number"),
    ({"proxy": {"config": ["x"]}}, "service.connect.sidecar_service.proxy.config", "must be a map"),
    ({"proxy": {"typo": 1}}, "service.connect.sidecar_service.proxy.typo", "unknown field"),
    ({"proxy": "x"}, "service.connect.sidecar_service.proxy", "must be a map"),
])
def test_bad_sidecar_blocks_are_errors_naming_the_field(sidecar: dict[str, Any], field: str, reason: str) -> None:
    errors = _errors({**WEB, "connect": {"sidecar_service": sidecar}})
    assert any(f == field and reason in r for f, r in errors), errors


def test_too_many_upstreams_are_refused() -> None:
    ups = [{"destination_name": f"s{i}", "local_bind_port": 1000 + i} for i in range(MAX_UPSTREAMS + 1)]
    assert _errors({**WEB, "connect": {"sidecar_service": {"proxy": {"upstreams": ups}}}}) == [
        ("service.connect.sidecar_service.proxy.upstreams", f"at most {MAX_UPSTREAMS} upstreams, got 257")]


def test_a_standalone_proxy_needs_its_destination_and_port() -> None:
    errors = _errors({"name": "p", "kind": "connect-proxy"})
    assert ("service.proxy.destination_service_name", 'is required for kind = "connect-proxy"') in errors
    assert any(f == "service.port" for f, _ in errors)
    svc = _svc({"Name": "p", "Kind": "connect-proxy", "Port": 21500,
                "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 80}})
    assert svc.proxy == {"DestinationServiceName": "web", "LocalServicePort": 80, "MeshGateway": {}, "Expose": {}}
    assert expand_sidecar(svc, []) is None


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["destination_name", "local_bind_port", "upstreams", "config", "mode", "port", "proxy", "Upstreams",
         "DestinationName", "x", "local_service_port", "destination_type", "expose", "mesh_gateway"]),
        inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_hostile_sidecar_blocks_never_crash(block: Any) -> None:
    try:
        parent = _svc({**WEB, "connect": {"sidecar_service": {"proxy": block, "port": block}}})
    except ConfigErrors:
        return
    side = expand_sidecar(parent, [])
    assert side is not None and side.kind == "connect-proxy"
