"""The CA leader's plans (agent/connect/ca_plan.py), pure: init once, configuration checks naming the field,
rotation with cross-signing, prune times."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from meshagent.agent.catalog.connect_state import ConnectState
from meshagent.agent.config.connect_defaults import default_ca_config
from meshagent.agent.connect import ca, ca_plan
from meshagent.agent.connect.ca_plan import CAConfigError
from meshagent.agent.connect.spiffe import ServiceID

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
HOUR = 3600.0


def _initialized(ca_config: dict[str, Any] | None = None, min_leaf_ttl: float = HOUR) -> ConnectState:
    state = ConnectState()
    [init] = ca_plan.leadership_commands(state, ca_config or default_ca_config(), "consul", NOW, min_leaf_ttl,
                                         new_id=lambda: "c0ffee00-0000-4000-8000-000000000001")
    state.apply(1, init)
    return state


def _apply(state: ConnectState, cmds: list[dict[str, Any]], start: int = 10) -> None:
    for i, cmd in enumerate(cmds):
        state.apply(start + i, cmd)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


@pytest.mark.parametrize(("text", "seconds"), [("72h", 259200.0), ("1h30m", 5400.0), ("90m", 5400.0),
                                               ("2s", 2.0), ("1.5h", 5400.0), ("500ms", 0.5), ("0", 0.0)])
def test_go_durations_parse(text: str, seconds: float) -> None:
    assert ca_plan.parse_duration(text, "X") == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [259200.0, 5400.0, 2.0, 0.5, 3661.0, 1.25, 87600 * HOUR])
def test_durations_format_compactly_and_parse_back(seconds: float) -> None:
    text = ca_plan.format_duration(seconds)
    assert ca_plan.parse_duration(text, "X") == pytest.approx(seconds)
    assert ca_plan.format_duration(259200.0) == "72h" and ca_plan.format_duration(5400.0) == "1h30m"


@pytest.mark.parametrize("bad", ["", "72", "h", "72hours", "-1h", "1h 30m", 72, 3.5, None, True, ["72h"],
                                 "9" * 100 + "h"])
def test_bad_durations_name_the_field(bad: Any) -> None:
    with pytest.raises(CAConfigError) as info:
        ca_plan.parse_duration(bad, "Config.LeafCertTTL")
    assert info.value.field == "Config.LeafCertTTL"


def test_init_once_with_consul_defaults_a_fresh_trust_domain_and_no_private_key_in_config() -> None:
    state = _initialized()
    assert state.cluster_id == "c0ffee00-0000-4000-8000-000000000001"
    assert state.trust_domain == f"{state.cluster_id}.mesh"
    assert state.config == {"Provider": "consul", "State": None, "ForceWithoutCrossSigning": False, "Config": {
        "LeafCertTTL": "72h", "RootCertTTL": "87600h", "IntermediateCertTTL": "8760h", "RotationPeriod": "2160h",
        "PrivateKeyType": "ec", "PrivateKeyBits": 256, "CSRMaxPerSecond": 50.0, "CSRMaxConcurrent": 0}}
    root = state.active_root
    assert root is not None and root.private_key and root.id
    cert = _cert(root.root_cert)
    assert cert.not_valid_after_utc - NOW >= datetime.timedelta(days=3649)
    # Leadership again (a new leader, a restart): the CA in Raft is kept, never re-made.
    assert ca_plan.leadership_commands(state, default_ca_config(), "consul", NOW) == []


def test_init_takes_the_agent_ca_config_and_a_supplied_root_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    state = _initialized({**default_ca_config(), "leaf_cert_ttl": 2.0, "csr_max_per_second": 5.0,
                          "private_key": key_pem}, min_leaf_ttl=1.0)
    cfg = state.config["Config"]
    assert cfg["LeafCertTTL"] == "2s" and cfg["CSRMaxPerSecond"] == 5.0 and "PrivateKey" not in cfg
    assert state.active_root is not None and _cert(state.active_root.root_cert).public_key() == key.public_key()
    settings = ca_plan.settings_of(state.config)
    assert settings.leaf_ttl == 2.0 and settings.csr_max_per_second == 5.0 and settings.prune_interval == 1.0


@pytest.mark.parametrize(("raw", "field"), [
    ({"LeafCertTTL": "30m"}, "Config.LeafCertTTL"),  # below Consul's 1 h minimum
    ({"LeafCertTTL": "8761h"}, "Config.LeafCertTTL"),  # above one year
    ({"LeafCertTTL": 3600}, "Config.LeafCertTTL"),  # a number is ambiguous: refused
    ({"RootCertTTL": "1h"}, "Config.RootCertTTL"),  # shorter than the leaves
    ({"RotationPeriod": "0"}, "Config.RotationPeriod"),
    ({"PrivateKeyType": "rsa"}, "Config.PrivateKeyType"),
    ({"PrivateKeyBits": 2048}, "Config.PrivateKeyBits"),
    ({"PrivateKeyBits": "256"}, "Config.PrivateKeyBits"),
    ({"CSRMaxPerSecond": -1}, "Config.CSRMaxPerSecond"),
    ({"CSRMaxPerSecond": True}, "Config.CSRMaxPerSecond"),
    ({"CSRMaxConcurrent": 1.5}, "Config.CSRMaxConcurrent"),
    ({"Bogus": 1}, "Config.Bogus"),
    ({"RootCert": "-----BEGIN CERTIFICATE-----"}, "Config.RootCert"),  # without its key
    ({"PrivateKey": "x" * 40000}, "Config.PrivateKey"),
    ({"PrivateKey": "not a key"}, "Config.PrivateKey"),
    ([1, 2], "Config"),
])
def test_bad_configuration_is_refused_naming_the_field(raw: Any, field: str) -> None:
    state = _initialized()
    with pytest.raises(CAConfigError) as info:
        ca_plan.set_config_commands(state, "consul", raw, False, NOW)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)


def test_another_provider_is_refused() -> None:
    with pytest.raises(CAConfigError) as info:
        ca_plan.set_config_commands(_initialized(), "vault", {}, False, NOW)
    assert info.value.field == "Provider"


def test_a_plain_change_keeps_the_root_and_unsent_keys_and_takes_snake_case() -> None:
    state = _initialized()
    root_id = state.active_root.id if state.active_root else ""
    cmds = ca_plan.set_config_commands(state, "consul", {"leaf_cert_ttl": "24h", "CSRMaxPerSecond": 10}, False, NOW)
    assert [c["action"] for c in cmds] == ["set-config"]
    _apply(state, cmds)
    cfg = state.config["Config"]
    assert cfg["LeafCertTTL"] == "24h" and cfg["CSRMaxPerSecond"] == 10 and cfg["RootCertTTL"] == "87600h"
    # Sending back what GET answered (the active root's own key included) rotates nothing either.
    assert state.active_root is not None
    again = ca_plan.set_config_commands(state, "consul", {**cfg, "PrivateKey": state.active_root.private_key,
                                                          "RootCert": state.active_root.root_cert}, False, NOW)
    assert [c["action"] for c in again] == ["set-config"]
    assert state.active_root.id == root_id


def test_the_test_minimum_lowers_the_leaf_ttl_floor() -> None:
    state = _initialized()
    with pytest.raises(CAConfigError):
        ca_plan.set_config_commands(state, "consul", {"LeafCertTTL": "2s"}, False, NOW)
    cmds = ca_plan.set_config_commands(state, "consul", {"LeafCertTTL": "2s"}, False, NOW, min_leaf_ttl=1.0)
    assert cmds[0]["config"]["Config"]["LeafCertTTL"] == "2s"


def _leaf_chain_checks(state: ConnectState, old_cert: x509.Certificate) -> None:
    """A leaf signed by the new active root chains to the old root through the cross-signed intermediate."""
    assert state.active_root is not None
    new = ca_plan.ca_root(state.active_root, state.trust_domain)
    _, csr = ca.leaf_key_and_csr(ServiceID(state.trust_domain, "default", "dc1", "web"))
    leaf = _cert(ca.sign_leaf(new, csr, "dc1", NOW).cert_pem)
    [inter_pem] = new.intermediate_certs
    inter = _cert(inter_pem)
    inter.verify_directly_issued_by(old_cert)
    leaf.verify_directly_issued_by(inter)
    leaf.verify_directly_issued_by(_cert(new.root_cert))


def test_new_key_bits_rotate_with_a_cross_signed_root_and_the_old_root_stays_inactive() -> None:
    state = _initialized()
    assert state.active_root is not None
    old_id, old_cert = state.active_root.id, _cert(state.active_root.root_cert)
    cmds = ca_plan.set_config_commands(state, "consul", {"PrivateKeyBits": 384}, False, NOW)
    assert [c["action"] for c in cmds] == ["set-config", "rotate"]
    assert cmds[1]["rotated_at"] == NOW.timestamp()
    _apply(state, cmds)
    assert state.active_root.id != old_id and not state.roots[old_id].active
    assert state.roots[old_id].rotated_out_at == NOW.timestamp()
    key = _cert(state.active_root.root_cert).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == 384
    _leaf_chain_checks(state, old_cert)


def test_a_supplied_key_and_certificate_rotate_and_must_match() -> None:
    state = _initialized()
    assert state.active_root is not None
    old_cert = _cert(state.active_root.root_cert)
    other = ca.new_root("elsewhere.mesh", NOW)
    mine = ca.new_root(state.trust_domain, NOW)  # as an operator's `tls ca create` would make it
    with pytest.raises(CAConfigError) as info:
        ca_plan.set_config_commands(state, "consul", {"PrivateKey": mine.private_key, "RootCert": other.root_cert},
                                    False, NOW)
    assert info.value.field == "Config.RootCert"
    cmds = ca_plan.set_config_commands(state, "consul", {"PrivateKey": mine.private_key, "RootCert": mine.root_cert},
                                       False, NOW)
    _apply(state, cmds)
    assert state.active_root.id == mine.id and state.active_root.root_cert == mine.root_cert
    assert "PrivateKey" not in state.config["Config"] and "RootCert" not in state.config["Config"]
    _leaf_chain_checks(state, old_cert)
    # Back to the old root (still in the bundle, inactive): refused rather than made active twice.
    old_row = next(r for r in state.roots.values() if not r.active)
    with pytest.raises(CAConfigError) as info:
        ca_plan.set_config_commands(state, "consul", {"PrivateKey": old_row.private_key,
                                                      "RootCert": old_row.root_cert}, False, NOW)
    assert "already" in str(info.value)


def test_force_without_cross_signing_rotates_without_an_intermediate() -> None:
    state = _initialized()
    cmds = ca_plan.set_config_commands(state, "consul", {"PrivateKeyBits": 384}, True, NOW)
    _apply(state, cmds)
    assert state.active_root is not None and state.active_root.intermediate_certs == ()
    assert state.config["ForceWithoutCrossSigning"] is True


def test_prune_only_roots_inactive_for_more_than_twice_the_leaf_ttl() -> None:
    state = _initialized({**default_ca_config(), "leaf_cert_ttl": 10.0}, min_leaf_ttl=1.0)
    assert state.active_root is not None
    old_id = state.active_root.id
    t = NOW.timestamp()
    assert ca_plan.prune_command(state, t + 10_000) is None  # nothing rotated out: nothing to prune
    _apply(state, ca_plan.set_config_commands(state, "consul", {"PrivateKeyBits": 384}, False, NOW, 1.0))
    assert ca_plan.prune_command(state, t + 19.9) is None  # inactive for less than 2 x 10 s
    cmd = ca_plan.prune_command(state, t + 20.5)
    assert cmd is not None and cmd["before"] == pytest.approx(t + 0.5)
    state.apply(50, cmd)
    assert old_id not in state.roots and state.active_root is not None and len(state.roots) == 1
    assert ca_plan.settings_of(state.config).prune_interval == 5.0


def test_settings_fall_back_to_defaults_on_a_damaged_stored_config() -> None:
    s = ca_plan.settings_of({"Config": {"LeafCertTTL": 5, "CSRMaxPerSecond": "x", "PrivateKeyBits": 7}})
    assert s.leaf_ttl == 72 * HOUR and s.csr_max_per_second == 50.0 and s.key_bits == 256
    assert ca_plan.settings_of({}).prune_interval == 60.0


def test_set_config_before_init_is_refused() -> None:
    with pytest.raises(CAConfigError):
        ca_plan.set_config_commands(ConnectState(), "consul", {}, False, NOW)
