"""Parsing for `/v1/connect/intentions` (intentions_api): query parameters and legacy intention bodies, every
field bounded and type-checked with Consul's error texts."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from ..catalog.config_entries import MAX_NAME_LEN
from .query import Query, bad_request

MAX_META_KEYS = 64
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# ---------------------------------------------------------------------- parameters


def one(query: Query, name: str) -> str:
    """The one non-empty value of a required query parameter (else Consul's 400)."""
    values = query.all(name)
    if len(values) != 1 or not values[0]:
        raise bad_request(f"required query parameter '{name}' not set")
    return values[0]


def service_name(text: str, param: str) -> str:
    """A `?source=`/`?destination=`/`?name=` value: `name` or `default/name` (one namespace here)."""
    if text.startswith("peer:"):
        raise bad_request(f"{param} {text[:64]!r} is invalid: cluster peers are not supported")
    parts = text.split("/")
    if len(parts) > 2:
        raise bad_request(f"{param} {text[:64]!r} is invalid: partitions are not supported")
    if len(parts) == 2:
        if parts[0] not in ("default", "*"):
            raise bad_request(f"{param} {text[:64]!r} is invalid: only the default namespace exists")
        text = parts[1]
    if not text or len(text) > MAX_NAME_LEN or not text.isprintable():
        raise bad_request(f"{param} must be a service name of 1-{MAX_NAME_LEN} printable characters")
    return text


def pair(query: Query) -> tuple[str, str]:
    """`?source=` and `?destination=` as service names."""
    return (service_name(one(query, "source"), "source"),
            service_name(one(query, "destination"), "destination"))


def check_id(ixn_id: str) -> str:
    """An intention ID (a UUID, lowercased), else a 400."""
    if not _UUID.fullmatch(ixn_id):
        raise bad_request(f"Invalid intention ID {ixn_id[:64]!r}: UUID must be 36 characters in 8-4-4-4-12 form")
    return ixn_id.lower()


# ---------------------------------------------------------------------- request bodies


def fold_body(body: Any) -> dict[str, Any]:
    """The intention body with keys matched case-insensitively, as Go's encoding/json does."""
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: the body must be a JSON object (one intention)")
    return {str(k).lower(): v for k, v in body.items()}


def str_field(body: dict[str, Any], field: str, limit: int = 4096) -> str:
    """A folded body's optional string field ("" when absent), bounded by `limit`."""
    value = body.get(field.lower())
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"Request decode failed: {field} must be a string of at most {limit} characters")
    return value


def meta_of(body: dict[str, Any]) -> dict[str, str]:
    """A folded body's Meta: at most MAX_META_KEYS bounded strings."""
    value = body.get("meta")
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) > MAX_META_KEYS
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 512
                       for k, v in value.items())):
        raise bad_request(f"Request decode failed: Meta must be an object of at most {MAX_META_KEYS} strings "
                          "(keys ≤ 128, values ≤ 512 characters)")
    return dict(value)


def source_of(body: dict[str, Any], name: str, *, legacy: bool) -> dict[str, Any]:
    """The Source an intention body makes (Consul's ToSourceIntention): L4 Action or L7 Permissions."""
    source_type = str_field(body, "SourceType") or "consul"
    if source_type != "consul":
        raise bad_request(f"Invalid SourceType {source_type[:40]!r}: only \"consul\" is supported")
    for field in ("SourcePartition", "DestinationPartition"):
        if str_field(body, field) not in ("", "default"):
            raise bad_request(f"Cannot specify a {field} with this endpoint: partitions are not supported")
    for field in ("SourceNS", "DestinationNS"):
        if str_field(body, field) not in ("", "default"):
            raise bad_request(f"Invalid {field}: only the default namespace exists")
    if str_field(body, "SourcePeer"):
        raise bad_request("SourcePeer is not supported: cluster peering does not exist here")
    source: dict[str, Any] = {"Name": name, "Type": source_type}
    action = str_field(body, "Action")
    permissions = body.get("permissions")
    if legacy and permissions:
        raise bad_request("Permissions cannot be set with the legacy intention API; "
                          "use PUT /v1/connect/intentions/exact or a service-intentions config entry")
    if action:
        source["Action"] = action
    if permissions:
        source["Permissions"] = permissions  # validated with the whole entry (normalize_entry)
    description = str_field(body, "Description", 512)
    if description:
        source["Description"] = description
    return source


def now() -> str:
    """Go's time.Time JSON form (RFC 3339, nanoseconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
