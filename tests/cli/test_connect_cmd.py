"""`meshagent connect ca get-config|set-config`: file and flag errors without an agent; the configuration read,
changed, refused and rotated (with and without cross-signing) on a real `meshagent agent -dev` process."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshagent.cli.main import cli

from tests.cli.conftest import closed_addr
from tests.support.agents import AgentProcess, scratch_dir, start_agent
from tests.support.wait import wait_for


def run(*args: str) -> Result:
    """The CLI in this process (its HTTP calls are real)."""
    return CliRunner().invoke(cli, ["connect", "ca", *args])




# ---------------------------------------------------------------------- without an agent


@pytest.mark.parametrize("name,text,expect", [
    ("syntax.json", '{\n  "Provider": "consul",\n  "Config": {,\n}', "Error parsing config file: {path}:3: "),
    ("list.json", '["consul"]', "the top level must be an object"),
    ("config.json", '{"Provider": "consul", "Config": "72h"}', "Config must be an object"),
    ("hcl.json", 'Provider = "consul"\n', "Error parsing config file: {path}:1: Expecting value"),
])
def test_config_file_problems_are_named(tmp_path: Path, name: str, text: str, expect: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run("set-config", "-config-file", str(path), "-http-addr", closed_addr())
    assert result.exit_code == 1 and expect.format(path=path) in result.stderr, result.output
    assert "cannot connect" not in result.stderr  # refused before anything is sent


def test_flag_and_file_errors(tmp_path: Path) -> None:
    missing_flag = run("set-config", "-http-addr", closed_addr())
    assert (missing_flag.exit_code, missing_flag.stderr) == (1, "The -config-file flag is required\n")
    missing_file = run("set-config", "-config-file", str(tmp_path / "no.json"), "-http-addr", closed_addr())
    assert (missing_file.exit_code, missing_file.stderr) == (
        1, f"Error reading config file: {tmp_path / 'no.json'}: No such file or directory\n")
    down = run("get-config", "-http-addr", closed_addr())
    assert down.exit_code == 1 and down.stderr.startswith("Error querying CA configuration: cannot connect")


# ---------------------------------------------------------------------- against a real agent


def get_config(agent: AgentProcess) -> dict[str, Any]:
    result = run("get-config", "-http-addr", agent.http_addr)
    assert result.exit_code == 0, result.output
    assert "\n\t\"Provider\"" in result.stdout  # tab-indented, as Consul prints it
    config = json.loads(result.stdout)
    assert isinstance(config, dict)
    return config


def roots(agent: AgentProcess) -> list[dict[str, Any]]:
    body = httpx.get(f"{agent.http_addr}/v1/connect/ca/roots", timeout=10).json()
    return list(body["Roots"])


def supplied_root(agent: AgentProcess) -> dict[str, str]:
    """A new EC P-256 key and its self-signed CA certificate in the agent's trust domain."""
    trust_domain = httpx.get(f"{agent.http_addr}/v1/connect/ca/roots", timeout=10).json()["TrustDomain"]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return {"PrivateKey": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode(),
            "RootCert": cert.public_bytes(serialization.Encoding.PEM).decode()}


@pytest.mark.slow
def test_get_set_and_refuse(agent: AgentProcess, tmp_path: Path) -> None:
    before = get_config(agent)
    assert before["Provider"] == "consul" and before["Config"]["LeafCertTTL"] == "72h"
    path = tmp_path / "ca.json"
    path.write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "24h", "CSRMaxPerSecond": 20}}))
    result = run("set-config", "-config-file", str(path), "-http-addr", agent.http_addr)
    assert (result.exit_code, result.stdout) == (0, "Configuration updated!\n"), result.output
    after = get_config(agent)
    assert after["Config"]["LeafCertTTL"] == "24h" and after["ModifyIndex"] > before["ModifyIndex"]
    path.write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "1m"}}))
    refused = run("set-config", "-config-file", str(path), "-http-addr", agent.http_addr)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error setting CA configuration: Unexpected response code: 400 (")
    assert "LeafCertTTL" in refused.stderr
    assert get_config(agent)["Config"]["LeafCertTTL"] == "24h"  # unchanged


@pytest.mark.slow
def test_a_supplied_root_rotates_cross_signed_unless_forced(agent: AgentProcess, tmp_path: Path) -> None:
    path = tmp_path / "rotate.json"
    for force, intermediates in ((False, 1), (True, 0)):
        old_ids = {r["ID"] for r in roots(agent)}
        path.write_text(json.dumps({"Provider": "consul", "Config": supplied_root(agent)}))
        args = ["set-config", "-config-file", str(path), "-http-addr", agent.http_addr]
        result = run(*args, *(["-force-without-cross-signing"] if force else []))
        assert (result.exit_code, result.stdout) == (0, "Configuration updated!\n"), result.output
        active = [r for r in roots(agent) if r["Active"]]
        assert len(active) == 1 and active[0]["ID"] not in old_ids
        # cross-signed by the old root unless forced: the new root's certificate signed by the old key
        assert len(active[0].get("IntermediateCerts") or []) == intermediates, (force, active[0])


@pytest.mark.slow
def test_the_agent_files_connect_and_bootstrap_settings_reach_the_ca_and_the_store(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "mesh.hcl").write_text('''
connect {
  test_min_leaf_ttl = "1s"
  ca_config {
    leaf_cert_ttl      = "90s"
    csr_max_per_second = 7
  }
}
config_entries {
  bootstrap = [
    { kind = "service-defaults", name = "boot", protocol = "http" },
  ]
}
''')
    proc = start_agent(scratch_dir(), "-config-dir", str(config_dir))
    try:
        # the CA and the bootstrap entries are written once the -dev agent leads: wait for them, briefly
        config = wait_for(lambda: get_config(proc)["Config"], 20, what="the CA configuration")
        assert (config["LeafCertTTL"], config["CSRMaxPerSecond"]) == ("1m30s", 7), config

        def read() -> Result | None:
            result = CliRunner().invoke(cli, ["config", "read", "-kind", "service-defaults", "-name", "boot",
                                              "-http-addr", proc.http_addr])
            return result if result.exit_code == 0 else None

        assert json.loads(wait_for(read, 20, what="the bootstrap entry").stdout)["Protocol"] == "http"
    finally:
        proc.stop()
