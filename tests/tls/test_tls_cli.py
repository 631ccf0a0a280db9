"""`meshagent tls ca create` / `cert create`: Consul's file names, flags and SANs; checked with openssl."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from meshagent.cli.main import cli


def _run(tmp: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["tls", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_ca_and_certificates_with_consul_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run(tmp_path, "ca", "create", "-days", "30")
    assert stat.S_IMODE(os.stat("mesh-agent-ca-key.pem").st_mode) == 0o600
    again = CliRunner().invoke(cli, ["tls", "ca", "create"])
    assert again.exit_code != 0 and "already exists" in again.output  # never overwrites a CA
    _run(tmp_path, "cert", "create", "-server", "-dc", "east", "-additional-dnsname", "db.example",
         "-additional-ipaddress", "127.0.0.90")
    _run(tmp_path, "cert", "create", "-server", "-dc", "east")
    _run(tmp_path, "cert", "create", "-client", "-dc", "east")
    assert sorted(p.name for p in tmp_path.glob("east-*.pem")) == [
        "east-client-mesh-0-key.pem", "east-client-mesh-0.pem", "east-server-mesh-0-key.pem",
        "east-server-mesh-0.pem", "east-server-mesh-1-key.pem", "east-server-mesh-1.pem"]
    text = subprocess.run(["openssl", "x509", "-in", "east-server-mesh-0.pem", "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    for name in ("DNS:server.east.mesh", "DNS:localhost", "DNS:db.example", "IP Address:127.0.0.90"):
        assert name in text
    client = subprocess.run(["openssl", "x509", "-in", "east-client-mesh-0.pem", "-noout", "-text"],
                            capture_output=True, text=True, check=True).stdout
    assert "DNS:client.east.mesh" in client and "server.east.mesh" not in client
    for cert in ("east-server-mesh-1.pem", "east-client-mesh-0.pem"):
        verify = subprocess.run(["openssl", "verify", "-CAfile", "mesh-agent-ca.pem", cert], capture_output=True,
                                text=True, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    bad = CliRunner().invoke(cli, ["tls", "cert", "create", "-server", "-client"])
    assert bad.exit_code != 0
