"""ProxyMetrics: counts, the wire map, merging across workers, and Prometheus text that prometheus_client parses."""

from __future__ import annotations

import math

import msgpack
import pytest
from meshagent.proxy.metrics import BUCKETS, ProxyMetrics, counters_only, merge, render_prometheus
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_requests_and_histogram_parse_with_the_counts_made() -> None:
    m = ProxyMetrics("web", "dc1")
    for _ in range(100):
        m.request("outbound", "db", 200, 0.003)
    for _ in range(7):
        m.request("outbound", "db", 503, 0.0004)
    m.request("inbound", "", 404, 20.0)  # beyond the last bucket: +Inf only
    s = samples(render_prometheus(m.to_wire()))
    base = {"source": "web", "destination": "db", "datacenter": "dc1", "direction": "outbound"}
    assert s[("meshagent_proxy_requests_total", lab(**base, code_class="2xx"))] == 100
    assert s[("meshagent_proxy_requests_total", lab(**base, code_class="5xx"))] == 7
    inbound = {**base, "destination": "web", "direction": "inbound"}
    assert s[("meshagent_proxy_requests_total", lab(**inbound, code_class="4xx"))] == 1
    h = "meshagent_proxy_request_duration_seconds"
    assert s[(h + "_count", lab(**base))] == 107
    assert s[(h + "_bucket", lab(**base, le="0.0005"))] == 7
    assert s[(h + "_bucket", lab(**base, le="0.0025"))] == 7
    assert s[(h + "_bucket", lab(**base, le="0.005"))] == 107
    assert s[(h + "_bucket", lab(**base, le="+Inf"))] == 107
    assert math.isclose(s[(h + "_sum", lab(**base))], 100 * 0.003 + 7 * 0.0004)
    assert s[(h + "_bucket", lab(**inbound, le="10.0"))] == 0
    assert s[(h + "_bucket", lab(**inbound, le="+Inf"))] == 1


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket() -> None:
    m = ProxyMetrics("web", "dc1")
    for b in BUCKETS:
        m.request("inbound", "", 200, b)
    s = samples(render_prometheus(m.to_wire()))
    base = {"source": "web", "destination": "web", "datacenter": "dc1", "direction": "inbound"}
    for i, b in enumerate(BUCKETS):
        assert s[("meshagent_proxy_request_duration_seconds_bucket", lab(**base, le=repr(b)))] == i + 1


def test_every_other_metric_renders_with_its_labels() -> None:
    m = ProxyMetrics("web", "dc1")
    m.connection_opened("inbound", "")
    m.connection_opened("inbound", "")
    m.connection_closed("inbound", "")
    m.bytes("outbound", "db", 10, 20)
    m.tls_failure("inbound", "no-client-cert")
    m.denial("", "l4")
    m.denial("web => db", "l7")
    m.retry("db")
    m.retry_overflow("db")
    m.breaker_trip("db", "max_concurrent_requests")
    m.ejection("db")
    m.endpoints("db", 2, 1)
    s = samples(render_prometheus(m.to_wire()))
    p = "meshagent_proxy_"
    inbound = {"source": "web", "destination": "web", "datacenter": "dc1", "direction": "inbound"}
    db = {"source": "web", "destination": "db", "datacenter": "dc1"}
    assert s[(p + "connections_active", lab(**inbound))] == 1
    assert s[(p + "connections_total", lab(**inbound))] == 2
    assert s[(p + "bytes_received_total", lab(**db, direction="outbound"))] == 10
    assert s[(p + "bytes_sent_total", lab(**db, direction="outbound"))] == 20
    assert s[(p + "tls_handshake_failures_total", lab(**inbound, reason="no-client-cert"))] == 1
    own = {"source": "web", "destination": "web", "datacenter": "dc1"}
    assert s[(p + "authorization_denials_total", lab(**own, intention="default", layer="l4"))] == 1
    assert s[(p + "authorization_denials_total", lab(**own, intention="web => db", layer="l7"))] == 1
    assert s[(p + "retries_total", lab(**db))] == 1
    assert s[(p + "retry_budget_overflows_total", lab(**db))] == 1
    assert s[(p + "circuit_breaker_trips_total", lab(**db, limit="max_concurrent_requests"))] == 1
    assert s[(p + "ejections_total", lab(**db))] == 1
    assert s[(p + "endpoints", lab(**db, state="healthy"))] == 2
    assert s[(p + "endpoints", lab(**db, state="ejected"))] == 1


def test_an_empty_proxy_lists_every_metric_and_parses() -> None:
    text = render_prometheus(ProxyMetrics("web", "dc1").to_wire())
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "meshagent_proxy_requests" in names and "meshagent_proxy_endpoints" in names
    assert text.count("# TYPE ") == 13


@pytest.mark.parametrize("hostile", ['a"b', "a\nb", "a\\b", 'x\\"\n}{', "é ☃"])
def test_hostile_label_values_are_escaped(hostile: str) -> None:
    m = ProxyMetrics(hostile, "dc1")
    m.request("outbound", hostile, 200, 0.01)
    m.denial(hostile, "l7")
    text = render_prometheus(m.to_wire())
    assert all(line.startswith("#") or line.startswith("meshagent_proxy_") for line in text.splitlines())
    s = samples(text)
    key = lab(source=hostile, destination=hostile, datacenter="dc1", direction="outbound", code_class="2xx")
    assert s[("meshagent_proxy_requests_total", key)] == 1
    assert s[("meshagent_proxy_authorization_denials_total",
              lab(source=hostile, destination=hostile, datacenter="dc1", intention=hostile, layer="l7"))] == 1


def test_merge_sums_workers_and_survives_msgpack() -> None:
    a, b = ProxyMetrics("web", "dc1"), ProxyMetrics("web", "dc1")
    for _ in range(3):
        a.request("outbound", "db", 200, 0.002)
    for _ in range(5):
        b.request("outbound", "db", 200, 0.2)
    a.connection_opened("outbound", "db")
    b.connection_opened("outbound", "db")
    a.endpoints("db", 3, 0)
    b.endpoints("db", 2, 1)
    wires = [msgpack.unpackb(msgpack.packb(w.to_wire())) for w in (a, b)]
    s = samples(render_prometheus(merge(wires)))
    db = {"source": "web", "destination": "db", "datacenter": "dc1"}
    out = {**db, "direction": "outbound"}
    assert s[("meshagent_proxy_requests_total", lab(**out, code_class="2xx"))] == 8
    assert s[("meshagent_proxy_request_duration_seconds_count", lab(**out))] == 8
    assert s[("meshagent_proxy_request_duration_seconds_bucket", lab(**out, le="0.0025"))] == 3
    assert s[("meshagent_proxy_request_duration_seconds_bucket", lab(**out, le="0.25"))] == 8
    assert s[("meshagent_proxy_connections_active", lab(**out))] == 2
    # Every worker sees the same endpoints: the gauge is the max of their views, not a sum.
    assert s[("meshagent_proxy_endpoints", lab(**db, state="healthy"))] == 3
    assert s[("meshagent_proxy_endpoints", lab(**db, state="ejected"))] == 1
    dead = counters_only(a.to_wire())
    s2 = samples(render_prometheus(merge([dead, b.to_wire()])))
    assert s2[("meshagent_proxy_requests_total", lab(**out, code_class="2xx"))] == 8
    assert s2[("meshagent_proxy_connections_active", lab(**out))] == 1


def test_merge_of_several_proxies_keeps_them_apart() -> None:
    web, api = ProxyMetrics("web", "dc1"), ProxyMetrics("api", "dc1")
    web.request("outbound", "db", 200, 0.01)
    api.request("outbound", "db", 200, 0.01)
    s = samples(render_prometheus(merge([web.to_wire(), api.to_wire()])))
    for src in ("web", "api"):
        key = lab(source=src, destination="db", datacenter="dc1", direction="outbound", code_class="2xx")
        assert s[("meshagent_proxy_requests_total", key)] == 1


@pytest.mark.parametrize("junk", [
    None, 5, "x", [], {"counter": 5}, {"counter": {"requests_total": "x"}},
    {"counter": {"requests_total": [[["a"], 1]]}},  # wrong label count
    {"counter": {"requests_total": [[["a", "b", "c", "d", "e"], "1"]]}},  # not a number
    {"counter": {"requests_total": [[["a", "b", "c", "d", "e"], float("nan")]]}},
    {"counter": {"requests_total": [[["a", "b", "c", "d", 5], 1]]}},  # a label not a string
    {"counter": {"no_such_metric": [[["a", "b", "c"], 1]]}},
    {"gauge": {"requests_total": [[["a", "b", "c", "d", "e"], 1]]}},  # a counter sent as a gauge
    {"histogram": {"request_duration_seconds": [[["a", "b", "c", "d"], [1, 2]]]}},  # wrong bucket count
    {"counter": {"requests_total": [[["a", "b", "c", "d", "x" * 5000], 1]]}},  # label too long
])
def test_merge_and_render_skip_malformed_input(junk: object) -> None:
    good = ProxyMetrics("web", "dc1")
    good.request("inbound", "", 200, 0.001)
    s = samples(render_prometheus(merge([junk, good.to_wire()])))  # type: ignore[list-item]
    assert len([k for k in s if k[0] == "meshagent_proxy_requests_total"]) == 1


def test_the_hot_path_is_cheap() -> None:
    """A loose bound (a loaded 2-core machine): 100k requests well under a second."""
    import time
    m = ProxyMetrics("web", "dc1")
    t0 = time.perf_counter()
    for _ in range(100_000):
        m.request("outbound", "db", 200, 0.003)
    assert time.perf_counter() - t0 < 1.0
