"""LocalState: the services and checks this agent owns, kept in step with the catalog.

The agent is authoritative for its own node: it registers its node, services and checks, and on every
sync removes catalog entries for its node that it does not know (anti-entropy, in local_sync.py).
API-registered services, maintenance mode and TTL check statuses are persisted in the data dir
(local_persist.py) so a restart keeps them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .catalog import CRITICAL, NODE_MAINT_CHECK_ID, SERVICE_MAINT_PREFIX, STATUSES, Node, commands
from .checks.alias import alias_status
from .checks.manager import CheckManager, UnknownCheck
from .config.encode import check_to_api, service_to_api
from .config.loader import ConfigErrors, parse_check, parse_service
from .config.types import CheckDefinition, ServiceDefinition, Source
from .connect.sidecar import SIDECAR_PORT_RANGE, sidecar_for, sidecar_ids
from .local_persist import Persisted, StateFile
from .local_sync import ANTI_ENTROPY_INTERVAL, CatalogSync, LocalCheck, anti_entropy_interval
from .store import CatalogStore

__all__ = ["ANTI_ENTROPY_INTERVAL", "LocalCheck", "LocalState", "LocalStateError", "anti_entropy_interval"]

log = logging.getLogger("meshagent.agent")


class LocalStateError(Exception):
    """A request about local services/checks that cannot be honoured; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalState:
    """What this agent owns; every change is written to the catalog before the call returns."""

    def __init__(self, *, node: Node, store: CatalogStore, data_dir: str | None,
                 enable_local_script_checks: bool, enable_script_checks: bool,
                 check_update_interval: float = 300.0, cluster_size: Callable[[], int] = lambda: 1,
                 sidecar_ports: tuple[int, int] = SIDECAR_PORT_RANGE) -> None:
        self.node = node
        self.store = store
        self._state_file = StateFile(data_dir)
        self.enable_local_script_checks = enable_local_script_checks
        self.enable_script_checks = enable_script_checks
        # ports.sidecar_min_port/sidecar_max_port; the agent may set it again on reload.
        self.sidecar_ports = sidecar_ports
        # Where the agent's data plane binds sidecars that have no address (the agent's bind address; loopback
        # when that is 0.0.0.0): their "Connect Sidecar Listening" checks dial it. The agent sets it.
        self.sidecar_listen_address = "127.0.0.1"
        self._services: dict[str, ServiceDefinition] = {}
        self._file_service_ids: set[str] = set()
        self._sidecars: dict[str, str] = {}  # parent service id -> the sidecar registered from its definition
        self._checks: dict[str, LocalCheck] = {}
        # The ACL secret each service/check was registered with (HTTP); anti-entropy writes as it. Never logged.
        self._service_tokens: dict[str, str] = {}
        self._check_tokens: dict[str, str] = {}
        self._node_maintenance: str | None = None
        self._service_maintenance: dict[str, str] = {}
        self._ttl_restore: dict[str, dict[str, Any]] = {}
        self._dirty_checks: set[str] = set()
        self._alias_ids: set[str] = set()  # alias checks: recomputed when the checks they mirror change
        self._refreshing = False
        self._refresh_again = False
        self._reap: set[str] = set()
        self._dirty = trio.Event()
        self.checks_runner = CheckManager(on_status=self._on_check_status,
                                          on_deregister_service=self._on_reap_service)
        # Reads the two dicts above live; they are only ever changed in place.
        self.sync = CatalogSync(node=node, store=store, services=self._services, checks=self._checks,
                                check_update_interval=check_update_interval, cluster_size=cluster_size,
                                service_tokens=self._service_tokens, check_tokens=self._check_tokens)
        self.sync.is_file_service = lambda service_id: service_id in self._file_service_ids

    # ------------------------------------------------------------------ reads

    def services(self) -> dict[str, ServiceDefinition]:
        """Service id -> definition."""
        return dict(self._services)

    def checks(self) -> dict[str, LocalCheck]:
        """Check id -> local check (including maintenance checks)."""
        return dict(self._checks)

    @property
    def syncs(self) -> int:
        """Catalog writes made by this agent's syncs, for tests and metrics."""
        return self.sync.syncs

    @property
    def last_sync(self) -> float:
        """Wall-clock time of the last completed full sync (0 before the first)."""
        return self.sync.last_sync

    async def sync_full(self) -> None:
        """Anti-entropy now: make the catalog's view of this node equal to local state."""
        await self.sync.sync_full()

    @property
    def node_maintenance(self) -> str | None:
        """The node maintenance reason, or None when not in maintenance."""
        return self._node_maintenance

    # ------------------------------------------------------------------ lifecycle

    async def start(self, file_services: list[ServiceDefinition], file_checks: list[CheckDefinition]) -> None:
        """Load persisted state, register the node, file and API services, then sync the catalog fully."""
        persisted = self._state_file.load()
        self._ttl_restore = persisted.ttl
        await self.sync.sync_node()
        for sid, body in persisted.services.items():
            try:
                await self.register_service(parse_service(body, Source("<persisted>")),
                                            token=persisted.service_tokens.get(sid) or None, persist=False)
            except (ConfigErrors, LocalStateError) as exc:
                log.error("dropping persisted service %s: %s", body.get("ID"), exc)
        for cid, body in persisted.checks.items():
            try:
                await self.register_check(parse_check(body, Source("<persisted>")),
                                          token=persisted.check_tokens.get(cid) or None, persist=False)
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
            nursery.start_soon(self.sync.run_anti_entropy)
            nursery.start_soon(self.sync.watch_catalog)
            task_status.started()

    async def load_files(self, services: list[ServiceDefinition], checks: list[CheckDefinition]) -> None:
        """Make file-defined services and checks match `services`/`checks` (start and reload)."""
        wanted = {s.id: s for s in services}
        wanted_ids = wanted.keys() | sidecar_ids(services)  # a kept parent's sidecar is not dropped (its port stays)
        for sid in sorted(self._file_service_ids - wanted_ids):
            await self.deregister_service(sid)
        for defn in services:
            await self.register_service(defn, from_file=True, persist=False)
        file_check_ids = {c.check_id for c in self._checks.values() if c.from_file and not c.service_id}
        wanted_checks = {c.id for c in checks}
        for cid in sorted(file_check_ids - wanted_checks):
            await self.deregister_check(cid)
        for cdef in checks:
            await self.register_check(cdef, from_file=True, persist=False)
        self._file_service_ids = set(wanted_ids)

    # ------------------------------------------------------------------ services

    def _check_script_allowed(self, cdef: CheckDefinition, from_file: bool) -> None:
        if cdef.type != "script":
            return
        if self.enable_script_checks or (from_file and self.enable_local_script_checks):
            return
        where = "enable_local_script_checks" if from_file else "enable_script_checks"
        raise LocalStateError(f"Scripts are disabled on this agent; to enable, configure '{where}' to true "
                              f"(check {cdef.id!r} from {cdef.source})")

    async def register_service(self, defn: ServiceDefinition, replace_existing_checks: bool = False,
                               token: str | None = None, *, from_file: bool = False, persist: bool = True) -> None:
        """Add or replace a service and its checks, then write them to the catalog. `token`: the ACL secret
        it was registered with; anti-entropy writes it (and its checks) as that token."""
        for cdef in defn.checks:
            self._check_script_allowed(cdef, from_file)
        try:
            # before any change: a refusal leaves state as it was
            sidecar = sidecar_for(defn, self._services, self.sidecar_ports,
                                  self.sidecar_listen_address)
        except ConfigErrors as exc:
            raise LocalStateError(str(exc)) from exc
        if sidecar is not None:
            for cdef in sidecar.checks:
                self._check_script_allowed(cdef, from_file)
        old_check_ids = {c.check_id for c in self._checks.values()
                         if c.service_id == defn.id and not c.check_id.startswith(SERVICE_MAINT_PREFIX)}
        self._services[defn.id] = defn
        if token:
            self._service_tokens[defn.id] = token
        else:  # a re-registration without a token drops the old one (Consul replaces it too)
            self._service_tokens.pop(defn.id, None)
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
        self._refresh_aliases()  # an alias of this service read "could not be found" until now
        await self.sync.sync_service(defn.id)
        if persist and not from_file:
            await self._persist()
        if sidecar is not None:
            self._sidecars[defn.id] = sidecar.id
            # the sidecar is written as its parent is (Consul registers it with the parent's token)
            await self.register_service(sidecar, True, token or defn.token or None, from_file=from_file,
                                        persist=persist)
        elif defn.id in self._sidecars:  # the sidecar_service block was removed
            await self.deregister_service(self._sidecars.pop(defn.id))

    async def deregister_service(self, service_id: str) -> None:
        """Remove a service and its checks (no-op when unknown)."""
        if service_id not in self._services:
            return
        del self._services[service_id]
        self._file_service_ids.discard(service_id)
        sidecar = self._sidecars.pop(service_id, None)
        self._service_maintenance.pop(service_id, None)
        for check in [c for c in self._checks.values() if c.service_id == service_id]:
            self._remove_check(check.check_id)
        self._refresh_aliases()  # an alias of a service without checks would otherwise stay passing
        token = self.sync.service_token(service_id)  # before the registering token goes
        self._service_tokens.pop(service_id, None)
        await self.sync.apply(commands.deregister(self.node.node, service_id=service_id), token, service_id)
        await self._persist()
        if sidecar is not None:  # a sidecar goes with the service that defined it
            await self.deregister_service(sidecar)

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
        if cdef.type == "alias":
            self._alias_ids.add(cdef.id)
        else:
            self._alias_ids.discard(cdef.id)
        self._refresh_aliases()

    def _remove_check(self, check_id: str) -> None:
        self._checks.pop(check_id, None)
        self._check_tokens.pop(check_id, None)
        self._alias_ids.discard(check_id)
        self.checks_runner.remove(check_id)
        self._refresh_aliases()

    def _refresh_aliases(self) -> None:
        """Give every alias check the status of the checks it mirrors (agent/checks/alias.py). A status it
        changes may feed another alias check: rounds until nothing moves (bounded: worst-of settles)."""
        if not self._alias_ids:
            return
        if self._refreshing:  # a status set below came back through _on_check_status
            self._refresh_again = True
            return
        self._refreshing = True
        try:
            for _ in range(8):
                self._refresh_again = False
                # one pass over the checks, then each alias check reads its part
                node_checks: list[LocalCheck] = []
                by_service: dict[str, list[LocalCheck]] = {}
                for check in self._checks.values():
                    if check.service_id:
                        by_service.setdefault(check.service_id, []).append(check)
                    elif check.check_id not in self._alias_ids:  # a node-level alias would read itself
                        node_checks.append(check)
                for cid in sorted(self._alias_ids):
                    alias = self._checks.get(cid)
                    if alias is None or alias.definition is None:
                        continue
                    target = alias.definition.alias_service
                    inputs = node_checks + [c for c in by_service.get(target, []) if c is not alias]
                    status, output = alias_status(target, inputs, target in self._services, self.node.node)
                    self.checks_runner.report(cid, status, output)
                if not self._refresh_again:
                    break
        finally:
            self._refreshing = False

    async def register_check(self, cdef: CheckDefinition, token: str | None = None, *, from_file: bool = False,
                             persist: bool = True) -> None:
        """Add or replace a check (node-level, or on an existing local service); `token`: the ACL secret it
        was registered with (anti-entropy writes it as that token)."""
        self._check_script_allowed(cdef, from_file)
        service_name = ""
        if cdef.service_id:
            svc = self._services.get(cdef.service_id)
            if svc is None:
                raise LocalStateError(f"ServiceID {cdef.service_id!r} does not exist")
            service_name = svc.name
        self._add_check(cdef, from_file, service_name)
        if token:
            self._check_tokens[cdef.id] = token
        else:  # as register_service: a re-registration without a token drops the old one (Consul replaces it)
            self._check_tokens.pop(cdef.id, None)
        await self.sync.sync_check(cdef.id)
        if persist and not from_file:
            await self._persist()

    async def deregister_check(self, check_id: str) -> None:
        """Remove a check (no-op when unknown)."""
        if check_id not in self._checks:
            return
        token = self.sync.check_token(check_id)  # before the registering token goes
        self._remove_check(check_id)
        await self.sync.apply(commands.deregister(self.node.node, check_id=check_id), token)
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
        await self.sync.sync_check(check_id)
        await self._persist()

    def _on_check_status(self, check_id: str, status: str, output: str) -> None:
        check = self._checks.get(check_id)
        if check is None:
            return
        check.status, check.output = status, output
        self._dirty_checks.add(check_id)
        self._dirty.set()
        self._refresh_aliases()

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
                    await self.sync.sync_check(cid)
            if any(self._checks[c].type == "ttl" for c in dirty if c in self._checks):
                try:
                    await self._persist()
                except LocalStateError:
                    pass  # logged; the next change tries again

    # ------------------------------------------------------------------ maintenance

    async def set_node_maintenance(self, enable: bool, reason: str) -> None:
        """Add or remove the node's `_node_maintenance` critical check."""
        if enable:
            self._node_maintenance = reason or "Maintenance mode is enabled for this node, but no reason " \
                                               "was provided. This is a default message."
            self._checks[NODE_MAINT_CHECK_ID] = LocalCheck(
                check_id=NODE_MAINT_CHECK_ID, name="Node Maintenance Mode", status=CRITICAL,
                notes=self._node_maintenance, type="maintenance")
            await self.sync.sync_check(NODE_MAINT_CHECK_ID)
        else:
            self._node_maintenance = None
            if self._checks.pop(NODE_MAINT_CHECK_ID, None) is not None:
                await self.sync.apply(commands.deregister(self.node.node, check_id=NODE_MAINT_CHECK_ID),
                                      self.sync.agent_token())
        self._refresh_aliases()  # alias checks count the node's checks too
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
            await self.sync.sync_check(cid)
        else:
            self._service_maintenance.pop(service_id, None)
            if self._checks.pop(cid, None) is not None:
                await self.sync.apply(commands.deregister(self.node.node, check_id=cid),
                                      self.sync.service_token(service_id), service_id)
        self._refresh_aliases()
        await self._persist()

    # ------------------------------------------------------------------ persistence

    async def _persist(self) -> None:
        """Save API-registered state; raises LocalStateError (500) when the disk refuses."""
        try:
            await self._state_file.save(self._persisted)
        except OSError as exc:
            path = self._state_file.path
            log.error("could not save local state to %s: %s", path, exc)
            raise LocalStateError(f"could not save local state to {path}: {exc}", 500) from exc

    def _persisted(self) -> Persisted:
        now_wall, now = time.time(), trio.current_time()
        ttl = {}
        for cid, check in self._checks.items():
            if check.type == "ttl" and check.definition is not None and check.definition.ttl:
                expires = self.checks_runner.ttl_expires_at(cid)
                ttl[cid] = {"status": check.status, "output": check.output,
                            "expires": now_wall + max(0.0, (expires or now) - now)}
        return Persisted(
            # A sidecar is not kept on its own: its parent's definition registers it again.
            services={sid: service_to_api(d) for sid, d in self._services.items()
                      if sid not in self._file_service_ids and sid not in self._sidecars.values()},
            checks={cid: check_to_api(c.definition) for cid, c in self._checks.items()
                    if c.definition is not None and not c.service_id and not c.from_file},
            ttl=ttl, node_maintenance=self._node_maintenance, service_maintenance=self._service_maintenance,
            # Consul keeps a service's token with its persisted definition (the file is 0600, never logged).
            service_tokens={sid: t for sid, t in self._service_tokens.items()
                            if sid not in self._file_service_ids and sid not in self._sidecars.values()},
            check_tokens={cid: t for cid, t in self._check_tokens.items()
                          if cid in self._checks and not self._checks[cid].service_id
                          and not self._checks[cid].from_file})
