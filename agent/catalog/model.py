"""Catalog rows: nodes, service instances, checks and KV entries, with msgpack-friendly dict forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
MAINTENANCE = "maintenance"
STATUSES = (PASSING, WARNING, CRITICAL)

SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"

_STATUS_RANK = {PASSING: 0, WARNING: 1, CRITICAL: 2, MAINTENANCE: 2}

T = TypeVar("T")


def worst_status(statuses: list[str]) -> str:
    """Aggregate check statuses the way Consul does: critical > warning > passing."""
    worst = PASSING
    for status in statuses:
        if _STATUS_RANK.get(status, 2) > _STATUS_RANK[worst]:
            worst = CRITICAL if status == MAINTENANCE else status
    return worst


@dataclass(slots=True)
class Node:
    """A node row."""

    node: str
    address: str = ""
    id: str = ""
    datacenter: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass(slots=True)
class Service:
    """A service instance row, owned by one node."""

    node: str
    id: str
    service: str
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    kind: str = ""
    tagged_addresses: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass(slots=True)
class Check:
    """A health check row; service_id is empty for node-level checks."""

    node: str
    check_id: str
    name: str = ""
    status: str = CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    type: str = ""
    definition: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass(slots=True)
class KVEntry:
    """A key/value row."""

    key: str
    value: bytes = b""
    flags: int = 0
    lock_index: int = 0
    session: str = ""
    create_index: int = 0
    modify_index: int = 0


_ROW_FIELDS: dict[type, frozenset[str]] = {}


def row_to_dict(row: Any) -> dict[str, Any]:
    """A row as a plain dict (for msgpack snapshots and command payloads)."""
    return asdict(row)


def row_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a row from a dict, ignoring unknown keys so old snapshots load after fields are added."""
    known = _ROW_FIELDS.get(cls)
    if known is None:
        known = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]
        _ROW_FIELDS[cls] = known
    return cls(**{k: v for k, v in data.items() if k in known})
