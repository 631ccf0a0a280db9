"""Error messages name file, line and field for HCL and JSON; broken files never raise a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshagent.agent.config.errors import ConfigError
from meshagent.agent.config.loader import ConfigErrors, load_config, validate_paths
from meshagent.agent.config.syntax import SyntaxProblem, load_hcl, load_json


def messages(path: Path, text: str) -> list[str]:
    path.write_text(text)
    errors, _ = validate_paths([str(path)])
    return [str(e) for e in errors]


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_config_error_str() -> None:
    assert str(ConfigError("/etc/meshagent.d/web.hcl", 7, "service.check.interval", 'invalid duration "10q"')) \
        == '/etc/meshagent.d/web.hcl:7: service.check.interval: invalid duration "10q"'
    assert str(ConfigError("a.json", None, "", "cannot read")) == "a.json: cannot read"
    errors = ConfigErrors([ConfigError("a", 1, "x", "y"), ConfigError("b", None, "z", "w")])
    assert str(errors) == "a:1: x: y\nb: z: w" and len(errors.errors) == 2


def test_hcl_lines_point_at_the_key(tmp_path: Path) -> None:
    path = tmp_path / "web.hcl"
    found = messages(path, '''service {
  name = "web"
  port = 80
  meta = {
    ok      = "1"
    "bad key" = "2"
  }
  check {
    http     = "http://127.0.0.1/"
    interval = "10q"
  }
}
services = [
  { name = "a" },
  {
    name  = "b"
    check = {
      tcp = "127.0.0.1:1"
    }
    weights = {
      passing = 0
    }
  }
]
''')
    assert found == [
        f"{path}:6: service.meta.bad key: key must be 1-128 characters of [A-Za-z0-9_-]",
        f'{path}:10: service.check.interval: invalid duration "10q" (use a duration such as 10s, 1m30s, '
        '500ms or 72h)',
        f"{path}:17: services[1].check.interval: is required for tcp checks",
        f"{path}:21: services[1].weights.passing: must be at least 1, got 0",
    ]


def test_json_lines_point_at_the_key(tmp_path: Path) -> None:
    path = tmp_path / "db.json"
    body = {"services": [
        {"name": "a", "port": 1, "check": {"ttl": "5s"}},
        {"name": "b", "port": "abc", "check": {"tcp": "x:1", "interval": "1x"}},
    ], "nonsense": True}
    text = json.dumps(body, indent=2)
    found = messages(path, text)
    port_line = line_of(text, '"abc"')
    assert found == [
        f"{path}:{port_line}: services[1].port: must be a whole number, got 'abc'",
        f'{path}:{line_of(text, "1x")}: services[1].check.interval: invalid duration "1x" (use a duration '
        'such as 10s, 1m30s, 500ms or 72h)',
        f"{path}:{line_of(text, 'nonsense')}: nonsense: unknown configuration key",
    ]


def test_json_key_search_skips_nested_objects(tmp_path: Path) -> None:
    text = '{\n  "service": {\n    "check": {"ttl": "1s", "port": 1},\n    "name": "x",\n    "port": "p"\n  }\n}\n'
    assert messages(tmp_path / "a.json", text) == [
        f"{tmp_path}/a.json:3: service.check.port: unknown field",
        f"{tmp_path}/a.json:5: service.port: must be a whole number, got 'p'"]


@pytest.mark.parametrize("text,line,reason", [
    ('service {\n  name = \n}\n', 2, "invalid HCL: unexpected"),
    ('service {\n  name = "x"\n', 3, "invalid HCL: unexpected end of file"),
    ('a = 1\nb = 2\na = 3\n', 3, "invalid HCL: a already defined"),
    ('x = "abc\n', 1, "invalid HCL"),
    ('dns_config {\n  service_ttl { "*" = "5s" }\n}\n', 2, 'quoted keys need a map'),
    ("@@@\n", 1, "invalid HCL"),
])
def test_broken_hcl(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "broken.hcl"
    found = messages(path, text)
    assert len(found) == 1 and found[0].startswith(f"{path}:{line}: invalid HCL") and reason in found[0], found
    with pytest.raises(ConfigErrors) as info:
        load_config([str(path)], [], {})
    assert str(info.value) == found[0]


@pytest.mark.parametrize("text,line", [
    ('{\n  "service": {\n    "name": "x",\n  }\n}\n', 4),
    ('{\n  "a": 1\n  "b": 2\n}', 3),
    ('{"a": [1, 2}', 1),
])
def test_broken_json(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "broken.json"
    found = messages(path, text)
    assert len(found) == 1 and found[0].startswith(f"{path}:{line}: invalid JSON:"), found


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00")
    errors, _ = validate_paths([str(path)])
    assert len(errors) == 1 and errors[0].reason.startswith("cannot read")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet='{}[]="\n ,:abc123*#./-$', max_size=60))
def test_fuzzed_text_never_escapes_as_a_traceback(text: str) -> None:
    for load in (load_hcl, load_json):
        try:
            load(text)
        except SyntaxProblem as exc:
            assert exc.reason and (exc.line is None or exc.line >= 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "port", "check", "checks", "ttl", "tcp", "interval", "meta", "weights",
                         "connect", "sidecar_service", "native", "Name", "ID", "x"]), inner, max_size=4),
    max_leaves=12)


@pytest.mark.slow  # 300 examples through the loader, ~2 s: out of `make test-fast`
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["service", "services", "check", "ports", "dns_config", "node_meta",
                                        "datacenter", "recursors"]), json_values, max_size=3))
def test_fuzzed_structures_give_errors_not_exceptions(tmp_path: Path, data: dict[str, object]) -> None:
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(data))
    errors, _ = validate_paths([str(path)])
    assert all(isinstance(e, ConfigError) and e.path == str(path) for e in errors)
