"""ServiceDefinition / CheckDefinition → Consul's CamelCase JSON (register bodies, agent/services views).

`parse_service(service_to_api(d), source)` gives back `d` (the tests check it with hypothesis).
"""

from __future__ import annotations

from typing import Any

from .duration import format_duration
from .types import CheckDefinition, ServiceDefinition
from .values import snake_case

# Words Consul writes in capitals inside CamelCase names (CheckID, TLSSkipVerify, HTTP, GRPCUseTLS).
_INITIALISMS = {"id": "ID", "ttl": "TTL", "http": "HTTP", "tcp": "TCP", "tls": "TLS", "udp": "UDP",
                "grpc": "GRPC", "dns": "DNS", "ip": "IP", "url": "URL", "acl": "ACL"}
# Maps whose keys belong to the user; their keys are copied as they are.
_OPAQUE = {"meta", "config", "header", "env", "node_meta"}


def camel_case(key: str) -> str:
    """`local_bind_port` → `LocalBindPort`, `check_id` → `CheckID`; a key that would not come back
    unchanged through snake_case is left as it is."""
    candidate = "".join(_INITIALISMS.get(part, part[:1].upper() + part[1:]) for part in key.split("_"))
    return candidate if snake_case(candidate) == key else key


def camel_keys(value: Any, opaque: bool = False) -> Any:
    """Schema keys of nested plain data in CamelCase; user-keyed maps (meta, config, header) untouched,
    whether their own key is written `config` (HCL) or `Config` (API bodies)."""
    if isinstance(value, dict):
        return {(key if opaque else camel_case(key)): camel_keys(item, opaque or snake_case(key) in _OPAQUE)
                for key, item in value.items()}
    if isinstance(value, list):
        return [camel_keys(v, opaque) for v in value]
    return value


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
            out[key] = format_duration(value)
    if check.http:
        out.update(HTTP=check.http, Method=check.method, Header={k: list(v) for k, v in check.header.items()},
                   Body=check.body, TLSSkipVerify=check.tls_skip_verify, TLSServerName=check.tls_server_name,
                   DisableRedirects=check.disable_redirects)
    if check.tcp:
        out["TCP"] = check.tcp
    if check.args:
        out["Args"] = list(check.args)
    if check.alias_service:
        out["AliasService"] = check.alias_service
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
        out["TaggedAddresses"] = {name: camel_keys(addr) for name, addr in svc.tagged_addresses.items()}
    if svc.proxy:
        out["Proxy"] = camel_keys(svc.proxy)
    if svc.connect:
        out["Connect"] = camel_keys(svc.connect)
    if svc.checks:
        out["Checks"] = [check_to_api(c) for c in svc.checks]
    return out
