"""The CA's cryptography: leaves verify with openssl and Python's ssl, carry exactly their SPIFFE ID, and a
rotation's cross-signed intermediate chains new leaves to the old root; bad CSRs are refused by reason."""

from __future__ import annotations

import datetime
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from meshagent.agent.connect.ca import (
    CSRError,
    check_csr,
    cross_sign,
    leaf_key_and_csr,
    new_root,
    sign_leaf,
    verify_leaf_signature,
)
from meshagent.agent.connect.spiffe import service_id

TD = "11111111-2222-3333-4444-555555555555.mesh"
NOW = datetime.datetime.now(datetime.UTC)
WEB = service_id(TD, "dc1", "web")


def _openssl_verify(tmp: Path, roots: list[str], leaf: str,
                    untrusted: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    (tmp / "roots.pem").write_text("".join(roots))
    (tmp / "leaf.pem").write_text(leaf)
    cmd = ["openssl", "verify", "-CAfile", str(tmp / "roots.pem")]
    if untrusted:
        (tmp / "inter.pem").write_text("".join(untrusted))
        cmd += ["-untrusted", str(tmp / "inter.pem")]
    return subprocess.run([*cmd, str(tmp / "leaf.pem")], capture_output=True, text=True, timeout=30)


def test_a_leaf_verifies_with_openssl_and_python_and_names_only_its_spiffe_id(tmp_path: Path) -> None:
    root = new_root(TD, NOW)
    key_pem, csr_pem = leaf_key_and_csr(WEB)
    leaf = sign_leaf(root, csr_pem, "dc1", NOW)
    done = _openssl_verify(tmp_path, [root.root_cert], leaf.cert_pem)
    assert done.returncode == 0, done.stdout + done.stderr
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier(f"spiffe://{TD}/ns/default/dc/dc1/svc/web")]
    assert leaf.valid_before - leaf.valid_after <= datetime.timedelta(hours=72, minutes=1)
    assert verify_leaf_signature(root, leaf.cert_pem)
    assert "PRIVATE KEY" not in leaf.cert_pem and key_pem not in root.private_key

    # Python's ssl: a TLS server presenting the leaf is accepted by a client trusting the root.
    (tmp_path / "key.pem").write_text(key_pem)
    (tmp_path / "leaf.pem").write_text(leaf.cert_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.load_verify_locations(cadata=root.root_cert)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # pump the handshake between the two in memory
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()  # raises SSLCertVerificationError if the chain did not verify
    assert client.getpeercert(binary_form=True) == cert.public_bytes(serialization.Encoding.DER)


def test_a_leaf_from_another_root_does_not_verify(tmp_path: Path) -> None:
    leaf = sign_leaf(new_root(TD, NOW), leaf_key_and_csr(WEB)[1], "dc1", NOW)
    other = new_root(TD, NOW)
    assert _openssl_verify(tmp_path, [other.root_cert], leaf.cert_pem).returncode != 0
    assert not verify_leaf_signature(other, leaf.cert_pem)


def test_after_a_rotation_new_leaves_verify_against_the_old_root_through_the_cross_signed_intermediate(
        tmp_path: Path) -> None:
    old = new_root(TD, NOW)
    new = new_root(TD, NOW)
    old_leaf = sign_leaf(old, leaf_key_and_csr(WEB)[1], "dc1", NOW)
    new_leaf = sign_leaf(new, leaf_key_and_csr(WEB)[1], "dc1", NOW)
    inter = cross_sign(old, new, NOW)
    bundle = [old.root_cert, new.root_cert]
    assert _openssl_verify(tmp_path, bundle, old_leaf.cert_pem).returncode == 0
    assert _openssl_verify(tmp_path, bundle, new_leaf.cert_pem).returncode == 0
    only_old = _openssl_verify(tmp_path, [old.root_cert], new_leaf.cert_pem, untrusted=(inter,))
    assert only_old.returncode == 0, only_old.stdout + only_old.stderr
    without = _openssl_verify(tmp_path, [old.root_cert], new_leaf.cert_pem)
    assert without.returncode != 0  # the intermediate is what makes it verify


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, sans: list[x509.GeneralName] | None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


P256 = ec.generate_private_key(ec.SECP256R1())
URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(("csr", "reason"), [
    ("garbage", "not a PEM certificate signing request"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
    ("x" * 20_000, "larger than"),
    (_csr(P256, None), "no SPIFFE ID"),
    (_csr(P256, [URI(f"spiffe://{TD}/ns/default/dc/dc1/svc/web"), x509.DNSName("web")]), "exactly one"),
    (_csr(P256, [URI(f"spiffe://{TD}/ns/default/dc/dc1/svc/web"), URI(f"spiffe://{TD}/ns/default/dc/dc1/svc/db")]),
     "exactly one"),
    (_csr(P256, [URI(f"spiffe://{TD}/agent/client/dc/dc1/id/x")]), "SPIFFE ID"),
    (_csr(P256, [URI("spiffe://other.mesh/ns/default/dc/dc1/svc/web")]), "trust domain other.mesh"),
    (_csr(P256, [URI(f"spiffe://{TD}/ns/default/dc/dc2/svc/web")]), "datacenter dc2"),
    (_csr(ec.generate_private_key(ec.SECP384R1()), [URI(f"spiffe://{TD}/ns/default/dc/dc1/svc/web")]), "P-256"),
    (_csr(rsa.generate_private_key(65537, 2048), [URI(f"spiffe://{TD}/ns/default/dc/dc1/svc/web")]), "P-256"),
])
def test_a_bad_csr_is_refused_with_its_reason(csr: str, reason: str) -> None:
    with pytest.raises(CSRError) as err:
        check_csr(csr, TD, "dc1")
    assert reason in str(err.value)


def test_a_csr_with_a_forged_signature_is_refused() -> None:
    good = x509.load_pem_x509_csr(leaf_key_and_csr(WEB)[1].encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CSRError, match="signature"):
        check_csr(forged, TD, "dc1")


def test_a_supplied_root_without_key_identifier_or_san_is_cross_signed(tmp_path: Path) -> None:
    """An operator's root may carry neither extension; rotation to it must still chain (it was a 500)."""
    from meshagent.agent.connect.ca_plan import make_root

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator root")])
    bare = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    supplied = make_root(TD, NOW, 86400.0, key_pem=key_pem,
                         cert_pem=bare.public_bytes(serialization.Encoding.PEM).decode())
    old = new_root(TD, NOW)
    inter = cross_sign(old, supplied, NOW)
    leaf = sign_leaf(supplied, leaf_key_and_csr(WEB)[1], "dc1", NOW)
    only_old = _openssl_verify(tmp_path, [old.root_cert], leaf.cert_pem, untrusted=(inter,))
    assert only_old.returncode == 0, only_old.stdout + only_old.stderr
