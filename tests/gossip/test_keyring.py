"""gossip.keyring: memberlist's keyring rules, AES-GCM framing and Serf's keyring file."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from meshagent.gossip.keyring import (
    DecryptError,
    Keyring,
    KeyringError,
    KeyringFileError,
    decrypt,
    encrypt,
    load_keyring_file,
    overhead,
    save_keyring_file,
)

K1, K2, K3 = bytes(range(16)), bytes(range(1, 25)), bytes(range(2, 34))


def test_sealed_layout_version_1() -> None:
    sealed = encrypt(K1, b"hello", b"aad")
    assert sealed[0] == 1 and len(sealed) == len(b"hello") + overhead(1) == 5 + 29
    nonce, body = sealed[1:13], sealed[13:]
    assert AESGCM(K1).decrypt(nonce, body, b"aad") == b"hello"


def test_version_0_is_pkcs7_padded_and_decrypts() -> None:
    sealed = encrypt(K1, b"hello", version=0)
    assert sealed[0] == 0 and len(sealed) == 1 + 12 + 16 + 16
    assert AESGCM(K1).decrypt(sealed[1:13], sealed[13:], b"") == b"hello" + bytes([11]) * 11
    assert decrypt([K1], sealed) == b"hello"
    full_block = encrypt(K1, b"x" * 16, version=0)
    assert decrypt([K1], full_block) == b"x" * 16


def test_decrypt_tries_every_key() -> None:
    for key in (K1, K2, K3):
        assert decrypt([K3, K2, K1], encrypt(key, b"payload", b"ad"), b"ad") == b"payload"


def test_decrypt_failures() -> None:
    sealed = encrypt(K1, b"payload", b"ad")
    with pytest.raises(DecryptError, match="no installed key"):
        decrypt([K2, K3], sealed, b"ad")
    with pytest.raises(DecryptError):
        decrypt([K1], sealed, b"other additional data")
    with pytest.raises(DecryptError, match="empty"):
        decrypt([K1], b"")
    with pytest.raises(DecryptError, match="version"):
        decrypt([K1], b"\x02" + sealed[1:])
    with pytest.raises(DecryptError, match="too small"):
        decrypt([K1], sealed[:28])
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptError):
        decrypt([K1], bytes(tampered), b"ad")


def test_bad_padding_in_version_0() -> None:
    nonce = os.urandom(12)
    sealed = b"\x00" + nonce + AESGCM(K1).encrypt(nonce, b"a" * 15 + b"\x11", b"")
    with pytest.raises(DecryptError, match="padding"):
        decrypt([K1], sealed)


def test_key_sizes() -> None:
    for size in (16, 24, 32):
        Keyring([os.urandom(size)])
    for size in (0, 8, 17, 33):
        with pytest.raises(KeyringError, match="16, 24 or 32"):
            Keyring([b"k" * size])
    with pytest.raises(KeyringError):
        encrypt(b"short", b"x")


def test_keyring_rules_follow_memberlist() -> None:
    ring = Keyring([K1, K2], primary=K2)
    assert ring.keys == (K2, K1) and ring.primary == K2
    ring.install(K3)
    ring.install(K1)  # already there: no-op
    assert ring.keys == (K2, K1, K3)
    ring.use(K3)
    assert ring.keys == (K3, K2, K1) and ring.primary == K3
    with pytest.raises(KeyringError, match="primary"):
        ring.remove(K3)
    ring.remove(K1)
    ring.remove(K1)  # absent: no-op, as memberlist
    assert ring.keys == (K3, K2)
    with pytest.raises(KeyringError, match="not in the keyring"):
        ring.use(K1)


def test_empty_keyring_means_no_encryption() -> None:
    ring = Keyring()
    assert not ring and ring.primary is None and ring.keys == ()
    ring.install(K1)
    assert ring.primary == K1
    with pytest.raises(KeyringError):
        Keyring().encrypt(b"x")


def test_keyring_encrypt_uses_primary() -> None:
    ring = Keyring([K1, K2])
    sealed = ring.encrypt(b"m", b"a")
    assert decrypt([K1], sealed, b"a") == b"m"
    with pytest.raises(DecryptError):
        decrypt([K2], sealed, b"a")
    assert ring.decrypt(encrypt(K2, b"n")) == b"n"


def test_keyring_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    ring = Keyring([K1, K2, K3], primary=K2)
    save_keyring_file(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert json.loads(text) == [base64.b64encode(k).decode() for k in (K2, K1, K3)]
    assert text.startswith('[\n  "')  # Go's json.MarshalIndent(keys, "", "  ")
    assert load_keyring_file(path).keys == (K2, K1, K3)
    assert [p.name for p in tmp_path.iterdir()] == ["keyring"]  # no temp file left behind


def test_keyring_file_overwrite_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    save_keyring_file(path, Keyring([K1]))
    save_keyring_file(path, Keyring([K2, K1]))
    assert load_keyring_file(path).keys == (K2, K1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"a": 1}', "list of base64"),
        (b"[]", "no keys"),
        (b'["%%%"]', "base64"),
        (b'["' + base64.b64encode(b"short") + b'"]', "16, 24 or 32"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_broken_keyring_file_names_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "serf.keyring"
    path.write_bytes(content)
    with pytest.raises(KeyringFileError, match=reason) as info:
        load_keyring_file(path)
    assert str(path) in str(info.value)


def test_missing_keyring_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringFileError, match="nope"):
        load_keyring_file(tmp_path / "nope")


def test_from_base64_matches_serf_encrypt_flag() -> None:
    text = base64.b64encode(K3).decode()
    assert Keyring.from_base64([text]).to_base64() == [text]
