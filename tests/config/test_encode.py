"""Durations and the CamelCase encoder: parse(encode(x)) == x."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.config.duration import format_duration, parse_duration
from meshagent.agent.config.encode import camel_case, check_to_api, service_to_api
from meshagent.agent.config.loader import parse_check, parse_service
from meshagent.agent.config.types import Source


@pytest.mark.parametrize("text,seconds", [
    ("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("72h", 259200), ("1h2m3s", 3723), ("1.5s", 1.5),
    (".5s", 0.5), ("100us", 1e-4), ("100µs", 1e-4), ("7ns", 7e-9), ("0", 0), ("-1s", -1), ("+2m", 120), (0, 0),
])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad,hint", [
    ("10q", 'invalid duration "10q"'), ("", "invalid duration"), ("s", "invalid duration"),
    ("1x2s", "invalid duration"), ("10", 'missing unit, e.g. "10s"'), (10, "needs a unit"), (True, "invalid"),
    (None, "invalid"), ("1s ms", "invalid duration"), (["1s"], "invalid"),
])
def test_bad_durations_say_what_is_wrong(bad: Any, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_duration(bad)


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("snake,camel", [
    ("local_bind_port", "LocalBindPort"), ("check_id", "CheckID"), ("tls_skip_verify", "TLSSkipVerify"),
    ("destination_name", "DestinationName"), ("id", "ID"), ("ttl", "TTL"),
])
def test_camel_case(snake: str, camel: str) -> None:
    assert camel_case(snake) == camel


def test_register_body_shape() -> None:
    svc = parse_service({"name": "web", "port": 80, "tags": ["a"], "kind": "connect-proxy", "proxy": {
        "destination_service_name": "api", "upstreams": [{"destination_name": "db", "local_bind_port": 9191}]},
        "check": {"http": "http://x/", "interval": "10s"}}, Source())
    body = service_to_api(svc)
    assert body["Name"] == "web" and body["ID"] == "web" and body["Port"] == 80 and body["Tags"] == ["a"]
    assert body["Weights"] == {"Passing": 1, "Warning": 1}
    # The proxy block is kept in Consul's API form (agent/connect/sidecar.py proxy_from).
    assert body["Proxy"] == {"DestinationServiceName": "api", "MeshGateway": {}, "Expose": {}, "Upstreams": [
        {"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191, "MeshGateway": {}}]}
    assert body["Checks"] == [{
        "CheckID": "service:web", "Name": "Service 'web' check", "ServiceID": "web", "Status": "critical",
        "Interval": "10s", "Timeout": "10s", "HTTP": "http://x/", "Method": "GET", "Header": {}, "Body": "",
        "TLSSkipVerify": False, "TLSServerName": "", "DisableRedirects": False}]


def test_check_round_trips() -> None:
    check = parse_check({"Name": "mem", "ServiceID": "web", "Args": ["/bin/x"], "Interval": "1500ms",
                         "DeregisterCriticalServiceAfter": "2h", "FailuresBeforeCritical": 2}, Source())
    assert parse_check(check_to_api(check), Source()) == check


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
meta_keys = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,12}", fullmatch=True).filter(
    lambda k: not k.startswith("consul-"))
durations = st.sampled_from(["1s", "2500ms", "1m30s", "10m", "72h"])
checks = st.one_of(
    st.fixed_dictionaries({"ttl": durations}, optional={"status": st.sampled_from(["passing", "warning"]),
                                                        "notes": names}),
    st.fixed_dictionaries({"tcp": st.just("127.0.0.1:1"), "interval": durations},
                          optional={"timeout": durations, "failures_before_critical": st.integers(0, 5),
                                    "success_before_passing": st.integers(0, 5)}),
    st.fixed_dictionaries({"http": st.just("http://127.0.0.1/"), "interval": durations},
                          optional={"method": st.sampled_from(["GET", "POST"]), "body": names,
                                    "header": st.dictionaries(meta_keys, st.lists(names, max_size=2), max_size=2),
                                    "tls_skip_verify": st.booleans(), "disable_redirects": st.booleans(),
                                    "deregister_critical_service_after": durations}),
    st.fixed_dictionaries({"args": st.lists(names, min_size=1, max_size=3), "interval": durations}),
)
services = st.fixed_dictionaries(
    {"name": names},
    optional={
        "id": names, "tags": st.lists(names, max_size=4), "address": st.sampled_from(["", "10.0.0.1"]),
        "port": st.integers(0, 65535), "meta": st.dictionaries(meta_keys, names, max_size=5),
        "weights": st.fixed_dictionaries({"passing": st.integers(1, 100), "warning": st.integers(1, 100)}),
        "enable_tag_override": st.booleans(), "checks": st.lists(checks, max_size=3),
        "tagged_addresses": st.dictionaries(st.sampled_from(["lan", "wan"]), st.fixed_dictionaries(
            {"address": st.just("10.0.0.2"), "port": st.integers(1, 65535)}), max_size=2),
        "connect": st.fixed_dictionaries({"native": st.booleans()}),
        "proxy": st.fixed_dictionaries({"upstreams": st.lists(
            st.fixed_dictionaries({"destination_name": names, "local_bind_port": st.integers(1, 65535)}),
            max_size=2)}),
    })


@pytest.mark.slow  # hypothesis, 2-6 s: out of `make test-fast`
@given(services)
def test_service_round_trips_through_the_api_shape(body: dict[str, Any]) -> None:
    svc = parse_service(body, Source())
    assert len(svc.checks) == len(body.get("checks", []))
    again = parse_service(service_to_api(svc), Source())
    assert again == svc
