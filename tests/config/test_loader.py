"""Loading files: order, merge rules, flags over files, agent-level keys and rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.agent.config.loader import ConfigErrors, load_config, validate_paths

from tests.support.config_files import write


def test_two_files_scalars_replace_lists_append_maps_merge(tmp_path: Path) -> None:
    first = write(tmp_path / "one.hcl", '''
datacenter = "east"
log_level  = "debug"
recursors  = ["10.0.0.1"]
retry_join = ["a"]
node_meta  = { rack = "r1", zone = "z1" }
ports { dns = 8601 }
dns_config {
  only_passing = true
  service_ttl  = { "*" = "5s" }
}
service {
  name = "web"
}
''')
    second = write(tmp_path / "two.json", json.dumps({
        "datacenter": "west", "recursors": ["10.0.0.2"], "retry_join": ["b"],
        "node_meta": {"zone": "z2"}, "ports": {"http": 8501},
        "dns_config": {"node_ttl": "30s", "service_ttl": {"db": "1m"}},
        "services": [{"name": "db"}]}))
    config = load_config([first, second], [], {})
    assert config.datacenter == "west" and config.log_level == "debug"
    assert config.recursors == ["10.0.0.1", "10.0.0.2"] and config.retry_join == ["a", "b"]
    assert config.node_meta == {"rack": "r1", "zone": "z2"}
    assert (config.ports.dns, config.ports.http, config.ports.server) == (8601, 8501, 8300)
    assert config.dns_config.only_passing and config.dns_config.node_ttl == 30
    assert config.dns_config.service_ttl == {"*": 5.0, "db": 60.0}
    assert [s.name for s in config.services] == ["web", "db"]
    assert config.config_files == [first, second]
    # the other order: the same merge, the other winner
    assert load_config([second, first], [], {}).datacenter == "east"


def test_config_dir_is_lexical_without_subdirectories(tmp_path: Path) -> None:
    write(tmp_path / "b.hcl", 'node_name = "from-b"\nservice {\n  name = "b"\n}\n')
    write(tmp_path / "a.json", '{"node_name": "from-a", "service": {"name": "a"}}')
    write(tmp_path / "10-c.hcl", 'service {\n  name = "c"\n}\n')
    write(tmp_path / "README.md", "not config")
    write(tmp_path / "x.hcl.bak", "garbage {")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "z.hcl", 'service {\n  name = "z"\n}\n')
    config = load_config([], [str(tmp_path)], {})
    assert [s.name for s in config.services] == ["c", "a", "b"]  # "10-c" < "a.json" < "b.hcl"
    assert config.node_name == "from-b"
    assert [Path(p).name for p in config.config_files] == ["10-c.hcl", "a.json", "b.hcl"]


def test_files_load_before_dirs(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    write(folder / "a.hcl", 'datacenter = "from-dir"\n')
    single = write(tmp_path / "z.hcl", 'datacenter = "from-file"\n')
    assert load_config([single], [str(folder)], {}).datacenter == "from-dir"


def test_flags_beat_files_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path / "a.hcl", '''
datacenter = "file-dc"
node_name  = "file-node"
log_level  = "debug"
recursors  = ["10.0.0.1"]
node_meta  = { rack = "r1" }
ports {
  http = 9000
  dns  = 9001
}
''')
    config = load_config([path], [], {"datacenter": "flag-dc", "node_name": None, "log_level": None,
                                      "recursors": ["10.0.0.9"], "node_meta": {"env": "prod"},
                                      "http_port": 8888, "dns_port": None})
    assert config.datacenter == "flag-dc"
    assert config.node_name == "file-node" and config.log_level == "debug"
    assert config.recursors == ["10.0.0.1", "10.0.0.9"]  # Consul: the flag source's list is appended
    assert config.node_meta == {"rack": "r1", "env": "prod"}
    assert (config.ports.http, config.ports.dns) == (8888, 9001)


def test_agent_rule_errors_point_at_the_winning_definition(tmp_path: Path) -> None:
    first = write(tmp_path / "a.hcl", 'log_level = "info"\n')
    second = write(tmp_path / "b.json", '{\n  "datacenter": "x",\n  "log_level": "chatty"\n}\n')
    errors, _ = validate_paths([first, second])
    assert [str(e) for e in errors] == [f"{second}:3: log_level: 'chatty' is not one of trace, debug, info, "
                                        "warn, warning, error"]
    with pytest.raises(ConfigErrors) as info:
        load_config([first], [], {"log_level": "shouty"})
    assert str(info.value).startswith("<flags>: log_level: 'shouty'")


def test_bad_flags_are_config_errors() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config([], [], {"node_meta": {"consul-x": "1"}, "no_such_setting": 1})
    text = str(info.value)
    assert "<flags>: -node-meta.consul-x: keys starting with 'consul-' are reserved" in text
    assert "<flags>: no_such_setting: unknown setting" in text


def test_defaults_without_files() -> None:
    config = load_config([], [], {})
    assert (config.datacenter, config.domain, config.client_addr, config.ports.http, config.ports.dns) == \
        ("dc1", "mesh.", "127.0.0.1", 8500, 8600)
    assert config.services == [] and config.warnings == []


def test_agent_keys_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path / "a.hcl", '''
server = true
bootstrap_expect = 1
domain = "corp"
check_update_interval = "1m30s"
leave_on_terminate = true
encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
dns_config {
  udp_answer_limit = 5
  recursor_timeout = "500ms"
  soa {
    refresh = 10
    min_ttl = 2
  }
}
''')
    config = load_config([path], [], {})
    assert config.server and config.bootstrap_expect == 1 and config.domain == "corp."
    assert config.check_update_interval == 90 and config.leave_on_terminate is True
    assert config.dns_config.udp_answer_limit == 5 and config.dns_config.recursor_timeout == 0.5
    assert (config.dns_config.soa_refresh, config.dns_config.soa_min_ttl, config.dns_config.soa_retry) == (10, 2, 600)


def test_unknown_and_not_yet_supported_keys_fail(tmp_path: Path) -> None:
    path = write(tmp_path / "a.hcl", 'datacentre = "x"\nui_config {\n  enabled = true\n}\nstart_join = ["a"]\n')
    errors, _ = validate_paths([path])
    assert [(e.line, e.field) for e in errors] == [(1, "datacentre"), (2, "ui_config"), (5, "start_join")]
    assert "use retry_join" in errors[2].reason
    ok = write(tmp_path / "b.hcl", 'ui_config {\n  enabled = false\n}\ndisable_update_check = true\n')
    assert load_config([ok], [], {}).warnings == []


@pytest.mark.parametrize("text,field,reason", [
    ("ports { http = 70000 }", "ports.http", "not a port"),
    ("ports { gossip = 1 }", "ports.gossip", "unknown port"),
    ('log_level = "loud"', "log_level", "not one of"),
    ("bootstrap_expect = 3", "bootstrap_expect", "requires server"),
    ('encrypt = "short"', "encrypt", "base64"),
    ('domain = "."', "domain", "empty"),
    ('server = "yes"', "server", "true or false"),
    ('recursors = [1]', "recursors", "list of strings"),
    ('node_meta = { "a b" = "c" }', "node_meta.a b", "A-Za-z0-9"),
    ("dns_config { udp_answer_limit = -1 }", "dns_config.udp_answer_limit", "negative"),
    ('dns_config { node_ttl = "soon" }', "dns_config.node_ttl", "invalid duration"),
    ("dns_config { colour = 1 }", "dns_config.colour", "unknown field"),
    ("dns_config {\n  soa { serial = 1 }\n}", "dns_config.soa.serial", "unknown field"),
    ('check_update_interval = "5"', "check_update_interval", "missing unit"),
])
def test_agent_rules(tmp_path: Path, text: str, field: str, reason: str) -> None:
    path = write(tmp_path / "a.hcl", text + "\n")
    errors, _ = validate_paths([path])
    key = field.rsplit(".", 1)[-1]
    key_line = text[: text.index(key)].count("\n") + 1
    assert any(e.field == field and reason in e.reason and (e.path, e.line) == (path, key_line)
               for e in errors), errors
    with pytest.raises(ConfigErrors):
        load_config([path], [], {})


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.hcl", 'service {\n  name = "web"\n  check {\n    id = "c1"\n    ttl = "10s"\n  }\n}\n')
    write(tmp_path / "b.json", '{\n  "service": {"name": "web", "port": 2},\n'
                               '  "check": {"id": "c1", "ttl": "5s"}\n}\n')
    errors, _ = validate_paths([str(tmp_path)])
    text = [str(e) for e in errors]
    assert any(t.startswith(f"{tmp_path}/b.json:2: service.id: duplicate service id 'web' (also defined at "
                            f"{tmp_path}/a.hcl:1)") for t in text), text
    assert any(t.startswith(f"{tmp_path}/b.json:3: check.id: duplicate check id 'c1'") for t in text), text


def test_every_error_of_every_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.hcl", 'service {\n  port = 1\n}\nbogus = 1\n')
    write(tmp_path / "b.json", '{"service": {"name": "x", "port": -1, "weights": {"passing": 0}}}')
    write(tmp_path / "c.hcl", "service {\n")
    errors, _ = validate_paths([str(tmp_path)])
    assert sorted((Path(e.path).name, e.field) for e in errors) == [
        ("a.hcl", "bogus"), ("a.hcl", "service.name"), ("b.json", "service.port"),
        ("b.json", "service.weights.passing"), ("c.hcl", "")]
    with pytest.raises(ConfigErrors) as info:
        load_config([], [str(tmp_path)], {})
    assert len(info.value.errors) == 5


def test_missing_paths_and_odd_files(tmp_path: Path) -> None:
    errors, _ = validate_paths([str(tmp_path / "nope.hcl"), write(tmp_path / "notes.txt", "x"),
                                write(tmp_path / "list.json", "[1, 2]")])
    assert [(Path(e.path).name, e.reason) for e in errors] == [
        ("nope.hcl", "no such file or directory"),
        ("notes.txt", "unknown format: config files must end in .hcl or .json"),
        ("list.json", "the top level must be an object")]


def test_empty_files_and_dirs_are_valid(tmp_path: Path) -> None:
    write(tmp_path / "empty.hcl", "")
    write(tmp_path / "empty.json", "  \n")
    assert validate_paths([str(tmp_path)]) == ([], [])


def test_script_checks_without_the_flag_warn(tmp_path: Path) -> None:
    text = 'service {\n  name = "s"\n  check {\n    args = ["/bin/true"]\n    interval = "10s"\n  }\n}\n'
    path = write(tmp_path / "s.hcl", text)
    _, warnings = validate_paths([path])
    assert any("enable_local_script_checks" in w for w in warnings)
    write(tmp_path / "s.hcl", text + "enable_local_script_checks = true\n")
    assert validate_paths([path]) == ([], [])


def test_gossip_settings_from_files(tmp_path: Path) -> None:
    path = write(tmp_path / "g.hcl", 'retry_interval = "5s"\nretry_max = 3\nreconnect_timeout = "8h"\n'
                 'encrypt_verify_incoming = false\n')
    config = load_config([path], [], {})
    assert (config.retry_interval, config.retry_max, config.reconnect_timeout) == (5.0, 3, 8 * 3600.0)
    assert config.encrypt_verify_incoming is False and config.encrypt_verify_outgoing is True
