"""Secret comparison is constant-time (via hmac.compare_digest, equal-length inputs); IDs; anonymous token."""

from __future__ import annotations

import hmac
import uuid
from unittest import mock

from meshagent.agent.acl import secrets
from meshagent.agent.acl.secrets import (
    ANONYMOUS_ACCESSOR_ID,
    ANONYMOUS_SECRET_ID,
    is_reserved,
    is_uuid,
    new_id,
    secrets_equal,
)


def test_equal_unequal_and_lengths() -> None:
    s = "6a1f3b5e-8f0e-4c3a-9d7b-2f1e0c9a8b7d"
    assert secrets_equal(s, s)
    assert secrets_equal(s, str(s))
    assert not secrets_equal(s, s[:-1] + "e")
    assert not secrets_equal(s, s[:-1])  # shorter
    assert not secrets_equal(s, s + "0")  # longer
    assert not secrets_equal("", s) and secrets_equal("", "")
    assert secrets_equal("ünïcode", "ünïcode") and not secrets_equal("\ud800", "x")


def test_uses_compare_digest_on_equal_length_bytes() -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    with mock.patch.object(secrets.hmac, "compare_digest", side_effect=spy):
        assert not secrets_equal("short", "a-much-longer-secret")
        assert secrets_equal("same", "same")
    assert len(seen) == 2
    for a, b in seen:
        assert isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b)


def test_ids() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        assert is_uuid(i) and uuid.UUID(i).version == 4 and not is_reserved(i)
    assert not is_uuid("anonymous") and not is_uuid(new_id().upper()) and not is_uuid(new_id() + "0")


def test_anonymous_token() -> None:
    assert ANONYMOUS_ACCESSOR_ID == "00000000-0000-0000-0000-000000000002"
    assert ANONYMOUS_SECRET_ID == "anonymous"
    assert is_uuid(ANONYMOUS_ACCESSOR_ID) and is_reserved(ANONYMOUS_ACCESSOR_ID)


def test_one_secret_bound_and_one_anonymous_secret_everywhere() -> None:
    # Review F11: the 256-character bound and the anonymous secret were defined six times; the ones not yet
    # importing agent/acl/secrets.py at least may not drift from it.
    from meshagent.agent.acl import resolver, secrets
    from meshagent.agent.catalog import acl_codec
    from meshagent.agent.config import acl_settings
    from meshagent.agent.connect import ca_acl
    from meshagent.agent.http import acl_gate, agent_token_api
    from meshagent.agent.server import acl_endpoints, endpoints

    bounds = {"acl_codec": acl_codec.MAX_SECRET, "acl_settings": acl_settings.MAX_SECRET_LEN,
              "ca_acl": ca_acl.MAX_TOKEN_LEN, "acl_gate": acl_gate.MAX_TOKEN_LEN,
              "agent_token_api": agent_token_api.MAX_SECRET_LEN, "acl_endpoints": acl_endpoints.MAX_TOKEN,
              "endpoints": endpoints.MAX_TOKEN_LEN, "resolver": resolver.MAX_SECRET_LEN}
    assert bounds == dict.fromkeys(bounds, secrets.MAX_SECRET_LEN)
    assert endpoints.ANONYMOUS_SECRET == ca_acl.ANONYMOUS_SECRET == secrets.ANONYMOUS_SECRET_ID
