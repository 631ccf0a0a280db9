"""Token secrets: constant-time comparison, AccessorID/SecretID generation and validation, the anonymous token."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

ANONYMOUS_ACCESSOR_ID = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET_ID = "anonymous"  # the builtin anonymous token's SecretID (catalog/acl_state.py acl_init)
# Longer than any secret Consul makes (a UUID is 36): every entry point (HTTP, RPC, config, the FSM) refuses a
# longer one as "ACL not found" (or a named field error) without a lookup.
MAX_SECRET_LEN = 256

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def secrets_equal(given: str, stored: str) -> bool:
    """Compare a presented secret with a stored one in time independent of where (or whether) they differ."""
    # Hashing first gives compare_digest two equal-length inputs, so not even the secret's length leaks
    # through an early return on a length mismatch.
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(stored.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def new_id() -> str:
    """A random (version 4) UUID, Consul's form for AccessorIDs and SecretIDs."""
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    """Is `value` a UUID in Consul's lowercase 8-4-4-4-12 form?"""
    return bool(_UUID.match(value))


def is_reserved(accessor_id: str) -> bool:
    """IDs in Consul's reserved range (00000000-0000-0000-0000-0000000000xx): never generated for users."""
    return accessor_id.startswith("00000000-0000-0000-0000-0000000000")
