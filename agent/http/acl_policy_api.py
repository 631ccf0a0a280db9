"""`/v1/acl/policy`, `/policies`, `/role`, `/roles` and the builtin templated policies (plumbing in acl_api.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from ..acl.objects import ACLObjectError, Policy, policy_from_request, role_from_request
from ..catalog import commands
from .acl_api import (
    TRUE,
    Endpoint,
    acl_route,
    acl_state,
    apply_write,
    invalid,
    object_id,
    read_meta,
    request_body,
    require_acl,
)
from .acl_templates import TEMPLATES, template_json
from .messages import Request, Response
from .query import HTTPError, Query, bad_request

if TYPE_CHECKING:
    from .api import API


# ------------------------------------------------------------------------------------------- one CRUD, two kinds


@dataclass(frozen=True)
class _Kind:
    """What differs between policies and roles; the handlers below are the same for both."""

    name: str  # "policy" / "role": in Consul's error texts
    title: str  # "Policy" / "Role"
    parse: Callable[[Any, str | None], Any]  # (body, the URL's ID or None) -> the object; ACLObjectError
    find: Callable[[Any, str], Any]  # (AclState, id) -> the object or None
    find_name: Callable[[Any, str], Any]  # (AclState, name) -> the object or None
    set_command: Callable[[Any], dict[str, Any]]
    delete_command: Callable[[str], dict[str, Any]]
    create_with_id: str  # Consul's text when a create names an ID
    vet_update: Callable[[str, Any, Any], None]  # (id, existing, new): raises for a change it may not make


def _no_vet(oid: str, existing: Any, new: Any) -> None:
    return None


def _vet_policy_update(pid: str, existing: Policy, policy: Policy) -> None:
    if pid == GLOBAL_MANAGEMENT_POLICY_ID and policy.rules != existing.rules:
        raise bad_request("Changing the Rules for the builtin global-management policy is not permitted")


_POLICY = _Kind("policy", "Policy", lambda body, pid: policy_from_request(body, policy_id=pid),
                lambda acl, pid: acl.policy(pid), lambda acl, name: acl.policy_by_name(name),
                commands.acl_policy_set, commands.acl_policy_delete,
                "Cannot specify the ID when creating a new policy", _vet_policy_update)
_ROLE = _Kind("role", "Role", lambda body, rid: role_from_request(body, role_id=rid),
              lambda acl, rid: acl.role(rid), lambda acl, name: acl.role_by_name(name),
              commands.acl_role_set, commands.acl_role_delete,
              "Role ID in URL and payload do not match", _no_vet)


async def _create(kind: _Kind, api: API, request: Request, query: Query) -> Response:
    require_acl(api, request, write=True)
    body = request_body(request)
    if body.get("ID"):
        raise bad_request(kind.create_with_id)
    try:
        obj = kind.parse(body, None)
    except ACLObjectError as exc:
        raise invalid(exc, kind.title) from None
    return await _write(kind, api, request, query, obj)


async def _write(kind: _Kind, api: API, request: Request, query: Query, obj: Any) -> Response:
    await apply_write(api, request, kind.set_command(obj))
    stored = kind.find(acl_state(api), obj.id) or obj
    return api.json(stored.to_api(), query)


async def _item(kind: _Kind, api: API, request: Request, query: Query, arg: str) -> Response:
    oid = object_id(arg, f"{kind.name} ID").lower()
    acl = acl_state(api)
    if request.method == "GET":
        return await _show(kind, api, request, query, lambda: kind.find(acl, oid))
    require_acl(api, request, write=True)
    existing = kind.find(acl, oid)
    if request.method == "DELETE":
        if existing is None:
            raise HTTPError(404, f"Cannot find {kind.name} to delete")
        await apply_write(api, request, kind.delete_command(oid))
        return TRUE
    body = request_body(request)
    if existing is None:
        raise HTTPError(404, f"Cannot find {kind.name} {oid!r}")
    try:
        obj = kind.parse(body, oid)
    except ACLObjectError as exc:
        text = str(exc)
        if text.startswith("ID:") and "does not match" in text:
            raise bad_request(f"{kind.title} ID in URL and payload do not match") from None
        raise invalid(exc, kind.title) from None
    kind.vet_update(oid, existing, obj)
    return await _write(kind, api, request, query, obj)


async def _show(kind: _Kind, api: API, request: Request, query: Query, find: Callable[[], Any]) -> Response:
    require_acl(api, request)
    headers = await read_meta(api, request, query)
    obj = find()
    if obj is None:
        raise HTTPError(404, f"Requested {kind.name} does not exist: ACL not found")
    return 200, headers, api.json(obj.to_api(), query)[2]


def _routes(kind: _Kind) -> tuple[Endpoint, Endpoint, Endpoint]:
    """PUT /v1/acl/<kind> (create), GET/PUT/DELETE /v1/acl/<kind>/:id, GET /v1/acl/<kind>/name/:name."""

    @acl_route
    async def create(api: API, request: Request, query: Query, arg: str) -> Response:
        return await _create(kind, api, request, query)

    @acl_route
    async def item(api: API, request: Request, query: Query, arg: str) -> Response:
        return await _item(kind, api, request, query, arg)

    @acl_route
    async def by_name(api: API, request: Request, query: Query, arg: str) -> Response:
        name = object_id(arg, f"{kind.name} Name")
        return await _show(kind, api, request, query, lambda: kind.find_name(acl_state(api), name))

    return create, item, by_name


# ------------------------------------------------------------------------------------------- policies

policy_create, policy_item, policy_by_name = _routes(_POLICY)


@acl_route
async def policy_list(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/policies: Consul's policy stubs (no Rules)."""
    require_acl(api, request)
    headers = await read_meta(api, request, query)
    out = []
    for policy in acl_state(api).policies():
        stub = policy.to_api()
        del stub["Rules"]
        out.append(stub)
    return 200, headers, api.json(out, query)[2]


# ------------------------------------------------------------------------------------------- roles

role_create, role_item, role_by_name = _routes(_ROLE)


@acl_route
async def role_list(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/roles (`?policy=` keeps roles linking that policy ID)."""
    require_acl(api, request)
    headers = await read_meta(api, request, query)
    policy = query.get("policy").lower()
    roles = [r for r in acl_state(api).roles() if not policy or any(p.id == policy for p in r.policies)]
    return 200, headers, api.json([r.to_api() for r in roles], query)[2]


# ------------------------------------------------------------------------------------------- templates


@acl_route
async def templated_policies(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/templated-policies: Consul's builtin templates, by name."""
    require_acl(api, request)
    return api.json({name: template_json(name) for name in TEMPLATES}, query)


@acl_route
async def templated_policy(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/templated-policy/name/:name."""
    require_acl(api, request)
    if arg not in TEMPLATES:
        raise HTTPError(404, "Requested templated policy does not exist: ACL not found")
    return api.json(template_json(arg), query)
