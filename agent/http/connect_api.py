"""`/v1/agent/connect/*` and `/v1/connect/ca/*`: CA roots and configuration, leaf certificates, authorize.

Roots and authorize answer from this agent's own catalog (every agent holds a replica, roots without their
keys), so they keep working with every server stopped; only `?consistent` asks a server first. Leaves come
from the agent's LeafCache (agent/connect/leaf_cache.py). A CA configuration change goes to the authority
(agent.ca), which refuses a bad one with Rejected (400 naming the field).

ACLs (Consul's "ACL Required"): roots none; leaf service:write on the service; authorize service:write on
the Target; CA configuration operator:write to read (as Consul ≥ 1.11: the configuration may carry
provider secrets) and to write.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..acl.identity import require
from ..catalog.config_entries import entry_watch_key
from ..catalog.connect_state import WATCH_KEY
from ..connect.intention_entries import intentions_of
from ..connect.intentions import Action, Intention, IntentionIndex
from ..connect.leaf_cache import LeafError
from ..connect.spiffe import SpiffeIDError, parse_service_id, service_id
from . import acl_gate
from .connect_render import authorize_json, ca_config_json, leaf_json, roots_json, roots_pem
from .messages import Request, Response
from .query import HTTPError, Query, bad_request, parse_bool
from .render import dumps

if TYPE_CHECKING:
    from ..catalog.state import Catalog
    from .api import API

INTENTIONS_KIND = "service-intentions"
INTENTIONS_KEY = entry_watch_key(INTENTIONS_KIND)
MAX_AUTHORIZE_BODY = 16 * 1024  # Target + a SPIFFE ID (≤ 2 KiB) + a serial: far below this
MAX_CONFIG_BODY = 256 * 1024  # a CA configuration may carry a PEM key and certificate
MAX_NAME = 256
PEM_CHAIN = (b"content-type", b"application/pem-certificate-chain")
DEFAULT_REASON = "Default behavior configured by ACLs"  # Consul's reason when no intention matched
MAX_ANSWERS = 16_384  # authorize answers kept per agent between intention changes
MAX_REMEMBERED_BODY = 1024  # only answers to bodies this small are kept (a SPIFFE ID and a name fit)
CT_JSON = (b"content-type", b"application/json")


def _connect_disabled() -> HTTPError:
    return HTTPError(500, "Connect must be enabled in order to use this endpoint")


async def _block_local(api: API, query: Query, request: Request) -> int:
    """A blocking read of the CA state from the local catalog: no server is asked unless ?consistent."""
    store = api.agent.store
    if query.consistency == b"consistent":
        await store.read_barrier(query.consistency)
    if query.index > 0:
        with request.hangup_ends_wait():
            await store.block([WATCH_KEY], query.index, query.wait)
    # Never 0: a watch loop that sends ?index=0 would not block (Consul's indexes start at 1).
    return max(1, store.index_for([WATCH_KEY]))


# ---------------------------------------------------------------------------------------------- roots

async def agent_roots(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/connect/ca/roots: the trusted roots from this agent's cache (blocking)."""
    index = await _block_local(api, query, request)
    return 200, api.meta_headers(index, query), _dumps(roots_json(api.agent.store.catalog.connect), query)


async def roots(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/ca/roots[?pem=true]: the trusted roots, as JSON or as a PEM bundle (blocking)."""
    pem = query.has("pem") and (query.get("pem") == "" or parse_bool("pem", query.get("pem")))
    index = await _block_local(api, query, request)
    connect = api.agent.store.catalog.connect
    if pem:
        headers = api.meta_headers(index, query)
        headers[0] = PEM_CHAIN
        return 200, headers, roots_pem(connect).encode()
    return 200, api.meta_headers(index, query), _dumps(roots_json(connect), query)


# ---------------------------------------------------------------------------------------------- configuration

async def ca_configuration_get(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/connect/ca/configuration: Provider, Config (without PrivateKey), State, indexes."""
    identity = api.identity(request)
    require(identity, identity.authorizer.operator_write())
    index = await _block_local(api, query, request)
    connect = api.agent.store.catalog.connect
    if not connect.cluster_id:
        raise HTTPError(500, "Connect CA is not initialized yet")
    provider = str(getattr(api.agent.config, "ca_provider", "consul") or "consul")
    return 200, api.meta_headers(index, query), _dumps(ca_config_json(connect, index, provider), query)


async def ca_configuration_put(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/connect/ca/configuration with {Provider, Config, ForceWithoutCrossSigning}: to the authority."""
    identity = api.identity(request)
    require(identity, identity.authorizer.operator_write())
    body = _json_object(request.body, MAX_CONFIG_BODY)
    provider = body.get("Provider", body.get("provider", ""))
    if not isinstance(provider, str) or len(provider) > MAX_NAME:
        raise bad_request("Request decode failed: Provider must be a string")
    config = body.get("Config", body.get("config", {}))
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise bad_request("Request decode failed: Config must be an object")
    force = body.get("ForceWithoutCrossSigning", body.get("force_without_cross_signing", False))
    if not isinstance(force, bool):
        raise bad_request("Request decode failed: ForceWithoutCrossSigning must be a boolean")
    authority = getattr(api.agent, "ca", None)
    if authority is None:
        raise _connect_disabled()
    try:
        # The servers check operator:write again, against the token the change carries (ca_acl.py).
        await authority.set_config(provider or "consul", config, force, token=_write_token(api, request))
    except ValueError as exc:  # a CA that validates with ValueError (its Rejected is a ServerError: 400)
        raise bad_request(str(exc)) from None
    return 200, [], b""


# ---------------------------------------------------------------------------------------------- leaf

async def leaf(api: API, request: Request, query: Query, service: str) -> Response:
    """GET /v1/agent/connect/ca/leaf/:service: the service's leaf (blocking on ?index= until a new one)."""
    if not service:
        raise bad_request("Missing service name")
    # Whoever holds a service's leaf (and its key) is that service in the mesh: service:write, as Consul.
    identity = api.identity(request)
    require(identity, identity.authorizer.service_write(service))
    try:
        with request.hangup_ends_wait():
            # Signings carry the token: servers check service:write again (agent/connect/ca_acl.py).
            record = await api.agent.leaves.get(service, query.index, query.wait, token=_write_token(api, request))
    except LeafError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    identity = api.recheck(request)  # the leaf holds the key: not for a token revoked or narrowed during the wait
    require(identity, identity.authorizer.service_write(service))
    return 200, api.meta_headers(record.index, query), _dumps(leaf_json(record), query)


def _write_token(api: API, request: Request) -> str | None:
    """The secret a CA call acts as at the servers (the request's, else the agent's default); None with ACLs off."""
    if not api.identity(request).enabled:
        return None
    return acl_gate.write_token(request, api.agent.acl.tokens.default) or None


# ---------------------------------------------------------------------------------------------- authorize

class _IntentionCache:
    """The intentions of one catalog, compiled once per change of the service-intentions entries, and the
    answers given since (by caller, target and policy), which the same change and a new trust domain clear."""

    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        self.index = -1
        self.trust_domain = ""
        self.intentions = IntentionIndex(())
        # (body, default allow, pretty) -> (Target, rendered answer): the Target for the ACL check on a hit.
        self.answers: dict[tuple[bytes, bool, bool], tuple[str, bytes]] = {}

    def get(self, catalog: Catalog) -> IntentionIndex:
        index = catalog.index_for([INTENTIONS_KEY])
        trust_domain = catalog.connect.trust_domain
        if catalog is not self.catalog or index != self.index or trust_domain != self.trust_domain:
            rows = catalog.config_entries.list(INTENTIONS_KIND)
            self.intentions = IntentionIndex(intentions_of(rows))
            self.catalog, self.index, self.trust_domain = catalog, index, trust_domain
            self.answers = {}
        return self.intentions

    def remember(self, key: tuple[bytes, bool, bool], target: str, body: bytes) -> None:
        """Keep an answer and the Target it is about; bounded, since callers choose the keys."""
        if len(self.answers) >= MAX_ANSWERS:
            self.answers.clear()
        self.answers[key] = (target, body)


_CACHES: dict[int, _IntentionCache] = {}  # by id(store): one per agent (tests run several in one process)


def _cache(api: API) -> _IntentionCache:
    store = api.agent.store
    cache = _CACHES.get(id(store))
    if cache is None:
        if len(_CACHES) >= 64:
            _CACHES.clear()
        cache = _CACHES[id(store)] = _IntentionCache()
    cache.get(store.catalog)
    return cache


def default_allow(api: API) -> bool:
    """The decision when no intention matches: `acl { default_policy }` (allow unless set to deny)."""
    return str(api.agent.config.acl_default_policy).lower() != "deny"


def compiled_intentions(api: API) -> IntentionIndex:
    """This agent's intentions, indexed by destination, recompiled only when service-intentions entries changed."""
    return _cache(api).intentions


async def authorize(api: API, request: Request, query: Query, arg: str) -> Response:
    """POST /v1/agent/connect/authorize {Target, ClientCertURI, ClientCertSerial}: {Authorized, Reason},
    decided at L4 from this agent's intentions (an L7 intention denies), the ACL default otherwise.
    Needs service:write on the Target (the proxy of that service asks)."""
    identity = api.identity(request)  # an unknown token is refused before anything is read
    allow_by_default = default_allow(api)
    cache = _cache(api)
    # A proxy asks the same few questions over and over, in the same bytes: the answer is kept, by the
    # request's body (small ones only), until intentions, the trust domain or the policy change.
    raw_key = (request.body, allow_by_default, query.pretty) if len(request.body) <= MAX_REMEMBERED_BODY else None
    hit = cache.answers.get(raw_key) if raw_key is not None else None
    if hit is not None:
        require(identity, identity.authorizer.service_write(hit[0]))
        return 200, [CT_JSON], hit[1]
    body = _json_object(request.body, MAX_AUTHORIZE_BODY)
    target = _text(body, "Target", required=True)
    uri = _text(body, "ClientCertURI", required=True)
    _text(body, "ClientCertSerial", required=False)
    try:
        service_id("x", "x", target)
    except SpiffeIDError as exc:
        raise bad_request(f"Target is not a valid service name: {exc}") from None
    require(identity, identity.authorizer.service_write(target))
    try:
        client = parse_service_id(uri)
    except SpiffeIDError as exc:
        raise bad_request(f"ClientCertURI not a valid Connect identifier: {exc}") from None
    trust_domain = cache.trust_domain
    if not trust_domain:
        return api.json(authorize_json(False, "Connect CA is not initialized on this agent yet"), query)
    if client.trust_domain != trust_domain:
        answer = authorize_json(False, f"Identity from an external trust domain {client.trust_domain} "
                                       f"(this mesh is {trust_domain})")
    else:
        decision = cache.intentions.decide(client.service, target, allow_by_default, source_ns=client.namespace)
        answer = authorize_json(decision.allowed, _reason(decision.matched))
    rendered = _dumps(answer, query)
    if raw_key is not None:
        cache.remember(raw_key, target, rendered)
    return 200, [CT_JSON], rendered


def _reason(matched: Intention | None) -> str:
    if matched is None:
        return DEFAULT_REASON
    name = f"{matched.source} => {matched.destination}"
    if matched.action is None:
        return f"Matched L7 intention: {name} (L7 permissions deny at L4)"
    return f"Matched L4 intention: {name} ({Action(matched.action).value})"


# ---------------------------------------------------------------------------------------------- bodies

def _json_object(body: bytes, limit: int) -> dict[str, Any]:
    if len(body) > limit:
        raise HTTPError(413, f"Request body too large, max size: {limit} bytes")
    if not body.strip():
        raise bad_request("Request decode failed: empty body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Request decode failed: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise bad_request("Request decode failed: body must be a JSON object")
    return data


def _text(body: dict[str, Any], name: str, required: bool) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise bad_request(f"Request decode failed: {name} must be a string")
    if len(value.encode("utf-8", "replace")) > 4096:
        raise bad_request(f"{name} is too long")
    if required and not value:
        raise bad_request(f"{name} must be specified")
    return value


def _dumps(data: Any, query: Query) -> bytes:
    return dumps(data, query.pretty)
