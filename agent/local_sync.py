"""Anti-entropy: make the catalog's view of this node equal to what the agent owns, writing only what differs.

CatalogSync reads the registry's services and checks (LocalState's own dicts, read live) and never changes
them; it owns the catalog side: what to write, when an output-only change may wait, and the periodic repair.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from .catalog import SERF_CHECK_ID, Check, CommandError, Node, Service, commands, same_row
from .config.types import CheckDefinition, ServiceDefinition
from .rpc.errors import ACLDenied, ACLNotFound, ServerError
from .store import CatalogStore

if TYPE_CHECKING:
    from .acl.resolver import ACLResolver

log = logging.getLogger("meshagent.agent")

ANTI_ENTROPY_INTERVAL = 60.0
AE_SCALE_THRESHOLD = 128  # up to this many nodes a full sync runs about every ANTI_ENTROPY_INTERVAL


def anti_entropy_interval(nodes: int, base: float = ANTI_ENTROPY_INTERVAL) -> float:
    """Consul's scaling: one more `base` for every doubling of the cluster beyond 128 nodes."""
    if nodes <= AE_SCALE_THRESHOLD:
        return base
    return base * (1 + math.ceil(math.log2(nodes) - math.log2(AE_SCALE_THRESHOLD)))


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
        # Interval and Timeout (seconds) ride in the row's definition so /v1/health/* can show them, as Consul's do.
        timing: dict[str, Any] = {}
        if self.definition is not None and self.definition.interval:
            timing["Interval"] = self.definition.interval
        if self.definition is not None and self.definition.timeout:
            timing["Timeout"] = self.definition.timeout
        return Check(node=node, check_id=self.check_id, name=self.name, status=self.status,
                     output=self.output, notes=self.notes, service_id=self.service_id,
                     service_name=self.service_name, service_tags=list(tags), type=self.type, definition=timing)


class CatalogSync:
    """Writes this node's services and checks to the catalog where it differs; repairs it periodically."""

    def __init__(self, *, node: Node, store: CatalogStore, services: Mapping[str, ServiceDefinition],
                 checks: Mapping[str, LocalCheck], check_update_interval: float,
                 cluster_size: Callable[[], int], service_tokens: Mapping[str, str] | None = None,
                 check_tokens: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.store = store
        self._services = services
        self._checks = checks
        self._service_tokens: Mapping[str, str] = service_tokens if service_tokens is not None else {}
        self._check_tokens: Mapping[str, str] = check_tokens if check_tokens is not None else {}
        # The agent's resolver (set by the agent): with ACLs on every write carries a token; None = ACLs off.
        self.acl: ACLResolver | None = None
        self.is_file_service: Callable[[str], bool] = lambda service_id: False  # LocalState sets it
        self._denied: set[str] = set()  # subjects whose ACL refusal was logged (once each, until a write works)
        self.check_update_interval = check_update_interval
        self._cluster_size = cluster_size
        self._output_synced: dict[str, float] = {}  # check id -> when its output last reached the catalog
        self.syncs = 0  # catalog writes made by this agent's syncs, for tests and metrics
        self.out_of_sync = False
        self.last_sync: float = 0.0

    # ------------------------------------------------------------------ tokens

    def _acl_on(self) -> bool:
        return self.acl is not None and self.acl.enabled

    def agent_token(self) -> str | None:
        """The secret node-level writes carry (the agent token, else the default); None with ACLs off."""
        if self.acl is None or not self.acl.enabled:
            return None
        return self.acl.agent_secret()

    def service_token(self, service_id: str) -> str | None:
        """The secret a service's writes carry: its registering token, else its definition's `token`, else
        (a config file's service) the config_file_service_registration token, else the agent's; None with
        ACLs off (the agent's own write, as before ACLs)."""
        if self.acl is None or not self.acl.enabled:
            return None
        defn = self._services.get(service_id)
        own = self._service_tokens.get(service_id) or (defn.token if defn else "")
        if not own and self.is_file_service(service_id):
            own = self.acl.tokens.config_file_service_registration
        return own or self.agent_token()

    def check_token(self, check_id: str) -> str | None:
        """The secret a check's writes carry: its registering token, else its service's, else the agent's."""
        if not self._acl_on():
            return None
        check = self._checks.get(check_id)
        own = self._check_tokens.get(check_id)
        if own:
            return own
        if check is not None and check.service_id:
            return self.service_token(check.service_id)
        return self.agent_token()

    def tokens_changed(self) -> None:
        """The agent's own tokens changed (PUT /v1/agent/token): sync within a second, and log a refusal
        under the new token again."""
        self._denied.clear()
        self.out_of_sync = True

    def _log_denied(self, subject: str, token: str | None, exc: ServerError) -> None:
        """One line per refused subject (a service id, or the node): the AccessorID, never the secret."""
        if subject in self._denied:
            return
        self._denied.add(subject)
        accessor = "unknown"
        if self.acl is not None and token is not None:
            try:
                accessor = self.acl.resolve(token).accessor_id or "anonymous"
            except Exception:  # an unknown or expired token: nothing to name
                accessor = "not found"
        what = f"service {subject!r}" if subject else "node"
        log.warning("catalog sync of %s refused by ACLs (token AccessorID %s): %s; retrying every second",
                    what, accessor, exc)

    # ------------------------------------------------------------------ writes

    async def apply(self, command: dict[str, Any], token: str | None = None, subject: str = "") -> Any:
        """Write one catalog command as `token` (None: ACLs off); a refusal marks us out of sync instead of
        raising. `subject`: the service id the write is for ("" for the node), to log an ACL refusal once."""
        try:
            self.syncs += 1
            result = await self.store.apply(command, token=token)
            self._denied.discard(subject)
            return result
        except (ACLDenied, ACLNotFound) as exc:
            self._log_denied(subject, token, exc)
            self.out_of_sync = True
            return None
        except (ServerError, CommandError) as exc:
            # No leader (yet), or the catalog changed under us (a check whose service was deregistered
            # elsewhere): keep local state and let a full sync put everything back.
            if not self.out_of_sync:
                log.warning("catalog sync deferred: %s; retrying every second", exc)
            self.out_of_sync = True
            return None

    def _service_row(self, defn: ServiceDefinition) -> Service:
        return Service(node=self.node.node, id=defn.id, service=defn.name, tags=list(defn.tags),
                       address=defn.address, port=defn.port, meta=dict(defn.meta),
                       weights={"Passing": defn.weights.passing, "Warning": defn.weights.warning},
                       enable_tag_override=defn.enable_tag_override, kind=defn.kind,
                       tagged_addresses=dict(defn.tagged_addresses), proxy=dict(defn.proxy),
                       connect=dict(defn.connect))

    def _tags(self, service_id: str) -> list[str]:
        return self._services[service_id].tags if service_id in self._services else []

    def _check_rows(self, service_id: str) -> list[Check]:
        tags = self._tags(service_id)
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
        if service is not None:
            token, subject = self.service_token(service.id), service.id
        elif rows:
            token, subject = self.check_token(rows[0].check_id), rows[0].service_id
        else:
            token, subject = self.agent_token(), ""
        await self.apply(commands.register(self.node, service, rows), token, subject)

    async def sync_node(self) -> None:
        """Register the node when the catalog lacks it or holds another version."""
        have = self.store.catalog.node(self.node.node)
        if have is None or not same_row(have, self.node):
            await self.apply(commands.register(self.node), self.agent_token())

    async def sync_service(self, service_id: str) -> None:
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
                await self.apply(commands.deregister(self.node.node, check_id=check.check_id),
                                 self.service_token(service_id), service_id)

    async def sync_check(self, check_id: str) -> None:
        """Write one check if the catalog differs (with its service, when the catalog lost that)."""
        check = self._checks[check_id]
        if check.service_id in self._services and not any(
                s.id == check.service_id for s in self.store.catalog.node_services(self.node.node)):
            await self.sync_service(check.service_id)  # the service is gone from the catalog: both go back
            return
        row = check.row(self.node.node, self._tags(check.service_id))
        if not self._check_current(row, self._catalog_checks().get(check_id), trio.current_time()):
            await self._write_checks(None, [row])

    def in_sync(self) -> bool:
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
        return all(self._check_current(c.row(self.node.node, self._tags(c.service_id)), checks[cid], now)
                   for cid, c in self._checks.items())

    async def sync_full(self) -> None:
        """Anti-entropy: make the catalog's view of this node equal to local state, writing only what
        differs. serfHealth belongs to the leader (it follows gossip) and is never touched here."""
        await self.sync_node()
        for sid in list(self._services):
            await self.sync_service(sid)
        for cid, check in list(self._checks.items()):
            if not check.service_id:
                await self.sync_check(cid)
        known_checks = set(self._checks) | {SERF_CHECK_ID}
        for svc in self.store.catalog.node_services(self.node.node):
            if svc.id not in self._services:
                await self.apply(commands.deregister(self.node.node, service_id=svc.id), self.agent_token(),
                                 svc.id)
        for remote in self.store.catalog.node_checks(self.node.node):
            if remote.check_id not in known_checks:
                await self.apply(commands.deregister(self.node.node, check_id=remote.check_id),
                                 self.agent_token(), remote.service_id)
        self.last_sync = time.time()

    async def run_anti_entropy(self) -> None:
        """Full syncs: every second while the catalog is unreachable, else every scaled interval, staggered
        at random so that a fleet started together does not sync together."""
        while True:
            interval = anti_entropy_interval(self._cluster_size())
            deadline = trio.current_time() + random.uniform(0.5, 1.5) * interval
            while trio.current_time() < deadline and not self.out_of_sync:
                await trio.sleep(1.0)
            self.out_of_sync = False
            try:
                await self.sync_full()
                if not self.out_of_sync:
                    log.debug("catalog in sync")
            except Exception:  # the catalog may be unreachable later (RPC); keep the loop alive
                log.exception("anti-entropy sync failed")
                self.out_of_sync = True
            if self.out_of_sync:
                await trio.sleep(1.0)

    async def watch_catalog(self) -> None:
        """Beyond Consul's periodic repair: when the catalog's view of this node changes behind our back
        (a catalog deregister, a restore), sync at once instead of up to a minute later."""
        key = f"node:{self.node.node.lower()}"
        while True:
            await self.store.hub.wait([key], 3600.0)
            await trio.sleep(0.2)  # let a burst of changes (our own writes among them) settle
            if not self.in_sync():
                log.debug("catalog entries for this node differ from local state; syncing")
                self.out_of_sync = True
