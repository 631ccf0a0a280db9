"""Typed reads of hostile `Config` maps for proxy snapshots, pure: each bad value is a SnapshotError naming the
sidecar and the field. Keys match ignoring case and underscores (`connect_timeout_ms` = `ConnectTimeoutMs`)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...proxy.snapshot import MAX_LIST, MAX_STR
from ..config.duration import parse_duration

Map = Mapping[str, Any]
MAX_TIMEOUT_MS = 3_600_000  # any timeout a proxy config, an upstream or a chain entry sets (one hour)
MAX_RETRIES = 25  # num_retries of an upstream or a route


class SnapshotError(ValueError):
    """A sidecar whose configuration cannot be turned into a snapshot; the message names service and field."""


class ConfigReader:
    """Reads values for one sidecar; errors name it (`proxy_id`, the `service` it fronts) and the field."""

    def __init__(self, proxy_id: str, service: str) -> None:
        self.proxy_id = proxy_id
        self.service = service

    def fail(self, where: str, message: str) -> SnapshotError:
        """The error for a bad value at `where`."""
        return SnapshotError(f"sidecar {self.proxy_id!r} of {self.service!r}: {where}: {message}")

    def _map(self, value: Any, where: str) -> Map:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a map, got {type(value).__name__}")
        return value

    def _int(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON numbers from HCL may arrive as floats
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {show(value)}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is not between {low} and {high}")
        return value

    def _bool(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {show(value)}")
        return value

    def _str(self, value: Any, where: str, choices: Sequence[str] = ()) -> str:
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise self.fail(where, f"must be a string, got {show(value)}")
        if choices and value not in choices:
            shown = ", ".join(c or '""' for c in choices)
            raise self.fail(where, f"{value!r} is not one of {shown}")
        return value

    def _ip(self, value: Any, where: str) -> str:
        """An IP literal: the workers never resolve names (a lookup would block their event loop)."""
        text = self._str(value, where)
        if text.lower() == "localhost":
            return "127.0.0.1"
        if not is_ip(text):
            raise self.fail(where, f"{text!r} is not an IP address (host names are not resolved here)")
        return text

    def _seconds(self, value: Any, where: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        if not math.isfinite(seconds) or not 0 <= seconds <= 86_400:
            raise self.fail(where, "must be between 0s and 24h")
        return seconds

    def _list(self, value: Any, where: str, limit: int = MAX_LIST) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(where, f"must be a list, got {type(value).__name__}")
        if len(value) > limit:
            raise self.fail(where, f"{len(value)} items, more than {limit}")
        return list(value)


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def public_bind(config: Any, proxy_address: str, bind_address: str) -> tuple[Any, str]:
    """Where a sidecar's public listener binds, unchecked, and the field it came from: `Config.bind_address`,
    else the proxy's own address, else the agent's bind address. The snapshot and the listening check share it."""
    value = config_get(config, "bind_address") if isinstance(config, Mapping) else None
    if value:
        return value, "proxy.config.bind_address"
    return proxy_address or bind_address, "address"


def public_port(config: Any, proxy_port: int) -> tuple[Any, str]:
    """The public listener's port, unchecked, and its field: `Config.bind_port`, else the proxy's port."""
    value = config_get(config, "bind_port") if isinstance(config, Mapping) else None
    return (proxy_port, "port") if value is None else (value, "proxy.config.bind_port")


def listening_target(config: Any, proxy_address: str, proxy_port: int, bind_address: str) -> str:
    """host:port the "Connect Sidecar Listening" check dials: where the data plane binds (public_bind,
    public_port); a wildcard bind is dialled on 127.0.0.1. Bad values fall back (the snapshot refuses them)."""
    address, _ = public_bind(config, proxy_address, bind_address)
    if not isinstance(address, str) or not (is_ip(address) or address.lower() == "localhost"):
        address = proxy_address or bind_address
    if address.lower() == "localhost" or (is_ip(address) and ipaddress.ip_address(address).is_unspecified):
        address = "127.0.0.1"
    port, _ = public_port(config, proxy_port)
    if isinstance(port, float) and port.is_integer():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        port = proxy_port
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def config_get(raw: Map, key: str, default: Any = None) -> Any:
    """`raw[key]`, matching `connect_timeout_ms` to `ConnectTimeoutMs` (and to itself)."""
    if key in raw:
        return raw[key]
    want = _norm(key)
    for k, v in raw.items():
        if isinstance(k, str) and _norm(k) == want:
            return v
    return default


def show(value: Any) -> str:
    """A value, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

