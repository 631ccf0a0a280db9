"""Config loading: merge order, flags over files, validation messages with file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshagent.agent.config.encode import service_to_api
from meshagent.agent.config.loader import ConfigErrors, load_config, parse_duration, parse_service, validate_paths
from meshagent.agent.config.types import Source


def test_lexical_order_scalars_replace_lists_append_flags_win(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps({"datacenter": "dc-b", "recursors": ["10.0.0.2"],
                                                 "service": {"name": "b"}}))
    (tmp_path / "a.hcl").write_text('datacenter = "dc-a"\nrecursors = ["10.0.0.1"]\nservice {\n  name = "a"\n}\n')
    (tmp_path / "ignored.txt").write_text("not config")
    config = load_config([], [str(tmp_path)], {"datacenter": None})
    assert config.datacenter == "dc-b"  # b.json sorts after a.hcl
    assert config.recursors == ["10.0.0.1", "10.0.0.2"]
    assert [s.name for s in config.services] == ["a", "b"]
    assert load_config([], [str(tmp_path)], {"datacenter": "dc-flag"}).datacenter == "dc-flag"


def test_hcl_and_camel_json_give_the_same_service(tmp_path: Path) -> None:
    (tmp_path / "s.hcl").write_text('''service {
  name = "db"
  id   = "db-1"
  port = 5432
  tags = ["primary"]
  meta = { version = "v1" }
  weights { passing = 3  warning = 1 }
  check { tcp = "127.0.0.1:5432"  interval = "10s"  timeout = "2s" }
  connect { native = true }
}
''')
    from_hcl = load_config([str(tmp_path / "s.hcl")], [], {}).services[0]
    camel = {"Name": "db", "ID": "db-1", "Port": 5432, "Tags": ["primary"], "Meta": {"version": "v1"},
             "Weights": {"Passing": 3, "Warning": 1},
             "Check": {"TCP": "127.0.0.1:5432", "Interval": "10s", "Timeout": "2s"},
             "Connect": {"Native": True}}
    from_api = parse_service(camel, Source())
    for attr in ("name", "id", "port", "tags", "meta", "weights"):
        assert getattr(from_api, attr) == getattr(from_hcl, attr), attr
    assert [(c.id, c.tcp, c.interval, c.timeout) for c in from_api.checks] == \
        [(c.id, c.tcp, c.interval, c.timeout) for c in from_hcl.checks] == [("service:db-1", "127.0.0.1:5432", 10, 2)]
    assert from_hcl.connect == from_api.connect == {"native": True}


@pytest.mark.parametrize("body,field,reason", [
    ({"port": 1}, "service.name", "required"),
    ({"name": "x", "port": 70000}, "service.port", "0-65535"),
    ({"name": "x", "meta": {"bad key": "v"}}, "service.meta.bad key", "A-Za-z0-9"),
    ({"name": "x", "meta": {"consul-x": "v"}}, "service.meta.consul-x", "reserved"),
    ({"name": "x", "meta": {"k": "v" * 513}}, "service.meta.k", "512"),
    ({"name": "x", "meta": {f"k{i}": "v" for i in range(65)}}, "service.meta", "64"),
    ({"name": "x", "weights": {"passing": 0}}, "service.weights.passing", "at least 1"),
    ({"name": "x", "check": {"http": "http://x/"}}, "service.check.interval", "required"),
    ({"name": "x", "check": {"http": "http://x/", "tcp": "a:1", "interval": "1s"}}, "service.check", "exactly one"),
    ({"name": "x", "check": {"ttl": "10s", "status": "great"}}, "service.check.status", "one of"),
    ({"name": "x", "check": {"ttl": "10s", "failures_before_warning": 3, "failures_before_critical": 1}},
     "service.check.failures_before_warning", "exceeds failures_before_critical"),
    ({"name": "x", "connect": {"native": True, "sidecar_service": {}}}, "service.connect", "mutually exclusive"),
    ({"name": "x", "colour": "red"}, "service.colour", "unknown field"),
])
def test_each_rule_names_its_field(body: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_service(body, Source("<api>"))
    assert any(e.field == field and reason in e.reason for e in info.value.errors), info.value


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "web.hcl").write_text('service {\n  name = "web"\n  check {\n    http = "http://x/"\n'
                                      '    interval = "10q"\n  }\n}\n')
    (tmp_path / "db.json").write_text('{\n  "service": {\n    "name": "db",\n    "port": "abc"\n  }\n}\n')
    (tmp_path / "syntax.hcl").write_text('service {\n  name = \n}\n')
    (tmp_path / "syntax.json").write_text('{\n  "service": {\n    "name": "x",\n  }\n}\n')
    errors, _ = validate_paths([str(tmp_path)])
    text = sorted(str(e) for e in errors)
    assert f"{tmp_path}/db.json:4: service.port: must be a whole number, got 'abc'" in text
    assert any(t.startswith(f"{tmp_path}/web.hcl:5: service.check.interval: invalid duration") for t in text)
    assert any(t.startswith(f"{tmp_path}/syntax.hcl:2: invalid HCL") for t in text)
    assert any(t.startswith(f"{tmp_path}/syntax.json:4: invalid JSON") for t in text)
    with pytest.raises(ConfigErrors):
        load_config([], [str(tmp_path)], {})


def test_duplicate_ids_and_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "a.hcl").write_text('service {\n  name = "x"\n}\n')
    (tmp_path / "b.hcl").write_text('service {\n  name = "x"\n}\nbogus_key = 1\n')
    errors, _ = validate_paths([str(tmp_path)])
    assert any("duplicate service id 'x'" in e.reason for e in errors)
    assert any(e.field == "bogus_key" and "unknown" in e.reason for e in errors)


def test_durations() -> None:
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5 and parse_duration("72h") == 259200
    for bad in ("10q", "", "s", "1x2s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)


@pytest.mark.slow  # ~2 s of hypothesis examples: out of `make test-fast`
@given(names, st.lists(names, max_size=4), st.integers(0, 65535),
       st.dictionaries(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True).filter(
           lambda k: not k.startswith("consul-")), names, max_size=5),
       st.sampled_from([None, {"ttl": "30s"}, {"tcp": "127.0.0.1:1", "interval": "2s"}]))
def test_encode_round_trips(name: str, tags: list[str], port: int, meta: dict[str, str],
                            check: dict[str, str] | None) -> None:
    body: dict[str, object] = {"name": name, "tags": tags, "port": port, "meta": meta}
    if check:
        body["check"] = check
    svc = parse_service(body, Source())
    again = parse_service(service_to_api(svc), Source())
    assert again == svc
