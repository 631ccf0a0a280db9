"""The catalog state machine: every write is `apply(index, command)`, reads are queries over indexed tables.

It is pure (no trio, no clock, no I/O) so that the Raft FSM can wrap it unchanged. Rows are never mutated
in place: a write replaces the row, so a reader holding an old row sees a consistent old version.
The Raft side (entries, batches, restore commands, snapshots) is agent/server/fsm.py.

Over ~450 lines on purpose: the tables, their secondary indexes and the per-key watch indexes must change
together on every write, and one class holding them all is where that invariant can be read and checked.
The mesh CA's state is its own class (connect_state.py); this one only routes its commands and snapshots it.

Watch keys: `nodes`, `node:<name>`, `services`, `service:<name>`, `checks`, `kv:<key>`, `acl` (any ACL
token, policy or role change), and `connect:<name>` (lower-case): any change to a mesh-capable instance for
`name` (a `connect-proxy` whose destination is `name`, or a Connect-native `name`), to a check on it, or to
its node's health. Sessions (session_state.py): `sessions` (any created or destroyed), `session:<id>`,
`node-sessions:<node lower>`; a KV lock or release touches only `kv:<key>`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from .acl_state import WATCH_KEY as ACL_WATCH_KEY
from .acl_state import AclState, AclStateError
from .config_entries import ConfigEntryError, ConfigEntryState, entry_watch_key
from .connect_state import WATCH_KEY as CONNECT_CA_WATCH_KEY
from .connect_state import ConnectState, ConnectStateError
from .model import (
    CRITICAL,
    PASSING,
    WARNING,
    Check,
    KVEntry,
    Node,
    Service,
    row_from_dict,
    row_to_dict,
    worst_status,
)
from .session_state import WATCH_KEY as SESSIONS_WATCH_KEY
from .session_state import (
    Session,
    SessionError,
    SessionState,
    node_watch_key,
    parse_now,
    parse_session,
    session_watch_key,
)
from .txn import apply_txn

SNAPSHOT_VERSION = 1

ChangeListener = Callable[[int, frozenset[str]], None]


class CommandError(ValueError):
    """A command that cannot be applied (unknown op, missing field); the state is left unchanged."""


@dataclass(slots=True, frozen=True)
class Instance:
    """One service instance with its node and every check that decides its health (node checks first)."""

    node: Node
    service: Service
    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        """Aggregated health (critical > warning > passing) over node and service checks; the one predicate
        that DNS (drops critical, or warning too with only_passing) and `?passing` (all passing) share."""
        return worst_status([c.status for c in self.checks])


def same_row(a: Any, b: Any) -> bool:
    """Rows equal apart from their indexes (so re-registering unchanged data bumps nothing)."""
    same: bool = replace(a, create_index=0, modify_index=0) == replace(b, create_index=0, modify_index=0)
    return same


def connect_target(svc: Service) -> str | None:
    """The lower-case service name an instance is mesh-capable for: a connect-proxy's destination (either
    spelling of the key, as files and API bodies give it), a Connect-native service's own name, else None."""
    if svc.kind == "connect-proxy":
        proxy = svc.proxy if isinstance(svc.proxy, dict) else {}
        dest = proxy.get("destination_service_name", proxy.get("DestinationServiceName"))
        return dest.lower() if isinstance(dest, str) and dest else None
    connect = svc.connect if isinstance(svc.connect, dict) else {}
    if connect.get("native", connect.get("Native")) is True:
        return svc.service.lower()
    return None


class Catalog:
    """Nodes, services, checks and KV with per-watch-key indexes for blocking queries."""

    def __init__(self) -> None:
        self.last_index = 0
        self._nodes: dict[str, Node] = {}  # lower-case name -> row
        self._services: dict[tuple[str, str], Service] = {}  # (node lower, service id) -> row
        self._services_by_name: dict[str, set[tuple[str, str]]] = {}
        self._services_by_node: dict[str, set[str]] = {}
        # connect_target(row) -> keys: sidecars and Connect-native instances by the service they front
        self._connect_by_target: dict[str, set[tuple[str, str]]] = {}
        self._checks: dict[tuple[str, str], Check] = {}  # (node lower, check id) -> row
        self._checks_by_node: dict[str, set[str]] = {}
        self._kv: dict[str, KVEntry] = {}
        self._kv_keys: list[str] = []  # sorted, for prefix scans
        self._kv_graveyard: dict[str, int] = {}  # deleted key -> delete index, so prefix indexes never go back
        self._key_index: dict[str, int] = {}
        self.connect = ConnectState()  # the mesh CA (cluster ID, config, roots)
        self.config_entries = ConfigEntryState()  # service-defaults, intentions, routers, ...
        self.acl = AclState()  # ACL tokens, policies, roles
        self.sessions = SessionState()  # sessions; the KV rows carry which session holds each key
        self._listeners: list[ChangeListener] = []
        self._changed: set[str] = set()

    # ------------------------------------------------------------------ writes

    def add_listener(self, listener: ChangeListener) -> None:
        """Call `listener(index, changed_watch_keys)` after every apply that changed something."""
        self._listeners.append(listener)

    def apply(self, index: int, command: dict[str, Any]) -> Any:
        """Apply one command at a log index; returns the command's result (e.g. a CAS outcome)."""
        if index <= self.last_index:
            raise CommandError(f"index {index} is not after the last applied index {self.last_index}")
        op = command.get("op") if isinstance(command, dict) else None
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        self._changed = set()
        try:
            # A rejected command still consumes its index, as a Raft log entry would.
            if handler is None:
                raise CommandError(f"unknown catalog command op {op!r}")
            result = handler(self, index, command)
        except (KeyError, TypeError) as exc:
            raise CommandError(f"malformed {op} command: {exc}") from exc
        finally:
            self.last_index = index
            changed = frozenset(self._changed)
            self._changed = set()
        for key in changed:
            self._key_index[key] = index
        if changed:
            for listener in self._listeners:
                listener(index, changed)
        return result

    def _touch(self, *keys: str) -> None:
        self._changed.update(keys)

    def _touch_node(self, node_key: str) -> None:
        """Any change on a node: its own views, and every service it hosts (node checks affect health)."""
        self._touch(f"node:{node_key}")
        for sid in self._services_by_node.get(node_key, ()):
            self._touch_service(self._services[(node_key, sid)])

    def _touch_service(self, svc: Service) -> None:
        """An instance's health or row changed: its service's watchers, and its mesh target's."""
        self._touch(f"service:{svc.service.lower()}")
        target = connect_target(svc)
        if target is not None:
            self._touch(f"connect:{target}")

    def _apply_register(self, index: int, cmd: dict[str, Any]) -> bool:
        node = row_from_dict(Node, cmd["node"])
        if not node.node:
            raise CommandError("register: node name is required")
        nkey = node.node.lower()
        svc_data = cmd.get("service")
        # Validate everything before the first write, so a rejected command changes nothing.
        if svc_data is not None and not svc_data.get("service"):
            raise CommandError("register: service name is required")
        known_ids = set(self._services_by_node.get(nkey, ()))
        if svc_data:
            known_ids.add(svc_data.get("id") or svc_data["service"])
        for check_data in cmd.get("checks") or ():
            if not check_data.get("check_id"):
                raise CommandError("register: check id is required")
            sid = check_data.get("service_id")
            if sid and sid not in known_ids:
                raise CommandError(f"register: check {check_data['check_id']!r} refers to unknown service {sid!r}")
        old_node = self._nodes.get(nkey)
        if old_node is None or not same_row(old_node, node):
            create = old_node.create_index if old_node else index
            self._nodes[nkey] = replace(node, create_index=create, modify_index=index)
            self._touch("nodes")
            self._touch_node(nkey)
        if svc_data:
            self._ensure_service(index, nkey, row_from_dict(Service, {**svc_data, "node": node.node}))
        for check_data in cmd.get("checks") or ():
            self._ensure_check(index, nkey, row_from_dict(Check, {**check_data, "node": node.node}))
        return True

    def _ensure_service(self, index: int, nkey: str, svc: Service) -> None:
        if not svc.id:
            svc = replace(svc, id=svc.service)
        if not svc.service:
            raise CommandError("register: service name is required")
        key = (nkey, svc.id)
        old = self._services.get(key)
        if old is not None and same_row(old, svc):
            return
        if old is not None and old.service.lower() != svc.service.lower():
            self._unlink_service_name(old)
        if old is not None:
            self._unlink_connect(old)
        row = self._services[key] = replace(svc, create_index=old.create_index if old else index,
                                            modify_index=index)
        self._services_by_name.setdefault(svc.service.lower(), set()).add(key)
        self._services_by_node.setdefault(nkey, set()).add(svc.id)
        self._link_connect(row)
        self._touch("services", f"node:{nkey}")
        self._touch_service(row)
        # Service checks carry the service's name and tags; keep them in step.
        for cid in list(self._checks_by_node.get(nkey, ())):
            check = self._checks[(nkey, cid)]
            if check.service_id == svc.id and (
                check.service_name != svc.service or check.service_tags != svc.tags
            ):
                self._checks[(nkey, cid)] = replace(
                    check, service_name=svc.service, service_tags=list(svc.tags), modify_index=index
                )
                self._touch("checks")

    def _unlink_service_name(self, svc: Service) -> None:
        lname = svc.service.lower()
        members = self._services_by_name.get(lname)
        if members is not None:
            members.discard((svc.node.lower(), svc.id))
            if not members:
                del self._services_by_name[lname]
        self._touch(f"service:{lname}")

    def _link_connect(self, svc: Service) -> None:
        target = connect_target(svc)
        if target is not None:
            self._connect_by_target.setdefault(target, set()).add((svc.node.lower(), svc.id))

    def _unlink_connect(self, svc: Service) -> None:
        target = connect_target(svc)
        if target is None:
            return
        members = self._connect_by_target.get(target)
        if members is not None:
            members.discard((svc.node.lower(), svc.id))
            if not members:
                del self._connect_by_target[target]
        self._touch(f"connect:{target}")

    def _ensure_check(self, index: int, nkey: str, check: Check) -> None:
        if not check.check_id:
            raise CommandError("register: check id is required")
        if check.service_id:
            svc = self._services.get((nkey, check.service_id))
            if svc is None:
                raise CommandError(f"register: check {check.check_id!r} refers to unknown service "
                                   f"{check.service_id!r}")
            check = replace(check, service_name=svc.service, service_tags=list(svc.tags))
        key = (nkey, check.check_id)
        old = self._checks.get(key)
        if old is not None and same_row(old, check):
            return
        self._checks[key] = replace(check, create_index=old.create_index if old else index, modify_index=index)
        self._checks_by_node.setdefault(nkey, set()).add(check.check_id)
        self._touch("checks", f"node:{nkey}")
        for c in (old, check):
            if c is None:
                continue
            if c.service_id:
                svc = self._services.get((nkey, c.service_id))
                if svc is not None:
                    self._touch_service(svc)
            else:
                self._touch_node(nkey)

    def _apply_deregister(self, index: int, cmd: dict[str, Any]) -> bool:
        nkey = str(cmd["node"]).lower()
        if nkey not in self._nodes:
            return True
        if cmd.get("check_id"):
            self._delete_check(nkey, str(cmd["check_id"]))
        elif cmd.get("service_id"):
            self._delete_service(nkey, str(cmd["service_id"]))
        else:
            for sid in list(self._services_by_node.get(nkey, ())):
                self._delete_service(nkey, sid)
            for cid in list(self._checks_by_node.get(nkey, ())):
                self._delete_check(nkey, cid)
            del self._nodes[nkey]
            self._touch("nodes", f"node:{nkey}")
        return True

    def _delete_service(self, nkey: str, sid: str) -> None:
        svc = self._services.pop((nkey, sid), None)
        if svc is None:
            return
        self._unlink_service_name(svc)
        self._unlink_connect(svc)
        ids = self._services_by_node.get(nkey)
        if ids is not None:
            ids.discard(sid)
            if not ids:
                del self._services_by_node[nkey]
        for cid in list(self._checks_by_node.get(nkey, ())):
            if self._checks[(nkey, cid)].service_id == sid:
                self._delete_check(nkey, cid)
        self._touch("services", f"node:{nkey}")

    def _delete_check(self, nkey: str, cid: str) -> None:
        check = self._checks.pop((nkey, cid), None)
        if check is None:
            return
        ids = self._checks_by_node.get(nkey)
        if ids is not None:
            ids.discard(cid)
            if not ids:
                del self._checks_by_node[nkey]
        self._touch("checks", f"node:{nkey}")
        if check.service_id:
            svc = self._services.get((nkey, check.service_id))
            if svc is not None:
                self._touch_service(svc)
        else:
            self._touch_node(nkey)

    def _apply_kv(self, index: int, cmd: dict[str, Any]) -> bool:
        verb = cmd["verb"]
        key = str(cmd["key"])
        if verb in ("set", "cas"):
            old = self._kv.get(key)
            if verb == "cas":
                expected = int(cmd.get("index", 0))
                if expected == 0 and old is not None:
                    return False
                if expected != 0 and (old is None or old.modify_index != expected):
                    return False
            value = cmd.get("value") or b""
            if not isinstance(value, bytes):
                raise CommandError("kv: value must be bytes")
            # A plain write keeps the key's lock (Session, LockIndex), as Consul's does.
            self._kv_put(KVEntry(key=key, value=value, flags=int(cmd.get("flags", 0)),
                                 lock_index=old.lock_index if old else 0, session=old.session if old else "",
                                 create_index=old.create_index if old else index, modify_index=index))
            return True
        if verb == "lock":
            return self._kv_lock(index, key, cmd)
        if verb == "unlock":
            return self._kv_unlock(index, key, cmd)
        if verb == "delete":
            self._kv_delete(index, key)
            return True
        if verb == "delete-cas":
            old = self._kv.get(key)
            if old is None or old.modify_index != int(cmd.get("index", 0)):
                return False
            self._kv_delete(index, key)
            return True
        if verb == "delete-tree":
            for k in list(self._kv_prefix_keys(key)):
                self._kv_delete(index, k)
            return True
        raise CommandError(f"unknown kv verb {verb!r}")

    def _kv_put(self, entry: KVEntry) -> None:
        if entry.key not in self._kv:
            bisect.insort(self._kv_keys, entry.key)
            self._kv_graveyard.pop(entry.key, None)
        self._kv[entry.key] = entry
        self._touch(f"kv:{entry.key}")

    def _kv_lock(self, index: int, key: str, cmd: dict[str, Any]) -> bool:
        """`?acquire=`: refused (False) for an unknown session, a key another session holds, or lock-delay."""
        sid, value, flags = _lock_fields(cmd)
        try:
            now = parse_now(cmd.get("now"))
        except SessionError as exc:
            raise CommandError(f"kv lock: {exc}") from None
        old = self._kv.get(key)
        if self.sessions.get(sid) is None or (old is not None and old.session not in ("", sid)):
            return False
        held = old is not None and old.session == sid
        if not held and self.sessions.lock_delayed(key, now):
            return False
        lock_index = (old.lock_index if old else 0) + (0 if held else 1)
        self._kv_put(KVEntry(key=key, value=value, flags=flags, lock_index=lock_index, session=sid,
                             create_index=old.create_index if old else index, modify_index=index))
        self.sessions.hold(sid, key)
        return True

    def _kv_unlock(self, index: int, key: str, cmd: dict[str, Any]) -> bool:
        """`?release=`: False unless `session` holds the key; else value and flags set, the lock cleared."""
        sid, value, flags = _lock_fields(cmd)
        old = self._kv.get(key)
        if old is None or old.session != sid:
            return False
        self._kv_put(replace(old, value=value, flags=flags, session="", modify_index=index))
        self.sessions.drop(sid, key)
        return True

    def _apply_session(self, index: int, cmd: dict[str, Any]) -> Any:
        verb = cmd.get("verb")
        try:
            if verb == "create":
                return self._session_create(index, parse_session(cmd.get("session")))
            if verb == "destroy":
                sid = cmd.get("id")
                if not isinstance(sid, str):
                    raise SessionError("session destroy: id must be a string")
                return self._session_destroy(index, sid, parse_now(cmd.get("now")))
        except SessionError as exc:
            raise CommandError(str(exc)) from None
        raise CommandError(f"unknown session verb {str(verb)[:64]!r}")

    def _session_create(self, index: int, session: Session) -> str:
        node = self._nodes.get(session.node.lower())
        if node is None:
            raise SessionError("Missing node registration")
        nkey = node.node.lower()

        def status(cid: str) -> str | None:
            check = self._checks.get((nkey, cid))
            return check.status if check is not None else None

        row = self.sessions.create(index, replace(session, node=node.node), status)
        self._touch(SESSIONS_WATCH_KEY, session_watch_key(row.id), node_watch_key(row.node))
        return row.id

    def _session_destroy(self, index: int, sid: str, now: float) -> bool:
        """Invalidation: every key the session holds is released (or deleted, behavior delete) and gets the
        session's lock-delay (Consul applies it with either behavior). Unknown session: False."""
        row = self.sessions.get(sid)
        if row is None:
            return False
        self.sessions.prune_delays(now)
        for key in self.sessions.held_keys(sid):
            entry = self._kv.get(key)
            if entry is not None and entry.session == sid:
                if row.behavior == "delete":
                    self._kv_delete(index, key)
                else:
                    self._kv_put(replace(entry, session="", modify_index=index))
            if row.lock_delay > 0:
                self.sessions.delay_lock(key, now + row.lock_delay)
        self.sessions.remove(index, sid)
        self._touch(SESSIONS_WATCH_KEY, session_watch_key(sid), node_watch_key(row.node))
        return True

    def _apply_connect_ca(self, index: int, cmd: dict[str, Any]) -> bool:
        try:
            changed = self.connect.apply(index, cmd)
        except (ConnectStateError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if changed:
            self._touch(CONNECT_CA_WATCH_KEY)
        return changed

    def _apply_config_entry(self, index: int, cmd: dict[str, Any]) -> bool:
        try:
            result, changed = self.config_entries.apply(index, cmd)
        except ConfigEntryError as exc:
            raise CommandError(str(exc)) from exc
        if changed is not None:
            self._touch(entry_watch_key(changed[0]), entry_watch_key(*changed))
        return result

    def _apply_acl(self, index: int, cmd: dict[str, Any]) -> bool:
        try:
            changed = self.acl.apply(index, cmd)
        except AclStateError as exc:
            raise CommandError(str(exc)) from exc
        if changed:
            self._touch(ACL_WATCH_KEY)
        return True

    def _kv_delete(self, index: int, key: str) -> None:
        old = self._kv.pop(key, None)
        if old is None:
            return
        if old.session:
            self.sessions.drop(old.session, key)  # deleting a held key releases it
        pos = bisect.bisect_left(self._kv_keys, key)
        del self._kv_keys[pos]
        self._kv_graveyard[key] = index
        self._touch(f"kv:{key}")

    # ------------------------------------------------------------------ indexes

    def index_for(self, keys: Iterable[str]) -> int:
        """The X-Consul-Index of a query watching `keys`: the last index at which any of them changed (≥ 1)."""
        best = 1
        for key in keys:
            if key.startswith("kvprefix:"):
                prefix = key[len("kvprefix:"):]
                for k in self._kv_prefix_keys(prefix):
                    best = max(best, self._kv[k].modify_index)
                for k, idx in self._kv_graveyard.items():
                    if idx > best and k.startswith(prefix):
                        best = idx
            else:
                best = max(best, self._key_index.get(key, 0))
        return best

    # ------------------------------------------------------------------ reads

    def node(self, name: str) -> Node | None:
        """The node row by (case-insensitive) name."""
        return self._nodes.get(name.lower())

    def nodes(self) -> list[Node]:
        """All nodes, sorted by name."""
        return sorted(self._nodes.values(), key=lambda n: n.node)

    def node_services(self, name: str) -> list[Service]:
        """Every service instance on one node, sorted by id."""
        nkey = name.lower()
        return sorted((self._services[(nkey, sid)] for sid in self._services_by_node.get(nkey, ())),
                      key=lambda s: s.id)

    def node_checks(self, name: str) -> list[Check]:
        """Every check on one node (node-level and service checks), sorted by id."""
        nkey = name.lower()
        return sorted((self._checks[(nkey, cid)] for cid in self._checks_by_node.get(nkey, ())),
                      key=lambda c: c.check_id)

    def services(self) -> dict[str, list[str]]:
        """Service name -> sorted union of tags across its instances (catalog/services)."""
        out: dict[str, set[str]] = {}
        for svc in self._services.values():
            out.setdefault(svc.service, set()).update(svc.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    def service_instances(self, name: str, tag: str | None = None) -> list[Instance]:
        """Every instance of a service (any health), with node and checks, sorted by node then id."""
        ltag = tag.lower() if tag is not None else None
        return self._instances(self._services_by_name.get(name.lower(), ()), ltag)

    def connect_instances(self, name: str, tag: str | None = None) -> list[Instance]:
        """Every mesh-capable instance for a service (its sidecars, and Connect-native instances of it), any
        health, with node and checks, sorted by node then id; `tag` matches the instance's own tags."""
        ltag = tag.lower() if tag is not None else None
        return self._instances(self._connect_by_target.get(name.lower(), ()), ltag)

    def _instances(self, keys: Iterable[tuple[str, str]], ltag: str | None) -> list[Instance]:
        out: list[Instance] = []
        for nkey, sid in sorted(keys):
            svc = self._services[(nkey, sid)]
            if ltag is not None and ltag not in (t.lower() for t in svc.tags):
                continue
            node = self._nodes[nkey]
            node_checks = []
            svc_checks = []
            for cid in sorted(self._checks_by_node.get(nkey, ())):
                check = self._checks[(nkey, cid)]
                if not check.service_id:
                    node_checks.append(check)
                elif check.service_id == sid:
                    svc_checks.append(check)
            out.append(Instance(node, svc, tuple(node_checks + svc_checks)))
        return out

    def service_checks(self, name: str) -> list[Check]:
        """Every check belonging to instances of a service."""
        lname = name.lower()
        return sorted((c for c in self._checks.values() if c.service_id and c.service_name.lower() == lname),
                      key=lambda c: (c.node, c.check_id))

    def checks_in_state(self, state: str) -> list[Check]:
        """Checks with a status (`any` for all), sorted by node and id."""
        return sorted((c for c in self._checks.values() if state == "any" or c.status == state),
                      key=lambda c: (c.node, c.check_id))

    def kv_get(self, key: str) -> KVEntry | None:
        """One KV entry."""
        return self._kv.get(key)

    def _kv_prefix_keys(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._kv_keys, prefix)
        end = len(self._kv_keys)
        if prefix:
            # Every key with this prefix sorts before prefix + the highest code point.
            end = bisect.bisect_left(self._kv_keys, prefix + "\U0010ffff", start)
        return self._kv_keys[start:end]

    def kv_list(self, prefix: str) -> list[KVEntry]:
        """Every entry whose key starts with prefix, sorted by key."""
        return [self._kv[k] for k in self._kv_prefix_keys(prefix)]

    def kv_keys(self, prefix: str, separator: str = "") -> list[str]:
        """Keys under prefix; with a separator, deeper keys fold into `prefix…separator` like Consul."""
        out: list[str] = []
        for k in self._kv_prefix_keys(prefix):
            if separator:
                cut = k.find(separator, len(prefix))
                if cut != -1:
                    k = k[: cut + len(separator)]
            if not out or out[-1] != k:
                out.append(k)
        return out

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, redact_secrets: bool = False) -> bytes:
        """The whole state as msgpack bytes; `redact_secrets` leaves out the CA's private keys and token secrets
        (for clients)."""
        packed: bytes = msgpack.packb(
            {
                "version": SNAPSHOT_VERSION,
                "last_index": self.last_index,
                "nodes": [row_to_dict(n) for n in self._nodes.values()],
                "services": [row_to_dict(s) for s in self._services.values()],
                "checks": [row_to_dict(c) for c in self._checks.values()],
                "kv": [row_to_dict(e) for e in self._kv.values()],
                "kv_graveyard": self._kv_graveyard,
                "key_index": self._key_index,
                "connect": self.connect.snapshot(redact_secrets),
                "config_entries": self.config_entries.snapshot(),
                "acl": self.acl.snapshot(redact_secrets),
                "sessions": self.sessions.snapshot(),
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def restore(cls, data: bytes) -> Catalog:
        """Rebuild a catalog from `snapshot()` bytes; raises CommandError on a malformed snapshot."""
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(raw, dict) or raw.get("version") != SNAPSHOT_VERSION:
                raise CommandError(f"unsupported catalog snapshot version {raw.get('version')!r}"
                                   if isinstance(raw, dict) else "catalog snapshot is not a map")
            cat = cls()
            cat.last_index = int(raw["last_index"])
            for n in raw["nodes"]:
                node = row_from_dict(Node, n)
                cat._nodes[node.node.lower()] = node
            for s in raw["services"]:
                svc = row_from_dict(Service, s)
                nkey = svc.node.lower()
                cat._services[(nkey, svc.id)] = svc
                cat._services_by_name.setdefault(svc.service.lower(), set()).add((nkey, svc.id))
                cat._services_by_node.setdefault(nkey, set()).add(svc.id)
                cat._link_connect(svc)
            for c in raw["checks"]:
                check = row_from_dict(Check, c)
                nkey = check.node.lower()
                cat._checks[(nkey, check.check_id)] = check
                cat._checks_by_node.setdefault(nkey, set()).add(check.check_id)
            for e in raw["kv"]:
                entry = row_from_dict(KVEntry, e)
                cat._kv[entry.key] = entry
            cat._kv_keys = sorted(cat._kv)
            cat._kv_graveyard = {str(k): int(v) for k, v in raw["kv_graveyard"].items()}
            cat._key_index = {str(k): int(v) for k, v in raw["key_index"].items()}
            cat.connect = ConnectState.restore(raw.get("connect"))  # absent in snapshots from before the mesh
            cat.config_entries = ConfigEntryState.restore(raw.get("config_entries"))
            cat.acl = AclState.restore(raw.get("acl"))  # absent in snapshots from before ACLs
            # Absent in snapshots from before sessions; which session holds which key is in the KV rows.
            cat.sessions = SessionState.restore(raw.get("sessions"),
                                                ((e.session, e.key) for e in cat._kv.values() if e.session))
            return cat
        except CommandError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            # AclStateError is a ValueError: a corrupt ACL section is a corrupt snapshot.
            raise CommandError(f"corrupt catalog snapshot: {exc}") from exc

    def state_equal(self, other: Catalog) -> bool:
        """True when both catalogs hold the same rows (for round-trip tests and replicas)."""
        return (self._nodes == other._nodes and self._services == other._services
                and self._checks == other._checks and self._kv == other._kv and self.connect == other.connect
                and self.config_entries == other.config_entries and self.acl == other.acl
                and self.sessions == other.sessions)


_HANDLERS: dict[str, Callable[[Catalog, int, dict[str, Any]], Any]] = {
    "register": Catalog._apply_register,
    "deregister": Catalog._apply_deregister,
    "kv": Catalog._apply_kv,
    "connect-ca": Catalog._apply_connect_ca,
    "config-entry": Catalog._apply_config_entry,
    "acl": Catalog._apply_acl,
    "session": Catalog._apply_session,
    "txn": apply_txn,
}

def _lock_fields(cmd: dict[str, Any]) -> tuple[str, bytes, int]:
    """A lock/unlock command's session, value and flags, type-checked (CommandError names the field)."""
    sid, value, flags = cmd.get("session"), cmd.get("value") or b"", cmd.get("flags", 0) or 0
    if not isinstance(sid, str) or not sid:
        raise CommandError("kv lock: session must be a non-empty string")
    if not isinstance(value, bytes):
        raise CommandError("kv: value must be bytes")
    if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags < 2**64:
        raise CommandError("kv: flags must be an unsigned 64-bit integer")
    return sid, value, flags


__all__ = ["CRITICAL", "PASSING", "WARNING", "Catalog", "CommandError", "Instance", "connect_target"]
