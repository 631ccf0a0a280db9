"""Config entry files: HCL (attributes, repeated blocks, heredocs, snake_case) and JSON give the same canonical
entry; syntax errors name the file and line, validation errors the line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.agent.connect.entry_files import EntryFileError, load_entry_file, parse_entry_text
from meshagent.agent.connect.entry_validate import EntryError, normalize_entry

INTENTIONS_HCL = '''\
Kind = "service-intentions"
Name = "db"
Sources = [
  {
    Name   = "web"
    Action = "allow"
  },
  {
    Name = "api"
    Permissions = [
      {
        Action = "allow"
        HTTP = {
          PathPrefix = "/v1"
          Methods    = ["GET", "PUT"]
        }
      }
    ]
  }
]
'''

INTENTIONS_BLOCKS = '''\
kind = "service-intentions"
name = "db"

sources {
  name   = "web"
  action = "allow"
}

sources {
  name = "api"
  permissions = [{ action = "allow", http = { path_prefix = "/v1", methods = ["GET", "PUT"] } }]
}
'''

RESOLVER_HCL = '''\
Kind           = "service-resolver"
Name           = "web"
DefaultSubset  = "v1"
ConnectTimeout = "15s"
Subsets = {
  "v1" = { Filter = "Service.Meta.version == v1" }
  v2   = { Filter = "Service.Meta.version == v2", OnlyPassing = true }
}
Failover = {
  "*" = { Datacenters = ["dc3", "dc4"] }
}
Meta {
  owner = "team-a"
}
'''


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hcl_attribute_and_block_forms_and_json_agree(tmp_path: Path) -> None:
    a = load_entry_file(_write(tmp_path, "a.hcl", INTENTIONS_HCL))
    b = load_entry_file(_write(tmp_path, "b.hcl", INTENTIONS_BLOCKS))
    c = load_entry_file(_write(tmp_path, "c.json", json.dumps(a)))
    d = load_entry_file(_write(tmp_path, "entry", json.dumps(a, indent=2)))  # JSON by content
    assert a == b == c == d == normalize_entry(a)
    assert [s["Name"] for s in a["Sources"]] == ["web", "api"]
    assert a["Sources"][1]["Permissions"][0]["HTTP"] == {"PathPrefix": "/v1", "Methods": ["GET", "PUT"]}


def test_hcl_maps_with_quoted_keys_blocks_and_booleans(tmp_path: Path) -> None:
    entry = load_entry_file(_write(tmp_path, "r.hcl", RESOLVER_HCL))
    assert entry == {
        "Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1", "ConnectTimeout": "15s",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                    "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True}},
        "Failover": {"*": {"Datacenters": ["dc3", "dc4"]}}, "Meta": {"owner": "team-a"}}


def test_heredoc_strings(tmp_path: Path) -> None:
    text = 'Kind = "service-intentions"\nName = "db"\nSources = [{\n  Name = "web"\n  Action = "deny"\n' \
           '  Description = <<EOT\nno web tier\nin the db\nEOT\n}]\n'
    entry = load_entry_file(_write(tmp_path, "h.hcl", text))
    assert entry["Sources"][0]["Description"].rstrip("\n") == "no web tier\nin the db"


def test_hcl_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.hcl", 'Kind = "service-defaults"\nName = "web"\nProtocol = "http\n')
    with pytest.raises(EntryFileError) as err:
        load_entry_file(path)
    assert err.value.file == str(path) and err.value.line == 3, str(err.value)
    assert str(err.value).startswith(f"{path}:3: ")


def test_hcl1_nested_blocks_get_a_hint(tmp_path: Path) -> None:
    text = 'Kind = "service-router"\nName = "web"\nRoutes = [\n  {\n    Match {\n      HTTP {\n' \
           '        PathPrefix = "/admin"\n      }\n    }\n  }\n]\n'
    with pytest.raises(EntryFileError) as err:
        load_entry_file(_write(tmp_path, "r.hcl", text))
    assert err.value.line == 5 and "Match = {" in str(err.value)


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(EntryFileError) as err:
        load_entry_file(_write(tmp_path, "bad.json", '{\n  "Kind": "service-defaults",\n  "Name": web\n}\n'))
    assert err.value.line == 3


@pytest.mark.parametrize(("text", "line", "field"), [
    (INTENTIONS_HCL.replace('Action = "allow"\n  },', 'Action = "permit"\n  },'), 6, "Sources[0].Action"),
    (INTENTIONS_HCL.replace('PathPrefix = "/v1"', 'PathPrefix = "/v1"\n          PathExact = "/v2"'), 15,
     "Sources[1].Permissions[0].HTTP.PathExact"),
    (INTENTIONS_BLOCKS.replace('name = "api"', 'name = "api"\n  colour = "red"'), 11, "Sources[1].colour"),
    (RESOLVER_HCL.replace('DefaultSubset  = "v1"', 'DefaultSubset  = "v9"'), 3, "DefaultSubset"),
    (RESOLVER_HCL.replace("Service.Meta.version == v2", "Servise.Meta.version == v2"), 7, "Subsets.v2.Filter"),
])
def test_validation_errors_name_line_and_field(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = _write(tmp_path, "e.hcl", text)
    with pytest.raises(EntryFileError) as err:
        load_entry_file(path)
    assert (err.value.field, err.value.line) == (field, line), str(err.value)
    assert isinstance(err.value, EntryError)  # callers catching EntryError get file errors too
    assert str(err.value).startswith(f"{path}:{line}: ") and f"field {field}" in str(err.value)


def test_json_validation_errors_name_the_line(tmp_path: Path) -> None:
    text = '{\n  "Kind": "service-splitter",\n  "Name": "web",\n  "Splits": [\n    {"Weight": 90},\n' \
           '    {"Weight": "ten", "ServiceSubset": "v2"}\n  ]\n}\n'
    with pytest.raises(EntryFileError) as err:
        load_entry_file(_write(tmp_path, "s.json", text))
    assert (err.value.field, err.value.line) == ("Splits[1].Weight", 6), str(err.value)


def test_unreadable_empty_huge_and_binary_files(tmp_path: Path) -> None:
    cases = [(tmp_path / "missing.hcl", "cannot read"), (_write(tmp_path, "empty.hcl", "\n"), "empty"),
             (_write(tmp_path, "huge.hcl", "# x\n" * 300_000), "larger than")]
    binary = tmp_path / "bin.hcl"
    binary.write_bytes(b"Kind = \xff\xfe")
    cases.append((binary, "not UTF-8"))
    for path, words in cases:
        with pytest.raises(EntryFileError) as err:
            load_entry_file(path)
        assert words in str(err.value) and str(path) in str(err.value)


def test_parse_entry_text_for_stdin() -> None:
    entry = parse_entry_text('{"kind": "service-defaults", "name": "web", "protocol": "http"}', "-", "json")
    assert entry == {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
    with pytest.raises(EntryFileError) as err:
        parse_entry_text('Kind = "service-defaults"\nName = "web"\nProtocol = 7\n', "-")
    assert str(err.value).startswith("-:3: ")
