"""Service and check schema: defaults, one parser for snake_case and CamelCase, every rule can fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from meshagent.agent.config.errors import Collector
from meshagent.agent.config.loader import ConfigErrors, load_config, parse_check, parse_service
from meshagent.agent.config.services import service_from
from meshagent.agent.config.types import Source
from meshagent.agent.config.values import snake_case


def errors_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_service(body, Source("<api>"))
    return [(e.field, e.reason) for e in info.value.errors]


def warnings_of(body: dict[str, Any]) -> list[str]:
    col = Collector("<api>")
    service_from(col, body, "service")
    assert col.errors == []
    return col.warnings


def test_defaults() -> None:
    svc = parse_service({"name": "web", "check": {"http": "http://127.0.0.1/", "interval": "10s"}}, Source())
    assert (svc.id, svc.port, svc.tags, svc.meta, svc.kind) == ("web", 0, [], {}, "")
    assert (svc.weights.passing, svc.weights.warning) == (1, 1)
    check = svc.checks[0]
    assert (check.id, check.name, check.service_id, check.status) == \
        ("service:web", "Service 'web' check", "web", "critical")
    assert (check.method, check.timeout, check.interval, check.type) == ("GET", 10.0, 10.0, "http")


def test_several_checks_get_numbered_ids_and_own_timeouts() -> None:
    svc = parse_service({"name": "db", "id": "db-1", "checks": [
        {"tcp": "127.0.0.1:5432", "interval": "5s"},
        {"args": ["/bin/check"], "interval": "30s"},
        {"ttl": "15s", "id": "mine"}]}, Source())
    assert [c.id for c in svc.checks] == ["service:db-1:1", "service:db-1:2", "mine"]
    assert [c.timeout for c in svc.checks] == [10.0, 30.0, None]
    assert [c.type for c in svc.checks] == ["tcp", "script", "ttl"]


def test_check_and_checks_together_in_hcl(tmp_path: Path) -> None:
    path = tmp_path / "s.hcl"
    path.write_text('''service {
  name = "web"
  check {
    tcp      = "127.0.0.1:80"
    interval = "5s"
  }
  check {
    ttl = "30s"
  }
  checks = [
    { http = "http://127.0.0.1/", interval = "10s" }
  ]
}
''')
    svc = load_config([str(path)], [], {}).services[0]
    assert [c.id for c in svc.checks] == ["service:web:1", "service:web:2", "service:web:3"]
    assert [c.source.line for c in svc.checks] == [3, 7, 11]


def test_failures_before_warning_defaults_to_critical() -> None:
    check = parse_check({"Name": "c", "TTL": "10s", "FailuresBeforeCritical": 3}, Source())
    assert (check.failures_before_warning, check.failures_before_critical) == (3, 3)
    check = parse_check({"Name": "c", "TTL": "10s", "FailuresBeforeWarning": 1, "FailuresBeforeCritical": 3},
                        Source())
    assert check.failures_before_warning == 1


def test_registered_check_defaults_its_id_to_its_name() -> None:
    check = parse_check({"Name": "mem", "ServiceID": "web", "TTL": "10s"}, Source())
    assert (check.id, check.name, check.service_id) == ("mem", "mem", "web")
    assert parse_check({"name": "x", "ttl": "1s"}, Source(), service_id="db").service_id == "db"


def test_clamps_warn() -> None:
    warnings = warnings_of({"name": "x", "checks": [
        {"tcp": "a:1", "interval": "200ms"},
        {"ttl": "10s", "deregister_critical_service_after": "30s"}]})
    assert warnings == ["<api>: service.checks[0].interval: 200ms is below the 1s minimum; using 1s",
                        "<api>: service.checks[1].deregister_critical_service_after: 30s is below the 1m "
                        "minimum; using 1m"]
    svc = parse_service({"name": "x", "check": {"tcp": "a:1", "interval": "200ms",
                                                "deregister_critical_service_after": "10s"}}, Source())
    assert (svc.checks[0].interval, svc.checks[0].deregister_critical_service_after) == (1.0, 60.0)


def test_sidecar_service_is_accepted_and_validated() -> None:
    # Issue 14: sidecar_service is registered (agent/connect/sidecar.py); the proxy block is kept in API form.
    assert parse_service({"name": "web", "connect": {"sidecar_service": {}}}, Source()).connect == {
        "sidecar_service": {}}
    svc = parse_service({"name": "web-proxy", "kind": "connect-proxy", "port": 21000, "proxy": {
        "destination_service_name": "web",
        "upstreams": [{"destination_name": "db", "local_bind_port": 9191}], "config": {"KeepMe": 1}}}, Source())
    assert svc.proxy["Upstreams"] == [{"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191,
                                       "MeshGateway": {}}]
    assert svc.proxy["Config"] == {"KeepMe": 1}  # opaque: keys untouched
    assert ("service.connect.sidecar_service.port", "99999 is not a port (0-65535)") in errors_of(
        {"name": "web", "connect": {"sidecar_service": {"port": 99999}}})
    assert any(f == "service.connect.sidecar_service.check.interval" for f, _ in errors_of(
        {"name": "web", "connect": {"sidecar_service": {"check": {"tcp": "a:1"}}}}))


CHECK = {"tcp": "a:1", "interval": "10s"}


@pytest.mark.parametrize("body,field,reason", [
    ({"name": ""}, "service.name", "required"),
    ({"name": 5}, "service.name", "a string"),
    ({"name": "x", "id": ["a"]}, "service.id", "a string"),
    ({"name": "x", "tags": "a,b"}, "service.tags", "list of strings"),
    ({"name": "x", "port": -1}, "service.port", "0-65535"),
    ({"name": "x", "port": "http"}, "service.port", "whole number"),
    ({"name": "x", "address": 1}, "service.address", "a string"),
    ({"name": "x", "meta": "a=b"}, "service.meta", "must be a map"),
    ({"name": "x", "meta": {"": "v"}}, "service.meta.", "A-Za-z0-9"),
    ({"name": "x", "meta": {"k" * 129: "v"}}, "service.meta." + "k" * 129, "1-128"),
    ({"name": "x", "meta": {"k": ["v"]}}, "service.meta.k", "must be a string"),
    ({"name": "x", "weights": {"warning": 0}}, "service.weights.warning", "at least 1"),
    ({"name": "x", "weights": {"passing": "many"}}, "service.weights.passing", "whole number"),
    ({"name": "x", "weights": {"critical": 1}}, "service.weights.critical", "unknown field"),
    ({"name": "x", "enable_tag_override": "sometimes"}, "service.enable_tag_override", "true or false"),
    ({"name": "x", "kind": "router"}, "service.kind", "must be one of"),
    ({"name": "x", "tagged_addresses": {"lan": "1.2.3.4"}}, "service.tagged_addresses.lan", "address and port"),
    ({"name": "x", "connect": {"native": True, "sidecar_service": {}}}, "service.connect", "mutually exclusive"),
    ({"name": "x", "connect": {"native": "maybe"}}, "service.connect.native", "true or false"),
    ({"name": "x", "connect": {"mode": 1}}, "service.connect.mode", "unknown field"),
    ({"name": "x", "connect": {"sidecar_service": {"connect": {"sidecar_service": {}}}}},
     "service.connect.sidecar_service.connect.sidecar_service", "own sidecar"),
    ({"name": "x", "Name": "y"}, "service.name", "given twice"),
    ({"name": "x", "check": {}}, "service.check", "exactly one"),
    ({"name": "x", "check": {"ttl": "1s", "tcp": "a:1", "interval": "1s"}}, "service.check", "exactly one"),
    ({"name": "x", "check": {"tcp": "a:1"}}, "service.check.interval", "required"),
    ({"name": "x", "check": {"tcp": "a:1", "interval": "0s"}}, "service.check.interval", "more than 0"),
    ({"name": "x", "check": {"tcp": "a:1", "interval": "-5s"}}, "service.check.interval", "negative"),
    ({"name": "x", "check": {"tcp": "a:1", "interval": "10q"}}, "service.check.interval", 'invalid duration "10q"'),
    ({"name": "x", "check": {"tcp": "a:1", "interval": 10}}, "service.check.interval", "needs a unit"),
    ({"name": "x", "check": {**CHECK, "timeout": "later"}}, "service.check.timeout", "invalid duration"),
    ({"name": "x", "check": {"ttl": "0s"}}, "service.check.ttl", "more than 0"),
    ({"name": "x", "check": {**CHECK, "status": "ok"}}, "service.check.status", "one of passing, warning"),
    ({"name": "x", "check": {**CHECK, "failures_before_critical": -1}}, "service.check.failures_before_critical",
     "negative"),
    ({"name": "x", "check": {**CHECK, "success_before_passing": "two"}}, "service.check.success_before_passing",
     "whole number"),
    ({"name": "x", "check": {"args": "/bin/true", "interval": "1s"}}, "service.check.args", "list of strings"),
    ({"name": "x", "check": {"http": "h", "interval": "1s", "header": {"A": [{}]}}}, "service.check.header.A",
     "strings"),
    ({"name": "x", "check": {**CHECK, "tls_skip_verify": "no way"}}, "service.check.tls_skip_verify",
     "true or false"),
    ({"name": "x", "check": {"grpc": "a:1", "interval": "1s"}}, "service.check.grpc", "not supported"),
    ({"name": "x", "check": {**CHECK, "colour": 1}}, "service.check.colour", "unknown field"),
    ({"name": "x", "check": "tcp"}, "service.check", "block/object"),
    ({"name": "x", "checks": [{"id": "a", "ttl": "1s"}, {"id": "a", "ttl": "2s"}]}, "service.checks",
     "duplicate check id"),
])
def test_each_rule_can_fail(body: dict[str, Any], field: str, reason: str) -> None:
    found = errors_of(body)
    assert any(f == field and reason in r for f, r in found), found


def test_all_errors_of_one_service_are_reported() -> None:
    found = errors_of({"port": 70000, "meta": {"consul-a": "b"}, "check": {"tcp": "a:1"}})
    assert [f for f, _ in found] == ["service.name", "service.port", "service.meta.consul-a",
                                     "service.check.interval"]


def test_camel_and_snake_case_are_the_same_service() -> None:
    snake = {
        "name": "web", "id": "web-1", "tags": ["v1"], "address": "10.0.0.1", "port": 8080,
        "meta": {"Version": "1"}, "weights": {"passing": 10, "warning": 2}, "enable_tag_override": True,
        "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 8080}},
        "kind": "connect-proxy", "proxy": {"local_service_port": 8080, "destination_service_name": "api"},
        "checks": [
            {"check_id": "h", "name": "web http", "notes": "n", "http": "http://10.0.0.1:8080/health",
             "method": "post", "header": {"X-A": ["1"]}, "body": "{}", "tls_skip_verify": True,
             "tls_server_name": "web", "disable_redirects": True, "interval": "5s", "timeout": "1s",
             "status": "passing", "success_before_passing": 2, "failures_before_warning": 1,
             "failures_before_critical": 3, "deregister_critical_service_after": "90m"},
            {"script_args": ["/bin/check", "-v"], "interval": "1m"},
            {"tcp": "10.0.0.1:8080", "interval": "10s"},
            {"ttl": "30s", "status": "warning"},
        ],
    }
    camel = {
        "Name": "web", "ID": "web-1", "Tags": ["v1"], "Address": "10.0.0.1", "Port": 8080,
        "Meta": {"Version": "1"}, "Weights": {"Passing": 10, "Warning": 2}, "EnableTagOverride": True,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 8080}},
        "Kind": "connect-proxy", "Proxy": {"LocalServicePort": 8080, "DestinationServiceName": "api"},
        "Checks": [
            {"CheckID": "h", "Name": "web http", "Notes": "n", "HTTP": "http://10.0.0.1:8080/health",
             "Method": "post", "Header": {"X-A": ["1"]}, "Body": "{}", "TLSSkipVerify": True,
             "TLSServerName": "web", "DisableRedirects": True, "Interval": "5s", "Timeout": "1s",
             "Status": "passing", "SuccessBeforePassing": 2, "FailuresBeforeWarning": 1,
             "FailuresBeforeCritical": 3, "DeregisterCriticalServiceAfter": "90m"},
            {"ScriptArgs": ["/bin/check", "-v"], "Interval": "1m"},
            {"TCP": "10.0.0.1:8080", "Interval": "10s"},
            {"TTL": "30s", "Status": "warning"},
        ],
    }
    a, b = parse_service(snake, Source()), parse_service(camel, Source())
    assert a == b
    assert a.meta == {"Version": "1"}  # user keys are not snake_cased
    assert a.checks[0].method == "POST" and a.checks[0].deregister_critical_service_after == 5400
    assert a.tagged_addresses == {"lan": {"address": "10.0.0.1", "port": 8080}}


def test_hcl_file_and_api_body_agree(tmp_path: Path) -> None:
    path = tmp_path / "web.hcl"
    path.write_text('''service {
  name = "web"
  port = 80
  meta = { Version = "1" }
  weights {
    passing = 5
    warning = 1
  }
  check {
    http     = "http://127.0.0.1/"
    interval = "10s"
    header   = { Accept = ["text/plain"] }
  }
}
''')
    from_file = load_config([str(path)], [], {}).services[0]
    from_api = parse_service({"Name": "web", "Port": 80, "Meta": {"Version": "1"},
                              "Weights": {"Passing": 5, "Warning": 1},
                              "Check": {"HTTP": "http://127.0.0.1/", "Interval": "10s",
                                        "Header": {"Accept": ["text/plain"]}}}, Source(str(path), 1))
    from_api.checks[0].source = from_file.checks[0].source
    assert from_api == from_file


@pytest.mark.parametrize("camel,snake", [
    ("EnableTagOverride", "enable_tag_override"), ("TLSSkipVerify", "tls_skip_verify"), ("ID", "id"),
    ("CheckID", "check_id"), ("DeregisterCriticalServiceAfter", "deregister_critical_service_after"),
    ("HTTP", "http"), ("TTL", "ttl"), ("ServiceID", "service_id"), ("SidecarService", "sidecar_service"),
    ("already_snake", "already_snake"),
])
def test_snake_case(camel: str, snake: str) -> None:
    assert snake_case(camel) == snake
