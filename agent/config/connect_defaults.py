"""Consul's defaults for `connect { ca_config { ... } }`, durations in seconds (the loader fills them in)."""

from __future__ import annotations

from typing import Any

HOUR = 3600.0
# Keys as written in agent config (snake_case); values as AgentConfig.ca_config holds them.
CA_DEFAULTS: dict[str, Any] = {
    "leaf_cert_ttl": 72 * HOUR,
    "root_cert_ttl": 87600 * HOUR,
    "intermediate_cert_ttl": 8760 * HOUR,
    "rotation_period": 2160 * HOUR,
    "private_key_type": "ec",
    "private_key_bits": 256,
    "csr_max_per_second": 50.0,
    "csr_max_concurrent": 0,
}
LEAF_TTL_MIN = 1 * HOUR  # Consul's minimum leaf_cert_ttl; tests may lower it (connect.test_min_leaf_ttl)
LEAF_TTL_MAX = 8760 * HOUR


def default_ca_config() -> dict[str, Any]:
    """A fresh copy of the defaults (callers may change their copy)."""
    return dict(CA_DEFAULTS)
