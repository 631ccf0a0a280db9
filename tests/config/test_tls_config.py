"""Consul's TLS settings into AgentConfig.tls (tls block, auto_encrypt, legacy keys) and their rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.agent.config.loader import ConfigErrors, load_config, validate_paths


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Readable stand-ins for the CA, certificate and key (the loader checks readability, not contents)."""
    names = {}
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        names[name] = str(tmp_path / name)
    return names


def errors_in(tmp_path: Path, text: str, name: str = "tls.hcl") -> list[tuple[int | None, str, str]]:
    (tmp_path / name).write_text(text)
    errors, _ = validate_paths([str(tmp_path / name)])
    return [(e.line, e.field, e.reason) for e in errors]


def test_tls_block_fills_the_config(tmp_path: Path, pem: dict[str, str]) -> None:
    (tmp_path / "tls.hcl").write_text(f'''server = true
tls {{
  defaults {{
    ca_file         = "{pem["ca.pem"]}"
    ca_path         = "{tmp_path}"
    cert_file       = "{pem["server.pem"]}"
    key_file        = "{pem["server-key.pem"]}"
    verify_incoming = false
    verify_outgoing = true
  }}
  internal_rpc {{
    verify_incoming        = true
    verify_server_hostname = true
  }}
}}
auto_encrypt {{ allow_tls = true }}
''')
    tls = load_config([str(tmp_path / "tls.hcl")], [], {}).tls
    assert (tls.ca_file, tls.ca_path, tls.cert_file, tls.key_file) == (
        pem["ca.pem"], str(tmp_path), pem["server.pem"], pem["server-key.pem"])
    # internal_rpc.verify_incoming wins over defaults.verify_incoming, as in Consul
    assert (tls.verify_incoming, tls.verify_outgoing, tls.verify_server_hostname) == (True, True, True)
    assert (tls.auto_encrypt_tls, tls.auto_encrypt_allow_tls) == (False, True)
    assert (tls.source.path, tls.source.line) == (str(tmp_path / "tls.hcl"), 2)


def test_legacy_keys_in_json_map_to_the_same_fields_and_the_block_wins(tmp_path: Path, pem: dict[str, str]) -> None:
    (tmp_path / "a.json").write_text(json.dumps({
        "ca_file": pem["ca.pem"], "cert_file": "/nowhere.pem", "key_file": pem["server-key.pem"],
        "verify_outgoing": True, "verify_server_hostname": True,
        "auto_encrypt": {"tls": True}}))
    (tmp_path / "b.json").write_text(json.dumps({"tls": {"defaults": {"cert_file": pem["server.pem"]}}}))
    tls = load_config([], [str(tmp_path)], {}).tls
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (pem["ca.pem"], pem["server.pem"], pem["server-key.pem"])
    assert tls.verify_outgoing and tls.verify_server_hostname and tls.auto_encrypt_tls
    assert not tls.verify_incoming


def test_no_tls_settings_keep_the_defaults(tmp_path: Path) -> None:
    assert load_config([], [], {}).tls.ca_file == "" and not load_config([], [], {}).tls.verify_incoming


def test_missing_or_unreadable_files_name_file_line_and_field(tmp_path: Path, pem: dict[str, str]) -> None:
    text = f'''tls {{
  defaults {{
    ca_file   = "{tmp_path / "missing-ca.pem"}"
    cert_file = "{tmp_path}"
    key_file  = "{pem["server-key.pem"]}"
  }}
}}
'''
    assert errors_in(tmp_path, text) == [
        (3, "tls.defaults.ca_file", f"{tmp_path / 'missing-ca.pem'}: no such file or directory"),
        (4, "tls.defaults.cert_file", f"{tmp_path}: not a regular file")]


@pytest.mark.parametrize("text,expected", [
    ("tls {\n  defaults {\n    verify_outgoing = true\n  }\n}\n",
     [(3, "tls.defaults.verify_outgoing", "needs ca_file")]),
    ("verify_incoming = true\n",
     [(1, "verify_incoming", "needs ca_file"), (1, "verify_incoming", "needs cert_file")]),
    ('tls {\n  defaults {\n    ca_file = "CA"\n    cert_file = "CERT"\n  }\n}\n',
     [(4, "tls.defaults.cert_file", "needs key_file")]),
    ('server = true\nauto_encrypt {\n  tls = true\n}\n', [(3, "auto_encrypt.tls", "clients only")]),
    ('auto_encrypt {\n  allow_tls = true\n}\n', [(2, "auto_encrypt.allow_tls", "servers only")]),
    ('tls {\n  https {\n    verify_incoming = true\n  }\n}\n', [(2, "tls.https", "not supported yet")]),
    ('tls {\n  defaults {\n    tls_min_version = "TLSv1_3"\n  }\n}\n',
     [(3, "tls.defaults.tls_min_version", "not supported yet")]),
    ('tls {\n  internal_rpc {\n    verify_incoming = "maybe"\n  }\n}\n',
     [(3, "tls.internal_rpc.verify_incoming", "must be true or false")]),
])
def test_tls_rules(tmp_path: Path, pem: dict[str, str], text: str,
                   expected: list[tuple[int, str, str]]) -> None:
    text = text.replace('"CA"', json.dumps(pem["ca.pem"])).replace('"CERT"', json.dumps(pem["server.pem"]))
    found = errors_in(tmp_path, text)
    assert [(line, field) for line, field, _ in found] == [(line, field) for line, field, _ in expected]
    for (_, _, reason), (_, _, part) in zip(found, expected, strict=True):
        assert part in reason


def test_a_client_with_auto_encrypt_needs_no_certificate_of_its_own(tmp_path: Path, pem: dict[str, str]) -> None:
    text = f'''auto_encrypt {{ tls = true }}
tls {{
  defaults {{
    ca_file         = "{pem["ca.pem"]}"
    verify_incoming = true
    verify_outgoing = true
  }}
}}
'''
    assert errors_in(tmp_path, text) == []


def test_the_agent_refuses_to_load_broken_tls(tmp_path: Path) -> None:
    (tmp_path / "tls.hcl").write_text("verify_outgoing = true\n")
    with pytest.raises(ConfigErrors, match=r"tls.hcl:1: verify_outgoing: needs ca_file"):
        load_config([str(tmp_path / "tls.hcl")], [], {})
