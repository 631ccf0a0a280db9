"""Consul-shaped JSON for the mesh CA: roots (and their PEM bundle), the CA configuration, a leaf certificate.

Field names and types follow Consul's Go structs (IndexedCARoots, CARoot, CAConfiguration, IssuedCert), so
unmodified clients parse them. Private keys of roots are never emitted (client agents do not even hold
them); a leaf's PrivateKeyPEM is, as Consul does, since the local service needs it. A root's SerialNumber is
Consul's uint64: our serials are wider (up to 159 bits), so the low 64 bits are reported, as Go's
big.Int.Uint64() does in Consul; the certificate itself carries the full serial.
"""

from __future__ import annotations

import datetime
import functools
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

if TYPE_CHECKING:
    from ..catalog.connect_state import ConnectState, RootRow
    from ..connect.leaf_plan import LeafRecord

_UINT64 = (1 << 64) - 1
_SECRET_CONFIG_KEYS = frozenset({"PrivateKey", "private_key", "RootCert", "root_cert"})


def rfc3339(epoch: float) -> str:
    """An epoch time as Go's time.Time marshals a UTC time with whole seconds: 2028-05-22T21:39:23Z."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def colon_hex_int(value: int) -> str:
    """An integer's big-endian bytes as colon hex, as Consul prints a leaf's serial (connect.HexString)."""
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def _serial_uint64(text: str) -> int:
    try:
        return int(text) & _UINT64
    except ValueError:
        try:
            return int(text.replace(":", ""), 16) & _UINT64
        except ValueError:
            return 0


@functools.lru_cache(maxsize=64)
def _key_type(cert_pem: str) -> tuple[str, int]:
    """(PrivateKeyType, PrivateKeyBits) of a root, read from its certificate's public key."""
    try:
        key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    except ValueError:
        return "ec", 256
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec", key.curve.key_size
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa", key.key_size
    return "ec", 256


def root_json(row: RootRow) -> dict[str, Any]:
    """One root as in /v1/connect/ca/roots (never its private key)."""
    key_type, key_bits = _key_type(row.root_cert)
    return {
        "ID": row.id,
        "Name": row.name,
        "SerialNumber": _serial_uint64(row.serial_number),
        "SigningKeyID": row.signing_key_id,
        "ExternalTrustDomain": "",
        "NotBefore": rfc3339(row.not_before),
        "NotAfter": rfc3339(row.not_after),
        "RootCert": _with_newline(row.root_cert),
        "IntermediateCerts": [_with_newline(c) for c in row.intermediate_certs] or None,
        "Active": row.active,
        "PrivateKeyType": key_type,
        "PrivateKeyBits": key_bits,
        "CreateIndex": row.create_index,
        "ModifyIndex": row.modify_index,
    }


def _ordered_roots(connect: ConnectState) -> list[RootRow]:
    # The active root first, then the others oldest first: stable for clients that diff the list.
    return sorted(connect.roots.values(), key=lambda r: (not r.active, r.create_index, r.id))


def roots_json(connect: ConnectState) -> dict[str, Any]:
    """IndexedCARoots: {ActiveRootID, TrustDomain, Roots}."""
    active = connect.active_root
    return {
        "ActiveRootID": active.id if active is not None else "",
        "TrustDomain": connect.trust_domain,
        "Roots": [root_json(r) for r in _ordered_roots(connect)],
    }


def roots_pem(connect: ConnectState) -> str:
    """Every trusted root certificate (and its intermediates), PEM, concatenated: `?pem=true`."""
    parts: list[str] = []
    for row in _ordered_roots(connect):
        parts.append(_with_newline(row.root_cert))
        parts.extend(_with_newline(c) for c in row.intermediate_certs)
    return "".join(parts)


def ca_config_json(connect: ConnectState, index: int, default_provider: str = "consul") -> dict[str, Any]:
    """CAConfiguration: {Provider, Config, State, ForceWithoutCrossSigning, CreateIndex, ModifyIndex}.

    Config never carries PrivateKey (Consul's does; here only servers hold root keys). The configuration has
    no index of its own in the catalog: CreateIndex is the CA's first root, ModifyIndex the CA's last change."""
    stored = connect.config
    inner = stored.get("Config")  # ca_plan.stored_config always nests it; {} before the CA is initialized
    provider = stored.get("Provider") or default_provider
    config = inner if isinstance(inner, dict) else {}
    state = stored.get("State")
    created = min((r.create_index for r in connect.roots.values()), default=index)
    return {
        "Provider": provider,
        "Config": {k: v for k, v in config.items() if k not in _SECRET_CONFIG_KEYS},
        "State": state if isinstance(state, dict) else None,
        "ForceWithoutCrossSigning": bool(stored.get("ForceWithoutCrossSigning", False)),
        "CreateIndex": created,
        "ModifyIndex": index,
    }


def leaf_cert_pem(leaf: LeafRecord) -> str:
    """Consul's CertPEM: the leaf, then the intermediates that chain it to a root."""
    return "".join(_with_newline(p) for p in (leaf.cert_pem, *leaf.intermediate_pems))


def leaf_json(leaf: LeafRecord) -> dict[str, Any]:
    """IssuedCert as /v1/agent/connect/ca/leaf/:service answers it (the key included, for the service)."""
    return {
        "SerialNumber": colon_hex_int(leaf.serial_number),
        "CertPEM": leaf_cert_pem(leaf),
        "PrivateKeyPEM": leaf.private_key_pem,
        "Service": leaf.service,
        "ServiceURI": leaf.service_uri,
        "ValidAfter": rfc3339(leaf.valid_after),
        "ValidBefore": rfc3339(leaf.valid_before),
        "CreateIndex": leaf.index,
        "ModifyIndex": leaf.index,
    }


def authorize_json(authorized: bool, reason: str) -> dict[str, Any]:
    """The answer of POST /v1/agent/connect/authorize."""
    return {"Authorized": authorized, "Reason": reason}


def _with_newline(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"
