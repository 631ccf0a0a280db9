"""sidecar_service from HCL files: errors name file, line and field; through LocalState the sidecar is
registered with its parent, keeps its port across reloads and goes when its block or parent goes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from meshagent.agent.catalog import Node
from meshagent.agent.config.errors import ConfigErrors
from meshagent.agent.config.loader import load_config, parse_service
from meshagent.agent.config.types import ServiceDefinition, Source
from meshagent.agent.local_state import LocalState, LocalStateError
from meshagent.agent.store import CatalogStore

WEB_HCL = """
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  connect {
    sidecar_service {
      proxy {
        upstreams {
          destination_name = "db"
          local_bind_port  = 9191
        }
        upstreams {
          destination_name = "cache"
          local_bind_port  = 9292
          datacenter       = "dc2"
        }
      }
    }
  }
}
"""


def _load(tmp_path: Path, text: str, name: str = "web.hcl") -> list[ServiceDefinition]:
    path = tmp_path / name
    path.write_text(text)
    return load_config([str(path)], [], {}).services


def test_hcl_and_json_sidecars_expand_alike(tmp_path: Path) -> None:
    [web] = _load(tmp_path, WEB_HCL)
    api = parse_service({"Name": "web", "Port": 8080, "Tags": ["v1"], "Connect": {"SidecarService": {"Proxy": {
        "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191},
                      {"DestinationName": "cache", "LocalBindPort": 9292, "Datacenter": "dc2"}]}}}},
        Source("<api>"))
    local: dict[str, ServiceDefinition] = {}
    from meshagent.agent.connect.sidecar import sidecar_for
    a, b = sidecar_for(web, local), sidecar_for(api, local)
    assert a is not None and b is not None
    assert a.proxy == b.proxy and [u["DestinationName"] for u in a.proxy["Upstreams"]] == ["db", "cache"]


@pytest.mark.parametrize("inner,field,line", [
    ('id = "nope"', "service.connect.sidecar_service.id", 6),
    ('kind = "typical"', "service.connect.sidecar_service.kind", 6),
    ('proxy {\n upstreams {\n local_bind_port = 1\n }\n }',
     "service.connect.sidecar_service.proxy.upstreams[0].destination_name", 7),
    ("port = 123456", "service.connect.sidecar_service.port", 6),
])
def test_file_errors_name_file_line_and_field(tmp_path: Path, inner: str, field: str, line: int) -> None:
    text = f'service {{\n  name = "web"\n  port = 80\n  connect {{\n    sidecar_service {{\n{inner}\n    }}\n  }}\n}}\n'
    with pytest.raises(ConfigErrors) as info:
        _load(tmp_path, text)
    hits = [e for e in info.value.errors if e.field == field]
    assert hits, info.value.errors
    assert hits[0].path.endswith("web.hcl") and hits[0].line == line


def _state(store: CatalogStore) -> LocalState:
    return LocalState(node=Node(node="n1", address="198.18.0.31"), store=store, data_dir=None,
                      enable_local_script_checks=False, enable_script_checks=False)


def _ports(store: CatalogStore) -> dict[str, int]:
    return {s.id: s.port for s in store.catalog.node_services("n1") if s.kind == "connect-proxy"}


async def _reload_scenario(tmp_path: Path) -> None:
    store = CatalogStore()
    local = _state(store)
    [web] = _load(tmp_path, WEB_HCL)
    api_hcl = 'service {\n name = "api"\n port = 9000\n connect { sidecar_service {} }\n}\n'
    [api] = _load(tmp_path, api_hcl, "api.hcl")
    await local.start([web, api], [])
    assert _ports(store) == {"web-sidecar-proxy": 21000, "api-sidecar-proxy": 21001}
    checks = {c.check_id: c for c in store.catalog.node_checks("n1")}
    assert checks["service:web-sidecar-proxy:1"].name == "Connect Sidecar Listening"

    # A reload without web: its sidecar goes; api's keeps 21001 even though 21000 is free now.
    [api] = _load(tmp_path, api_hcl, "api.hcl")
    await local.load_files([api], [])
    assert _ports(store) == {"api-sidecar-proxy": 21001}
    assert "service:web-sidecar-proxy:1" not in {c.check_id for c in store.catalog.node_checks("n1")}

    # web back: it takes the free 21000; then api loses its block and its sidecar goes.
    [web] = _load(tmp_path, WEB_HCL)
    await local.load_files([web, api], [])
    assert _ports(store) == {"web-sidecar-proxy": 21000, "api-sidecar-proxy": 21001}
    [plain_api] = _load(tmp_path, 'service {\n name = "api"\n port = 9000\n}\n', "api.hcl")
    await local.load_files([web, plain_api], [])
    assert _ports(store) == {"web-sidecar-proxy": 21000}
    assert {s.id for s in store.catalog.node_services("n1")} == {"web", "web-sidecar-proxy", "api"}

    # Over the API: deregistering the parent takes the sidecar along.
    body = {"Name": "pay", "Port": 7000, "Connect": {"SidecarService": {}}}
    await local.register_service(parse_service(body, Source("<api>")))
    assert _ports(store)["pay-sidecar-proxy"] == 21001
    await local.deregister_service("pay")
    assert "pay-sidecar-proxy" not in _ports(store) and "pay-sidecar-proxy" not in local.services()


def test_sidecars_follow_their_parent_across_reloads(tmp_path: Path) -> None:
    trio.run(_reload_scenario, tmp_path, clock=trio.testing.MockClock(autojump_threshold=0))


async def _full_range_scenario() -> None:
    store = CatalogStore()
    local = _state(store)
    await local.start([], [])
    for port in range(21000, 21256):  # every sidecar port taken by standalone proxies
        await local.register_service(parse_service({"Name": f"p{port}", "Kind": "connect-proxy", "Port": port,
                                                    "Proxy": {"DestinationServiceName": "x"}}, Source("<api>")))
    with pytest.raises(LocalStateError, match="no free sidecar port"):
        await local.register_service(parse_service({"Name": "web", "Connect": {"SidecarService": {}}},
                                                   Source("<api>")))
    assert "web" not in local.services()  # refused before anything changed


def test_no_free_port_refuses_the_registration() -> None:
    trio.run(_full_range_scenario, clock=trio.testing.MockClock(autojump_threshold=0))
