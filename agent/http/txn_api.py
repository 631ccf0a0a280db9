"""`PUT /v1/txn`: Consul's transactions: up to 64 KV, node, service and check operations, all or none.

The body (Consul's JSON, field names case-insensitive as Go decodes them) becomes agent/catalog/txn.py ops.
As Consul: each op's ACL rights are checked first (a denied op is an error entry: 409, nothing applied);
a transaction with a write goes through Raft as one `txn` command; one with only get/check verbs is answered
here from the catalog after the `?stale`/`?consistent` read barrier. Gets' results are filtered by read rights.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import TYPE_CHECKING, Any

from ..acl import command_rights
from ..acl.authorizer import Authorizer
from ..catalog import STATUSES, commands
from ..catalog.model import Check, KVEntry, Node, Service, row_from_dict, row_to_dict
from ..catalog.txn import CATALOG_VERBS, KV_VERBS, MAX_OPS, is_read_only, read_txn
from .acl_gate import acl_identity, write_token
from .messages import Request, Response
from .query import HTTPError, Query, bad_request
from .render import check_json, kv_json, node_json, service_json

if TYPE_CHECKING:
    from ..acl.identity import ACLIdentity
    from .api import API

MAX_VALUE = 512 * 1024  # Consul's kv_max_value_size, per KV value
MAX_TEXT = 1024  # keys, names, IDs and verbs: longer is hostile, not a catalog name
MAX_OUTPUT = 4096  # a check's Output (Consul keeps 4 KiB of it)
KINDS = {"kv": "KV", "node": "Node", "service": "Service", "check": "Check"}


def _fold(value: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in value.items()}


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"Failed to parse body: {what} must be an object")
    return _fold(value)


def _text(data: dict[str, Any], name: str, what: str, limit: int = MAX_TEXT) -> str:
    value = data.get(name.lower())
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"Failed to parse body: {what}.{name} must be a string of at most {limit} characters")
    return value


def _tagged(data: dict[str, Any], what: str) -> dict[str, Any]:
    """A service's TaggedAddresses: name -> {Address, Port} (names keep their case)."""
    value = data.get("taggedaddresses")
    if value is None:
        return {}
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for name, addr in value.items():
            if not isinstance(addr, dict):
                break
            folded = _fold(addr)
            address, port = folded.get("address", ""), folded.get("port", 0)
            if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool):
                break
            out[str(name)] = {"Address": address, "Port": port}
        else:
            return out
    raise bad_request(f"Failed to parse body: {what}.TaggedAddresses must map names to {{Address, Port}}")


def _weights(data: dict[str, Any], what: str) -> dict[str, int]:
    value = _obj(data.get("weights"), what) or {"passing": 1, "warning": 1}
    passing, warning = value.get("passing", 1), value.get("warning", 1)
    if not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**31 for w in (passing, warning)):
        raise bad_request(f"Failed to parse body: {what}.Weights must hold integer Passing and Warning")
    return {"Passing": passing, "Warning": warning}


def _uint(data: dict[str, Any], name: str, what: str) -> int:
    value = data.get(name.lower())
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise bad_request(f"Failed to parse body: {what}.{name} must be an unsigned integer")
    return value


def _str_map(data: dict[str, Any], name: str, what: str) -> dict[str, str]:
    value = data.get(name.lower())
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"Failed to parse body: {what}.{name} must be an object of strings")
    return {str(k): v for k, v in value.items()}


def _kv_op(i: int, data: dict[str, Any]) -> dict[str, Any]:
    what = f"operation {i}: KV"
    raw = data.get("value")
    if raw is None:
        value = b""
    elif not isinstance(raw, str):
        raise bad_request(f"Failed to parse body: {what}.Value must be a base64 string")
    elif len(raw) > MAX_VALUE * 4 // 3 + 4:
        raise HTTPError(413, f"Value for key {_text(data, 'Key', what)[:200]!r} is too large (limit {MAX_VALUE} bytes)")
    else:
        try:
            value = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"Failed to parse body: {what}.Value is not base64") from None
    return {"type": "kv", "verb": _text(data, "Verb", what), "key": _text(data, "Key", what), "value": value,
            "flags": _uint(data, "Flags", what), "index": _uint(data, "Index", what),
            "session": _text(data, "Session", what)}


def _node_op(i: int, data: dict[str, Any]) -> dict[str, Any]:
    what = f"operation {i}: Node.Node"
    node = _obj(data.get("node"), what)
    row = Node(node=_text(node, "Node", what), address=_text(node, "Address", what), id=_text(node, "ID", what),
               datacenter=_text(node, "Datacenter", what),
               tagged_addresses=_str_map(node, "TaggedAddresses", what),
               meta=_str_map(node, "Meta", what) or _str_map(node, "NodeMeta", what))
    return {"type": "node", "verb": _text(data, "Verb", f"operation {i}: Node"), "node": row_to_dict(row),
            "index": _uint(node, "ModifyIndex", what)}


def _service_op(i: int, data: dict[str, Any]) -> dict[str, Any]:
    what = f"operation {i}: Service.Service"
    svc = _obj(data.get("service"), what)
    node = _text(data, "Node", f"operation {i}: Service")
    tags = svc.get("tags")
    tags = [] if tags is None else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or len(tags) > MAX_TEXT:
        raise bad_request(f"Failed to parse body: {what}.Tags must be a list of strings")
    port = _uint(svc, "Port", what)
    if port > 65535:
        raise bad_request(f"Failed to parse body: {what}.Port {port} is not a port number")
    proxy, connect = svc.get("proxy"), svc.get("connect")
    proxy, connect = {} if proxy is None else proxy, {} if connect is None else connect
    if not isinstance(proxy, dict) or not isinstance(connect, dict):
        raise bad_request(f"Failed to parse body: {what}.Proxy and Connect must be objects")
    native = _fold(connect).get("native")
    name = _text(svc, "Service", what)
    row = Service(node=node, id=_text(svc, "ID", what) or name, service=name, tags=list(tags),
                  address=_text(svc, "Address", what), port=port, meta=_str_map(svc, "Meta", what),
                  weights=_weights(svc, what), enable_tag_override=svc.get("enabletagoverride") is True,
                  kind=_text(svc, "Kind", what), tagged_addresses=_tagged(svc, what),
                  proxy=_proxy(proxy), connect={"native": True} if native is True else {})
    return {"type": "service", "verb": _text(data, "Verb", f"operation {i}: Service"), "node": node,
            "service": row_to_dict(row), "index": _uint(svc, "ModifyIndex", what)}


def _proxy(proxy: dict[str, Any]) -> dict[str, Any]:
    # The catalog keys a sidecar by its snake_case destination (as the agent's own registrations store it).
    folded = _fold(proxy)
    dest = folded.get("destinationservicename")
    return {"destination_service_name": dest} if isinstance(dest, str) and dest else {}


def _check_op(i: int, data: dict[str, Any]) -> dict[str, Any]:
    what = f"operation {i}: Check.Check"
    check = _obj(data.get("check"), what)
    status = _text(check, "Status", what) or "critical"  # Consul's checkPreApply default
    if status not in STATUSES:
        raise bad_request(f"Failed to parse body: {what}.Status {status[:32]!r} is not one of "
                          f"{', '.join(sorted(STATUSES))}")
    definition = _obj(check.get("definition"), what)
    row = Check(node=_text(check, "Node", what), check_id=_text(check, "CheckID", what),
                name=_text(check, "Name", what), status=status, notes=_text(check, "Notes", what),
                output=_text(check, "Output", what, MAX_OUTPUT), service_id=_text(check, "ServiceID", what),
                type=_text(check, "Type", what),
                definition={k: v for k, v in (("Interval", definition.get("interval")),
                                              ("Timeout", definition.get("timeout"))) if isinstance(v, str)})
    return {"type": "check", "verb": _text(data, "Verb", f"operation {i}: Check"), "check": row_to_dict(row),
            "index": _uint(check, "ModifyIndex", what)}


_PARSERS = {"kv": _kv_op, "node": _node_op, "service": _service_op, "check": _check_op}


def parse_ops(body: bytes) -> list[dict[str, Any]]:
    """The body as txn ops; 400 (Consul's "Failed to parse body") or 413 (too many ops, a value too large)."""
    try:
        raw = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"Failed to parse body: {str(exc)[:120]}") from None
    if not isinstance(raw, list):
        raise bad_request("Failed to parse body: expected a JSON array of operations")
    if len(raw) > MAX_OPS:
        raise HTTPError(413, f"Transaction contains too many operations ({len(raw)} > {MAX_OPS})")
    ops = []
    for i, item in enumerate(raw):
        fields = _obj(item, f"operation {i}") if isinstance(item, dict) else None
        kinds = [k for k in _PARSERS if fields and fields.get(k) is not None]
        if fields is None or len(kinds) != 1:
            raise bad_request(f"Failed to parse body: operation {i} must hold exactly one of KV, Node, Service, Check")
        ops.append(_PARSERS[kinds[0]](i, _obj(fields[kinds[0]], f"operation {i}: {KINDS[kinds[0]]}")))
    return ops


def _precheck(ops: list[dict[str, Any]], identity: ACLIdentity | None, api: API) -> list[dict[str, Any]]:
    """Consul's preCheck: unknown verbs and ACL denials, as error entries (nothing is applied then)."""
    errors = []
    catalog = api.agent.store.catalog
    for i, op in enumerate(ops):
        verbs = KV_VERBS if op["type"] == "kv" else CATALOG_VERBS
        if op["verb"] not in verbs:
            errors.append({"OpIndex": i, "What": f"unknown {KINDS[op['type']]} verb {op['verb'][:32]!r}"})
            continue
        if identity is None:
            continue
        for decision in command_rights.txn_op_rights(identity.authorizer, op, catalog):
            if not decision.allowed:
                errors.append({"OpIndex": i, "What": decision.denied_message(identity.accessor_id)})
                break
    return errors


def _visible(authz: Authorizer, result: dict[str, Any]) -> bool:
    """Consul's FilterTxnResults: each result only with read on what it shows."""
    if "kv" in result:
        return authz.key_read(result["kv"]["key"]).allowed
    if "node" in result:
        return authz.node_read(result["node"]["node"]).allowed
    row = result.get("service") or result["check"]
    if not authz.node_read(row["node"]).allowed:
        return False
    name = row.get("service") if "service" in result else row.get("service_name")
    return not name or authz.service_read(name).allowed


def _render(result: dict[str, Any]) -> dict[str, Any]:
    if "kv" in result:
        return {"KV": kv_json(row_from_dict(KVEntry, result["kv"]))}
    if "node" in result:
        return {"Node": node_json(row_from_dict(Node, result["node"]))}
    if "service" in result:
        return {"Service": service_json(row_from_dict(Service, result["service"]))}
    return {"Check": check_json(row_from_dict(Check, result["check"]))}


async def txn(api: API, request: Request, query: Query, arg: str) -> Response:
    """`PUT /v1/txn`: 200 `{"Results": [...], "Errors": null}`, or 409 `{"Results": null, "Errors": [...]}`."""
    ops = parse_ops(request.body)
    identity = acl_identity(api, request)
    errors = _precheck(ops, identity, api)
    if errors:
        return api.json({"Results": None, "Errors": errors}, query, status=409)
    store = api.agent.store
    extra: list[tuple[bytes, bytes]] = []
    if is_read_only(ops):
        await store.read_barrier(query.consistency)
        if identity is not None:
            identity = api.recheck(request)  # the barrier waited: results are filtered with the rights of now
        outcome = read_txn(store.catalog, ops)
        extra = api.meta_headers(store.catalog.last_index, query)[1:]
        extra = [h for h in extra if h[0] != b"x-consul-index"]  # not a blocking read: no index, as Consul
    else:
        token = None if identity is None else write_token(request, api.agent.acl.tokens.default)
        outcome = await store.apply(commands.txn(ops, time.time()), token=token)
    if not isinstance(outcome, dict):
        raise HTTPError(500, "transaction gave no outcome")
    if outcome.get("errors"):
        errors = [{"OpIndex": e["op_index"], "What": e["what"]} for e in outcome["errors"]]
        return api.json({"Results": None, "Errors": errors}, query, status=409, extra=extra)
    results = outcome.get("results") or []
    if identity is not None:
        authz = identity.authorizer
        results = [r for r in results if _visible(authz, r)]
    return api.json({"Results": [_render(r) for r in results], "Errors": None}, query, extra=extra)


__all__ = ["MAX_OPS", "parse_ops", "txn"]
