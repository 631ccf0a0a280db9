"""ServiceDefinition / CheckDefinition → Consul's CamelCase JSON (register bodies, agent/services views)."""

from __future__ import annotations

from typing import Any

from .types import CheckDefinition, ServiceDefinition


def _go_duration(seconds: float) -> str:
    """Seconds as a Go duration string that parse_duration reads back exactly."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms" if seconds * 1000 == round(seconds * 1000) else f"{seconds}s"


def check_to_api(check: CheckDefinition) -> dict[str, Any]:
    """A check as Consul's check-definition body (only the fields that are set)."""
    out: dict[str, Any] = {"CheckID": check.id, "Name": check.name}
    if check.notes:
        out["Notes"] = check.notes
    if check.service_id:
        out["ServiceID"] = check.service_id
    out["Status"] = check.status
    for attr, key in (("interval", "Interval"), ("timeout", "Timeout"), ("ttl", "TTL"),
                      ("deregister_critical_service_after", "DeregisterCriticalServiceAfter")):
        value = getattr(check, attr)
        if value is not None:
            out[key] = _go_duration(value)
    if check.http:
        out.update(HTTP=check.http, Method=check.method, Header=check.header, Body=check.body,
                   TLSSkipVerify=check.tls_skip_verify, TLSServerName=check.tls_server_name,
                   DisableRedirects=check.disable_redirects)
    if check.tcp:
        out["TCP"] = check.tcp
    if check.args:
        out["Args"] = list(check.args)
    for attr, key in (("success_before_passing", "SuccessBeforePassing"),
                      ("failures_before_warning", "FailuresBeforeWarning"),
                      ("failures_before_critical", "FailuresBeforeCritical")):
        if getattr(check, attr):
            out[key] = getattr(check, attr)
    return out


def service_to_api(svc: ServiceDefinition) -> dict[str, Any]:
    """A service as Consul's /v1/agent/service/register body."""
    out: dict[str, Any] = {
        "Name": svc.name, "ID": svc.id, "Tags": list(svc.tags), "Address": svc.address, "Port": svc.port,
        "Meta": dict(svc.meta), "Weights": {"Passing": svc.weights.passing, "Warning": svc.weights.warning},
        "EnableTagOverride": svc.enable_tag_override,
    }
    if svc.kind:
        out["Kind"] = svc.kind
    if svc.tagged_addresses:
        out["TaggedAddresses"] = svc.tagged_addresses
    if svc.proxy:
        out["Proxy"] = svc.proxy
    if svc.connect:
        out["Connect"] = svc.connect
    if svc.checks:
        out["Checks"] = [check_to_api(c) for c in svc.checks]
    return out
