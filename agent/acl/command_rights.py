"""What a catalog command needs from an ACL token: the server-side re-check of every write arriving over RPC.

Pure (no IO): `authorize(identity, command, catalog)` gives the first failing Decision or None; the rights are
Consul's (catalog vetRegister/vetDeregister, KV, config entries' CanWrite, ACL writes), as the HTTP layer
checks them, so a write the agent's HTTP API allowed passes here too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from ..catalog.model import Node, Service, row_from_dict
from ..catalog.state import Catalog, same_row
from ..connect.entry_validate import named_services  # one ListRelatedServices for HTTP and this re-check
from .authorizer import Authorizer, Decision
from .identity import ACLIdentity

SERVICE_KINDS = frozenset({"service-defaults", "service-router", "service-splitter", "service-resolver"})
MESH_KINDS = frozenset({"proxy-defaults", "mesh"})
MAX_TXN_OPS = 64  # Consul's limit (agent/catalog/txn.py MAX_OPS; the FSM refuses more anyway)
KV_LOCK_VERBS = frozenset({"lock", "unlock"})  # also session:write on the session's node
KV_WRITE_VERBS = frozenset({"set", "cas", "delete", "delete-cas"}) | KV_LOCK_VERBS
MAX_OP_SHOWN = 64  # an unknown op is named in the refusal, cut to this many characters (it is the caller's text)


class MalformedCommand(ValueError):
    """Command bytes or fields the re-check cannot read (the message names the field)."""


def decode(data: bytes) -> list[dict[str, Any]]:
    """The commands that encoded bytes hold: one, or a batch's (one level, as the FSM applies them)."""
    command = _unpack(data, "command")
    if command.get("op") != "batch":
        return [command]
    parts = command.get("commands")
    if not isinstance(parts, list):
        raise MalformedCommand("batch: commands must be a list")
    out = []
    for i, part in enumerate(parts):
        if not isinstance(part, bytes):
            raise MalformedCommand(f"batch: commands[{i}] must be bytes")
        out.append(_unpack(part, f"commands[{i}]"))
    return out


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        command = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types for hostile bytes: all mean the same here
        raise MalformedCommand(f"{what}: not a msgpack command ({type(exc).__name__})") from None
    if not isinstance(command, dict):
        raise MalformedCommand(f"{what}: a command must be a map")
    return command


def authorize_all(identity: ACLIdentity, commands: list[dict[str, Any]], catalog: Catalog) -> Decision | None:
    """The first refusal among `commands` (a batch is checked command by command), or None."""
    for command in commands:
        decision = authorize(identity, command, catalog)
        if decision is not None:
            return decision
    return None


def authorize(identity: ACLIdentity, command: Mapping[str, Any], catalog: Catalog) -> Decision | None:
    """None when `identity` may make this write, else the Decision that refuses it (Consul's 403 text).

    Raises MalformedCommand when a field the decision depends on has the wrong type."""
    if not identity.enabled:
        return None
    authz = identity.authorizer
    op = command.get("op")
    for decision in _decisions(authz, op, command, catalog):
        if not decision.allowed:
            return decision
    return None


def _decisions(authz: Authorizer, op: object, cmd: Mapping[str, Any], catalog: Catalog) -> Iterator[Decision]:
    if op == "register":
        yield from _register(authz, cmd, catalog)
    elif op == "deregister":
        yield _deregister(authz, cmd, catalog)
    elif op == "kv":
        yield _kv(authz, cmd)
        if cmd.get("verb") in KV_LOCK_VERBS:
            yield from _session_node(authz, cmd.get("session"), catalog, "kv")
    elif op == "session":
        yield from _session(authz, cmd, catalog)
    elif op == "txn":
        ops = cmd.get("ops")
        if not isinstance(ops, list) or len(ops) > MAX_TXN_OPS:
            # Bounded before any op is checked: a 4 MiB command holds ~100k ops, checked on the event loop.
            raise MalformedCommand(f"txn: ops must be a list of at most {MAX_TXN_OPS} operations")
        for txn_op in ops:
            yield from txn_op_rights(authz, _map(txn_op, "txn: op"), catalog)
    elif op == "config-entry":
        yield from _config_entry(authz, cmd)
    elif isinstance(op, str) and _is_acl_op(op):
        # Bootstrap is open to anyone: the FSM applies it once only (then Consul's 403 with the reset index).
        if not _is_bootstrap(op, cmd):
            yield authz.acl_write()
    else:
        # Unknown ops, and those no caller may send (connect-ca, restore, a batch inside a batch): refused for
        # every token, management included.
        yield _refused(op)


def _refused(op: object) -> Decision:
    shown = op[:MAX_OP_SHOWN] if isinstance(op, str) else repr(op)[:MAX_OP_SHOWN]
    return Decision(False, "catalog-command", shown)


def _is_acl_op(op: str) -> bool:
    return op == "acl" or op.startswith(("acl-", "acl_"))


def _is_bootstrap(op: str, cmd: Mapping[str, Any]) -> bool:
    # The constructor's name is acl_bootstrap; accept either spelling of the op, or an "acl" op's verb.
    if op.replace("_", "-") == "acl-bootstrap":
        return True
    # The FSM applies an "acl" command by its verb alone: nothing else may make it a bootstrap (an "action"
    # key riding along a token-set would otherwise skip acl:write).
    return op == "acl" and cmd.get("verb") == "bootstrap"


# ------------------------------------------------------------------------------------------ catalog


def _str_field(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedCommand(f"{what}: {key} must be a string")
    return value


def _map(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedCommand(f"{what} must be a map")
    return value


def _row(cls: type[Node] | type[Service], data: Mapping[str, Any], what: str) -> Any:
    try:
        return row_from_dict(cls, dict(data))
    except TypeError as exc:
        raise MalformedCommand(f"{what}: {exc}") from None


def _register(authz: Authorizer, cmd: Mapping[str, Any], catalog: Catalog) -> Iterator[Decision]:
    """Consul's vetRegisterWithACL: node write only when the node row changes (so a service update may repost
    the node), service write on the service, its proxy's destination and any service it replaces by ID."""
    node_data = _map(cmd.get("node"), "register: node")
    name = _str_field(node_data, "node", "register: node")
    stored = catalog.node(name) if name else None
    if stored is None or not same_row(stored, _row(Node, node_data, "register: node")):
        yield authz.node_write(name)
    stored_services = {s.id: s for s in catalog.node_services(name)} if stored is not None else {}
    svc_data = cmd.get("service")
    svc_id = ""
    if svc_data is not None:
        svc_data = _map(svc_data, "register: service")
        svc_name = _str_field(svc_data, "service", "register: service")
        svc_id = _str_field(svc_data, "id", "register: service") or svc_name
        yield authz.service_write(svc_name)
        if _str_field(svc_data, "kind", "register: service") == "connect-proxy":
            proxy = svc_data.get("proxy")
            if isinstance(proxy, dict):
                dest = proxy.get("destination_service_name", proxy.get("DestinationServiceName"))
                if isinstance(dest, str) and dest:
                    yield authz.service_write(dest)
        other = stored_services.get(svc_id)
        if other is not None and other.service != svc_name:
            yield authz.service_write(other.service)  # taking over another service's ID
    checks = cmd.get("checks") or []
    if not isinstance(checks, list):
        raise MalformedCommand("register: checks must be a list")
    held = {c.check_id: c for c in catalog.node_checks(name)} if stored is not None else {}
    for i, check in enumerate(checks):
        check = _map(check, f"register: checks[{i}]")
        sid = _str_field(check, "service_id", f"register: checks[{i}]")
        prior = held.get(_str_field(check, "check_id", f"register: checks[{i}]"))
        if prior is not None and prior.service_id != sid:
            # Taking over another owner's check ID (its health signal): that owner must be writable too.
            yield authz.service_write(prior.service_name) if prior.service_id else authz.node_write(name)
        if not sid:
            yield authz.node_write(name)
        elif svc_data is not None and sid == svc_id:
            continue  # the service of this command, vetted above
        else:
            target = stored_services.get(sid)
            # An unknown service ID: the FSM refuses the command; refuse it here as a node write would.
            yield authz.service_write(target.service) if target is not None else authz.node_write(name)


def _deregister(authz: Authorizer, cmd: Mapping[str, Any], catalog: Catalog) -> Decision:
    """Consul's vetDeregisterWithACL: node write allows anything on the node; else service write on the
    stored service (of the check), in the FSM's order (check_id, then service_id, else the whole node)."""
    name = _str_field(cmd, "node", "deregister")
    node_write = authz.node_write(name)
    if node_write.allowed:
        return node_write
    check_id = _str_field(cmd, "check_id", "deregister")
    service_id = _str_field(cmd, "service_id", "deregister")
    if check_id:
        check = next((c for c in catalog.node_checks(name) if c.check_id == check_id), None)
        if check is not None and check.service_id:
            service_id = check.service_id
        else:
            return node_write  # a node check (or an unknown one)
    if service_id:
        svc = next((s for s in catalog.node_services(name) if s.id == service_id), None)
        if svc is not None:
            return authz.service_write(svc.service)
    return node_write


def _kv(authz: Authorizer, cmd: Mapping[str, Any]) -> Decision:
    verb = cmd.get("verb")
    key = _str_field(cmd, "key", "kv")
    if verb in KV_WRITE_VERBS:
        return authz.key_write(key)
    if verb == "delete-tree":
        return authz.key_write_prefix(key)
    return _refused(f"kv {verb!r}")


# ------------------------------------------------------------------------------------------ sessions


def _session(authz: Authorizer, cmd: Mapping[str, Any], catalog: Catalog) -> Iterator[Decision]:
    """session:write on the session's node: the node named in a create, the stored one for a destroy."""
    verb = cmd.get("verb")
    if verb == "create":
        yield authz.session_write(_str_field(_map(cmd.get("session"), "session: session"), "node", "session"))
    elif verb == "destroy":
        yield from _session_node(authz, cmd.get("id"), catalog, "session destroy")
    else:
        yield _refused(f"session {verb!r}")


def _session_node(authz: Authorizer, sid: object, catalog: Catalog, what: str) -> Iterator[Decision]:
    # An unknown session: nothing to check here, the FSM refuses (lock) or answers False (destroy), as Consul.
    if not isinstance(sid, str):
        raise MalformedCommand(f"{what}: session id must be a string")
    session = catalog.sessions.get(sid)
    if session is not None:
        yield authz.session_write(session.node)


# ------------------------------------------------------------------------------------------ transactions


def txn_op_rights(authz: Authorizer, op: Mapping[str, Any], catalog: Catalog) -> Iterator[Decision]:
    """One transaction op (agent/catalog/txn.py) as its single-op rights, Consul's txn preCheck: KV writes as
    /v1/kv's (check-not-exists too, as Consul), check-index/check-session key:read, gets nothing (their
    results are filtered); node ops node:write; service ops service:write (the stored service's name for a
    delete, a proxy's destination too); check ops node:write or service:write on the check's service."""
    kind, verb = op.get("type"), op.get("verb")
    if kind == "kv":
        key = _str_field(op, "key", "txn kv")
        if verb in ("get", "get-tree"):
            return
        if verb in ("check-index", "check-session"):
            yield authz.key_read(key)
        elif verb == "check-not-exists":
            yield authz.key_write(key)
        else:
            yield from _decisions(authz, "kv", {"verb": verb, "key": key, "session": op.get("session", "")},
                                  catalog)
    elif verb == "get":
        return
    elif kind == "node":
        yield authz.node_write(_str_field(_map(op.get("node"), "txn node: Node"), "node", "txn node"))
    elif kind == "service":
        node = _str_field(op, "node", "txn service")
        data = _map(op.get("service"), "txn service: Service")
        name, sid = _str_field(data, "service", "txn service"), _str_field(data, "id", "txn service")
        stored = next((s for s in catalog.node_services(node) if s.id == (sid or name)), None)
        if stored is not None and (verb in ("delete", "delete-cas") or stored.service != name):
            yield authz.service_write(stored.service)
        if verb not in ("delete", "delete-cas"):
            yield authz.service_write(name)
            proxy = data.get("proxy")
            dest = proxy.get("destination_service_name") if isinstance(proxy, dict) else None
            if _str_field(data, "kind", "txn service") == "connect-proxy" and isinstance(dest, str) and dest:
                yield authz.service_write(dest)
    elif kind == "check":
        data = _map(op.get("check"), "txn check: Check")
        node, cid = _str_field(data, "node", "txn check"), _str_field(data, "check_id", "txn check")
        stored_check = next((c for c in catalog.node_checks(node) if c.check_id == cid), None)
        sids = {_str_field(data, "service_id", "txn check")} if verb not in ("delete", "delete-cas") else set()
        if stored_check is not None:
            sids.add(stored_check.service_id)
        services = {s.id: s.service for s in catalog.node_services(node)}
        for sid in sorted(sids):
            yield authz.service_write(services[sid]) if sid in services else authz.node_write(node)
    else:
        yield _refused(f"txn {str(kind)[:32]!r}")


# ------------------------------------------------------------------------------------------ config entries


def _config_entry(authz: Authorizer, cmd: Mapping[str, Any]) -> Iterator[Decision]:
    verb = cmd.get("verb")
    if verb == "set":
        entry = _map(cmd.get("entry"), "config-entry: entry")
        kind, name = entry.get("Kind"), entry.get("Name")
    elif verb == "delete":
        entry, kind, name = {}, cmd.get("kind"), cmd.get("name")
    else:
        yield _refused(f"config-entry {verb!r}")
        return
    if not isinstance(kind, str) or not isinstance(name, str):
        raise MalformedCommand("config-entry: Kind and Name must be strings")
    if kind in MESH_KINDS:
        yield authz.mesh_write()
    elif kind == "service-intentions":
        yield authz.intention_write(name)
    elif kind in SERVICE_KINDS:
        yield authz.service_write(name)
        # Consul's canWriteDiscoveryChain: read on every other service the entry sends traffic to.
        for other in sorted(named_services(entry) - {name}):
            yield authz.service_read(other)
    else:
        yield _refused(f"config-entry {kind[:MAX_OP_SHOWN]!r}")
