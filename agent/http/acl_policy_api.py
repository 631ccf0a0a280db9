"""`/v1/acl/policy`, `/policies`, `/role`, `/roles` and the builtin templated policies (plumbing in acl_api.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from ..acl.objects import ACLObjectError, Policy, Role, policy_from_request, role_from_request
from ..catalog import commands
from .acl_api import (
    TRUE,
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


# ------------------------------------------------------------------------------------------- policies


@acl_route
async def policy_create(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/acl/policy: a new policy (its rules parsed and checked first)."""
    require_acl(api, request, write=True)
    body = request_body(request)
    if body.get("ID"):
        raise bad_request("Cannot specify the ID when creating a new policy")
    try:
        policy = policy_from_request(body)
    except ACLObjectError as exc:
        raise invalid(exc, "Policy") from None
    return await _write_policy(api, request, query, policy)


async def _write_policy(api: API, request: Request, query: Query, policy: Policy) -> Response:
    await apply_write(api, request, commands.acl_policy_set(policy))
    stored = acl_state(api).policy(policy.id) or policy
    return api.json(stored.to_api(), query)


@acl_route
async def policy_item(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET/PUT/DELETE /v1/acl/policy/:id."""
    pid = object_id(arg, "policy ID").lower()
    acl = acl_state(api)
    if request.method == "GET":
        return await _show_policy(api, request, query, lambda: acl.policy(pid))
    require_acl(api, request, write=True)
    existing = acl.policy(pid)
    if request.method == "DELETE":
        if existing is None:
            raise HTTPError(404, "Cannot find policy to delete")
        await apply_write(api, request, commands.acl_policy_delete(pid))
        return TRUE
    body = request_body(request)
    if existing is None:
        raise HTTPError(404, f"Cannot find policy {pid!r}")
    try:
        policy = policy_from_request(body, policy_id=pid)
    except ACLObjectError as exc:
        text = str(exc)
        if text.startswith("ID:") and "does not match" in text:
            raise bad_request("Policy ID in URL and payload do not match") from None
        raise invalid(exc, "Policy") from None
    if pid == GLOBAL_MANAGEMENT_POLICY_ID and policy.rules != existing.rules:
        raise bad_request("Changing the Rules for the builtin global-management policy is not permitted")
    return await _write_policy(api, request, query, policy)


async def _show_policy(api: API, request: Request, query: Query, find: Callable[[], Policy | None]) -> Response:
    require_acl(api, request)
    headers = await read_meta(api, request, query)
    policy = find()
    if policy is None:
        raise HTTPError(404, "Requested policy does not exist: ACL not found")
    return 200, headers, api.json(policy.to_api(), query)[2]


@acl_route
async def policy_by_name(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/policy/name/:name."""
    name = object_id(arg, "policy Name")
    return await _show_policy(api, request, query, lambda: acl_state(api).policy_by_name(name))


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


@acl_route
async def role_create(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/acl/role: a new role."""
    require_acl(api, request, write=True)
    body = request_body(request)
    if body.get("ID"):
        raise bad_request("Role ID in URL and payload do not match")
    try:
        role = role_from_request(body)
    except ACLObjectError as exc:
        raise invalid(exc, "Role") from None
    return await _write_role(api, request, query, role)


async def _write_role(api: API, request: Request, query: Query, role: Role) -> Response:
    await apply_write(api, request, commands.acl_role_set(role))
    stored = acl_state(api).role(role.id) or role
    return api.json(stored.to_api(), query)


@acl_route
async def role_item(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET/PUT/DELETE /v1/acl/role/:id."""
    rid = object_id(arg, "role ID").lower()
    acl = acl_state(api)
    if request.method == "GET":
        return await _show_role(api, request, query, lambda: acl.role(rid))
    require_acl(api, request, write=True)
    existing = acl.role(rid)
    if request.method == "DELETE":
        if existing is None:
            raise HTTPError(404, "Cannot find role to delete")
        await apply_write(api, request, commands.acl_role_delete(rid))
        return TRUE
    body = request_body(request)
    if existing is None:
        raise HTTPError(404, f"Cannot find role {rid!r}")
    try:
        role = role_from_request(body, role_id=rid)
    except ACLObjectError as exc:
        text = str(exc)
        if text.startswith("ID:") and "does not match" in text:
            raise bad_request("Role ID in URL and payload do not match") from None
        raise invalid(exc, "Role") from None
    return await _write_role(api, request, query, role)


async def _show_role(api: API, request: Request, query: Query, find: Callable[[], Role | None]) -> Response:
    require_acl(api, request)
    headers = await read_meta(api, request, query)
    role = find()
    if role is None:
        raise HTTPError(404, "Requested role does not exist: ACL not found")
    return 200, headers, api.json(role.to_api(), query)[2]


@acl_route
async def role_by_name(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/role/name/:name."""
    name = object_id(arg, "role Name")
    return await _show_role(api, request, query, lambda: acl_state(api).role_by_name(name))


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
