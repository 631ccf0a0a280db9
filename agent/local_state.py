"""LocalState: the services and checks this agent owns, kept in step with the catalog.

The agent is authoritative for its own node: it registers its node, services and checks, and on every
sync removes catalog entries for its node that it does not know (anti-entropy). API-registered services,
maintenance mode and TTL check statuses are persisted in the data dir so a restart keeps them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from ..atomic_file import write_atomic
from .catalog import (
    CRITICAL,
    NODE_MAINT_CHECK_ID,
    SERF_CHECK_ID,
    SERVICE_MAINT_PREFIX,
    STATUSES,
    Check,
    CommandError,
    Node,
    Service,
    commands,
    same_row,
)
from .checks.manager import CheckManager, UnknownCheck
from .config.encode import check_to_api, service_to_api
from .config.loader import ConfigErrors, parse_check, parse_service
from .config.types import CheckDefinition, ServiceDefinition, Source
from .rpc.errors import ServerError
from .store import CatalogStore

log = logging.getLogger("meshagent.agent")

STATE_FILE = "local-state.json"
ANTI_ENTROPY_INTERVAL = 60.0
AE_SCALE_THRESHOLD = 128  # up to this many nodes a full sync runs about every ANTI_ENTROPY_INTERVAL


def anti_entropy_interval(nodes: int, base: float = ANTI_ENTROPY_INTERVAL) -> float:
    """Consul's scaling: one more `base` for every doubling of the cluster beyond 128 nodes."""
    if nodes <= AE_SCALE_THRESHOLD:
        return base
    return base * (1 + math.ceil(math.log2(nodes) - math.log2(AE_SCALE_THRESHOLD)))


class LocalStateError(Exception):
    """A request about local services/checks that cannot be honoured; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class LocalCheck:
    """A check this agent owns, with its current status."""

    check_id: str
    name: str
    status: str
    output: str = ""
    notes: str = ""
    service_id: str = ""
    service_name: str = ""
    type: str = ""
    definition: CheckDefinition | None = None
    from_file: bool = False

    def row(self, node: str, tags: list[str]) -> Check:
        """The catalog row for this check."""
        return Check(node=node, check_id=self.check_id, name=self.name, status=self.status,
                     output=self.output, notes=self.notes, service_id=self.service_id,
                     service_name=self.service_name, service_tags=list(tags), type=self.type)


@dataclass(slots=True)
class _Persisted:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # api-registered, CamelCase bodies
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # api-registered node checks
    ttl: dict[str, dict[str, Any]] = field(default_factory=dict)  # check id -> status, output, expires (wall)
    node_maintenance: str | None = None
    service_maintenance: dict[str, str] = field(default_factory=dict)


class LocalState:
    """What this agent owns; every change is written to the catalog before the call returns."""

    def __init__(self, *, node: Node, store: CatalogStore, data_dir: str | None,
                 enable_local_script_checks: bool, enable_script_checks: bool,
                 check_update_interval: float = 300.0, cluster_size: Callable[[], int] = lambda: 1) -> None:
        self.node = node
        self.store = store
        self.check_update_interval = check_update_interval
        self._cluster_size = cluster_size
        self._output_synced: dict[str, float] = {}  # check id -> when its output last reached the catalog
        self.syncs = 0  # catalog writes made by this agent's syncs, for tests and metrics
        self._path = Path(data_dir) / STATE_FILE if data_dir else None
        self._persist_lock = trio.Lock()
        self._out_of_sync = False
        self.enable_local_script_checks = enable_local_script_checks
        self.enable_script_checks = enable_script_checks
        self._services: dict[str, ServiceDefinition] = {}
        self._file_service_ids: set[str] = set()
        self._checks: dict[str, LocalCheck] = {}
        self._node_maintenance: str | None = None
        self._service_maintenance: dict[str, str] = {}
        self._ttl_restore: dict[str, dict[str, Any]] = {}
        self._dirty_checks: set[str] = set()
        self._reap: set[str] = set()
        self._dirty = trio.Event()
        self.checks_runner = CheckManager(on_status=self._on_check_status,
                                          on_deregister_service=self._on_reap_service)
        self.last_sync: float = 0.0

    # ------------------------------------------------------------------ reads

    def services(self) -> dict[str, ServiceDefinition]:
        """Service id -> definition."""
        return dict(self._services)

    def checks(self) -> dict[str, LocalCheck]:
        """Check id -> local check (including maintenance checks)."""
        return dict(self._checks)

    @property
    def node_maintenance(self) -> str | None:
        """The node maintenance reason, or None when not in maintenance."""
        return self._node_maintenance

    # ------------------------------------------------------------------ lifecycle

    async def start(self, file_services: list[ServiceDefinition], file_checks: list[CheckDefinition]) -> None:
        """Load persisted state, register the node, file and API services, then sync the catalog fully."""
        persisted = self._load()
        self._ttl_restore = persisted.ttl
        await self._sync_node()
        for body in persisted.services.values():
            try:
                await self.register_service(parse_service(body, Source("<persisted>")), persist=False)
            except (ConfigErrors, LocalStateError) as exc:
                log.error("dropping persisted service %s: %s", body.get("ID"), exc)
        for body in persisted.checks.values():
            try:
                await self.register_check(parse_check(body, Source("<persisted>")), persist=False)
            except (ConfigErrors, LocalStateError) as exc:
                log.error("dropping persisted check %s: %s", body.get("CheckID"), exc)
        await self.load_files(file_services, file_checks)
        if persisted.node_maintenance is not None:
            await self.set_node_maintenance(True, persisted.node_maintenance)
        for sid, reason in persisted.service_maintenance.items():
            if sid in self._services:
                await self.set_service_maintenance(sid, True, reason)
        await self.sync_full()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run checks, push check status changes into the catalog, and re-sync everything periodically."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.checks_runner.run)
            nursery.start_soon(self._push_check_changes)
            nursery.start_soon(self._anti_entropy)
            nursery.start_soon(self._watch_catalog)
            task_status.started()

    async def load_files(self, services: list[ServiceDefinition], checks: list[CheckDefinition]) -> None:
        """Make file-defined services and checks match `services`/`checks` (start and reload)."""
        wanted = {s.id: s for s in services}
        for sid in sorted(self._file_service_ids - wanted.keys()):
            await self.deregister_service(sid)
        for defn in services:
            await self.register_service(defn, from_file=True, persist=False)
        file_check_ids = {c.check_id for c in self._checks.values() if c.from_file and not c.service_id}
        wanted_checks = {c.id for c in checks}
        for cid in sorted(file_check_ids - wanted_checks):
            await self.deregister_check(cid)
        for cdef in checks:
            await self.register_check(cdef, from_file=True, persist=False)
        self._file_service_ids = set(wanted)

    # ------------------------------------------------------------------ services

    def _check_script_allowed(self, cdef: CheckDefinition, from_file: bool) -> None:
        if cdef.type != "script":
            return
        if self.enable_script_checks or (from_file and self.enable_local_script_checks):
            return
        where = "enable_local_script_checks" if from_file else "enable_script_checks"
        raise LocalStateError(f"Scripts are disabled on this agent; to enable, configure '{where}' to true "
                              f"(check {cdef.id!r} from {cdef.source})")

    async def register_service(self, defn: ServiceDefinition, replace_existing_checks: bool = False, *,
                               from_file: bool = False, persist: bool = True) -> None:
        """Add or replace a service and its checks, then write them to the catalog."""
        for cdef in defn.checks:
            self._check_script_allowed(cdef, from_file)
        old_check_ids = {c.check_id for c in self._checks.values()
                         if c.service_id == defn.id and not c.check_id.startswith(SERVICE_MAINT_PREFIX)}
        self._services[defn.id] = defn
        if from_file:
            self._file_service_ids.add(defn.id)
        new_ids = set()
        for cdef in defn.checks:
            cdef.service_id = defn.id
            new_ids.add(cdef.id)
            self._add_check(cdef, from_file, service_name=defn.name)
        if replace_existing_checks or from_file:
            for cid in old_check_ids - new_ids:
                self._remove_check(cid)
        await self._sync_service(defn.id)
        if persist and not from_file:
            await self._persist()

    async def deregister_service(self, service_id: str) -> None:
        """Remove a service and its checks (no-op when unknown)."""
        if service_id not in self._services:
            return
        del self._services[service_id]
        self._file_service_ids.discard(service_id)
        self._service_maintenance.pop(service_id, None)
        for check in [c for c in self._checks.values() if c.service_id == service_id]:
            self._remove_check(check.check_id)
        await self._apply(commands.deregister(self.node.node, service_id=service_id))
        await self._persist()

    # ------------------------------------------------------------------ checks

    def _add_check(self, cdef: CheckDefinition, from_file: bool, service_name: str = "") -> None:
        old = self._checks.get(cdef.id)
        restored = self._ttl_restore.pop(cdef.id, None)
        status, output = (old.status, old.output) if old else (cdef.status, "")
        ttl_expires: float | None = None
        if restored and cdef.type == "ttl" and restored.get("status") in STATUSES:
            # Consul keeps a TTL check's last status until its TTL runs out after a restart.
            status, output = restored["status"], str(restored.get("output", ""))
            ttl_expires = float(restored.get("expires", 0.0)) - time.time() + trio.current_time()
        check = LocalCheck(check_id=cdef.id, name=cdef.name, status=status, output=output, notes=cdef.notes,
                           service_id=cdef.service_id, service_name=service_name, type=cdef.type,
                           definition=cdef, from_file=from_file)
        self._checks[cdef.id] = check
        self.checks_runner.add(cdef.id, cdef, status, service_id=cdef.service_id, ttl_expires_at=ttl_expires)

    def _remove_check(self, check_id: str) -> None:
        self._checks.pop(check_id, None)
        self.checks_runner.remove(check_id)

    async def register_check(self, cdef: CheckDefinition, *, from_file: bool = False,
                             persist: bool = True) -> None:
        """Add or replace a check (node-level, or on an existing local service)."""
        self._check_script_allowed(cdef, from_file)
        service_name = ""
        if cdef.service_id:
            svc = self._services.get(cdef.service_id)
            if svc is None:
                raise LocalStateError(f"ServiceID {cdef.service_id!r} does not exist")
            service_name = svc.name
        self._add_check(cdef, from_file, service_name)
        await self._sync_check(cdef.id)
        if persist and not from_file:
            await self._persist()

    async def deregister_check(self, check_id: str) -> None:
        """Remove a check (no-op when unknown)."""
        if check_id not in self._checks:
            return
        self._remove_check(check_id)
        await self._apply(commands.deregister(self.node.node, check_id=check_id))
        await self._persist()

    async def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status (pass/warn/fail/update); 404 when unknown, 400 when not a TTL check."""
        if status not in STATUSES:
            raise LocalStateError(f"invalid check status {status!r}")
        check = self._checks.get(check_id)
        if check is None:
            raise LocalStateError(f"Unknown check ID {check_id!r}", 404)
        try:
            self.checks_runner.ttl_update(check_id, status, output)
        except UnknownCheck as exc:
            raise LocalStateError(f"check {check_id!r} is not a TTL check: {exc}") from exc
        await self._sync_check(check_id)
        await self._persist()

    def _on_check_status(self, check_id: str, status: str, output: str) -> None:
        check = self._checks.get(check_id)
        if check is None:
            return
        check.status, check.output = status, output
        self._dirty_checks.add(check_id)
        self._dirty.set()

    def _on_reap_service(self, service_id: str) -> None:
        log.info("deregistering service %s: critical longer than deregister_critical_service_after", service_id)
        self._reap.add(service_id)
        self._dirty.set()

    async def _push_check_changes(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            dirty, self._dirty_checks = self._dirty_checks, set()
            reap, self._reap = self._reap, set()
            for sid in sorted(reap):
                await self.deregister_service(sid)
            for cid in sorted(dirty):
                if cid in self._checks:
                    await self._sync_check(cid)
            if any(self._checks[c].type == "ttl" for c in dirty if c in self._checks):
                try:
                    await self._persist()
                except LocalStateError:
                    pass  # logged; the next change tries again

    async def _anti_entropy(self) -> None:
        """Full syncs: every second while the catalog is unreachable, else every scaled interval, staggered
        at random so that a fleet started together does not sync together."""
        while True:
            interval = anti_entropy_interval(self._cluster_size())
            deadline = trio.current_time() + random.uniform(0.5, 1.5) * interval
            while trio.current_time() < deadline and not self._out_of_sync:
                await trio.sleep(1.0)
            self._out_of_sync = False
            try:
                await self.sync_full()
                if not self._out_of_sync:
                    log.debug("catalog in sync")
            except Exception:  # the catalog may be unreachable later (RPC); keep the loop alive
                log.exception("anti-entropy sync failed")
                self._out_of_sync = True
            if self._out_of_sync:
                await trio.sleep(1.0)

    async def _watch_catalog(self) -> None:
        """Beyond Consul's periodic repair: when the catalog's view of this node changes behind our back
        (a catalog deregister, a restore), sync at once instead of up to a minute later."""
        key = f"node:{self.node.node.lower()}"
        while True:
            await self.store.hub.wait([key], 3600.0)
            await trio.sleep(0.2)  # let a burst of changes (our own writes among them) settle
            if not self._in_sync():
                log.debug("catalog entries for this node differ from local state; syncing")
                self._out_of_sync = True

    # ------------------------------------------------------------------ maintenance

    async def set_node_maintenance(self, enable: bool, reason: str) -> None:
        """Add or remove the node's `_node_maintenance` critical check."""
        if enable:
            self._node_maintenance = reason or "Maintenance mode is enabled for this node, but no reason " \
                                               "was provided. This is a default message."
            self._checks[NODE_MAINT_CHECK_ID] = LocalCheck(
                check_id=NODE_MAINT_CHECK_ID, name="Node Maintenance Mode", status=CRITICAL,
                notes=self._node_maintenance, type="maintenance")
            await self._sync_check(NODE_MAINT_CHECK_ID)
        else:
            self._node_maintenance = None
            if self._checks.pop(NODE_MAINT_CHECK_ID, None) is not None:
                await self._apply(commands.deregister(self.node.node, check_id=NODE_MAINT_CHECK_ID))
        await self._persist()

    async def set_service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        """Add or remove a service's `_service_maintenance:<id>` critical check."""
        svc = self._services.get(service_id)
        if svc is None:
            raise LocalStateError(f"No service registered with ID {service_id!r}", 404)
        cid = SERVICE_MAINT_PREFIX + service_id
        if enable:
            note = reason or "Maintenance mode is enabled for this service, but no reason was provided. " \
                             "This is a default message."
            self._service_maintenance[service_id] = note
            self._checks[cid] = LocalCheck(check_id=cid, name="Service Maintenance Mode", status=CRITICAL,
                                           notes=note, service_id=service_id, service_name=svc.name,
                                           type="maintenance")
            await self._sync_check(cid)
        else:
            self._service_maintenance.pop(service_id, None)
            if self._checks.pop(cid, None) is not None:
                await self._apply(commands.deregister(self.node.node, check_id=cid))
        await self._persist()

    # ------------------------------------------------------------------ catalog sync

    def _service_row(self, defn: ServiceDefinition) -> Service:
        return Service(node=self.node.node, id=defn.id, service=defn.name, tags=list(defn.tags),
                       address=defn.address, port=defn.port, meta=dict(defn.meta),
                       weights={"Passing": defn.weights.passing, "Warning": defn.weights.warning},
                       enable_tag_override=defn.enable_tag_override, kind=defn.kind,
                       tagged_addresses=dict(defn.tagged_addresses), proxy=dict(defn.proxy),
                       connect=dict(defn.connect))

    async def _apply(self, command: dict[str, Any]) -> Any:
        try:
            self.syncs += 1
            return await self.store.apply(command)
        except (ServerError, CommandError) as exc:
            # No leader (yet), or the catalog changed under us (a check whose service was deregistered
            # elsewhere): keep local state and let a full sync put everything back.
            if not self._out_of_sync:
                log.warning("catalog sync deferred: %s; retrying every second", exc)
            self._out_of_sync = True
            return None

    def _check_rows(self, service_id: str) -> list[Check]:
        tags = self._services[service_id].tags if service_id in self._services else []
        return [c.row(self.node.node, tags) for c in self._checks.values() if c.service_id == service_id]

    def _check_current(self, wanted: Check, have: Check | None, now: float) -> bool:
        """Whether the catalog's row may stay: equal, or differing only in output for less than
        check_update_interval since the output was last written (Consul defers output-only changes)."""
        if have is None:
            return False
        if same_row(have, wanted):
            return True
        if have.status != wanted.status or not same_row(have, replace(wanted, output=have.output)):
            return False
        return now - self._output_synced.get(wanted.check_id, float("-inf")) < self.check_update_interval

    def _catalog_checks(self) -> dict[str, Check]:
        return {c.check_id: c for c in self.store.catalog.node_checks(self.node.node)}

    async def _write_checks(self, service: Service | None, rows: list[Check]) -> None:
        now = trio.current_time()
        for row in rows:
            self._output_synced[row.check_id] = now
        await self._apply(commands.register(self.node, service, rows))

    async def _sync_node(self) -> None:
        have = self.store.catalog.node(self.node.node)
        if have is None or not same_row(have, self.node):
            await self._apply(commands.register(self.node))

    async def _sync_service(self, service_id: str) -> None:
        """Write the service and its checks if the catalog differs; drop checks it no longer has."""
        defn = self._services[service_id]
        wanted = self._service_row(defn)
        rows = self._check_rows(service_id)
        have_svc = next((s for s in self.store.catalog.node_services(self.node.node) if s.id == service_id), None)
        have_checks = self._catalog_checks()
        now = trio.current_time()
        if (have_svc is None or not same_row(have_svc, wanted) or
                not all(self._check_current(r, have_checks.get(r.check_id), now) for r in rows)):
            await self._write_checks(wanted, rows)
        live = {r.check_id for r in rows}
        for check in have_checks.values():
            if check.service_id == service_id and check.check_id not in live:
                await self._apply(commands.deregister(self.node.node, check_id=check.check_id))

    async def _sync_check(self, check_id: str) -> None:
        check = self._checks[check_id]
        if check.service_id in self._services and not any(
                s.id == check.service_id for s in self.store.catalog.node_services(self.node.node)):
            await self._sync_service(check.service_id)  # the service is gone from the catalog: both go back
            return
        tags = self._services[check.service_id].tags if check.service_id in self._services else []
        row = check.row(self.node.node, tags)
        if not self._check_current(row, self._catalog_checks().get(check_id), trio.current_time()):
            await self._write_checks(None, [row])

    def _in_sync(self) -> bool:
        """Whether the catalog's view of this node equals local state (no writes; output deferral applies)."""
        catalog = self.store.catalog
        have_node = catalog.node(self.node.node)
        if have_node is None or not same_row(have_node, self.node):
            return False
        services = {s.id: s for s in catalog.node_services(self.node.node)}
        if services.keys() != self._services.keys():
            return False
        if any(not same_row(services[sid], self._service_row(d)) for sid, d in self._services.items()):
            return False
        checks = self._catalog_checks()
        if checks.keys() - {SERF_CHECK_ID} != self._checks.keys():
            return False
        now = trio.current_time()
        return all(self._check_current(self._checks[cid].row(self.node.node, self._services[c.service_id].tags
                                                              if c.service_id in self._services else []),
                                       checks[cid], now) for cid, c in self._checks.items())

    async def sync_full(self) -> None:
        """Anti-entropy: make the catalog's view of this node equal to local state, writing only what
        differs. serfHealth belongs to the leader (it follows gossip) and is never touched here."""
        await self._sync_node()
        for sid in list(self._services):
            await self._sync_service(sid)
        for cid, check in list(self._checks.items()):
            if not check.service_id:
                await self._sync_check(cid)
        known_checks = set(self._checks) | {SERF_CHECK_ID}
        for svc in self.store.catalog.node_services(self.node.node):
            if svc.id not in self._services:
                await self._apply(commands.deregister(self.node.node, service_id=svc.id))
        for check in self.store.catalog.node_checks(self.node.node):
            if check.check_id not in known_checks:
                await self._apply(commands.deregister(self.node.node, check_id=check.check_id))
        self.last_sync = time.time()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> _Persisted:
        if self._path is None or not self._path.exists():
            return _Persisted()
        try:
            raw = json.loads(self._path.read_text())
            return _Persisted(services=dict(raw.get("services", {})), checks=dict(raw.get("checks", {})),
                              ttl=dict(raw.get("ttl", {})), node_maintenance=raw.get("node_maintenance"),
                              service_maintenance=dict(raw.get("service_maintenance", {})))
        except (OSError, ValueError, AttributeError) as exc:
            # Refusing to start would lose the catalog too; start empty and say loudly what was dropped.
            log.error("ignoring unreadable local state %s: %s", self._path, exc)
            return _Persisted()

    async def _persist(self) -> None:
        """Save API-registered state; raises LocalStateError (500) when the disk refuses."""
        if self._path is None:
            return
        # One writer at a time: otherwise an older state could be renamed over a newer one.
        async with self._persist_lock:
            data = self._persisted_bytes()
            try:
                await trio.to_thread.run_sync(write_atomic, self._path, data)
            except OSError as exc:
                log.error("could not save local state to %s: %s", self._path, exc)
                raise LocalStateError(f"could not save local state to {self._path}: {exc}", 500) from exc

    def _persisted_bytes(self) -> bytes:
        now_wall, now = time.time(), trio.current_time()
        ttl = {}
        for cid, check in self._checks.items():
            if check.type == "ttl" and check.definition is not None and check.definition.ttl:
                expires = self.checks_runner.ttl_expires_at(cid)
                ttl[cid] = {"status": check.status, "output": check.output,
                            "expires": now_wall + max(0.0, (expires or now) - now)}
        state = {
            "services": {sid: service_to_api(d) for sid, d in self._services.items()
                         if sid not in self._file_service_ids},
            "checks": {cid: check_to_api(c.definition) for cid, c in self._checks.items()
                       if c.definition is not None and not c.service_id and not c.from_file},
            "ttl": ttl,
            "node_maintenance": self._node_maintenance,
            "service_maintenance": self._service_maintenance,
        }
        return json.dumps(state, indent=1, sort_keys=True).encode()
