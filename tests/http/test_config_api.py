"""/v1/config against the in-process API on a real CatalogStore: unmodified py-consul for every kind, cas,
blocking reads, validation errors naming the field, and hostile bodies (always a 4xx, never a 500)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import consul
import httpx
import pytest
from consul.exceptions import BadRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http_harness import ServerThread, wait_waiting

# One valid entry of each kind, in an order where every entry's references hold (a router and a splitter
# need protocol http, which the service-defaults before them give).
ENTRIES: list[dict[str, Any]] = [
    {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "tcp"}},
    {"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Meta": {"team": "a"}},
    {"Kind": "service-defaults", "Name": "api", "Protocol": "http"},
    {"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "15s",
     "Redirect": {"Service": "api"}},
    {"Kind": "service-router", "Name": "web",
     "Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "api"}}]},
    {"Kind": "service-splitter", "Name": "api",
     "Splits": [{"Weight": 90, "Service": "api"}, {"Weight": 10, "Service": "web"}]},
    {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}]},
]


def py_consul(server: ServerThread) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def _contains(outer: Any, inner: Any) -> bool:
    """Whether everything `inner` says is in `outer` (the stored entry may add canonical defaults)."""
    if isinstance(inner, dict):
        return isinstance(outer, dict) and all(k in outer and _contains(outer[k], v) for k, v in inner.items())
    if isinstance(inner, list):
        return isinstance(outer, list) and len(outer) == len(inner) and all(map(_contains, outer, inner))
    return bool(outer == inner)


def test_py_consul_put_get_list_delete_every_kind(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    for entry in ENTRIES:
        body = {k: v for k, v in entry.items() if k not in ("Kind", "Name")}
        assert c.config.set(entry["Kind"], entry["Name"], body) is True, entry
    kinds = sorted({e["Kind"] for e in ENTRIES})
    assert len(kinds) == 6
    for entry in ENTRIES:
        got = c.config.get(entry["Kind"], entry["Name"])
        assert _contains(got, entry), (got, entry)
        assert got["CreateIndex"] >= 1 and got["ModifyIndex"] >= got["CreateIndex"]
    for kind in kinds:
        listed = c.config.list(kind)
        expected = sorted(e["Name"] for e in ENTRIES if e["Kind"] == kind)
        assert [e["Name"] for e in listed] == expected
        assert all(e["Kind"] == kind and "ModifyIndex" in e for e in listed)
    # Delete in reverse (a router must go before the defaults that make it valid is not required here,
    # but it is the order a careful operator uses).
    for entry in reversed(ENTRIES):
        assert c.config.delete(entry["Kind"], entry["Name"]) is True
        assert c.config.get(entry["Kind"], entry["Name"]) is None
    assert all(c.config.list(kind) == [] for kind in kinds)


def test_http_shapes_match_consul(api_server: ServerThread) -> None:
    url = f"{api_server.url}/v1/config"
    r = httpx.put(url, json=ENTRIES[1])
    assert (r.status_code, r.json()) == (200, True)
    r = httpx.get(f"{url}/service-defaults/web")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    got = r.json()
    assert got["Kind"] == "service-defaults" and got["Name"] == "web" and got["Protocol"] == "http"
    assert int(r.headers["x-consul-index"]) == got["ModifyIndex"]
    missing = httpx.get(f"{url}/service-defaults/nope")
    assert missing.status_code == 404 and missing.text == 'Config entry not found for "service-defaults" / "nope"'
    assert "x-consul-index" in missing.headers
    # A read entry written back as it came (indexes and all) is accepted, as Consul's decoder does.
    assert httpx.put(url, json={**got, "Protocol": "grpc"}).json() is True
    assert httpx.get(f"{url}/service-defaults/web").json()["Protocol"] == "grpc"
    deleted = httpx.delete(f"{url}/service-defaults/web")
    assert (deleted.status_code, deleted.json()) == (200, {})  # Consul: {} without ?cas, true/false with
    assert httpx.delete(f"{url}/service-defaults/web").json() == {}  # already gone: still fine
    assert httpx.get(f"{url}/service-defaults").json() == []


def test_cas_on_put_and_delete(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    body = {"Protocol": "http"}
    assert c.config.set("service-defaults", "web", body, cas=0) is True  # 0: only when absent
    assert c.config.set("service-defaults", "web", body, cas=0) is False
    index = c.config.get("service-defaults", "web")["ModifyIndex"]
    assert c.config.set("service-defaults", "web", {"Protocol": "grpc"}, cas=index + 7) is False
    assert c.config.get("service-defaults", "web")["Protocol"] == "http"
    assert c.config.set("service-defaults", "web", {"Protocol": "grpc"}, cas=index) is True
    new_index = c.config.get("service-defaults", "web")["ModifyIndex"]
    assert new_index > index
    assert c.config.delete("service-defaults", "web", cas=index) is False
    assert c.config.get("service-defaults", "web") is not None
    assert c.config.delete("service-defaults", "web", cas=new_index) is True
    assert c.config.get("service-defaults", "web") is None
    assert httpx.put(f"{api_server.url}/v1/config?cas=abc", json=ENTRIES[1]).status_code == 400


@pytest.mark.parametrize("entry, field", [
    ({"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Bogus": 1}, "Bogus"),
    ({"Kind": "service-defaults", "Name": "web", "Protocol": 7}, "Protocol"),
    ({"Kind": "service-defaults", "Name": "web", "Protocol": "smtp"}, "Protocol"),
    ({"Kind": "proxy-defaults", "Name": "web", "Config": {}}, "Name"),
    ({"Kind": "service-splitter", "Name": "web",
      "Splits": [{"Weight": 50, "Service": "a"}, {"Weight": 40, "Service": "b"}]}, "Splits"),
    ({"Kind": "service-intentions", "Name": "db",
      "Sources": [{"Name": "web", "Action": "permit"}]}, "Sources[0].Action"),
    ({"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {
        "PathExact": "/a", "PathPrefix": "/b"}}}]}, "Routes[0].Match.HTTP"),
])
def test_bad_entries_are_400_naming_the_field(api_server: ServerThread, entry: dict[str, Any],
                                              field: str) -> None:
    r = httpx.put(f"{api_server.url}/v1/config", json=entry)
    assert r.status_code == 400, r.text
    assert field in r.text, r.text
    assert httpx.get(f"{api_server.url}/v1/config/{entry['Kind']}").json() == []
    with pytest.raises(BadRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        py_consul(api_server).config.set(entry["Kind"], entry["Name"],
                                         {k: v for k, v in entry.items() if k not in ("Kind", "Name")})


def test_a_router_on_a_tcp_service_is_refused(api_server: ServerThread) -> None:
    router = {"Kind": "service-router", "Name": "web",
              "Routes": [{"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "api"}}]}
    r = httpx.put(f"{api_server.url}/v1/config", json=router)
    assert r.status_code == 400 and "rotocol" in r.text, r.text  # the protocol it needs, by name
    assert httpx.put(f"{api_server.url}/v1/config", json=ENTRIES[1]).json() is True  # web: http
    r = httpx.put(f"{api_server.url}/v1/config", json=router)
    assert r.status_code == 400 and "Routes[0].Destination.Service" in r.text, r.text  # api: still tcp
    assert httpx.put(f"{api_server.url}/v1/config", json=ENTRIES[2]).json() is True
    assert httpx.put(f"{api_server.url}/v1/config", json=router).json() is True


def test_a_write_or_delete_breaking_a_chain_that_reaches_it_is_400(api_server: ServerThread) -> None:
    url = f"{api_server.url}/v1/config"
    for entry in (*ENTRIES[1:3], {"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}, "v2": {}}},
                  {"Kind": "service-router", "Name": "api", "Routes": [
                      {"Match": {"HTTP": {"PathPrefix": "/web/"}},
                       "Destination": {"Service": "web", "ServiceSubset": "v2"}}]}):
        assert httpx.put(url, json=entry).json() is True, entry
    r = httpx.put(url, json={"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}}})
    assert r.status_code == 400 and 'service-resolver web: field (entry): breaks the discovery chain of "api": ' \
        "service-router api: field Routes[0].Destination.ServiceSubset" in r.text, r.text
    r = httpx.delete(f"{url}/service-resolver/web")
    assert r.status_code == 400 and 'breaks the discovery chain of "api"' in r.text, r.text
    assert httpx.delete(f"{url}/service-resolver/web?cas=1").status_code == 400  # checked before the cas too
    assert httpx.get(f"{url}/service-resolver/web").json()["Subsets"] == {"v1": {}, "v2": {}}
    assert httpx.delete(f"{url}/service-router/api").json() == {}
    assert httpx.delete(f"{url}/service-resolver/web").json() == {}  # nothing reaches web's v2 any more


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/config/no-such-kind"), ("GET", "/v1/config/no-such-kind/web"),
    ("DELETE", "/v1/config/no-such-kind/web"), ("GET", "/v1/config/mesh/web"),
])
def test_unknown_kind_is_400(api_server: ServerThread, method: str, path: str) -> None:
    r = httpx.request(method, api_server.url + path)
    assert r.status_code == 400 and "invalid config entry kind" in r.text, r.text


def test_unknown_kind_in_a_body_is_400(api_server: ServerThread) -> None:
    r = httpx.put(f"{api_server.url}/v1/config", json={"Kind": "mesh", "Name": "mesh"})
    assert r.status_code == 400 and "Kind" in r.text, r.text


def test_delete_needs_a_name(api_server: ServerThread) -> None:
    assert httpx.delete(f"{api_server.url}/v1/config/service-defaults").status_code == 404
    assert httpx.post(f"{api_server.url}/v1/config", json=ENTRIES[1]).status_code == 405


def _blocked_get(server: ServerThread, path: str, index: int, out: list[tuple[float, httpx.Response]]) -> None:
    r = httpx.get(f"{server.url}{path}", params={"index": index, "wait": "30s"}, timeout=40)
    out.append((time.monotonic(), r))


@pytest.mark.parametrize("path", ["/v1/config/service-defaults/web", "/v1/config/service-defaults"])
def test_blocking_reads_wake_on_a_write(api_server: ServerThread, path: str) -> None:
    c = py_consul(api_server)
    assert c.config.set("service-defaults", "web", {"Protocol": "http"}) is True
    index = int(httpx.get(api_server.url + path).headers["x-consul-index"])
    # An unrelated write (another kind) must not wake the read.
    assert c.config.set("service-intentions", "db", {"Sources": [{"Name": "web", "Action": "deny"}]})
    out: list[tuple[float, httpx.Response]] = []
    thread = threading.Thread(target=_blocked_get, args=(api_server, path, index, out), daemon=True)
    thread.start()
    wait_waiting(api_server, 1)
    assert not out
    written_at = time.monotonic()
    assert c.config.set("service-defaults", "web", {"Protocol": "grpc"}) is True
    thread.join(10)
    assert out, "the blocking read never returned"
    returned_at, r = out[0]
    assert returned_at - written_at < 5.0  # a generous liveness bound: the wait itself is 30 s
    assert int(r.headers["x-consul-index"]) > index
    body = r.json()
    entry = body if isinstance(body, dict) else body[0]
    assert entry["Protocol"] == "grpc"


def test_blocking_read_of_an_absent_entry_wakes_when_it_is_created(api_server: ServerThread) -> None:
    path = "/v1/config/service-resolver/web"
    # Something else first, so that the 404's index (1: the entry never existed) is not from the future.
    assert py_consul(api_server).config.set("service-defaults", "web", {"Protocol": "http"}) is True
    first = httpx.get(api_server.url + path)
    assert first.status_code == 404
    out: list[tuple[float, httpx.Response]] = []
    thread = threading.Thread(target=_blocked_get, args=(api_server, path, int(first.headers["x-consul-index"]), out),
                              daemon=True)
    thread.start()
    wait_waiting(api_server, 1)
    assert py_consul(api_server).config.set("service-resolver", "web", {"ConnectTimeout": "5s"}) is True
    thread.join(10)
    assert out and out[0][1].status_code == 200 and out[0][1].json()["ConnectTimeout"] == "5s"


def test_list_filter(api_server: ServerThread) -> None:
    c = py_consul(api_server)
    for entry in ENTRIES[1:3]:
        assert httpx.put(f"{api_server.url}/v1/config", json=entry).json() is True
    assert [e["Name"] for e in c.config.list("service-defaults", filter_expr='Meta.team == "a"')] == ["web"]
    r = httpx.get(f"{api_server.url}/v1/config/service-defaults", params={"filter": "Nope == 1"})
    assert r.status_code == 400


# ---------------------------------------------------------------------- hostile input

HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("not-json", b"{Kind: service-defaults"),
    ("array", b"[1, 2, 3]"),
    ("string", b'"service-defaults"'),
    ("null", b"null"),
    ("empty", b""),
    ("not-utf8", b'{"Kind": "service-defaults", "Name": "\xff\xfe"}'),
    ("kind-number", b'{"Kind": 7, "Name": "web"}'),
    ("name-list", b'{"Kind": "service-defaults", "Name": ["web"]}'),
    ("name-empty", b'{"Kind": "service-defaults", "Name": ""}'),
    ("name-huge", json.dumps({"Kind": "service-defaults", "Name": "w" * 5000}).encode()),
    ("name-control", b'{"Kind": "service-defaults", "Name": "we\\u0000b"}'),
    ("deep", b'{"Kind": "proxy-defaults", "Name": "global", "Config": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001),
    ("deep-list", b'{"Kind": "proxy-defaults", "Name": "global", "Config": {"a": ' + b"[" * 100000 + b"]" * 100000
     + b"}}"),
    ("sources-map", b'{"Kind": "service-intentions", "Name": "db", "Sources": {"Name": "web"}}'),
    ("weight-string", b'{"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": "100"}]}'),
    ("nan", b'{"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": NaN, "Service": "a"}]}'),
    ("infinity", b'{"Kind": "proxy-defaults", "Name": "global", "Config": {"x": Infinity}}'),
    ("nan-free-form", b'{"Kind": "proxy-defaults", "Name": "global", "Config": {"x": NaN}}'),
    ("huge-int", b'{"Kind": "service-defaults", "Name": "web", "MaxInboundConnections": 1' + b"0" * 4000 + b"}"),
]


@pytest.mark.parametrize("body", [b for _, b in HOSTILE_BODIES], ids=[i for i, _ in HOSTILE_BODIES])
def test_hostile_bodies_are_a_4xx_never_a_500(api_server: ServerThread, body: bytes) -> None:
    r = httpx.put(f"{api_server.url}/v1/config", content=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "\n" not in r.text.strip() and len(r.text) < 2000
    assert all(httpx.get(f"{api_server.url}/v1/config/{kind}").json() == []
               for kind in ("service-defaults", "proxy-defaults", "service-splitter", "service-intentions"))


def test_a_body_over_the_limit_is_413(api_server: ServerThread) -> None:
    entry = {"Kind": "service-defaults", "Name": "web", "Meta": {"pad": "x" * (600 * 1024)}}
    r = httpx.put(f"{api_server.url}/v1/config", json=entry)
    assert r.status_code == 413


@pytest.mark.parametrize("path,get_status,delete_status", [
    ("/v1/config/service-defaults/" + "w" * 5000, 404, 200),  # nothing so named can exist: nothing to delete
    ("/v1/config/service-defaults/web/extra/parts", 404, 200),  # a name with slashes, absent
    ("/v1/config/service-defaults/", 400, 400),  # no name
])
def test_odd_paths_are_answered(api_server: ServerThread, path: str, get_status: int, delete_status: int) -> None:
    assert httpx.get(api_server.url + path).status_code == get_status
    assert httpx.delete(api_server.url + path).status_code == delete_status


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=20)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=4),
                    max_leaves=20)
KEYS = st.sampled_from(["Protocol", "Sources", "Routes", "Splits", "Config", "Meta", "Subsets",
                        "Redirect", "Failover", "MeshGateway", "Expose", "Mode", "TransparentProxy"])


@pytest.mark.slow  # 3 s quiet, up to 10 s on the loaded CI machine
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["service-defaults", "proxy-defaults", "service-intentions", "service-router",
                             "service-splitter", "service-resolver"]),
       fields=st.dictionaries(KEYS, JSON, max_size=5))
def test_arbitrary_entries_never_get_a_500(api_server: ServerThread, kind: str, fields: dict[str, Any]) -> None:
    body = {"Name": "global" if kind == "proxy-defaults" else "web", **fields, "Kind": kind}
    r = httpx.put(f"{api_server.url}/v1/config", json=body)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300], body)
    if r.status_code == 200:
        assert r.json() is True
        assert httpx.get(f"{api_server.url}/v1/config/{kind}/{body['Name']}").status_code == 200
        assert httpx.delete(f"{api_server.url}/v1/config/{kind}/{body['Name']}").status_code == 200
