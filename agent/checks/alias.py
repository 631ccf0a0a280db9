"""Alias checks (Consul's `alias_service`), pure: a check whose status is the worst of a local service's
checks and of the node's own checks, with Consul's outputs (checks/alias.go processChecks).

One difference: alias checks registered at node level are not read as node checks by alias checks (each
would otherwise read itself through the other and stay critical for good). Local services only: the agent
recomputes an alias check whenever a check of its target (or of the node)
changes status or comes and goes (local_state.py), so it needs no interval and makes no request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"


class CheckState(Protocol):
    """What an alias check reads of another check (LocalCheck has these)."""

    @property
    def service_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def output(self) -> str: ...


def alias_status(target: str, checks: Iterable[CheckState], target_exists: bool, node: str) -> tuple[str, str]:
    """(status, output) of an alias check of service id `target` over this node's `checks`: critical
    if any of the target's or the node's checks is critical (or in maintenance), else warning if one is, else
    passing; critical when the service is not registered on this node."""
    status, output = PASSING, "No checks found."
    found = False
    for check in checks:
        if check.service_id and check.service_id != target:
            continue  # another service's check; node-level checks count, as in Consul
        found = found or check.service_id == target
        if check.status == PASSING:
            if status == PASSING:
                output = "All checks passing."
            continue
        status = WARNING if check.status == WARNING else CRITICAL  # maintenance counts as critical
        output = f"Aliased check \"{check.name}\" failing: {check.output}"
        if status == CRITICAL:
            break  # nothing is worse
    if not found and not target_exists:
        return CRITICAL, f"Service {target} could not be found on node {node}"
    return status, output
