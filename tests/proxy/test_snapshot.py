"""ProxySnapshot crosses a process boundary as a plain map: it round-trips through msgpack and JSON, and
`from_wire` refuses hostile maps with an error naming the field instead of building a bad snapshot."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.proxy.snapshot import (
    MAX_ENDPOINTS,
    MAX_PEM,
    Endpoint,
    HeaderMatch,
    IntentionRule,
    Intentions,
    Permission,
    ProxyConfigError,
    ProxySnapshot,
    TLSMaterial,
    Upstream,
)


def _snapshot(**kw: Any) -> ProxySnapshot:
    base: dict[str, Any] = dict(
        proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
        tls=TLSMaterial("CERT", "KEY", ("ROOT1", "ROOT2"), "td.mesh", "spiffe://td.mesh/ns/default/dc/dc1/svc/web"),
        public_address="127.0.0.1", public_port=21000, local_service_port=8080, protocol="http",
        intentions=Intentions(False, (
            IntentionRule("api", None, (Permission("deny", path_prefix="/admin",
                                                   headers=(HeaderMatch("x-debug", present=True, invert=True),)),
                                        Permission("allow", methods=("GET", "HEAD"))), name="api => web"),
            IntentionRule("*", "deny", name="* => web"))),
        upstreams=(Upstream("db", "127.0.0.1", 9191, spiffe_ids=("spiffe://td.mesh/ns/default/dc/dc1/svc/db",),
                            endpoints=(Endpoint("198.18.0.12", 21000, 3, "n2", "db-sidecar-proxy"),)),))
    base.update(kw)
    return ProxySnapshot(**base)


def test_round_trip_through_msgpack_and_json() -> None:
    snap = _snapshot()
    assert ProxySnapshot.from_wire(msgpack.unpackb(msgpack.packb(snap.to_wire()))) == snap
    assert ProxySnapshot.from_wire(json.loads(json.dumps(snap.to_wire()))) == snap


def test_the_key_never_reaches_a_repr() -> None:
    snap = _snapshot()
    assert "KEY" not in repr(snap.tls)
    assert "KEY" not in repr(snap)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("public_port",), 0, "public_port: 0 is not a port"),
    (("public_port",), "21000", "public_port: expected an integer"),
    (("public_port",), True, "public_port: expected an integer"),
    (("protocol",), "grpc", "protocol: protocol 'grpc' is not tcp or http"),
    (("workers",), 0, "workers: 0 is not between 1 and 64"),
    (("tls",), "x", "snapshot.tls: expected a map"),
    (("tls", "key_pem"), "k" * (MAX_PEM + 1), "snapshot.tls.key_pem:"),
    (("tls", "roots_pem"), "ROOT", "snapshot.tls.roots_pem: expected a list"),
    (("upstreams", 0, "local_bind_port"), 70000, "upstreams[0].local_bind_port: 70000 is not a port"),
    (("upstreams", 0, "local_bind_port"), 21000, "upstreams[0]: 127.0.0.1:21000 is already a listener"),
    (("upstreams", 0, "endpoints", 0, "weight"), 0, "upstreams[0].endpoints[0].weight: 0 is below 1"),
    (("upstreams", 0, "endpoints"), [{"address": "a", "port": 1}] * (MAX_ENDPOINTS + 1), "items, more than"),
    (("upstreams", 0, "retries", "budget_percent"), float("nan"), "budget_percent: expected a number"),
    (("intentions", "rules", 0, "action"), "maybe", "intentions.rules[0].action: 'maybe' is not allow or deny"),
    (("intentions", "rules", 0, "permissions", 1, "action"), "", "permissions[1].action"),
    (("intentions", "default_allow"), 1, "default_allow: expected true or false"),
    (("upstreams", 0), {"local_bind_port": 1}, "snapshot.upstreams[0]:"),
    # Host names would make a worker block on getaddrinfo: only IP literals are taken (review finding 7).
    (("public_address",), "web.example", "public_address: 'web.example' is not an IP address"),
    (("local_service_address",), "localhost", "local_service_address: 'localhost' is not an IP address"),
    (("upstreams", 0, "local_bind_address"), "localhost", "upstreams[0].local_bind_address: 'localhost' is not"),
    (("upstreams", 0, "endpoints", 0, "address"), "db.service.consul",
     "upstreams[0].endpoints[0].address: 'db.service.consul' is not an IP address"),
    (("upstreams", 0, "endpoints", 0, "address"), "", "upstreams[0].endpoints[0].address: '' is not"),
])
def test_hostile_fields_are_named(path: tuple[Any, ...], value: Any, message: str) -> None:
    wire = _snapshot().to_wire()
    target = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ProxyConfigError) as err:
        ProxySnapshot.from_wire(wire)
    assert message in str(err.value)


def test_ip_literals_of_both_families_are_taken() -> None:
    up = Upstream("db", "::1", 9191, endpoints=(Endpoint("fd00::12", 21000), Endpoint("198.18.0.12", 21000)))
    snap = _snapshot(public_address="0.0.0.0", local_service_address="::1", upstreams=(up,))
    assert ProxySnapshot.from_wire(snap.to_wire()) == snap


def test_unknown_keys_are_ignored_and_missing_ones_default() -> None:
    wire = _snapshot().to_wire()
    wire["from_a_newer_feeder"] = {"x": 1}
    del wire["access_log"]
    assert ProxySnapshot.from_wire(wire) == _snapshot()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["proxy_id", "service", "tls", "public_port", "upstreams", "intentions",
                                        "datacenter", "public_address", "workers"]), _json))
def test_any_map_either_builds_or_is_refused_cleanly(raw: dict[str, Any]) -> None:
    wire = _snapshot().to_wire()
    wire.update(raw)
    try:
        ProxySnapshot.from_wire(wire)
    except ProxyConfigError:
        pass
