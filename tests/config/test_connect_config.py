"""The mesh's agent settings (issue 13): `connect { ca_config }`, `acl { default_policy }`, `config_entries
{ bootstrap }` in HCL and JSON, Consul's defaults, and every invalid shape named by file, line and field."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshagent.agent.config.loader import ConfigErrors, load_config
from meshagent.agent.config.types import AgentConfig

from tests.support.agents import MESHAGENT
from tests.support.config_files import errors_of, write

HOUR = 3600.0


def test_defaults_without_any_mesh_key() -> None:
    config = AgentConfig()
    assert config.connect_enabled is True and config.ca_provider == "consul"
    assert config.ca_config == {"leaf_cert_ttl": 72 * HOUR, "root_cert_ttl": 87600 * HOUR,
                                "intermediate_cert_ttl": 8760 * HOUR, "rotation_period": 2160 * HOUR,
                                "private_key_type": "ec", "private_key_bits": 256, "csr_max_per_second": 50.0,
                                "csr_max_concurrent": 0}
    assert config.config_entries_bootstrap == [] and config.acl_default_policy == "allow"
    assert config.connect_test_min_leaf_ttl == HOUR
    assert AgentConfig().ca_config is not config.ca_config  # each config its own dict


HCL = '''
connect {
  enabled     = true
  ca_provider = "consul"
  ca_config {
    leaf_cert_ttl         = "24h"
    intermediate_cert_ttl = "96h"
    csr_max_per_second    = 10
    csr_max_concurrent    = 2
  }
}
acl {
  enabled        = false
  default_policy = "deny"
}
config_entries {
  bootstrap = [
    { kind = "proxy-defaults", name = "global", config = { protocol = "http" } },
    { Kind = "service-defaults", Name = "web", Protocol = "http" },
  ]
}
'''

JSON = {
    "connect": {"enabled": True, "ca_provider": "consul",
                "ca_config": {"LeafCertTTL": "24h", "IntermediateCertTTL": "96h", "CSRMaxPerSecond": 10,
                              "csr_max_concurrent": "2"}},
    "acl": {"enabled": False, "default_policy": "deny"},
    "config_entries": {"bootstrap": [
        {"kind": "proxy-defaults", "name": "global", "config": {"protocol": "http"}},
        {"Kind": "service-defaults", "Name": "web", "Protocol": "http"},
    ]},
}


def test_hcl_and_json_give_the_same_mesh_settings(tmp_path: Path) -> None:
    from_hcl = load_config([write(tmp_path / "a.hcl", HCL)], [], {})
    from_json = load_config([write(tmp_path / "b.json", json.dumps(JSON, indent=2))], [], {})
    for config in (from_hcl, from_json):
        assert config.connect_enabled and config.ca_provider == "consul"
        assert config.ca_config["leaf_cert_ttl"] == 24 * HOUR and config.ca_config["intermediate_cert_ttl"] == 96 * HOUR
        assert config.ca_config["csr_max_per_second"] == 10.0 and config.ca_config["csr_max_concurrent"] == 2
        assert config.ca_config["root_cert_ttl"] == 87600 * HOUR  # the default for what was not given
        assert config.acl_default_policy == "deny"
        assert len(config.config_entries_bootstrap) == 2
    assert from_hcl.config_entries_bootstrap == from_json.config_entries_bootstrap
    first, second = from_hcl.config_entries_bootstrap  # canonical Consul JSON
    assert (first["Kind"], first["Name"], first["Config"]) == ("proxy-defaults", "global", {"protocol": "http"})
    assert (second["Kind"], second["Name"], second["Protocol"]) == ("service-defaults", "web", "http")


def test_ca_config_merges_key_by_key_across_files(tmp_path: Path) -> None:
    one = write(tmp_path / "1.hcl", 'connect {\n  ca_config {\n    leaf_cert_ttl = "2h"\n  }\n}\n')
    two = write(tmp_path / "2.json", '{"connect": {"enabled": false, "ca_config": {"csr_max_per_second": 5}}}')
    config = load_config([one, two], [], {})
    assert config.connect_enabled is False
    assert (config.ca_config["leaf_cert_ttl"], config.ca_config["csr_max_per_second"]) == (2 * HOUR, 5.0)


def test_bootstrap_entries_of_several_files_and_blocks_append(tmp_path: Path) -> None:
    one = write(tmp_path / "1.hcl", 'config_entries {\n  bootstrap {\n    kind = "service-defaults"\n'
                '    name = "a"\n    mesh_gateway {\n      mode = "local"\n    }\n  }\n  bootstrap {\n'
                '    kind = "service-intentions"\n    name = "b"\n    sources {\n      name = "web"\n'
                '      action = "deny"\n    }\n  }\n}\n')
    two = write(tmp_path / "2.json", '{"config_entries": {"bootstrap": [{"Kind": "service-defaults", "Name": "c"}]}}')
    config = load_config([one, two], [], {})
    names = [e["Name"] for e in config.config_entries_bootstrap]
    assert names == ["a", "b", "c"]
    # one nested block is a map where the schema says map, a list of one where it says list
    assert config.config_entries_bootstrap[0]["MeshGateway"] == {"Mode": "local"}
    assert [s["Name"] for s in config.config_entries_bootstrap[1]["Sources"]] == ["web"]


BAD = [
    ('connect {\n  enabled = "maybe"\n}\n', 2, "connect.enabled", "true or false"),
    ('connect {\n  ca_provider = "vault"\n}\n', 2, "connect.ca_provider", "only the built-in CA"),
    ('connect {\n  mesh = 1\n}\n', 2, "connect.mesh", "unknown field"),
    ('connect {\n  enable_mesh_gateway_wan_federation = true\n}\n', 2, "connect.enable_mesh_gateway_wan_federation",
     "not supported"),
    ('connect = 3\n', 1, "connect", "must be a block"),
    ('connect {\n  ca_config {\n    leaf_cert_ttl = "30m"\n  }\n}\n', 3, "connect.ca_config.leaf_cert_ttl",
     "at least 1h, got 30m"),
    ('connect {\n  ca_config {\n    leaf_cert_ttl = "9000h"\n  }\n}\n', 3, "connect.ca_config.leaf_cert_ttl",
     "at most 8760h"),
    ('connect {\n  ca_config {\n    leaf_cert_ttl = 5\n  }\n}\n', 3, "connect.ca_config.leaf_cert_ttl",
     "needs a unit"),
    ('connect {\n  ca_config {\n    leaf_cert_ttl = "0s"\n  }\n}\n', 3, "connect.ca_config.leaf_cert_ttl",
     "more than 0s"),
    ('connect {\n  ca_config {\n    intermediate_cert_ttl = "100h"\n  }\n}\n', 3,
     "connect.ca_config.intermediate_cert_ttl", "at least 3 x leaf_cert_ttl (216h)"),
    ('connect {\n  ca_config {\n    leaf_cert_ttl = "3000h"\n  }\n}\n', 3, "connect.ca_config.leaf_cert_ttl",
     "intermediate_cert_ttl (8760h) must be at least 3 x leaf_cert_ttl (9000h)"),
    ('connect {\n  ca_config {\n    root_cert_ttl = "1000h"\n  }\n}\n', 3, "connect.ca_config.root_cert_ttl",
     "at least intermediate_cert_ttl"),
    ('connect {\n  ca_config {\n    csr_max_per_second = -1\n  }\n}\n', 3, "connect.ca_config.csr_max_per_second",
     "must not be negative"),
    ('connect {\n  ca_config {\n    csr_max_per_second = "fast"\n  }\n}\n', 3,
     "connect.ca_config.csr_max_per_second", "must be a number"),
    ('connect {\n  ca_config {\n    csr_max_concurrent = "x"\n  }\n}\n', 3, "connect.ca_config.csr_max_concurrent",
     "whole number"),
    ('connect {\n  ca_config {\n    csr_max_concurrent = -2\n  }\n}\n', 3, "connect.ca_config.csr_max_concurrent",
     "must not be negative"),
    ('connect {\n  ca_config {\n    private_key_type = "rsa"\n  }\n}\n', 3, "connect.ca_config.private_key_type",
     "EC P-256"),
    ('connect {\n  ca_config {\n    private_key_bits = 384\n  }\n}\n', 3, "connect.ca_config.private_key_bits",
     "EC P-256"),
    ('connect {\n  ca_config {\n    leaf_ttl = "2h"\n  }\n}\n', 3, "connect.ca_config.leaf_ttl", "unknown field"),
    ('connect {\n  ca_config {\n    private_key = "secret"\n  }\n}\n', 3, "connect.ca_config.private_key",
     "PEM text"),
    ('connect {\n  ca_config {\n    root_cert = "-----BEGIN CERTIFICATE-----"\n  }\n}\n', 3,
     "connect.ca_config.root_cert", "needs private_key"),
    ('connect {\n  ca_config {\n    private_key = "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"\n'
     '  }\n}\n', 3, "connect.ca_config.private_key", "not a readable"),
    # Values only the CA's own check refuses: the loader must not let through what the leader would refuse.
    ('connect {\n  ca_config {\n    csr_max_concurrent = 500000\n  }\n}\n', 3,
     "connect.ca_config.csr_max_concurrent", "100000"),
    ('connect {\n  test_min_leaf_ttl = "2h"\n}\n', 2, "connect.test_min_leaf_ttl", "at most 1h"),
    ('acl {\n  default_policy = "maybe"\n}\n', 2, "acl.default_policy", '"allow" or "deny"'),
    ('acl {\n  down_policy = "never"\n}\n', 2, "acl.down_policy", '"extend-cache" or "async-cache"'),
    ('acl {\n  tokens {\n    agent = 5\n  }\n}\n', 3, "acl.tokens.agent", "must be a string"),
    ('acl_datacenter = "dc1"\n', 1, "acl_datacenter", "acl { enabled = true }"),
    ('acl_default_policy = "block"\n', 1, "acl_default_policy", '"allow" or "deny"'),
    ('config_entries {\n  seed = []\n}\n', 2, "config_entries.seed", "unknown field (bootstrap)"),
    ('config_entries {\n  bootstrap = ["web"]\n}\n', 2, "config_entries.bootstrap[0]", "must be a config entry"),
    ('config_entries {\n  bootstrap = [\n    { kind = "service-defaults" },\n  ]\n}\n', 3,
     "config_entries.bootstrap[0].Name", ""),
    ('enable_central_service_config = true\n', 1, "enable_central_service_config", "service-defaults"),
]


@pytest.mark.parametrize("text,line,field,reason", BAD, ids=[b[2] + ":" + b[3][:20] for b in BAD])
def test_each_invalid_shape_names_file_line_and_field(tmp_path: Path, text: str, line: int, field: str,
                                                      reason: str) -> None:
    path = write(tmp_path / "mesh.hcl", text)
    found = errors_of(path)
    assert [(p, n, f) for p, n, f, _ in found] == [(path, line, field)], found
    assert reason in found[0][3]
    with pytest.raises(ConfigErrors):
        load_config([path], [], {})


@pytest.mark.parametrize("entry,line,field", [
    ('{ kind = "service-defaults", name = "web", protocol = 5 }', 4, "config_entries.bootstrap[1].Protocol"),
    ('{ kind = "proxy-defaults", name = "other" }', 4, "config_entries.bootstrap[1].Name"),
    ('{ kind = "service-defaults", name = "web", colour = "red" }', 4, "config_entries.bootstrap[1].colour"),
])
def test_an_invalid_bootstrap_entry_is_named_by_its_index_and_field(tmp_path: Path, entry: str, line: int,
                                                                    field: str) -> None:
    text = ('config_entries {\n  bootstrap = [\n    { kind = "service-defaults", name = "ok" },\n'
            f'    {entry}\n  ]\n}}\n')
    path = write(tmp_path / "e.hcl", text)
    found = errors_of(path)
    assert [(p, n, f) for p, n, f, _ in found] == [(path, line, field)], found


def test_the_same_entry_twice_is_refused_naming_both_places(tmp_path: Path) -> None:
    one = write(tmp_path / "1.hcl", 'config_entries {\n  bootstrap = [\n    { kind = "service-defaults", '
                'name = "web" },\n  ]\n}\n')
    two = write(tmp_path / "2.json", '{"config_entries": {"bootstrap": [\n  {"Kind": "service-defaults", '
                '"Name": "web"}\n]}}')
    found = errors_of(one, two)
    assert [(p, n, f) for p, n, f, _ in found] == [(two, 2, "config_entries.bootstrap[0]")], found
    assert f"also defined at {one}:3" in found[0][3]


def test_json_errors_carry_the_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", json.dumps({"connect": {"ca_config": {"LeafCertTTL": "30m",
                                                                            "Colour": "red"}}}, indent=2))
    found = errors_of(path)
    assert {(n, f) for _, n, f, _ in found} == {(4, "connect.ca_config.leaf_cert_ttl"),
                                                 (5, "connect.ca_config.colour")}, found


def test_test_min_leaf_ttl_lowers_the_minimum_from_any_file(tmp_path: Path) -> None:
    short = write(tmp_path / "1.hcl", 'connect {\n  ca_config {\n    leaf_cert_ttl = "2s"\n  }\n}\n')
    assert [f for _, _, f, _ in errors_of(short)] == ["connect.ca_config.leaf_cert_ttl"]
    lowered = write(tmp_path / "2.json", '{"connect": {"test_min_leaf_ttl": "1s"}}')
    config = load_config([short, lowered], [], {})
    assert (config.ca_config["leaf_cert_ttl"], config.connect_test_min_leaf_ttl) == (2.0, 1.0)
    too_short = write(tmp_path / "3.hcl", 'connect {\n  ca_config {\n    leaf_cert_ttl = "500ms"\n  }\n}\n')
    found = errors_of(lowered, too_short)
    assert [(n, f) for _, n, f, _ in found] == [(3, "connect.ca_config.leaf_cert_ttl")]
    assert "at least 1s, got 0.5s" in found[0][3]


def _key_and_cert() -> tuple[str, str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode(), key


def test_a_supplied_root_key_and_certificate_must_belong_together(tmp_path: Path) -> None:
    key_pem, cert_pem, _ = _key_and_cert()
    good = write(tmp_path / "good.json", json.dumps({"connect": {"ca_config": {"private_key": key_pem,
                                                                               "root_cert": cert_pem}}}))
    config = load_config([good], [], {})
    assert (config.ca_config["private_key"], config.ca_config["root_cert"]) == (key_pem, cert_pem)
    other_key, _, _ = _key_and_cert()
    bad = write(tmp_path / "bad.json", json.dumps({"connect": {"ca_config": {"private_key": other_key,
                                                                             "root_cert": cert_pem}}}))
    assert [(f, r) for _, _, f, r in errors_of(bad)] == [("connect.ca_config.root_cert",
                                                          "its public key is not private_key's")]
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    other_curve = write(tmp_path / "p384.json", json.dumps({"connect": {"ca_config": {"private_key": p384}}}))
    assert [(f, r) for _, _, f, r in errors_of(other_curve)] == [
        ("connect.ca_config.private_key", "must be an EC P-256 key (the built-in CA signs with EC P-256 only)")]


def test_hostile_values_are_errors_not_crashes(tmp_path: Path) -> None:
    for text in ('{"connect": []}', '{"connect": {"ca_config": [1, 2]}}', '{"connect": {"ca_config": null}}',
                 '{"acl": "deny"}', '{"config_entries": {"bootstrap": {"Kind": 1, "Name": []}}}',
                 '{"config_entries": {"bootstrap": [[[]]]}}', '{"connect": {"ca_config": {"private_key": 5}}}',
                 '{"connect": {"ca_config": {"csr_max_per_second": 1e999}}}',
                 '{"config_entries": "x"}', '{"connect": {"enabled": null}}'):
        path = write(tmp_path / "h.json", text)
        assert errors_of(path), text


def test_validate_accepts_the_mesh_keys_and_acl_enabled(tmp_path: Path) -> None:
    good = tmp_path / "mesh.hcl"
    good.write_text(HCL)
    result = subprocess.run([MESHAGENT, "validate", str(good)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Configuration is valid" in result.stdout, result.stdout + result.stderr
    acl = tmp_path / "acl.hcl"
    acl.write_text('acl {\n  default_policy = "deny"\n  enabled = true\n}\n')  # issue 15: ACLs exist
    result = subprocess.run([MESHAGENT, "validate", str(acl)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Configuration is valid" in result.stdout, result.stdout + result.stderr
