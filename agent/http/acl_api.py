"""`/v1/acl/*`: the shared plumbing, bootstrap and tokens (policies, roles, templates: acl_policy_api.py).

Reads need acl:read and block on the `acl` watch key (X-Consul-Index = the ACL state's index); writes need
acl:write and go through `store.apply` with the request's token (servers re-check it). A SecretID is shown
only to acl:write (and to its own token on /token/self). With ACLs off every route answers Consul's 401
`ACL support disabled`. On a client agent (whose replica holds no secrets) the whole request is executed by a
server over RPC `acl_http` (agent/server/acl_endpoints.py) and its answer relayed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from ..acl.identity import require
from ..acl.objects import (
    ACLObjectError,
    Link,
    Token,
    object_hash,
    token_from_request,
)
from ..acl.secrets import ANONYMOUS_SECRET_ID, new_id, secrets_equal
from ..catalog import CommandError, commands
from ..rpc.errors import Rejected
from . import acl_gate
from .config_api import body_json
from .messages import Request, Response, simple_response
from .query import HTTPError, Query, bad_request

if TYPE_CHECKING:
    from .api import API

Endpoint = Callable[["API", Request, Query, str], Awaitable[Response]]

WATCH = ["acl"]
MAX_ERROR = 1024  # characters of a refusal quoted back (it may carry hostile input)
MAX_ID = 128  # longer than any UUID or name an object may have: such a path part names nothing
BOOTSTRAP_DENIED = "ACL bootstrap no longer allowed"
_DISABLED = simple_response(401, "ACL support disabled")
TRUE = (200, [(b"content-type", b"application/json")], b"true")

# Go's JSON decoder matches field names case-insensitively (py-consul sends `{"name": …, "rules": …}` for a
# new policy): request keys are mapped to Consul's spelling before the strict parsers see them.
_FIELDS = {k.lower(): k for k in (
    "ID", "Name", "Description", "Rules", "Datacenters", "Policies", "Roles", "ServiceIdentities",
    "NodeIdentities", "ServiceName", "NodeName", "Datacenter", "AccessorID", "SecretID", "Local",
    "ExpirationTime", "ExpirationTTL", "TemplatedPolicies", "BootstrapSecret")}


@runtime_checkable
class RPCCaller(Protocol):
    """A client agent's way to a server (ServerForwarder.call)."""

    async def call(self, method: str, args: Any) -> Any: ...


# ------------------------------------------------------------------------------------------- plumbing


def acl_route(fn: Endpoint) -> Endpoint:
    """Wrap an endpoint: 401 with ACLs off; on a client agent, executed by a server (its answer relayed)."""

    async def endpoint(api: API, request: Request, query: Query, arg: str) -> Response:
        if not api.agent.acl.enabled:
            return _DISABLED
        caller = server_caller(api)
        if caller is not None:
            from .acl_forward import forward  # runtime-only path of client agents
            return await forward(api, caller, request, query)
        return await fn(api, request, query, arg)

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def server_caller(api: API) -> RPCCaller | None:
    """The RPC caller of a client agent (whose replica holds no secrets); None on servers and -dev."""
    if api.agent.is_server:
        return None
    replicator = api.agent.store.replicator
    return replicator if isinstance(replicator, RPCCaller) else None


def acl_state(api: API) -> Any:
    return api.agent.store.catalog.acl  # AclState (agent/catalog/acl_state.py)


def require_acl(api: API, request: Request, write: bool = False) -> bool:
    """Require acl:read (acl:write when `write`); returns whether the caller may see SecretIDs."""
    identity = api.identity(request)
    if write:
        require(identity, identity.authorizer.acl_write())
        return True
    require(identity, identity.authorizer.acl_read())
    return identity.authorizer.acl_write().allowed


async def read_meta(api: API, request: Request, query: Query) -> list[tuple[bytes, bytes]]:
    """Wait for `?index=` on the acl key; the query-meta headers at the ACL state's index."""
    index = await api.block(WATCH, query, request)
    return api.meta_headers(max(index, 1), query)


async def apply_write(api: API, request: Request, command: dict[str, Any]) -> Any:
    """Write as the request's token (servers re-check it); the FSM's refusals are 400s with its text."""
    token = acl_gate.write_token(request, api.agent.acl.tokens.default)
    try:
        return await api.agent.store.apply(command, token=token)
    except (CommandError, Rejected) as exc:
        text = str(exc)
        at = text.find(BOOTSTRAP_DENIED)
        if at >= 0:
            raise HTTPError(403, f"Permission denied: {text[at:][:MAX_ERROR]}") from None
        raise bad_request(consul_wording(text)[:MAX_ERROR]) from None


# The FSM's refusals (agent/catalog/acl_state.py) in Consul's words, where Consul has some.
_WORDING = [
    (re.compile(r"policy\.name: a policy named '(.*)' already exists"),
     'Invalid Policy: A Policy with Name "{}" already exists'),
    (re.compile(r"role\.name: a role named '(.*)' already exists"),
     'Invalid Role: A Role with Name "{}" already exists'),
    (re.compile(r"\.policies\[\d+\]: no policy with ID '(.*)'"), 'No such ACL policy with ID "{}"'),
    (re.compile(r"\.policies\[\d+\]: no policy with name '(.*)'"), 'No such ACL policy with name "{}"'),
    (re.compile(r"\.roles\[\d+\]: no role with ID '(.*)'"), 'No such ACL role with ID "{}"'),
    (re.compile(r"\.roles\[\d+\]: no role with name '(.*)'"), 'No such ACL role with name "{}"'),
]


def consul_wording(text: str) -> str:
    """An FSM refusal as Consul words it (unchanged when Consul has no wording for it)."""
    for pattern, words in _WORDING:
        match = pattern.search(text)
        if match:
            return words.format(match.group(1))
    return text


def object_id(arg: str, what: str) -> str:
    if not arg:
        raise bad_request(f"Missing {what}")
    if len(arg) > MAX_ID:
        raise HTTPError(404, f"Requested {what.split()[0]} does not exist: ACL not found")
    return arg


def canonical(value: Any, depth: int = 0) -> Any:
    """A decoded JSON body with Consul's field spellings (exact keys win over case variants)."""
    if depth > 4:
        return value
    if isinstance(value, list):
        return [canonical(v, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _FIELDS.get(key.lower(), key) if isinstance(key, str) else key
        if name not in out or key == name:
            out[name] = canonical(item, depth + 1)
    return out


def request_body(request: Request) -> dict[str, Any]:
    raw = canonical(body_json(request))
    if not isinstance(raw, dict):
        raise bad_request("Request decoding failed: the body must be a JSON object")
    rules = raw.get("Rules")
    if isinstance(rules, str) and rules.lstrip().startswith('"'):
        # py-consul json.dumps()es a rules string once more; Consul's HCL parser would refuse the quoted
        # text, we take the string inside.
        try:
            inner = json.loads(rules)
        except ValueError:
            inner = None
        if isinstance(inner, str):
            raw["Rules"] = inner
    if raw.get("TemplatedPolicies"):
        raise bad_request("TemplatedPolicies: not supported (use ServiceIdentities or NodeIdentities)")
    return raw


def invalid(exc: ACLObjectError, what: str) -> HTTPError:
    return bad_request(f"{what} decoding failed: {str(exc)[:MAX_ERROR]}")


def _now() -> datetime:
    return datetime.now(UTC)


def _live(token: Token | None) -> Token | None:
    """The token unless it expired (Consul reads expired tokens as absent)."""
    return None if token is None or token.expired(_now()) else token


# ------------------------------------------------------------------------------------------- bootstrap


@acl_route
async def bootstrap(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/acl/bootstrap: the first management token, once (then 403 with the reset index)."""
    acl = acl_state(api)
    if acl.bootstrap_index:  # the FSM refuses it too; answered here without a Raft write
        raise HTTPError(403, f"Permission denied: {BOOTSTRAP_DENIED} (reset index: {acl.bootstrap_index})")
    body = request_body(request) if request.body.strip() else {}
    secret = body.get("BootstrapSecret") or ""
    if secret and not isinstance(secret, str):
        raise bad_request("Request decoding failed: BootstrapSecret must be a string")
    try:
        token = token_from_request({"SecretID": secret, "Description": "Bootstrap Token (Global Management)",
                                    "Policies": [{"ID": GLOBAL_MANAGEMENT_POLICY_ID}]}, now=_now())
    except ACLObjectError as exc:
        raise bad_request(f"Request decoding failed: {str(exc).replace('SecretID', 'BootstrapSecret')}") from None
    token = replace(token, policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, "global-management"),))
    await apply_write(api, request, commands.acl_bootstrap(replace(token, hash=object_hash(token))))
    stored = acl.token(token.accessor_id) or token
    return api.json({"ID": stored.secret_id, **stored.to_api(True)}, query)


# ------------------------------------------------------------------------------------------- tokens


@acl_route
async def token_self(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/token/self: the presented token, SecretID included; needs nothing but a valid token."""
    identity = api.identity(request)  # ACLNotFound (403 "ACL not found") for an unknown or expired secret
    headers = await read_meta(api, request, query)
    acl = acl_state(api)
    token = None
    if identity.token is not None:
        token = acl.token(identity.token.accessor_id)
    if token is None:
        token = acl.token_by_secret(acl_gate.request_token(request) or api.agent.acl.tokens.default
                                    or ANONYMOUS_SECRET_ID)
    if _live(token) is None:
        raise HTTPError(404, "Supplied token does not exist")
    # Only a presented token sees its own secret: the agent's `default` token (no token given) is not handed to
    # whoever reaches the HTTP port, who could then present it to other agents and to :8300.
    return 200, headers, api.json(token.to_api(bool(acl_gate.request_token(request))), query)[2]


@acl_route
async def token_create(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/acl/token: a new token (AccessorID and SecretID generated unless given)."""
    require_acl(api, request, write=True)
    try:
        token = token_from_request(request_body(request), now=_now())
    except ACLObjectError as exc:
        raise invalid(exc, "Token") from None
    acl = acl_state(api)
    if acl.token(token.accessor_id) is not None:
        raise bad_request("Invalid Token: AccessorID is already in use")
    if acl.token_by_secret(token.secret_id) is not None:
        raise bad_request("Invalid Token: SecretID is already in use")
    return await _write_token(api, request, query, token)


async def _write_token(api: API, request: Request, query: Query, token: Token) -> Response:
    await apply_write(api, request, commands.acl_token_set(token))
    stored = acl_state(api).token(token.accessor_id) or token
    return api.json(stored.to_api(True), query)


@acl_route
async def token_item(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET/PUT/DELETE /v1/acl/token/:AccessorID, and PUT /v1/acl/token/:AccessorID/clone."""
    if request.method == "PUT":
        if arg.endswith("/clone"):
            return await _token_clone(api, request, query, object_id(arg[:-6], "token AccessorID"))
        return await _token_update(api, request, query, object_id(arg, "token AccessorID"))
    aid = object_id(arg, "token AccessorID").lower()
    if request.method == "DELETE":
        require_acl(api, request, write=True)
        if acl_state(api).token(aid) is None:
            raise HTTPError(404, "Cannot find token to delete")
        own = api.identity(request).token
        if own is not None and own.accessor_id == aid:  # Consul's TokenDelete: no locking oneself out
            raise bad_request("Deletion of the request's authorization token is not permitted")
        await apply_write(api, request, commands.acl_token_delete(aid))
        return TRUE
    visible = require_acl(api, request)
    headers = await read_meta(api, request, query)
    token = _live(acl_state(api).token(aid))
    if token is None:
        raise HTTPError(404, "Requested token does not exist: ACL not found")
    return 200, headers, api.json(token.to_api(visible), query)[2]


async def _token_update(api: API, request: Request, query: Query, aid: str) -> Response:
    require_acl(api, request, write=True)
    aid = aid.lower()
    body = request_body(request)
    given = body.pop("AccessorID", None)
    if given not in (None, "") and (not isinstance(given, str) or given.lower() != aid):
        raise bad_request("Token Accessor ID in URL and payload do not match")
    existing = _live(acl_state(api).token(aid))
    if existing is None:
        raise HTTPError(404, f"Cannot find token {aid!r}")
    secret = body.pop("SecretID", None)
    if secret not in (None, "") and (not isinstance(secret, str) or not secrets_equal(secret, existing.secret_id)):
        raise bad_request("Changing a token's SecretID is not permitted")
    if existing.expiration_time is not None and isinstance(body.get("ExpirationTime"), str):
        try:
            if datetime.fromisoformat(body["ExpirationTime"]) == existing.expiration_time:
                del body["ExpirationTime"]  # re-sent unchanged: not a change (nor held to the minimum TTL)
        except ValueError:
            pass  # the parser names it
    try:
        # Parsed under a throwaway AccessorID: the builtin anonymous token (a reserved ID) is updatable.
        parsed = token_from_request(body, now=_now())
    except ACLObjectError as exc:
        raise invalid(exc, "Token") from None
    if parsed.local != existing.local:
        raise bad_request(f"Cannot toggle local mode of {aid}")
    if parsed.expiration_time is not None and parsed.expiration_time != existing.expiration_time:
        raise bad_request(f"Cannot change expiration time of {aid}")
    token = replace(parsed, accessor_id=aid, secret_id=existing.secret_id, create_time=existing.create_time,
                    expiration_time=existing.expiration_time)
    return await _write_token(api, request, query, replace(token, hash=object_hash(token)))


async def _token_clone(api: API, request: Request, query: Query, aid: str) -> Response:
    require_acl(api, request, write=True)
    body = request_body(request)
    existing = _live(acl_state(api).token(aid.lower()))
    if existing is None:
        raise HTTPError(404, "Cannot find token to clone")
    description = body.get("Description") or existing.description
    if not isinstance(description, str) or len(description) > 8192:
        raise bad_request("Token decoding failed: Description: must be a string of at most 8192 characters")
    token = replace(existing, accessor_id=new_id(), secret_id=new_id(), description=description,
                    create_time=_now(), create_index=0, modify_index=0)
    return await _write_token(api, request, query, replace(token, hash=object_hash(token)))


@acl_route
async def token_list(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/acl/tokens (`?policy=`, `?role=`, `?servicename=`, `?authmethod=`)."""
    visible = require_acl(api, request)
    headers = await read_meta(api, request, query)
    policy, role = query.get("policy").lower(), query.get("role").lower()
    service, method = query.get("servicename"), query.get("authmethod")
    now = _now()
    out = []
    for token in acl_state(api).tokens():
        if token.expired(now) or method:  # no auth methods here: no token was made by one
            continue
        if policy and not any(p.id == policy for p in token.policies):
            continue
        if role and not any(r.id == role for r in token.roles):
            continue
        if service and not any(s.service_name == service for s in token.service_identities):
            continue
        out.append(token.to_api(visible))
    return 200, headers, api.json(out, query)[2]
