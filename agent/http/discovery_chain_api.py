"""`/v1/discovery-chain/:service`: a service's compiled discovery chain (agent/connect/chain_compile.py) as
Consul prints it, `{"Chain": {...}}`. GET, or POST with override fields in the body (Consul's
`OverrideConnectTimeout`, `OverrideProtocol`, `OverrideMeshGateway`); `?compile-dc=` names the datacenter it
is compiled for. Blocking on the config-entry kinds a chain reads and the CA (its trust domain is in the SNIs).
Any valid name compiles, as in Consul: a service with no entries gets the default chain. ACL: service:read
on the service.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ..acl.identity import require
from ..catalog.config_entries import entry_watch_key
from ..catalog.connect_state import WATCH_KEY as CA_KEY
from ..config.duration import parse_duration
from ..connect.chain_compile import ChainError, compile_chain
from ..connect.entry_schema import PROTOCOLS
from .config_api import lookup
from .messages import Request, Response
from .query import HTTPError, Query, bad_request

if TYPE_CHECKING:
    from .api import API

MAX_NAME = 256
MAX_BODY = 16 * 1024  # three small override fields
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_DC = re.compile(r"[A-Za-z0-9_-]+")  # a datacenter is one label of target IDs and SNIs: no dots
_MESH_MODES = ("", "none", "local", "remote")
WATCH_KEYS = [*(entry_watch_key(k) for k in ("service-defaults", "proxy-defaults", "service-router",
                                              "service-splitter", "service-resolver")), CA_KEY]
_NO_TRUST_DOMAIN = "consul"  # before the CA exists (a -dev agent's first moments): SNIs still well formed


def _name(what: str, text: str, pattern: re.Pattern[str] = _NAME, allowed: str = "'.', '_' or '-'") -> str:
    if not text:
        raise bad_request(f"Missing {what}")
    if len(text) > MAX_NAME or not pattern.fullmatch(text):
        shown = json.dumps(text[:64])
        raise bad_request(f"invalid {what} {shown}: at most {MAX_NAME} letters, digits, {allowed}")
    return text


def overrides(request: Request) -> tuple[str, int, str]:
    """The POST body's (protocol, connect timeout ms, mesh gateway mode); a 400 naming a bad field."""
    if request.method != "POST" or not request.body.strip():
        return "", 0, ""
    if len(request.body) > MAX_BODY:
        raise bad_request(f"Request body is larger than {MAX_BODY // 1024} KiB")
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("Request decoding failed: the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("Request decoding failed: the body must be a JSON object")
    fields = {k.lower(): v for k, v in body.items() if isinstance(k, str)}
    protocol = fields.get("overrideprotocol")
    if protocol is None:  # absent or null; any other non-string (false, {}, []) is refused, not read as unset
        protocol = ""
    if not isinstance(protocol, str) or protocol.lower() not in ("", *PROTOCOLS):
        raise bad_request(f"OverrideProtocol: must be one of {', '.join(PROTOCOLS)}")
    timeout_ms = _timeout(fields.get("overrideconnecttimeout"))
    mesh = fields.get("overridemeshgateway")
    if mesh is None:
        mesh = {}
    mode = mesh.get("Mode", mesh.get("mode", "")) if isinstance(mesh, dict) else None
    if not isinstance(mode, str) or mode not in _MESH_MODES:
        raise bad_request("OverrideMeshGateway.Mode: must be one of none, local, remote")
    return protocol.lower(), timeout_ms, mode


def _timeout(value: Any) -> int:
    """A duration string ("7s") or integer nanoseconds (how Go clients send a time.Duration) in ms."""
    if value is None or value == "" or (value == 0 and not isinstance(value, bool)):
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 86400 * 10**9:  # before dividing: an int past a float's range raised OverflowError
            raise bad_request("OverrideConnectTimeout: must be between 0s and 24h")
        seconds = value / 1e9
    else:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise bad_request(f"OverrideConnectTimeout: {exc}") from None
    if not 0 <= seconds <= 86400:
        raise bad_request("OverrideConnectTimeout: must be between 0s and 24h")
    return round(seconds * 1000)


async def read(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET or POST /v1/discovery-chain/:service → `{"Chain": {...}}`, blocking with `?index=`."""
    service = _name("chain name", arg)
    identity = api.identity(request)
    require(identity, identity.authorizer.service_read(service))
    dc = _name("compile-dc", query.get("compile-dc") or api.agent.datacenter, _DC, "'_' or '-'")
    protocol, timeout_ms, mesh = overrides(request)  # a bad body is a 400 now, not after a blocking wait
    index = await api.block(WATCH_KEYS, query, request)
    catalog = api.agent.store.catalog  # read after the wait: a restore may have replaced it
    trust_domain = catalog.connect.trust_domain or _NO_TRUST_DOMAIN
    try:
        chain = compile_chain(service, lookup(api), datacenter=dc, trust_domain=trust_domain,
                              override_protocol=protocol, override_connect_timeout_ms=timeout_ms,
                              override_mesh_gateway=mesh)
    except ChainError as exc:  # stored entries that no longer compile (written before a bound, or by hand)
        raise HTTPError(500, str(exc)[:1024]) from None
    return api.json({"Chain": chain.to_api()}, query, extra=api.meta_headers(index, query)[1:])


__all__ = ["WATCH_KEYS", "overrides", "read"]
