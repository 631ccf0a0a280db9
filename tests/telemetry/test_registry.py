"""The metrics registry and its two renderings: Consul's JSON shape and Prometheus text that
prometheus_client's reference parser reads (names, labels with hostile values, summaries, kind clashes)."""

from __future__ import annotations

import math

import pytest
from meshagent.agent.telemetry.registry import MAX_SERIES, Counter, Gauge, Registry, Summary
from meshagent.agent.telemetry.render import Retention, metrics_json, metrics_prometheus, prometheus_name
from prometheus_client.parser import text_string_to_metric_families


def families(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Parsed text: family name -> {(sample name, sorted labels): value}."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_gauges_and_summaries_by_name_and_labels() -> None:
    reg = Registry()
    c = reg.counter("raft.apply")
    c.value += 2
    c.add(3)
    assert reg.counter("raft.apply") is c  # registered once, found again by name
    g = reg.gauge("memberlist.health.score", read=lambda: 4)
    s = reg.summary("http.GET.v1.kv._")
    for v in (1.0, 2.0, 3.0, 6.0):
        s.observe(v)
    get = reg.summary("api.http", labels={"method": "GET", "path": "v1.kv._"})
    put = reg.summary("api.http", labels={"path": "v1.kv._", "method": "PUT"})
    assert get is not put and reg.summary("api.http", labels={"path": "v1.kv._", "method": "GET"}) is get
    points = {(p.name, p.labels): p.metric for p in reg.points()}
    assert points[("raft.apply", ())].value == 5  # type: ignore[union-attr]
    assert g.current() == 4.0
    assert (s.count, s.sum, s.min, s.max) == (4, 12.0, 1.0, 6.0)
    assert s.stddev() == pytest.approx(math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3))
    with pytest.raises(ValueError, match="is a counter, not a gauge"):
        reg.gauge("raft.apply")


def test_labelled_series_are_bounded() -> None:
    reg = Registry()
    for i in range(MAX_SERIES + 5):
        reg.counter("hits", labels={"path": str(i)}).value += 1
    assert len(reg.families["hits"].members) == MAX_SERIES
    assert reg.families["hits"].dropped == 5
    assert isinstance(reg.counter("hits", labels={"path": "new"}), Counter)  # still usable, counted nowhere


def test_objects_kept_by_their_owner_and_scrape_time_collectors() -> None:
    reg = Registry()
    owned = Summary()
    reg.add("raft.commitTime", owned)
    owned.observe(2.5)
    reg.collect(lambda: [("counter", "dns.queries", 7), ("gauge", "client.stale_seconds", 1.5)])
    points = {p.name: p for p in reg.points()}
    assert points["raft.commitTime"].metric is owned
    assert isinstance(points["dns.queries"].metric, Counter) and points["dns.queries"].metric.value == 7
    assert isinstance(points["client.stale_seconds"].metric, Gauge)


def test_json_is_consuls_shape() -> None:
    reg = Registry()
    reg.counter("dns.stale_queries").value = 3
    reg.gauge("serf.members").set(2)
    timer = reg.summary("raft.commitTime")
    timer.observe(4.0)
    timer.observe(6.0)
    reg.summary("raft.leader.lastContact")  # never observed: zeros, not inf
    body = metrics_json(reg.points(), "meshagent", "2026-12-05 10:00:00 +0000 UTC", hostname="h1")
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    assert body["Gauges"] == [{"Name": "meshagent.h1.serf.members", "Value": 2.0, "Labels": {}}]
    assert body["Counters"][0]["Name"] == "meshagent.dns.stale_queries" and body["Counters"][0]["Count"] == 3
    commit, contact = sorted(body["Samples"], key=lambda s: s["Name"])
    assert commit == {"Name": "meshagent.raft.commitTime", "Count": 2, "Rate": 0.0, "Sum": 10.0, "Min": 4.0,
                      "Max": 6.0, "Mean": 5.0, "Stddev": pytest.approx(math.sqrt(2)), "Labels": {}}
    assert (contact["Count"], contact["Min"], contact["Max"], contact["Mean"]) == (0, 0.0, 0.0, 0.0)


def test_prometheus_text_parses_clean_with_hostile_names_and_labels() -> None:
    reg = Registry()
    reg.counter("raft.apply").value = 9
    reg.gauge("memberlist.health.score").set(1)
    reg.summary("http.GET.v1.kv._").observe(3.0)
    hostile = 'a"b\\c\nd'
    reg.summary("api.http", labels={"method": "GET", "path": hostile}).observe(1.0)
    reg.counter("9-odd name/with:chars").value = 1
    text = metrics_prometheus(reg.points(), "meshagent")
    parsed = families(text)
    assert parsed["meshagent_raft_apply"][("meshagent_raft_apply_total", ())] == 9
    assert parsed["meshagent_memberlist_health_score"][("meshagent_memberlist_health_score", ())] == 1
    kv = parsed["meshagent_http_GET_v1_kv__"]
    assert kv[("meshagent_http_GET_v1_kv___count", ())] == 1 and kv[("meshagent_http_GET_v1_kv___sum", ())] == 3
    labels = (("method", "GET"), ("path", hostile))
    assert parsed["meshagent_api_http"][("meshagent_api_http_count", labels)] == 1  # the value round-trips
    assert "meshagent_9_odd_name_with_chars" in parsed
    assert prometheus_name("", "9x") == "_9x"


def test_names_that_sanitize_alike_share_one_family_and_a_kind_clash_keeps_the_first() -> None:
    reg = Registry()
    reg.counter("a.b").value = 1
    reg.counter("a_b", labels={"x": "1"}).value = 2
    reg.gauge("a-b").set(5)  # same Prometheus name as a counter family? no: counters end in _total
    reg.summary("a_b_total")  # would clash with the counter family's name: left out
    text = metrics_prometheus(reg.points(), "")
    parsed = families(text)  # no duplicate TYPE line: the parser would refuse it
    assert parsed["a_b"][("a_b_total", ())] == 1 and parsed["a_b"][("a_b_total", (("x", "1"),))] == 2
    assert text.count("# TYPE a_b_total ") == 1


def test_retention_leaves_out_idle_labelled_series_and_summaries_only() -> None:
    reg = Registry()
    plain = reg.counter("dns.queries")
    busy = reg.counter("hits", labels={"path": "busy"})
    reg.counter("hits", labels={"path": "idle"}).value = 1
    timer = reg.summary("raft.commitTime")
    keep = Retention(60.0)
    names = lambda now: {(p.name, p.labels) for p in keep.keep(reg.points(), now)}  # noqa: E731
    assert len(names(0.0)) == 4
    busy.value += 1
    timer.observe(1.0)
    assert len(names(50.0)) == 4
    busy.value += 1
    shown = names(100.0)  # idle unchanged since 0 (> 60 s); busy and the timer changed at 50
    assert ("hits", (("path", "idle"),)) not in shown
    assert {("dns.queries", ()), ("hits", (("path", "busy"),)), ("raft.commitTime", ())} == shown
    assert plain.value == 0  # unchanged plain counters stay whatever their age
    assert ("dns.queries", ()) in names(1000.0)
