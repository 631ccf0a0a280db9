"""What the leader's CA does, pure: the commands for first leadership, a configuration change (a rotation
when the key changes) and a prune tick, given the catalog's ConnectState, the configuration and `now`.

The CA configuration is stored (ConnectState.config) in Consul's shape, so that GET
/v1/connect/ca/configuration can answer it as is: `{"Provider": "consul", "Config": {"LeafCertTTL": "72h",
...}, "State": None, "ForceWithoutCrossSigning": False}`. Durations are Go duration strings ("72h", "90m").
Unlike Consul, `Config` never holds `PrivateKey` (nor `RootCert`): a supplied key goes into the new root,
which only servers hold, and the roots endpoint serves the certificate. A `Config` sent to set-config may use
Consul's CamelCase or snake_case keys; keys it leaves out keep their current value (Consul resets them to
its defaults). Key types: the roots here are EC (P-256, or P-384 with PrivateKeyBits 384); leaves are P-256.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..catalog import commands
from ..catalog.connect_state import ConnectState, RootRow
from ..config import duration
from . import ca

HOUR = 3600.0
LEAF_TTL_MIN = 1 * HOUR  # Consul's minimum; AgentConfig.connect_test_min_leaf_ttl lowers it (tests only)
LEAF_TTL_MAX = 8760 * HOUR  # one year
TTL_MAX = 100 * 8760 * HOUR
PRUNE_INTERVAL_MAX = 60.0
MAX_PEM_INPUT = 32 * 1024
MAX_DURATION_TEXT = 64
MAX_CONFIG_KEYS = 64  # a CA Config map has about a dozen known keys

# Canonical Config keys (Consul's) and their defaults.
DEFAULTS: dict[str, Any] = {
    "LeafCertTTL": "72h", "RootCertTTL": "87600h", "IntermediateCertTTL": "8760h", "RotationPeriod": "2160h",
    "PrivateKeyType": "ec", "PrivateKeyBits": 256, "CSRMaxPerSecond": 50, "CSRMaxConcurrent": 0,
}
DURATION_KEYS = ("LeafCertTTL", "RootCertTTL", "IntermediateCertTTL", "RotationPeriod")
SECRET_KEYS = ("PrivateKey", "RootCert")  # accepted in set-config, never stored in Config
_BY_FOLDED = {k.lower().replace("_", ""): k for k in (*DEFAULTS, *SECRET_KEYS)}
_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1()}


class CAConfigError(ValueError):
    """A CA configuration the CA refuses; `field` names the key (e.g. "Config.LeafCertTTL")."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"CA configuration field {field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class CASettings:
    """The stored configuration's values the CA acts on, in seconds."""

    leaf_ttl: float
    root_ttl: float
    csr_max_per_second: float  # 0: no rate limit
    csr_max_concurrent: int  # 0: no cap
    key_bits: int

    @property
    def prune_interval(self) -> float:
        """How often the leader looks for roots to prune: min(leaf TTL / 2, 60 s)."""
        return min(self.leaf_ttl / 2, PRUNE_INTERVAL_MAX)


# ---------------------------------------------------------------------------------------------- durations

def parse_duration(value: Any, field: str) -> float:
    """A Go duration string ("72h", "1h30m", "500ms") in seconds (config/duration.py reads it); anything
    else, a negative one included, is a CAConfigError."""
    if not isinstance(value, str) or not value or len(value) > MAX_DURATION_TEXT:
        raise CAConfigError(field, f'must be a duration string such as "72h", not {_show(value)}')
    try:
        seconds = duration.parse_duration(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise CAConfigError(field, f"{value!r} is not a duration (e.g. \"72h\", \"1h30m\", \"10s\")")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as a compact Go duration string: 259200 -> "72h", 5400 -> "1h30m", 0.5 -> "500ms"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{_num(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    out = (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if minutes else "")
    secs = round(secs, 6)
    return out + (f"{_num(secs)}s" if secs or not out else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6f}".rstrip("0")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------- config

def normalize_config(raw: Any, current: dict[str, Any] | None = None,
                     min_leaf_ttl: float = LEAF_TTL_MIN) -> tuple[dict[str, Any], dict[str, str]]:
    """Check a `Config` map (CamelCase or snake_case keys): (the Config to store, the secrets it carried:
    PrivateKey/RootCert PEM). Keys left out keep `current`'s value, else Consul's default."""
    if not isinstance(raw, dict):
        raise CAConfigError("Config", "must be a map")
    if len(raw) > MAX_CONFIG_KEYS:
        raise CAConfigError("Config", "has too many keys")
    out = {k: v for k, v in (current or DEFAULTS).items() if k in DEFAULTS}
    for k, v in DEFAULTS.items():
        out.setdefault(k, v)
    secrets: dict[str, str] = {}
    for key, value in raw.items():
        name = _BY_FOLDED.get(key.lower().replace("_", "")) if isinstance(key, str) else None
        if name is None:
            raise CAConfigError(f"Config.{_show(key).strip(chr(39))}", "unknown field")
        field = f"Config.{name}"
        if name in SECRET_KEYS:
            if value in ("", None):
                continue
            if not isinstance(value, str) or len(value) > MAX_PEM_INPUT:
                raise CAConfigError(field, f"must be PEM text of at most {MAX_PEM_INPUT} bytes")
            secrets[name] = value
        elif name in DURATION_KEYS:
            parse_duration(value, field)
            out[name] = value
        elif name == "PrivateKeyType":
            if value != "ec":
                raise CAConfigError(field, f'must be "ec" (this CA makes EC roots), not {_show(value)}')
            out[name] = value
        elif name == "PrivateKeyBits":
            if type(value) is not int or value not in _CURVES:
                raise CAConfigError(field, f"must be 256 or 384 (EC P-256 or P-384), not {_show(value)}")
            out[name] = value
        elif name == "CSRMaxPerSecond":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e6:
                raise CAConfigError(field, f"must be a number from 0 (no limit) to 1000000, not {_show(value)}")
            out[name] = value
        elif name == "CSRMaxConcurrent":
            if type(value) is not int or not 0 <= value <= 100_000:
                raise CAConfigError(field, f"must be an integer from 0 (no cap) to 100000, not {_show(value)}")
            out[name] = value
    if "RootCert" in secrets and "PrivateKey" not in secrets:
        raise CAConfigError("Config.RootCert", "needs the root's PrivateKey with it")
    _check_ranges(out, min_leaf_ttl)
    return out, secrets


def _check_ranges(cfg: dict[str, Any], min_leaf_ttl: float) -> None:
    leaf = parse_duration(cfg["LeafCertTTL"], "Config.LeafCertTTL")
    if not min_leaf_ttl <= leaf <= LEAF_TTL_MAX:
        raise CAConfigError("Config.LeafCertTTL", f"must be between {format_duration(min_leaf_ttl)} and "
                                                  f"{format_duration(LEAF_TTL_MAX)}, not {cfg['LeafCertTTL']}")
    for name in ("RootCertTTL", "IntermediateCertTTL"):
        ttl = parse_duration(cfg[name], f"Config.{name}")
        if not leaf <= ttl <= TTL_MAX:
            raise CAConfigError(f"Config.{name}", f"must be at least LeafCertTTL ({cfg['LeafCertTTL']}) and at "
                                                  f"most {format_duration(TTL_MAX)}, not {cfg[name]}")
    rotation = parse_duration(cfg["RotationPeriod"], "Config.RotationPeriod")
    if not 0 < rotation <= TTL_MAX:
        raise CAConfigError("Config.RotationPeriod", f"must be above 0 and at most {format_duration(TTL_MAX)}")


def config_from_agent(ca_config: dict[str, Any], provider: str = "consul",
                      min_leaf_ttl: float = LEAF_TTL_MIN) -> tuple[dict[str, Any], dict[str, str]]:
    """The stored configuration (Consul's shape) from AgentConfig.ca_config (snake_case keys, durations in
    seconds), and the secrets (private_key/root_cert) it supplies."""
    raw: dict[str, Any] = {}
    for key, value in ca_config.items():
        name = _BY_FOLDED.get(str(key).lower().replace("_", ""))
        if name in DURATION_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
            value = format_duration(float(value))
        raw[name or str(key)] = value
    cfg, secrets = normalize_config(raw, None, min_leaf_ttl)
    return stored_config(provider, cfg, False), secrets


def stored_config(provider: str, cfg: dict[str, Any], force_without_cross_signing: bool) -> dict[str, Any]:
    """Consul's CA configuration shape, as ConnectState keeps it."""
    if provider != "consul":
        raise CAConfigError("Provider", f'must be "consul" (the built-in CA), not {_show(provider)}')
    return {"Provider": provider, "Config": dict(cfg), "State": None,
            "ForceWithoutCrossSigning": bool(force_without_cross_signing)}


def settings_of(stored: dict[str, Any]) -> CASettings:
    """The values the CA acts on, from a stored configuration (Consul's defaults where one is missing)."""
    inner = stored.get("Config") if isinstance(stored, dict) else None
    cfg = {**DEFAULTS, **(inner if isinstance(inner, dict) else {})}

    def duration(name: str) -> float:
        try:
            return parse_duration(cfg[name], name)
        except CAConfigError:
            return parse_duration(DEFAULTS[name], name)

    per_second = cfg.get("CSRMaxPerSecond")
    concurrent = cfg.get("CSRMaxConcurrent")
    bits = cfg.get("PrivateKeyBits")
    return CASettings(leaf_ttl=duration("LeafCertTTL"), root_ttl=duration("RootCertTTL"),
                      csr_max_per_second=float(per_second) if isinstance(per_second, int | float) else 50.0,
                      csr_max_concurrent=concurrent if type(concurrent) is int else 0,
                      key_bits=bits if type(bits) is int and bits in _CURVES else 256)


# ---------------------------------------------------------------------------------------------- roots

def make_root(trust_domain: str, now: datetime.datetime, ttl: float, bits: int = 256,
              key_pem: str | None = None, cert_pem: str | None = None) -> ca.CARoot:
    """A root: a new EC key of `bits` (ca.new_root for P-256), or the supplied key (and certificate,
    checked to be a CA certificate for that key, valid now)."""
    if key_pem is None and bits == 256:
        return ca.new_root(trust_domain, now, datetime.timedelta(seconds=ttl))
    if key_pem is None:
        key = ec.generate_private_key(_CURVES[bits])
    else:
        key = _load_key(key_pem)
    if cert_pem is None:
        cert = ca.self_signed_root(key, trust_domain, now, datetime.timedelta(seconds=ttl))
    else:
        cert = _load_ca_cert(cert_pem, key, now)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return ca.CARoot(ca.colon_hex(cert.fingerprint(hashes.SHA256())), "meshagent CA Primary Cert",
                     cert.serial_number, ca.colon_hex(ski.digest), cert.not_valid_before_utc,
                     cert.not_valid_after_utc, pem, key_text, trust_domain)


def _load_key(key_pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CAConfigError("Config.PrivateKey", f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.key_size not in _CURVES:
        raise CAConfigError("Config.PrivateKey", "must be an EC P-256 or P-384 key")
    return key


def _load_ca_cert(cert_pem: str, key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CAConfigError("Config.RootCert", "is not a CA certificate (no basic constraints)") from None
    except ValueError as exc:
        raise CAConfigError("Config.RootCert", f"not a PEM certificate: {exc}") from None
    if not constraints.ca:
        raise CAConfigError("Config.RootCert", "is not a CA certificate")
    if cert.public_key() != key.public_key():
        raise CAConfigError("Config.RootCert", "does not match Config.PrivateKey")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise CAConfigError("Config.RootCert", "is not valid now")
    return cert


def root_fields(root: ca.CARoot) -> dict[str, Any]:
    """A root as a connect-ca command carries it (serial as text, times as epoch seconds)."""
    return {"id": root.id, "name": root.name, "serial_number": str(root.serial_number),
            "signing_key_id": root.signing_key_id, "not_before": root.not_before.timestamp(),
            "not_after": root.not_after.timestamp(), "root_cert": root.root_cert, "private_key": root.private_key,
            "intermediate_certs": list(root.intermediate_certs)}


def ca_root(row: RootRow, trust_domain: str) -> ca.CARoot:
    """The catalog's root row as ca.py's CARoot (to sign with: the leader's rows hold the key)."""
    utc = datetime.UTC
    return ca.CARoot(row.id, row.name, int(row.serial_number), row.signing_key_id,
                     datetime.datetime.fromtimestamp(row.not_before, utc),
                     datetime.datetime.fromtimestamp(row.not_after, utc), row.root_cert, row.private_key,
                     trust_domain, row.intermediate_certs)


# ---------------------------------------------------------------------------------------------- plans

def leadership_commands(state: ConnectState, agent_ca_config: dict[str, Any], provider: str,
                        now: datetime.datetime, min_leaf_ttl: float = LEAF_TTL_MIN,
                        new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> list[dict[str, Any]]:
    """On gaining leadership: one `init` (cluster ID, trust domain, first root, configuration) when the
    CA has never been set up; nothing otherwise (the roots in Raft are kept, never re-made)."""
    if state.cluster_id:
        return []
    stored, secrets = config_from_agent(agent_ca_config, provider, min_leaf_ttl)
    cluster_id = new_id()
    trust_domain = f"{cluster_id}.mesh"
    cfg = stored["Config"]
    root = make_root(trust_domain, now, parse_duration(cfg["RootCertTTL"], "RootCertTTL"), cfg["PrivateKeyBits"],
                     secrets.get("PrivateKey"), secrets.get("RootCert"))
    return [commands.connect_ca("init", cluster_id=cluster_id, trust_domain=trust_domain,
                                root=root_fields(root), config=stored)]


def set_config_commands(state: ConnectState, provider: str, raw: Any, force_without_cross_signing: bool,
                        now: datetime.datetime, min_leaf_ttl: float = LEAF_TTL_MIN) -> list[dict[str, Any]]:
    """A set-config: the new configuration, then a `rotate` when the key changes (a supplied PrivateKey
    other than the active root's, or new PrivateKeyBits); the new root is cross-signed by the old one unless
    ForceWithoutCrossSigning. Raises CAConfigError naming the field."""
    if not state.cluster_id:
        raise CAConfigError("Config", "the CA is not initialized yet (no leader has set it up)")
    current = state.config.get("Config") if isinstance(state.config.get("Config"), dict) else None
    cfg, secrets = normalize_config(raw, current, min_leaf_ttl)
    active = state.active_root
    if active is None:
        raise CAConfigError("Config", "the CA has no active root")
    old = ca_root(active, state.trust_domain)
    old_cert = x509.load_pem_x509_certificate(old.root_cert.encode())
    key_pem = secrets.get("PrivateKey")
    key = _load_key(key_pem) if key_pem is not None else None
    if key is not None:
        cfg["PrivateKeyBits"] = key.curve.key_size  # the supplied key's, whatever the map said
    cmds = [commands.connect_ca("set-config", config=stored_config(provider, cfg, force_without_cross_signing))]
    if key is not None:
        if key.public_key() == old_cert.public_key() and secrets.get("RootCert") in (None, old.root_cert):
            return cmds  # the active root's own key (a GET-modify-PUT): nothing to rotate
    elif cfg["PrivateKeyBits"] == (current or DEFAULTS).get("PrivateKeyBits", DEFAULTS["PrivateKeyBits"]):
        return cmds  # same key type: a configuration change only
    ttl = parse_duration(cfg["RootCertTTL"], "RootCertTTL")
    new = make_root(state.trust_domain, now, ttl, cfg["PrivateKeyBits"], key_pem, secrets.get("RootCert"))
    if new.id in state.roots:
        raise CAConfigError("Config.RootCert", "is already one of this CA's roots")
    inter = () if force_without_cross_signing else (ca.cross_sign(old, new, now),)
    new_fields = root_fields(new)
    new_fields["intermediate_certs"] = list(inter)
    cmds.append(commands.connect_ca("rotate", root=new_fields, rotated_at=now.timestamp()))
    return cmds


def prune_command(state: ConnectState, now: float) -> dict[str, Any] | None:
    """A `prune` of the roots inactive for more than 2 x LeafCertTTL, or None when there is none."""
    before = now - 2 * settings_of(state.config).leaf_ttl
    stale = [r for r in state.roots.values()
             if not r.active and r.rotated_out_at is not None and r.rotated_out_at < before]
    return commands.connect_ca("prune", before=before) if stale else None
