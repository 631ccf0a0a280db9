"""Certificates for :8300: Consul-style CA and agent certificates, a CA derived from a gossip key, issuing.

Everything here is `cryptography`'s X.509 builder; no cipher or signature of our own.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Role = Literal["server", "client"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# HKDF inputs for the keyring CA: changing either changes every keyring-derived certificate (a new version).
_HKDF_SALT = b"meshagent :8300 keyring CA"
_HKDF_INFO = b"ca-key v1"
# A fixed validity for the derived CA, so that every agent builds the same certificate bytes from a key.
_DERIVED_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_DERIVED_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
KEYRING_CA_PREFIX = "meshagent keyring CA "


@dataclass(frozen=True)
class CA:
    """A certificate authority: its certificate and the private key that signs with it."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA key, PEM (PKCS#8, unencrypted: the file's 0600 mode protects it, as Consul's)."""
        return key_pem(self.key)


def key_pem(key: PrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def role_name(role: Role, datacenter: str, domain: str = "mesh") -> str:
    """The DNS name a role's certificate carries: `server.<dc>.<domain>` (Consul's verify_server_hostname)."""
    return f"{role}.{datacenter}.{domain.strip('.')}"


def _signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _ca_cert(key: PrivateKey, common_name: str, serial: int, not_before: datetime.datetime,
             not_after: datetime.datetime, permitted: list[str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
               .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
    if permitted:
        # Consul's -name-constraint: the CA may only sign names under these (and localhost).
        builder = builder.add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(n) for n in permitted], excluded_subtrees=None), critical=True)
    return builder.sign(key, _signing_hash(key))


def new_ca(days: int = 1825, domain: str = "mesh", common_name: str = "",
           name_constraints: list[str] | None = None) -> CA:
    """A new random CA (EC P-256), as `meshagent tls ca create` writes it."""
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    now = datetime.datetime.now(datetime.UTC)
    cn = common_name or f"Meshagent Agent CA {serial % 10**18}"
    cert = _ca_cert(key, cn, serial, now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=days),
                    name_constraints or [])
    return CA(cert, key)


def keyring_ca(gossip_key: bytes) -> CA:
    """The CA every holder of `gossip_key` derives alike (HKDF-SHA256 -> Ed25519, deterministic signature):
    the same key gives the same CA certificate and key on every agent, another key an unrelated one."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(gossip_key)
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tag = hashlib.sha256(public).hexdigest()[:16]  # names the key without revealing it; tells CAs apart
    serial = int.from_bytes(hashlib.sha256(b"serial" + public).digest()[:16], "big") >> 1
    cert = _ca_cert(key, KEYRING_CA_PREFIX + tag, serial, _DERIVED_NOT_BEFORE, _DERIVED_NOT_AFTER, [])
    return CA(cert, key)


def issue(ca: CA, role: Role, datacenter: str, *, domain: str = "mesh", days: int = 365,
          dns_names: list[str] | None = None, ip_addresses: list[str] | None = None,
          public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | None = None,
          common_name: str = "") -> tuple[bytes, bytes | None]:
    """A leaf certificate for `role` signed by `ca`: (cert PEM, key PEM), or (cert PEM, None) when the
    caller brings its own `public_key` (auto_encrypt). SANs: `<role>.<dc>.<domain>`, localhost, 127.0.0.1,
    plus the extra names and addresses."""
    key: ec.EllipticCurvePrivateKey | None = None
    if public_key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
    main = role_name(role, datacenter, domain)
    names = [main, "localhost", *(dns_names or [])]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    for ip in dict.fromkeys(["127.0.0.1", *(ip_addresses or [])]):
        sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_public = ca.key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or main)]))
            .issuer_name(ca.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         content_commitment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(ca.key, _signing_hash(ca.key)))
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key) if key is not None else None


def load_ca(cert_pem: bytes, key_pem_bytes: bytes) -> CA:
    """A CA from its PEM files (`mesh-agent-ca.pem`, `mesh-agent-ca-key.pem`)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem_bytes, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("the CA key must be an EC or Ed25519 key")
    return CA(cert, key)


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """A public key sent for signing (auto_encrypt), refused unless EC P-256/P-384 or Ed25519."""
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return key
    raise ValueError("the key to sign must be EC P-256/P-384 or Ed25519")


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (an agent's own leaf key)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    """The public half of `key`, PEM."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def write_private(path: str, data: bytes) -> None:
    """Write a key file with mode 0600 from the start (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
