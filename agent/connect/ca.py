"""The mesh CA's cryptography, pure: roots, leaf signing from a CSR, cross-signing for rotation.

No clock and no I/O: `now` comes in, PEM text goes out, so the leader's FSM and the tests call the same
functions. A root is an EC P-256 key and a self-signed certificate whose URI SAN is the trust domain
(`spiffe://<trust-domain>`), valid 10 years by default. A leaf is signed only for a CSR whose one URI SAN is a
service SPIFFE ID (agent/connect/spiffe.py) of this trust domain and datacenter, whose signature verifies, and
whose key is EC P-256; anything else is a `CSRError` naming why. The leaf's key never reaches the CA: the agent
makes it and sends the CSR. Rotation: the old root signs the new root's key (`cross_sign`), and leaves issued
after the rotation carry that certificate as an intermediate, so peers that still trust only the old root
verify them.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .spiffe import ServiceID, SpiffeIDError, parse_service_id

ROOT_TTL = datetime.timedelta(days=3650)
LEAF_TTL = datetime.timedelta(hours=72)
CLOCK_SKEW = datetime.timedelta(minutes=1)  # leaves are valid from a minute ago, for peers slightly behind
MAX_CSR_BYTES = 16 * 1024


class CSRError(ValueError):
    """A certificate signing request the CA refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class CARoot:
    """A CA root: Consul's fields, the certificate, and the private key (kept only in the servers' FSM)."""

    id: str  # the certificate's SHA-256 fingerprint, colon hex (Consul's root ID form)
    name: str
    serial_number: int
    signing_key_id: str  # the subject key identifier, colon hex
    not_before: datetime.datetime
    not_after: datetime.datetime
    root_cert: str  # PEM
    private_key: str  # PEM (PKCS#8)
    trust_domain: str
    intermediate_certs: tuple[str, ...] = ()  # PEM; set on a rotated-in root: its cross-signed certificate


@dataclass(frozen=True, slots=True)
class Leaf:
    """A signed leaf certificate and what Consul's leaf JSON reports of it (the key stays with the agent)."""

    cert_pem: str
    serial_number: int
    service: ServiceID
    valid_after: datetime.datetime
    valid_before: datetime.datetime


def colon_hex(data: bytes) -> str:
    """Bytes as Consul prints fingerprints and key IDs: lowercase hex pairs joined by ':'."""
    return ":".join(f"{b:02x}" for b in data)


def new_root(trust_domain: str, now: datetime.datetime, ttl: datetime.timedelta = ROOT_TTL,
             name: str = "meshagent CA Primary Cert") -> CARoot:
    """A fresh root for `trust_domain`: a new EC P-256 key and its self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_root(key, trust_domain, now, ttl)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return CARoot(colon_hex(cert.fingerprint(hashes.SHA256())), name, cert.serial_number, colon_hex(ski.digest),
                  cert.not_valid_before_utc, cert.not_valid_after_utc, pem, key_pem, trust_domain)


def self_signed_root(key: ec.EllipticCurvePrivateKey, trust_domain: str, now: datetime.datetime,
                     ttl: datetime.timedelta) -> x509.Certificate:
    """A root CA certificate for `key`: Consul's subject form, the trust domain as its URI SAN."""
    serial = _serial()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pri-{serial % 16**8:08x}.ca.{trust_domain}")])
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - CLOCK_SKEW).not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def leaf_key_and_csr(service: ServiceID) -> tuple[str, str]:
    """(Agent side) a new EC P-256 key and a CSR for `service`'s SPIFFE ID, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service.service)]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(service.uri())]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def check_csr(csr_pem: str | bytes, trust_domain: str, datacenter: str) -> tuple[x509.CertificateSigningRequest,
                                                                                  ServiceID]:
    """The CSR and the service it asks for, once it is well formed, signed by its key and for this mesh."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if len(data) > MAX_CSR_BYTES:
        raise CSRError(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise CSRError("the CSR's key is not EC P-256")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRError("the CSR has no SPIFFE ID (no subject alternative name)") from None
    except ValueError as exc:
        raise CSRError(f"the CSR's extensions do not parse: {exc}") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(list(sans)) != 1:
        raise CSRError("the CSR must name exactly one subject alternative name, its SPIFFE ID")
    try:
        sid = parse_service_id(uris[0])
    except SpiffeIDError as exc:
        raise CSRError(f"the CSR's SPIFFE ID: {exc}") from None
    if sid.trust_domain != trust_domain:
        raise CSRError(f"the CSR's trust domain {sid.trust_domain} is not this mesh's ({trust_domain})")
    if sid.datacenter != datacenter:
        raise CSRError(f"the CSR's datacenter {sid.datacenter} is not this one ({datacenter})")
    return csr, sid


def sign_leaf(root: CARoot, csr_pem: str | bytes, datacenter: str, now: datetime.datetime,
              ttl: datetime.timedelta = LEAF_TTL) -> Leaf:
    """Check a CSR (CSRError if refused) and sign it with `root`: a client and server leaf for its SPIFFE ID."""
    csr, sid = check_csr(csr_pem, root.trust_domain, datacenter)
    key = _private_key(root)
    issuer = x509.load_pem_x509_certificate(root.root_cert.encode())
    serial = _serial()
    not_after = min(now + ttl, issuer.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sid.service)]))
            .issuer_name(issuer.subject).public_key(csr.public_key())
            .serial_number(serial).not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid.uri())]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return Leaf(pem, serial, sid, cert.not_valid_before_utc, cert.not_valid_after_utc)


def cross_sign(old: CARoot, new: CARoot, now: datetime.datetime) -> str:
    """The new root's key and subject, signed by the old root: an intermediate that chains the new root's
    leaves to the old root, for peers that do not trust the new root yet. PEM."""
    new_cert = x509.load_pem_x509_certificate(new.root_cert.encode())
    old_cert = x509.load_pem_x509_certificate(old.root_cert.encode())
    old_key = _private_key(old)
    # An operator-supplied root may lack the key identifier or the SAN: derive the one, leave out the other.
    try:
        ski = new_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(new_cert.public_key())
    builder = (x509.CertificateBuilder()
               .subject_name(new_cert.subject).issuer_name(old_cert.subject).public_key(new_cert.public_key())
               .serial_number(_serial()).not_valid_before(now - CLOCK_SKEW)
               .not_valid_after(min(new_cert.not_valid_after_utc, old_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()),
                              critical=False))
    try:
        san = new_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        builder = builder.add_extension(san, critical=False)
    except x509.ExtensionNotFound:
        pass
    cert = builder.sign(old_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def verify_leaf_signature(root: CARoot, leaf_pem: str) -> bool:
    """Whether `leaf_pem` was signed by `root`'s key (a quick check; TLS stacks do the full verification)."""
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    try:
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root.root_cert.encode()))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _private_key(root: CARoot) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(root.private_key.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"CA root {root.id} has no EC private key")
    return key


def _serial() -> int:
    # Positive, at most 159 bits (RFC 5280 allows 20 octets), unpredictable.
    return secrets.randbits(159) | 1
