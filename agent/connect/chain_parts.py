"""What the discovery chain compiler (chain_compile.py) is made of besides its walk, pure: Consul's target
IDs and SNIs, the ChainError that names an entry and field, and readers of stored entry values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.duration import parse_duration
from .entry_validate import EntryError

SCOPE = "default.default"  # namespace.partition: Consul Enterprise features, always "default" here

Ref = tuple[str, str, str]  # (kind, name, field) of the entry that led the compiler somewhere


class ChainError(EntryError):
    """A chain that cannot be compiled: a cycle, a missing subset, or a chain beyond the bounds. `involved`
    names every (kind, name, field) on a cycle, so a write can be blamed on the entry being written."""

    def __init__(self, kind: str, name: str, field: str, problem: str, involved: tuple[Ref, ...] = (),
                 reason: str = "") -> None:
        super().__init__(kind, name, field, problem)
        self.involved = involved or ((kind, name, field),)
        self.reason = reason  # "cycle", "bound", "subset", "external" or "protocol"

    def blame(self, kind: str, name: str) -> ChainError:
        """The same error naming (kind, name) when that entry is on the cycle; else itself."""
        for ref in self.involved:
            if ref[0] == kind and ref[1] == name:
                return ChainError(ref[0], ref[1], ref[2], self.problem, self.involved, self.reason)
        return self


def target_id(service: str, subset: str, datacenter: str) -> str:
    """Consul's target ID: `[subset.]service.default.default.dc`."""
    return f"{subset + '.' if subset else ''}{service}.{SCOPE}.{datacenter}"


def target_sni(service: str, subset: str, datacenter: str, trust_domain: str) -> str:
    """Consul's SNI (and target Name): `[subset.]service.default.dc.internal.<trust domain>`."""
    return f"{subset + '.' if subset else ''}{service}.default.{datacenter}.internal.{trust_domain}"


@dataclass(slots=True)
class SplitPart:
    """One part of a splitter being flattened."""

    weight: int  # hundredths of a percent
    next_node: str
    definition: Mapping[str, Any]


@dataclass(slots=True)
class Customized:
    """Which overrides changed the chain (its CustomizationHash)."""

    protocol: bool = False
    connect_timeout: bool = False
    mesh_gateway: bool = False


def as_map(value: Any) -> Mapping[str, Any]:
    """`value` when it is a map, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_str(value: Any) -> str:
    """`value` when it is a string, else ""."""
    return value if isinstance(value, str) else ""


def duration_ms(value: Any) -> int:
    """A stored duration (string as written) in whole milliseconds; 0 when absent or unreadable."""
    if not value:
        return 0
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError, OverflowError):
        return 0
    return max(0, min(int(seconds * 1000), 2**31 - 1))


def hundredths(value: Any) -> int:
    """A split weight in percent as hundredths; 0 when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        return 0
    return round(value * 100)


def merge_parent(child: Mapping[str, Any], parent: Mapping[str, Any]) -> Mapping[str, Any]:
    """A flattened split's definition: the inner split's, with the outer split's header changes under it."""
    merged = dict(child)
    for key in ("RequestHeaders", "ResponseHeaders"):
        outer, inner = as_map(parent.get(key)), as_map(child.get(key))
        if not outer:
            continue
        out: dict[str, Any] = {}
        for op in ("Add", "Set"):
            both = {**as_map(outer.get(op)), **as_map(inner.get(op))}
            if both:
                out[op] = both
        removed = [*(outer.get("Remove") or []), *(inner.get("Remove") or [])]
        if removed:
            out["Remove"] = removed
        merged[key] = out
    return merged
