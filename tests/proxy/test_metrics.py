"""ProxyMetrics: counts, the wire map, merging across workers, and Prometheus text that prometheus_client parses."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from meshagent.proxy import access_log
from meshagent.proxy.metrics import BUCKETS, ProxyMetrics, counters_only, merge, render_prometheus
from meshagent.proxy.metrics_http import ReactorMetricsServer
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import AccessLog
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
    assert text.count("# TYPE ") == 14  # issue 17 added target_requests_total


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


# ---------------------------------------------------------------------- access logs


@pytest.fixture
def fresh_loggers() -> Iterator[None]:
    access_log.close_all()
    yield
    access_log.close_all()


def opened(cfg: AccessLog) -> access_log.AccessLogger:
    """What the worker does when it applies a snapshot, then the handlers' lookup."""
    assert access_log.configure(cfg) == []
    logger = access_log.logger_for(cfg)
    assert logger is not None
    return logger


def test_access_log_is_off_unless_enabled(fresh_loggers: None, tmp_path: Path) -> None:
    assert access_log.configure(AccessLog()) == [] and access_log.logger_for(AccessLog()) is None
    off = AccessLog(enabled=False, path=str(tmp_path / "x"))
    assert access_log.configure(off) == [] and access_log.logger_for(off) is None
    assert not (tmp_path / "x").exists()


def test_access_log_writes_json_lines_on_flush_only(fresh_loggers: None, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    cfg = AccessLog(enabled=True, path=str(path))
    logger = opened(cfg)
    assert access_log.logger_for(cfg) is logger
    hostile = '/a"b\nc\\d\u2603' + "x" * 10_000
    logger.log(start=1_700_000_000.25, duration_s=0.0123, source="web", destination="db", method="GET",
               path="/", code=200, bytes_received=10, bytes_sent=20, upstream_host="127.0.0.1:21000",
               flags="", direction="outbound")
    logger.log(start=1_700_000_001.0, duration_s=1.0, source="web", destination="db", method="GET" * 50,
               path=hostile, code=503, flags="UF")
    assert path.read_text() == ""  # nothing on the request path
    access_log.flush_all()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(len(line) <= access_log.MAX_LINE for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert first["start_time"] == "2023-11-14T22:13:20.250Z" and first["duration_ms"] == 12.3
    assert (first["source"], first["destination"], first["code"], first["bytes_sent"]) == ("web", "db", 200, 20)
    assert first["upstream_host"] == "127.0.0.1:21000" and first["direction"] == "outbound"
    assert second["path"].startswith('/a"b\nc\\d\u2603') and len(second["path"]) <= access_log.MAX_FIELD
    assert second["flags"] == "UF" and len(second["method"]) <= 32


def test_access_log_buffer_is_bounded(fresh_loggers: None, tmp_path: Path) -> None:
    logger = opened(AccessLog(enabled=True, path=str(tmp_path / "a.log")))
    n = 0
    while logger.dropped == 0:
        logger.log(start=0.0, duration_s=0.0, source="web", destination="db", path="/" + "p" * 1000)
        n += 1
        assert n < 100_000
    access_log.flush_all()  # one flush writes a bounded amount: a slow disk costs the worker little
    assert (tmp_path / "a.log").stat().st_size <= access_log.FLUSH_MAX
    for _ in range(access_log.MAX_BUFFER // access_log.FLUSH_MAX + 1):
        access_log.flush_all()
    assert logger.written == n - 1 and (tmp_path / "a.log").stat().st_size <= access_log.MAX_BUFFER


def test_an_unopenable_access_log_is_off_and_not_retried_per_request(fresh_loggers: None, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = AccessLog(enabled=True, path=str(tmp_path / "missing-dir" / "a.log"))
    errors = access_log.configure(cfg)
    assert len(errors) == 1 and "cannot be opened" in errors[0] and "missing-dir" in errors[0]
    assert access_log.logger_for(cfg) is None
    assert access_log.logger_for(cfg) is None
    assert len([r for r in caplog.records if "cannot be opened" in r.message]) == 1


# ---------------------------------------------------------------------- the reactor /metrics responder


def test_reactor_metrics_server_answers_and_refuses_oversized_heads() -> None:
    reactor = Reactor()
    m = ProxyMetrics("web", "dc1")
    m.request("inbound", "", 200, 0.01)
    server = ReactorMetricsServer(reactor, "127.0.16.3:0", lambda: render_prometheus(m.to_wire()))
    thread = threading.Thread(target=reactor.run, daemon=True)
    thread.start()
    try:
        host, port = server.address

        def ask(data: bytes) -> bytes:
            with socket.create_connection((host, port), timeout=10) as sock:
                try:
                    sock.sendall(data)
                except OSError:
                    pass
                out = b""
                try:
                    while chunk := sock.recv(65536):
                        out += chunk
                except ConnectionResetError:
                    pass
                return out

        ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
        assert samples(body.decode())[("meshagent_proxy_requests_total",
                                        lab(source="web", destination="web", datacenter="dc1",
                                            direction="inbound", code_class="2xx"))] == 1
        assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert ask(b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert ask(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert ask(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000) == b""  # no head within 8 KiB: closed
        assert ask(b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
    finally:
        reactor.call_soon_threadsafe(server.close)
        reactor.stop()
        thread.join(5)
        reactor.close()
