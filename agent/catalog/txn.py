"""Transactions (`PUT /v1/txn`): many KV, node, service and check operations applied as one, or none.

Pure. `apply_txn(catalog, index, command)` is the "txn" command's handler: every op runs at the same index, in
order, each seeing the ones before it; when any fails (as Consul, the rest still run so every error is named),
what the ops touched is put back from the undo journal (txn_undo.py: before-images of the touched rows, and
the tables' order when an op deleted one), so the catalog is byte-identical (snapshot() before == after) and
no watch key moves. `read_txn` answers a read-only transaction (get/check verbs only) from the catalog as it
is, without Raft.

Ops (the HTTP layer builds them, commands.txn carries them): `{"type": "kv", "verb", "key", "value" (bytes),
"flags", "index", "session"}`, `{"type": "node", "verb", "node": row, "index"}`, `{"type": "service",
"verb", "node", "service": row, "index"}`, `{"type": "check", "verb", "check": row, "index"}` (rows as
model.row_to_dict). Outcome: `{"results": [{"kv"|"node"|"service"|"check": row}, ...] | None, "errors":
[{"op_index", "what"}] | None}`; a write's KV result has its value blanked, as Consul's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .model import Check, KVEntry, Node, Service, row_from_dict, row_to_dict
from .txn_undo import Undo

if TYPE_CHECKING:
    from .state import Catalog

MAX_OPS = 64  # Consul's limit on operations in one transaction
KV_VERBS = frozenset({"set", "cas", "lock", "unlock", "get", "get-tree", "check-index", "check-session",
                      "check-not-exists", "delete", "delete-tree", "delete-cas"})
KV_READ_VERBS = frozenset({"get", "get-tree", "check-index", "check-session", "check-not-exists"})
CATALOG_VERBS = frozenset({"set", "cas", "get", "delete", "delete-cas"})
TYPES = ("kv", "node", "service", "check")
# What one transaction's results may hold (keys and values, plus RESULT_ROW_BYTES a row): without it, 63 get-tree
# ops of a 20k-key store built 1.26M rows (~4 s, ~0.5 GiB) in the FSM of every server and client replica for a
# ~1 KiB write. Consul has no such bound; whole trees are read with GET /v1/kv/?recurse.
MAX_RESULT_BYTES = 32 * 1024 * 1024
RESULT_ROW_BYTES = 128

class TxnOpError(Exception):
    """One operation failed; the message is Consul's text for it."""


def is_read_only(ops: list[dict[str, Any]]) -> bool:
    """True when no op writes (Consul answers those without Raft)."""
    return all(op.get("verb") in (KV_READ_VERBS if op.get("type") == "kv" else ("get",)) for op in ops)


def apply_txn(catalog: Catalog, index: int, command: dict[str, Any]) -> dict[str, Any]:
    """The "txn" command: every op at `index`, or (any failing) none; see the module docstring."""
    ops = command["ops"]
    if not isinstance(ops, list) or len(ops) > MAX_OPS:
        return _failed([(0, f"a transaction holds a list of at most {MAX_OPS} operations")])
    undo = Undo(catalog)
    now = command.get("now", 0.0)
    results, errors = _run(catalog, index, ops, undo, float(now) if isinstance(now, (int, float)) else 0.0)
    if errors:
        undo.rollback()
        return _failed(errors)
    return {"results": results, "errors": None}


def read_txn(catalog: Catalog, ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A read-only transaction over the catalog as it is (the caller checked `is_read_only`)."""
    if not is_read_only(ops):
        return _failed([(0, "a read-only transaction holds only get and check verbs")])
    results, errors = _run(catalog, catalog.last_index, ops, None, 0.0)
    return _failed(errors) if errors else {"results": results, "errors": None}


def _failed(errors: list[tuple[int, str]]) -> dict[str, Any]:
    return {"results": None, "errors": [{"op_index": i, "what": what} for i, what in errors]}


def _run(catalog: Catalog, index: int, ops: list[Any], undo: Undo | None,
         now: float) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    from .state import CommandError  # state imports this module for its handler table

    results: list[dict[str, Any]] = []
    errors: list[tuple[int, str]] = []
    size = 0
    for i, op in enumerate(ops):
        try:
            if not isinstance(op, dict):
                raise TxnOpError("operation must be a map")
            kind = op.get("type")
            handler = _DISPATCH.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise TxnOpError(f"unknown operation type {str(kind)[:32]!r}")
            produced = handler(catalog, index, op, undo, now)
            size += sum(_result_bytes(r) for r in produced)
            if size > MAX_RESULT_BYTES:
                errors.append((i, f"transaction results exceed {MAX_RESULT_BYTES} bytes; read large trees with "
                                  "GET /v1/kv/?recurse"))
                break  # the transaction has failed: building more results would only cost more
            results.extend(produced)
        except TxnOpError as exc:
            errors.append((i, str(exc)))
        except CommandError as exc:
            errors.append((i, str(exc)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A malformed op (a hostile or buggy proposer): this op fails, the transaction is refused.
            errors.append((i, f"malformed operation: {type(exc).__name__}: {str(exc)[:120]}"))
    return results, errors


def _result_bytes(result: dict[str, Any]) -> int:
    kv = result.get("kv")
    if isinstance(kv, dict):
        return RESULT_ROW_BYTES + len(kv["key"]) + len(kv["value"])
    return RESULT_ROW_BYTES  # node, service and check rows: bounded by their own limits


def _journal(undo: Undo | None) -> Undo:
    if undo is None:
        raise TxnOpError("a write in a read-only transaction")
    return undo


def _int(op: dict[str, Any], name: str) -> int:
    value = op.get(name, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TxnOpError(f"{name} must be a non-negative integer")
    return value


def _str(op: dict[str, Any], name: str) -> str:
    value = op.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TxnOpError(f"{name} must be a string")
    return value


# ------------------------------------------------------------------------------------------ KV


def _kv_row(entry: KVEntry, keep_value: bool = True) -> dict[str, Any]:
    # By hand, not dataclasses.asdict: a result per op, and asdict deep-copies (~15 us per row).
    return {"key": entry.key, "value": entry.value if keep_value else b"", "flags": entry.flags,
            "lock_index": entry.lock_index, "session": entry.session, "create_index": entry.create_index,
            "modify_index": entry.modify_index}


def _kv_result(entry: KVEntry | None, keep_value: bool) -> list[dict[str, Any]]:
    # Consul blanks a write's value in its result
    return [] if entry is None else [{"kv": _kv_row(entry, keep_value)}]


def _kv(catalog: Catalog, index: int, op: dict[str, Any], undo: Undo | None, now: float) -> list[dict[str, Any]]:
    verb = op.get("verb")
    key = _str(op, "key")
    if verb not in KV_VERBS:
        raise TxnOpError(f"unknown KV verb {str(verb)[:32]!r}")
    current = catalog.kv_get(key)
    if verb == "get":
        if current is None:
            raise TxnOpError(f"key {key!r} doesn't exist")
        return _kv_result(current, True)
    if verb == "get-tree":
        return [{"kv": _kv_row(e)} for e in catalog.kv_list(key)]
    if verb == "check-index":
        if current is None:
            raise TxnOpError(f"key {key!r} doesn't exist")
        if current.modify_index != _int(op, "index"):
            raise TxnOpError(f"failed index check for key {key!r}, current modify index "
                             f"{current.modify_index} != {_int(op, 'index')}")
        return _kv_result(current, False)
    if verb == "check-session":
        if current is None:
            raise TxnOpError(f"key {key!r} doesn't exist")
        if current.session != _str(op, "session"):
            raise TxnOpError(f"failed session check for key {key!r}, current session "
                             f"{current.session!r} != {_str(op, 'session')!r}")
        return _kv_result(current, False)
    if verb == "check-not-exists":
        if current is not None:
            raise TxnOpError(f"key {key!r} exists")
        return []
    return _kv_write(catalog, index, op, undo, now, str(verb), key, current)


def _kv_write(catalog: Catalog, index: int, op: dict[str, Any], undo: Undo | None, now: float, verb: str,
              key: str, current: KVEntry | None) -> list[dict[str, Any]]:
    journal = _journal(undo)
    if not key and verb != "delete-tree":
        raise TxnOpError("missing key name")
    value = op.get("value") or b""
    if not isinstance(value, bytes):
        raise TxnOpError("value must be bytes")
    flags, session = _int(op, "flags"), _str(op, "session")
    cmd: dict[str, Any] = {"op": "kv", "verb": verb, "key": key, "value": value, "flags": flags}
    if verb in ("cas", "delete-cas"):
        cmd["index"] = _int(op, "index")
    if verb in ("lock", "unlock"):
        if not session:
            raise TxnOpError("Missing session")
        if verb == "lock" and catalog.sessions.get(session) is None:
            raise TxnOpError(f"invalid session {session!r}")
        cmd.update(session=session, now=now)
    if verb == "delete-cas" and current is None:
        return []  # Consul: a CAS delete of a key already gone succeeds
    if verb == "delete-tree":
        doomed = catalog._kv_prefix_keys(key)
        journal.kv_keys(doomed, "", deleting=bool(doomed))
    else:
        journal.kv_keys((key,), session, deleting=verb.startswith("delete") and current is not None)
    ok = catalog._apply_kv(index, cmd)
    if not ok:
        raise TxnOpError({
            "cas": f"failed to set key {key!r}, index is stale",
            "delete-cas": f"failed to delete key {key!r}, index is stale",
            "lock": f"failed to lock key {key!r}, lock is already held",
            "unlock": f"failed to unlock key {key!r}, lock isn't held, or is held by another session",
        }.get(verb, f"failed to {verb} key {key!r}"))
    if verb.startswith("delete"):
        return []
    return _kv_result(catalog.kv_get(key), False)


# ------------------------------------------------------------------------------------------ catalog rows


def _row(cls: type[Any], data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise TxnOpError(f"{what} must be a map")
    try:
        return row_from_dict(cls, data)
    except TypeError as exc:
        raise TxnOpError(f"{what}: {exc}") from None


def _stale(verb: str, existing: Any, op: dict[str, Any]) -> bool:
    """Consul's CAS on a row: `cas` at 0 sets only if absent, else the stored ModifyIndex must match;
    `delete-cas` needs the row, at that ModifyIndex."""
    if verb == "cas":
        index = _int(op, "index")
        return existing is not None if index == 0 else existing is None or existing.modify_index != index
    if verb == "delete-cas":
        return existing is None or existing.modify_index != _int(op, "index")
    return False


def _verb(op: dict[str, Any], what: str) -> str:
    verb = op.get("verb")
    if verb not in CATALOG_VERBS:
        raise TxnOpError(f"unknown {what} verb {str(verb)[:32]!r}")
    return str(verb)


def _node(catalog: Catalog, index: int, op: dict[str, Any], undo: Undo | None,
          now: float) -> list[dict[str, Any]]:
    verb = _verb(op, "Node")
    node: Node = _row(Node, op.get("node"), "Node")
    name = node.node
    if not name:
        raise TxnOpError("Node.Node (the node name) is required")
    existing = catalog.node(name)
    if verb == "get":
        if existing is None:
            raise TxnOpError(f"node {name!r} doesn't exist")
        return [{"node": row_to_dict(existing)}]
    if _stale(verb, existing, op):
        raise TxnOpError(f"failed to {'set' if verb == 'cas' else 'delete'} node {name!r}, index is stale")
    _journal(undo).node(name, deleting=verb in ("delete", "delete-cas"))
    if verb in ("delete", "delete-cas"):
        catalog._apply_deregister(index, {"node": name})
        return []
    catalog._apply_register(index, {"node": row_to_dict(node), "service": None, "checks": []})
    stored = catalog.node(name)
    return [{"node": row_to_dict(stored)}] if stored is not None else []


def _service(catalog: Catalog, index: int, op: dict[str, Any], undo: Undo | None,
             now: float) -> list[dict[str, Any]]:
    verb = _verb(op, "Service")
    node_name = _str(op, "node")
    data = op.get("service")
    if not isinstance(data, dict):
        raise TxnOpError("Service must be a map")
    svc: Service = _row(Service, {"service": "", "id": "", **data, "node": node_name}, "Service")
    sid = svc.id or svc.service
    nkey = node_name.lower()
    existing = next((s for s in catalog.node_services(node_name) if s.id == sid), None) if sid else None
    if verb == "get":
        if existing is None:
            raise TxnOpError(f"service {sid!r} on node {node_name!r} doesn't exist")
        return [{"service": row_to_dict(existing)}]
    if not sid:
        raise TxnOpError("Service.ID or Service.Service is required")
    if _stale(verb, existing, op):
        raise TxnOpError(f"failed to {'set' if verb == 'cas' else 'delete'} service {sid!r} on node "
                         f"{node_name!r}, index is stale")
    _journal(undo).node(node_name, deleting=verb in ("delete", "delete-cas"))
    if verb in ("delete", "delete-cas"):
        catalog._delete_service(nkey, sid)
        return []
    if catalog.node(node_name) is None:
        raise TxnOpError("Missing node registration")
    if not svc.service:
        raise TxnOpError("Service.Service (the service name) is required")
    catalog._ensure_service(index, nkey, svc)
    stored = next((s for s in catalog.node_services(node_name) if s.id == sid), None)
    return [{"service": row_to_dict(stored)}] if stored is not None else []


def _check(catalog: Catalog, index: int, op: dict[str, Any], undo: Undo | None,
           now: float) -> list[dict[str, Any]]:
    verb = _verb(op, "Check")
    data = op.get("check")
    if not isinstance(data, dict):
        raise TxnOpError("Check must be a map")
    check: Check = _row(Check, {"node": "", "check_id": "", **data}, "Check")
    node_name, cid = check.node, check.check_id
    if not node_name or not cid:
        raise TxnOpError("Check.Node and Check.CheckID are required")
    nkey = node_name.lower()
    existing = next((c for c in catalog.node_checks(node_name) if c.check_id == cid), None)
    if verb == "get":
        if existing is None:
            raise TxnOpError(f"check {cid!r} on node {node_name!r} doesn't exist")
        return [{"check": row_to_dict(existing)}]
    if _stale(verb, existing, op):
        raise TxnOpError(f"failed to {'set' if verb == 'cas' else 'delete'} check {cid!r} on node "
                         f"{node_name!r}, index is stale")
    _journal(undo).node(node_name, deleting=verb in ("delete", "delete-cas"))
    if verb in ("delete", "delete-cas"):
        catalog._delete_check(nkey, cid)
        return []
    if catalog.node(node_name) is None:
        raise TxnOpError("Missing node registration")
    if check.service_id and not any(s.id == check.service_id for s in catalog.node_services(node_name)):
        raise TxnOpError("Missing service registration")
    catalog._ensure_check(index, nkey, check)
    stored = next((c for c in catalog.node_checks(node_name) if c.check_id == cid), None)
    return [{"check": row_to_dict(stored)}] if stored is not None else []


_Handler = Callable[["Catalog", int, dict[str, Any], "Undo | None", float], list[dict[str, Any]]]
_DISPATCH: dict[str, _Handler] = {"kv": _kv, "node": _node, "service": _service, "check": _check}

__all__ = ["CATALOG_VERBS", "KV_READ_VERBS", "KV_VERBS", "MAX_OPS", "TYPES", "TxnOpError", "apply_txn",
           "is_read_only", "read_txn"]
