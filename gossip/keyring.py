"""memberlist's keyring and AES-GCM framing, and Serf's keyring file.

Sealed form (memberlist security.go): one version byte, a 12-byte random nonce, then AES-GCM
ciphertext with its 16-byte tag. Version 0 PKCS#7-pads the plaintext to the AES block size first;
version 1 (memberlist protocol >= 2, what we send) does not. Decryption tries every installed key,
primary first. The key size picks AES-128/192/256.

Serf's keyring file (`-keyring-file`) is a JSON list of base64 keys, primary first, written with
mode 0600; we write it atomically (temp file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic_file import write_atomic

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZES = (16, 24, 32)
NONCE_SIZE = 12
TAG_SIZE = 16
_BLOCK = 16
_MAX_VERSION = 1


class KeyringError(ValueError):
    """A keyring operation memberlist refuses: bad key size, unknown key, removing the primary key."""


class DecryptError(KeyringError):
    """Sealed data that no installed key opens (or that is not sealed data at all)."""


class KeyringFileError(KeyringError):
    """A keyring file that cannot be read or parsed; the message names the file."""


def validate_key(key: bytes) -> None:
    """Raise KeyringError unless `key` is 16, 24 or 32 bytes (AES-128/192/256)."""
    if len(key) not in KEY_SIZES:
        raise KeyringError(f"key size must be 16, 24 or 32 bytes, not {len(key)}")


def overhead(version: int = 1) -> int:
    """Bytes sealing adds at most: version + nonce + tag (+ a full pad block for version 0)."""
    return 1 + NONCE_SIZE + TAG_SIZE + (_BLOCK if version == 0 else 0)


def _aesgcm(key: bytes) -> AESGCM:
    # Imported on first use: `cryptography` (its Rust extension and OpenSSL bindings) adds about 6.5 MB to
    # the process, which an agent that gossips in plaintext never needs.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"", *, version: int = 1) -> bytes:
    """Seal `plaintext` with `key` in memberlist's framing (`aad` is GCM additional data; may be empty)."""
    validate_key(key)
    if version not in (0, 1):
        raise KeyringError(f"unsupported encryption version {version}")
    if version == 0:
        pad = _BLOCK - len(plaintext) % _BLOCK
        plaintext = plaintext + bytes([pad]) * pad
    nonce = os.urandom(NONCE_SIZE)
    return bytes([version]) + nonce + _aesgcm(key).encrypt(nonce, plaintext, aad)


def decrypt(keys: Sequence[bytes], data: bytes, aad: bytes = b"") -> bytes:
    """Open sealed `data` with the first of `keys` that authenticates it; DecryptError otherwise."""
    if not data:
        raise DecryptError("cannot decrypt an empty payload")
    version = data[0]
    if version > _MAX_VERSION:
        raise DecryptError(f"unsupported encryption version {version}")
    if len(data) < 1 + NONCE_SIZE + TAG_SIZE + (_BLOCK if version == 0 else 0):
        raise DecryptError(f"payload is too small to decrypt: {len(data)} bytes")
    nonce = data[1 : 1 + NONCE_SIZE]
    sealed = data[1 + NONCE_SIZE :]
    from cryptography.exceptions import InvalidTag

    for key in keys:
        try:
            plain = _aesgcm(key).decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError):
            continue
        return _unpad(plain) if version == 0 else plain
    raise DecryptError("no installed key could decrypt the message")


def _unpad(plain: bytes) -> bytes:
    pad = plain[-1] if plain else 0
    if not 1 <= pad <= min(_BLOCK, len(plain)) or plain[-pad:] != bytes([pad]) * pad:
        raise DecryptError("bad PKCS#7 padding in a version 0 message")
    return plain[:-pad]


class Keyring:
    """The keys a node accepts; the primary (first) key seals what it sends. Empty means no encryption."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = (), primary: bytes | None = None) -> None:
        """Like memberlist's NewKeyring: `primary` (default: the first of `keys`) goes first, duplicates drop."""
        keys = list(keys)
        self._keys: list[bytes] = []
        if primary is None and keys:
            primary = keys[0]
        if primary is None:
            return
        for key in [primary, *keys]:
            self.install(key)

    @classmethod
    def from_base64(cls, encoded: Iterable[str]) -> Keyring:
        """A keyring from base64 keys (Serf's `-encrypt` and keyring file form), the first one primary."""
        return cls([decode_key(text) for text in encoded])

    @property
    def keys(self) -> tuple[bytes, ...]:
        """All keys, primary first."""
        return tuple(self._keys)

    @property
    def primary(self) -> bytes | None:
        """The key used to seal outgoing data, or None when the keyring is empty."""
        return self._keys[0] if self._keys else None

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def install(self, key: bytes) -> None:
        """Add `key` for decryption (a no-op when present); the first key installed becomes primary."""
        validate_key(key)
        if key not in self._keys:
            self._keys.append(bytes(key))

    def use(self, key: bytes) -> None:
        """Make an installed `key` the primary key."""
        if key not in self._keys:
            raise KeyringError("requested key is not in the keyring")
        self._keys.remove(key)
        self._keys.insert(0, bytes(key))

    def remove(self, key: bytes) -> None:
        """Drop `key` (a no-op when absent); the primary key cannot be removed."""
        if self._keys and key == self._keys[0]:
            raise KeyringError("removing the primary key is not allowed")
        if key in self._keys:
            self._keys.remove(key)

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Seal with the primary key (version 1)."""
        if not self._keys:
            raise KeyringError("the keyring is empty")
        return encrypt(self._keys[0], plaintext, aad)

    def decrypt(self, data: bytes, aad: bytes = b"") -> bytes:
        """Open with any installed key."""
        return decrypt(self._keys, data, aad)

    def to_base64(self) -> list[str]:
        """The keys as base64 strings, primary first."""
        return [base64.b64encode(key).decode("ascii") for key in self._keys]


def decode_key(text: str) -> bytes:
    """A base64 key (standard alphabet, padded) checked for size; KeyringError when it is neither."""
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeyringError(f"key is not valid base64: {exc}") from exc
    validate_key(key)
    return key


def load_keyring_file(path: str | os.PathLike[str]) -> Keyring:
    """Read a Serf keyring file; KeyringFileError (naming the file) when missing, unreadable or malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyringFileError(f"{path}: cannot read keyring file: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyringFileError(f"{path}: keyring file is not valid JSON: {exc}") from exc
    if not isinstance(doc, list) or not all(isinstance(item, str) for item in doc):
        raise KeyringFileError(f"{path}: keyring file must be a JSON list of base64 strings")
    if not doc:
        raise KeyringFileError(f"{path}: keyring file contains no keys")
    try:
        return Keyring.from_base64(doc)
    except KeyringError as exc:
        raise KeyringFileError(f"{path}: {exc}") from exc


def save_keyring_file(path: str | os.PathLike[str], keyring: Keyring) -> None:
    """Write `keyring` as Serf does (indented JSON list, mode 0600), atomically: temp file, fsync, rename."""
    path = Path(path)
    data = json.dumps(keyring.to_base64(), indent=2).encode("ascii")
    write_atomic(path, data, mode=0o600)  # 0600, the mode Serf uses for key material
