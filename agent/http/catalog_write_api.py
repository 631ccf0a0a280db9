"""`PUT /v1/catalog/register` and `/v1/catalog/deregister`: direct catalog writes (external services).

Entries written here for an agent's own node are overwritten by its anti-entropy, as in Consul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..acl import command_rights
from ..acl.identity import ACLIdentity, require
from ..catalog import PASSING, STATUSES, Check, CommandError, Node, Service, commands
from .acl_gate import acl_identity, write_token
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


async def _apply(api: API, request: Request, identity: ACLIdentity | None, command: dict[str, Any]) -> None:
    # With ACLs on the write carries the request's secret: the servers re-check it (agent/acl/command_rights).
    token = None if identity is None else write_token(request, api.agent.acl.tokens.default)
    try:
        await api.agent.store.apply(command, token=token)
    except CommandError as exc:
        raise bad_request(str(exc)) from None


def _changes_node(old: Node, new: Node) -> bool:
    """Whether a registration rewrites the node's own fields (then node:write is needed, as Consul's
    ChangesNode: a service update may re-post unchanged node fields without it)."""
    return (old.node.lower() != new.node.lower() or old.address != new.address or old.id != new.id
            or old.tagged_addresses != new.tagged_addresses or old.meta != new.meta)


def _proxy_destination(data: dict[str, Any]) -> str:
    proxy = data.get("proxy")
    if not isinstance(proxy, dict):
        return ""
    value = _fold(proxy).get("destinationservicename")
    return value if isinstance(value, str) else ""


def _vet_register(api: API, identity: ACLIdentity, existing: Node | None, node: Node, service: Service | None,
                  service_body: dict[str, Any], checks: list[Check]) -> None:
    """Consul's vetRegisterWithACL: node:write when the node is new or changes, service:write on the service
    (on the one it replaces by ID, and on a connect-proxy's destination), node:write for node checks and
    service:write on the service of every other service check."""
    authz = identity.authorizer
    catalog = api.agent.store.catalog
    if existing is None or _changes_node(existing, node):
        require(identity, authz.node_write(node.node))
    on_node = {s.id: s for s in catalog.node_services(node.node)} if existing is not None else {}
    if service is not None:
        require(identity, authz.service_write(service.service))
        replaced = on_node.get(service.id)
        if replaced is not None:
            require(identity, authz.service_write(replaced.service))
        if service.kind == "connect-proxy":
            destination = _proxy_destination(service_body)
            if destination:
                require(identity, authz.service_write(destination))
    held = {c.check_id: c for c in catalog.node_checks(node.node)} if existing is not None else {}
    for check in checks:
        prior = held.get(check.check_id)
        if prior is not None and prior.service_id != check.service_id:
            # Re-pointing another owner's check ID would take its health signal (stricter than Consul, which
            # vets only the new owner): the current owner must be writable too.
            require(identity, authz.service_write(prior.service_name) if prior.service_id
                    else authz.node_write(node.node))
        if not check.service_id:
            require(identity, authz.node_write(node.node))
            continue
        if service is not None and check.service_id == service.id:
            continue  # vetted with the service above
        other = on_node.get(check.service_id)
        if other is None:
            raise bad_request(f"Unknown service ID {check.service_id[:200]!r} for check ID {check.check_id[:200]!r}")
        require(identity, authz.service_write(other.service))


def _vet_deregister(api: API, identity: ACLIdentity, command: dict[str, Any]) -> None:
    """Consul's vetDeregisterWithACL, as the servers decide it (agent/acl/command_rights.py: one definition, in
    the FSM's order, CheckID before ServiceID): node:write on the node allows any of it; else service:write on
    the service of the check or service. Unknown IDs without node:write are the node:write refusal."""
    decision = command_rights.authorize(identity, command, api.agent.store.catalog)
    if decision is not None:
        require(identity, decision)


async def register(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/catalog/register: a node, optionally with one service and checks; answers true."""
    body = _json_object(request)
    name = body.get("node")
    address = body.get("address")
    if not isinstance(name, str) or not name:
        raise bad_request("Missing node name")
    if not isinstance(address, str) or not address:
        raise bad_request("Missing node address")
    identity = acl_identity(api, request)
    existing = api.agent.store.catalog.node(name)
    if body.get("skipnodeupdate") and existing is not None:
        node = existing
    else:
        node = Node(node=name, address=address, id=str(body.get("id") or ""), datacenter=api.agent.datacenter,
                    tagged_addresses=_str_map(body.get("taggedaddresses"), "TaggedAddresses"),
                    meta=_str_map(body.get("nodemeta"), "NodeMeta"))
    service_body = _object(body, "Service") if body.get("service") else {}
    service = _service(name, service_body) if service_body else None
    raw_checks = body.get("checks") or []
    if not isinstance(raw_checks, list):
        raise bad_request("Checks must be a list of objects")
    raw_checks = list(raw_checks)
    if body.get("check"):
        raw_checks.append(_object(body, "Check"))
    if not all(isinstance(c, dict) for c in raw_checks):
        raise bad_request("Checks must be a list of objects")
    checks = [_check(name, _fold(c)) for c in raw_checks]
    if identity is not None:
        _vet_register(api, identity, existing, node, service, service_body, checks)
    await _apply(api, request, identity, commands.register(node, service, checks))
    return api.json(True, query)


async def deregister(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/catalog/deregister: a check (CheckID), a service (ServiceID) or the whole node."""
    body = _json_object(request)
    name = body.get("node")
    if not isinstance(name, str) or not name:
        raise bad_request("Missing node name")
    service_id = str(body.get("serviceid") or "")
    check_id = str(body.get("checkid") or "")
    identity = acl_identity(api, request)
    command = commands.deregister(name, service_id=service_id, check_id=check_id)
    if identity is not None:
        _vet_deregister(api, identity, command)
    await _apply(api, request, identity, command)
    return api.json(True, query)
