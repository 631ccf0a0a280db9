"""`PUT /v1/catalog/register` and `/v1/catalog/deregister`: direct catalog writes (external services).

Entries written here for an agent's own node are overwritten by its anti-entropy, as in Consul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..catalog import PASSING, STATUSES, Check, CommandError, Node, Service, commands
from .agent_api import body_json
from .messages import Request, Response
from .query import Query, bad_request

if TYPE_CHECKING:
    from .api import API


def _fold(value: dict[str, Any]) -> dict[str, Any]:
    """Field names matched case-insensitively, as Go's encoding/json does for Consul (py-consul sends
    "node", "address", "service", "check")."""
    return {str(k).lower(): v for k, v in value.items()}


def _object(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field.lower()) or {}
    if not isinstance(value, dict):
        raise bad_request(f"{field} must be an object")
    return _fold(value)


def _str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"{field} must be an object of strings")
    return {str(k): v for k, v in value.items()}


def _service(node: str, data: dict[str, Any]) -> Service:
    name = data.get("service")
    if not isinstance(name, str) or not name:
        raise bad_request("Service.Service (the service name) is required")
    port = data.get("port", 0)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise bad_request(f"Service.Port {port!r} is not a port number")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("Service.Tags must be a list of strings")
    return Service(node=node, id=str(data.get("id") or name), service=name, tags=list(tags),
                   address=str(data.get("address") or ""), port=port, meta=_str_map(data.get("meta"), "Service.Meta"),
                   weights=dict(data.get("weights") or {"Passing": 1, "Warning": 1}),
                   enable_tag_override=bool(data.get("enabletagoverride", False)), kind=str(data.get("kind") or ""),
                   tagged_addresses=dict(data.get("taggedaddresses") or {}))


def _check(node: str, data: dict[str, Any]) -> Check:
    check_id = str(data.get("checkid") or data.get("name") or "")
    if not check_id:
        raise bad_request("Check.CheckID or Check.Name is required")
    status = str(data.get("status") or PASSING)
    if status not in STATUSES:
        raise bad_request(f"Check.Status {status!r} is not one of {', '.join(sorted(STATUSES))}")
    return Check(node=node, check_id=check_id, name=str(data.get("name") or check_id), status=status,
                 notes=str(data.get("notes") or ""), output=str(data.get("output") or ""),
                 service_id=str(data.get("serviceid") or ""), type=str(data.get("type") or ""),
                 definition=dict(data.get("definition") or {}))


def _json_object(request: Request) -> dict[str, Any]:
    body = body_json(request)
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object")
    return _fold(body)


async def _apply(api: API, command: dict[str, Any]) -> None:
    try:
        await api.agent.store.apply(command)
    except CommandError as exc:
        raise bad_request(str(exc)) from None


async def register(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/catalog/register: a node, optionally with one service and checks; answers true."""
    body = _json_object(request)
    name = body.get("node")
    address = body.get("address")
    if not isinstance(name, str) or not name:
        raise bad_request("Missing node name")
    if not isinstance(address, str) or not address:
        raise bad_request("Missing node address")
    existing = api.agent.store.catalog.node(name)
    if body.get("skipnodeupdate") and existing is not None:
        node = existing
    else:
        node = Node(node=name, address=address, id=str(body.get("id") or ""), datacenter=api.agent.datacenter,
                    tagged_addresses=_str_map(body.get("taggedaddresses"), "TaggedAddresses"),
                    meta=_str_map(body.get("nodemeta"), "NodeMeta"))
    service = _service(name, _object(body, "Service")) if body.get("service") else None
    raw_checks = list(body.get("checks") or [])
    if body.get("check"):
        raw_checks.append(_object(body, "Check"))
    if not all(isinstance(c, dict) for c in raw_checks):
        raise bad_request("Checks must be a list of objects")
    checks = [_check(name, _fold(c)) for c in raw_checks]
    await _apply(api, commands.register(node, service, checks))
    return api.json(True, query)


async def deregister(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/catalog/deregister: a check (CheckID), a service (ServiceID) or the whole node."""
    body = _json_object(request)
    name = body.get("node")
    if not isinstance(name, str) or not name:
        raise bad_request("Missing node name")
    await _apply(api, commands.deregister(name, service_id=str(body.get("serviceid") or ""),
                                          check_id=str(body.get("checkid") or "")))
    return api.json(True, query)
