"""build_snapshot over a real catalog (commands applied as Raft would): identity and TLS from the leaf and
every root, Consul's precedence for protocol and timeouts, intentions in evaluation order with their L7
permissions, upstreams with their passing endpoints and layered UpstreamConfig, and hostile Config values
refused with an error naming the sidecar and the field."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.connect import ca
from meshagent.agent.connect.ca_plan import root_fields, stored_config
from meshagent.agent.connect.intention_entries import intentions_of
from meshagent.agent.connect.intentions import IntentionIndex
from meshagent.agent.connect.leaf_plan import LeafRecord
from meshagent.agent.connect.proxy_config_read import listening_target
from meshagent.agent.connect.proxy_snapshot import SnapshotError, build_snapshot, same_config, watch_keys
from meshagent.proxy.snapshot import HeaderMatch, Limits, Permission, ProxySnapshot

TD = "11111111-2222-3333-4444-555555555555.mesh"
DC = "dc1"
NOW = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)


class World:
    """A catalog with an initialized CA, and helpers to write into it."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self._index = itertools.count(1)
        self.root = ca.new_root(TD, NOW)
        self.apply(commands.connect_ca("init", cluster_id="c1", trust_domain=TD, root=root_fields(self.root),
                                       config=stored_config("consul", {}, False)))

    def apply(self, cmd: dict[str, Any]) -> Any:
        return self.catalog.apply(next(self._index), cmd)

    def entry(self, entry: dict[str, Any]) -> None:
        self.apply(commands.config_entry_set(entry))

    def instance(self, node: str, addr: str, sid: str, dest: str, port: int, status: str = "passing",
                 svc_addr: str = "", weight: int = 1) -> None:
        svc = Service(node=node, id=sid, service=f"{dest}-sidecar-proxy", port=port, address=svc_addr,
                      kind="connect-proxy", proxy={"DestinationServiceName": dest},
                      weights={"Passing": weight, "Warning": 1})
        check = Check(node=node, check_id=f"c-{sid}", status=status, service_id=sid,
                      service_name=svc.service)
        self.apply(commands.register(Node(node=node, address=addr), svc, [check]))

    def build(self, proxy: ServiceDefinition, default_allow: bool = True, **kw: Any) -> ProxySnapshot:
        index = IntentionIndex(intentions_of(self.catalog.config_entries.list("service-intentions")))
        return build_snapshot(proxy, None, self.catalog, LEAF, index, default_allow, datacenter=DC,
                              bind_address="127.0.17.1", **kw)


LEAF = LeafRecord(service="web", service_uri=f"spiffe://{TD}/ns/default/dc/{DC}/svc/web", cert_pem="LEAF",
                  intermediate_pems=("INTER\n",), private_key_pem="KEY", index=7)


def sidecar(upstreams: list[dict[str, Any]] | None = None, config: dict[str, Any] | None = None,
            **proxy: Any) -> ServiceDefinition:
    block: dict[str, Any] = {"DestinationServiceName": "web", "DestinationServiceID": "web",
                             "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080, **proxy}
    if upstreams is not None:
        block["Upstreams"] = upstreams
    if config is not None:
        block["Config"] = config
    return ServiceDefinition(name="web-sidecar-proxy", id="web-sidecar-proxy", port=21000, kind="connect-proxy",
                             proxy=block)


def up(name: str = "db", port: int = 9191, **kw: Any) -> dict[str, Any]:
    return {"DestinationType": "service", "DestinationName": name, "LocalBindPort": port, **kw}


def test_identity_tls_listeners_and_consuls_defaults() -> None:
    w = World()
    snap = w.build(sidecar())
    assert (snap.proxy_id, snap.service, snap.datacenter) == ("web-sidecar-proxy", "web", DC)
    assert snap.tls.cert_pem == "LEAF\nINTER\n"  # Consul's CertPEM: leaf, then intermediates
    assert snap.tls.key_pem == "KEY" and snap.tls.spiffe_id == LEAF.service_uri
    assert snap.tls.roots_pem == (w.root.root_cert,) and snap.tls.trust_domain == TD
    assert (snap.public_address, snap.public_port) == ("127.0.17.1", 21000)  # the agent's bind address
    assert (snap.local_service_address, snap.local_service_port) == ("127.0.0.1", 8080)
    assert snap.local_connect_timeout_ms == 1000 and snap.local_request_timeout_ms == 0
    assert (snap.protocol, snap.workers, snap.metrics_bind, snap.upstreams) == ("tcp", 1, "", ())
    assert not snap.access_log.enabled
    assert ProxySnapshot.from_wire(snap.to_wire()) == snap  # what the workers will get back


def test_every_root_is_trusted_during_a_rotation() -> None:
    w = World()
    new = ca.new_root(TD, NOW)
    w.apply(commands.connect_ca("rotate", root=root_fields(new), rotated_at=NOW.timestamp()))
    assert w.build(sidecar()).tls.roots_pem == (w.root.root_cert, new.root_cert)


def test_protocol_registration_over_service_defaults_over_proxy_defaults() -> None:
    w = World()
    w.entry({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}})
    assert w.build(sidecar()).protocol == "http"
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"})
    assert w.build(sidecar()).protocol == "tcp"
    assert w.build(sidecar(config={"protocol": "HTTP"})).protocol == "http"
    w.entry({"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"})
    assert w.build(sidecar()).protocol == "tcp"  # http2/grpc are proxied at L4 until their issue


def test_timeouts_bind_metrics_access_logs_and_workers() -> None:
    w = World()
    w.entry({"Kind": "service-defaults", "Name": "web", "LocalConnectTimeoutMs": 250, "LocalRequestTimeoutMs": 900})
    w.entry({"Kind": "proxy-defaults", "Name": "global", "Config": {"envoy_prometheus_bind_addr": "127.0.17.9:9102"},
             "AccessLogs": {"Enabled": True, "Type": "file", "Path": "/tmp/x.log"}})
    snap = w.build(sidecar())
    assert (snap.local_connect_timeout_ms, snap.local_request_timeout_ms) == (250, 900)
    assert snap.metrics_bind == "127.0.17.9:9102"
    assert (snap.access_log.enabled, snap.access_log.path) == (True, "/tmp/x.log")
    snap = w.build(sidecar(config={"local_connect_timeout_ms": 40, "bind_address": "127.0.17.3", "bind_port": 21001,
                                   "envoy_prometheus_bind_addr": "127.0.17.3:9103", "workers": 3}))
    assert (snap.local_connect_timeout_ms, snap.public_address, snap.public_port) == (40, "127.0.17.3", 21001)
    assert (snap.metrics_bind, snap.workers) == ("127.0.17.3:9103", 3)


def test_intentions_in_evaluation_order_with_l7_permissions() -> None:
    w = World()
    w.entry({"Kind": "service-intentions", "Name": "web", "Sources": [
        {"Name": "*", "Action": "deny"},
        {"Name": "api", "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "allow", "HTTP": {"Methods": ["GET"], "Header": [
                {"Name": "x-env", "Exact": "prod"}, {"Name": "x-debug", "Present": True, "Invert": True}]}}]},
        {"Name": "ops", "Action": "allow"}]})
    w.entry({"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "mon", "Action": "allow"}]})
    w.entry({"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "allow"}]})
    snap = w.build(sidecar(), default_allow=False)
    assert not snap.intentions.default_allow
    rules = snap.intentions.rules
    assert [(r.source, r.action) for r in rules] == [("api", None), ("ops", "allow"), ("*", "deny"),
                                                      ("mon", "allow")]
    assert rules[0].name == "api => web" and rules[3].name == "mon => *"
    assert rules[0].permissions == (
        Permission(action="deny", path_prefix="/admin"),
        Permission(action="allow", methods=("GET",), headers=(
            HeaderMatch(name="x-env", exact="prod"), HeaderMatch(name="x-debug", present=True, invert=True))))


def test_a_forged_l7_permission_fails_closed() -> None:
    w = World()
    # Written straight into the catalog (the FSM checks only structure), as a forged command could.
    w.entry({"Kind": "service-intentions", "Name": "web", "Sources": [
        {"Name": "api", "Permissions": [
            {"Action": "allow", "HTTP": {"Header": [{"Exact": "no name"}]}}, "junk", {"Action": "maybe"},
            {"Action": "allow", "HTTP": {"PathExact": "/" + "x" * 5000}},  # not shortened into a wider match
            {"Action": "allow", "HTTP": {"Methods": ["GET", 7]}},
            {"Action": "allow", "HTTP": {"Header": [{"Name": "h", "Exact": "1"}] * 2000}}]}]})
    rules = w.build(sidecar()).intentions.rules
    assert rules[0].permissions == (Permission(action="deny"),) * 6


def test_upstream_endpoints_are_the_passing_sidecars_with_weights_and_the_destination_identity() -> None:
    w = World()
    w.instance("n1", "127.0.17.11", "db1-sidecar-proxy", "db", 21000, weight=3)
    w.instance("n2", "127.0.17.12", "db2-sidecar-proxy", "db", 21000, svc_addr="127.0.17.22")
    w.instance("n3", "127.0.17.13", "db3-sidecar-proxy", "db", 21000, status="critical")
    w.instance("n4", "127.0.17.14", "db4-sidecar-proxy", "db", 21000, status="warning")
    w.instance("n5", "127.0.17.15", "api-sidecar-proxy", "api", 21000)
    w.instance("n6", "db.example", "db6-sidecar-proxy", "db", 21000)  # never resolved by a worker: left out
    snap = w.build(sidecar([up("db"), up("db", 9192, Datacenter="dc2", LocalBindAddress="127.0.17.5")]))
    local, remote = snap.upstreams
    assert [(e.address, e.port, e.weight, e.node, e.service_id) for e in local.endpoints] == [
        ("127.0.17.11", 21000, 3, "n1", "db1-sidecar-proxy"), ("127.0.17.22", 21000, 1, "n2", "db2-sidecar-proxy"),
        ("127.0.17.14", 21000, 1, "n4", "db4-sidecar-proxy")]  # warning too: the default resolver (issue 17)
    assert local.spiffe_ids == (f"spiffe://{TD}/ns/default/dc/dc1/svc/db",)
    assert (local.local_bind_address, local.local_bind_port, local.datacenter) == ("127.0.0.1", 9191, DC)
    assert (local.protocol, local.connect_timeout_ms, local.limits) == ("tcp", 5000, Limits())
    assert remote.spiffe_ids == (f"spiffe://{TD}/ns/default/dc/dc2/svc/db",)
    assert remote.endpoints == () and remote.local_bind_address == "127.0.17.5"
    assert watch_keys(sidecar([up("DB")]))[-1] == "connect:db"  # the catalog's connect keys are lower-case


def test_upstream_config_layers_defaults_overrides_then_the_upstreams_own_config() -> None:
    w = World()
    w.entry({"Kind": "service-defaults", "Name": "db", "Protocol": "http"})
    w.entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {
        "Defaults": {"ConnectTimeoutMs": 800, "Limits": {"MaxConnections": 10, "MaxPendingRequests": 0},
                     "PassiveHealthCheck": {"Interval": "2s", "MaxFailures": 3}},
        "Overrides": [{"Name": "db", "Limits": {"MaxConcurrentRequests": 20},
                       "PassiveHealthCheck": {"BaseEjectionTime": "5s", "MaxEjectionPercent": 50}},
                      {"Name": "other", "ConnectTimeoutMs": 1}]}})
    cfg = {"limits": {"max_connections": 30}, "passive_health_check": {"max_failures": 7},
           "num_retries": 2, "retry_on_connect_failure": False, "retry_on_status_codes": [503, 502],
           "request_timeout_ms": 1500,
           "load_balancer": {"policy": "ring_hash", "ring_hash_config": {"minimum_ring_size": 64},
                             "hash_policies": [{"field": "header", "field_value": "x-user"}, {"source_ip": True}]}}
    u = w.build(sidecar([up("db", Config=cfg)])).upstreams[0]
    assert u.protocol == "http" and u.connect_timeout_ms == 800
    assert (u.limits.max_connections, u.limits.max_pending_requests, u.limits.max_concurrent_requests) == (30, 1024, 20)
    ph = u.passive_health
    assert (ph.interval_s, ph.max_failures, ph.base_ejection_time_s, ph.max_ejection_percent) == (2.0, 7, 5.0, 50)
    assert (u.retries.num_retries, u.retries.retry_on_connect_failure, u.retries.retry_on_status_codes) == (
        2, False, (503, 502))
    assert u.request_timeout_ms == 1500
    assert (u.load_balancer.policy, u.load_balancer.minimum_ring_size) == ("ring_hash", 64)
    assert [(h.field, h.field_value, h.source_ip) for h in u.load_balancer.hash_policies] == [
        ("header", "x-user", False), ("", "", True)]
    # CamelCase in the upstream's config works too
    u = w.build(sidecar([up("db", Config={"ConnectTimeoutMs": 99, "Protocol": "tcp"})])).upstreams[0]
    assert (u.connect_timeout_ms, u.protocol) == (99, "tcp")


def test_upstream_protocol_is_layered_like_consuls() -> None:
    # upstream config > UpstreamConfig.Overrides > UpstreamConfig.Defaults > destination's service-defaults
    # > proxy-defaults (review finding 8: Defaults/Overrides Protocol was ignored)
    w = World()
    w.entry({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}})
    assert w.build(sidecar([up("db")])).upstreams[0].protocol == "http"
    w.entry({"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"})
    assert w.build(sidecar([up("db")])).upstreams[0].protocol == "tcp"
    w.entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Defaults": {"Protocol": "http"}}})
    assert w.build(sidecar([up("db")])).upstreams[0].protocol == "http"
    w.entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {
        "Defaults": {"Protocol": "http"}, "Overrides": [{"Name": "db", "Protocol": "tcp"}]}})
    ups = w.build(sidecar([up("db"), up("cache", port=9192)])).upstreams
    assert [u.protocol for u in ups] == ["tcp", "http"]  # the override names db only
    assert w.build(sidecar([up("db", Config={"protocol": "http"})])).upstreams[0].protocol == "http"
    w.entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Defaults": {"Protocol": "smtp"}}})
    with pytest.raises(SnapshotError, match=r"service-defaults web UpstreamConfig.Defaults.Protocol"):
        w.build(sidecar([up("db")]))


def test_the_listening_check_target_is_where_the_snapshot_binds() -> None:
    # review finding 5: one rule for both (proxy_config_read.public_bind/public_port)
    w = World()
    cases: list[tuple[dict[str, Any] | None, str, str]] = [
        (None, "", "127.0.17.1:21000"),
        (None, "127.0.17.6", "127.0.17.6:21000"),
        ({"bind_address": "127.0.17.7", "bind_port": 21007}, "127.0.17.6", "127.0.17.7:21007"),
        ({"BindAddress": "0.0.0.0"}, "", "127.0.0.1:21000"),
        ({"bind_address": "::"}, "", "127.0.0.1:21000"),
        ({"bind_address": "::1"}, "", "[::1]:21000"),
    ]
    for config, address, want in cases:
        proxy = sidecar(config=config)
        proxy.address = address
        snap = w.build(proxy)
        got = listening_target(proxy.proxy.get("Config"), proxy.address, proxy.port, "127.0.17.1")
        assert got == want, (config, address)
        host, _, port = want.rpartition(":")
        if snap.public_address not in ("0.0.0.0", "::"):
            assert (snap.public_address, snap.public_port) == (host.strip("[]"), int(port))
    # hostile values fall back to what the snapshot would bind without them (the snapshot refuses them)
    assert listening_target({"bind_address": ["x"], "bind_port": "x"}, "", 21000, "127.0.17.1") == "127.0.17.1:21000"
    assert listening_target("not a map", "", 21000, "0.0.0.0") == "127.0.0.1:21000"


@pytest.mark.parametrize(("config", "field"), [
    ({"protocol": "smtp"}, "proxy.config.protocol"),
    ({"protocol": 7}, "proxy.config.protocol"),
    ({"local_connect_timeout_ms": -1}, "proxy.config.local_connect_timeout_ms"),
    ({"local_connect_timeout_ms": True}, "proxy.config.local_connect_timeout_ms"),
    ({"workers": 0}, "proxy.config.workers"),
    ({"workers": 1000}, "proxy.config.workers"),
    ({"bind_port": 70000}, "proxy.config.bind_port"),
    ({"envoy_prometheus_bind_addr": "nowhere"}, "proxy.config.envoy_prometheus_bind_addr"),
    ({"bind_address": ["x"]}, "proxy.config.bind_address"),
    ({"bind_address": "proxy.example"}, "proxy.config.bind_address"),
])
def test_hostile_proxy_config_names_the_sidecar_and_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(SnapshotError) as err:
        World().build(sidecar(config=config))
    assert "web-sidecar-proxy" in str(err.value) and field in str(err.value)


@pytest.mark.parametrize(("config", "field"), [
    ({"connect_timeout_ms": "5s"}, "upstreams[0].config.connect_timeout_ms"),
    ({"limits": "many"}, "upstreams[0].config.limits"),
    ({"limits": {"max_connections": 10**12}}, "upstreams[0].config.limits.max_connections"),
    ({"passive_health_check": {"interval": "soon"}}, "upstreams[0].config.passive_health_check.interval"),
    ({"passive_health_check": {"interval": "1000h"}}, "upstreams[0].config.passive_health_check.interval"),
    ({"num_retries": 1000}, "upstreams[0].config.num_retries"),
    ({"retry_on_status_codes": [200, "x"]}, "upstreams[0].config.retry_on_status_codes[1]"),
    ({"retry_on_status_codes": list(range(100, 300))}, "upstreams[0].config.retry_on_status_codes"),
    ({"retry_on_connect_failure": "yes"}, "upstreams[0].config.retry_on_connect_failure"),
    ({"load_balancer": {"policy": "fastest"}}, "upstreams[0].config.load_balancer.policy"),
    ({"load_balancer": {"hash_policies": [{}]}}, "upstreams[0].config.load_balancer.hash_policies[0]"),
    ({"load_balancer": {"hash_policies": [{"field": "header"}]}},
     "upstreams[0].config.load_balancer.hash_policies[0].field_value"),
    ({"request_timeout_ms": float("nan")}, "upstreams[0].config.request_timeout_ms"),
])
def test_hostile_upstream_config_names_the_sidecar_and_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(SnapshotError) as err:
        World().build(sidecar([up("db", Config=config)]))
    assert "web-sidecar-proxy" in str(err.value) and field in str(err.value)


def test_hostile_entries_and_listeners_are_errors_too() -> None:
    w = World()
    w.entry({"Kind": "service-defaults", "Name": "web", "LocalConnectTimeoutMs": "fast"})
    with pytest.raises(SnapshotError, match="service-defaults web LocalConnectTimeoutMs"):
        w.build(sidecar())
    with pytest.raises(SnapshotError, match="already a listener"):
        World().build(sidecar([up("db", 9191), up("api", 9191)]))
    with pytest.raises(SnapshotError, match=r"upstreams\[0\].local_bind_address: 'db.local' is not an IP"):
        World().build(sidecar([up("db", LocalBindAddress="db.local")]))
    snap = World().build(sidecar(LocalServiceAddress="localhost"))
    assert snap.local_service_address == "127.0.0.1"
    with pytest.raises(SnapshotError, match="only service upstreams"):
        World().build(sidecar([up("db", DestinationType="prepared_query")]))


def test_forged_rows_never_make_a_snapshot_the_workers_would_refuse() -> None:
    w = World()
    # Forged rows (the FSM checks structure only): a source name longer than a snapshot string may be (no
    # SPIFFE ID can carry it, so it can never match), a node name as long.
    w.entry({"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "s" * 5000, "Action": "allow"},
                                                                     {"Name": "api", "Action": "deny"}]})
    w.instance("n" * 5000, "127.0.17.11", "db1-sidecar-proxy", "db", 21000)
    snap = w.build(sidecar([up("db")]))
    assert [r.source for r in snap.intentions.rules] == ["api"]
    assert len(snap.upstreams[0].endpoints[0].node) == 4096
    assert ProxySnapshot.from_wire(snap.to_wire()) == snap


def test_no_trust_domain_is_an_error_and_same_config_ignores_the_version() -> None:
    w = World()
    a = w.build(sidecar(), version=1)
    assert same_config(a, w.build(sidecar(), version=2))
    assert not same_config(a, w.build(sidecar(config={"workers": 2})))
    assert not same_config(None, a)
    with pytest.raises(SnapshotError, match="not initialized"):
        build_snapshot(sidecar(), None, Catalog(), LEAF, IntentionIndex(()), True, datacenter=DC,
                       bind_address="127.0.17.1")
