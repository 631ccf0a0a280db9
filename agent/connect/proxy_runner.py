"""ProxyRunner: the agent runs the data plane of every local sidecar (runtime).

One ProxySupervisor (proxy/supervisor.py: worker processes) per local `connect-proxy` service: started when
the service appears in local state, stopped (workers killed) when it goes. For each, a leaf watch (blocking
LeafCache.get: first leaf, renewals, reissues after a root rotation) and a catalog watch (roots, the
service-defaults/proxy-defaults/service-intentions entries, `connect:<dest>` of every upstream) trigger a
rebuild (proxy_snapshot.build_snapshot); a snapshot that differs from the last one gets the next version and
goes to the supervisor. Changes are coalesced for DEBOUNCE seconds, so a burst of writes is one snapshot and
a change reaches the workers well within a second. A build error is logged once (naming sidecar and field)
and the workers keep the last good snapshot.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ...proxy.snapshot import ProxySnapshot
from ...proxy.supervisor import ProxySupervisor, SharedRefresh
from ..config.types import ServiceDefinition
from .intention_entries import intentions_of
from .intentions import IntentionIndex
from .leaf_plan import LeafRecord
from .proxy_snapshot import build_report, destination_of, embedded, same_config, watch_keys
from .sidecar import PROXY_KIND

if TYPE_CHECKING:
    from ..catalog.state import Catalog
    from ..store import CatalogStore

log = logging.getLogger("meshagent.connect.proxy")

DEBOUNCE = 0.05  # coalesce changes this long before rebuilding
LOCAL_POLL = 1.0  # local state is also compared this often (a client agent without servers sees no catalog write)
CATALOG_WAIT = 300.0
LEAF_WAIT = 600.0
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # leaf errors and supervisor crashes back off between these
# One proxy's metrics; a stuck supervisor does not hold the whole scrape. Above the supervisor's own per-worker
# limit (1.5 s), so a busy worker's last answer still arrives instead of its whole sidecar missing.
METRICS_TIMEOUT = 3.0
METRICS_INTERVAL = 0.25  # gathers (each asks every worker) start at most this often; concurrent scrapes share one
INTENTIONS_KEY = "config-entry:service-intentions"


class Supervisor(Protocol):
    """What the runner needs of proxy/supervisor.py's ProxySupervisor."""

    async def run(self, task_status: Any = ...) -> None: ...
    def update(self, snapshot: ProxySnapshot) -> None: ...
    async def metrics(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


class LeafSource(Protocol):
    """The part of LeafCache the runner uses."""

    async def get(self, service: str, min_index: int = 0, wait: float = 300.0) -> LeafRecord: ...


def default_supervisor(proxy_id: str) -> Supervisor:
    """The real supervisor: worker processes of `python -m meshagent.proxy.worker`."""
    return ProxySupervisor(proxy_id)


@dataclass(eq=False)
class _Proxy:
    """One local sidecar as the runner keeps it."""

    id: str
    defn: ServiceDefinition
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    dirty: trio.Event = field(default_factory=trio.Event)  # the leaf or the definition changed
    leaf: LeafRecord | None = None
    snapshot: ProxySnapshot | None = None
    supervisor: Supervisor | None = None
    error: str | None = None
    restarts: int = 0
    notes: tuple[str, ...] = ()  # the last build's notes (logged once each)


class ProxyRunner:
    """One supervisor per local sidecar, fed a new snapshot on every relevant change."""

    def __init__(self, store: CatalogStore, local_services: Callable[[], Mapping[str, ServiceDefinition]],
                 leaves: LeafSource, *, datacenter: str, node_name: str, bind_address: str,
                 default_allow: Callable[[], bool], supervisor: Callable[[str], Supervisor] = default_supervisor,
                 debounce: float = DEBOUNCE, local_poll: float = LOCAL_POLL) -> None:
        self.store = store
        self._local_services = local_services
        self._leaves = leaves
        self.datacenter = datacenter
        self.node_name = node_name
        self.bind_address = bind_address
        self._default_allow = default_allow
        self._factory = supervisor
        self.debounce = debounce
        self.local_poll = local_poll
        self._proxies: dict[str, _Proxy] = {}
        self._versions = itertools.count(1)  # runner-wide: a re-added sidecar never repeats a version
        self._changed = trio.Event()  # set (and replaced) on every new snapshot and every sidecar added/removed
        self._nursery: trio.Nursery | None = None
        self._intentions: tuple[Catalog, int, IntentionIndex] | None = None  # (catalog, index, compiled)
        self.builds = 0  # snapshots built (changed or not), for tests
        self._gone_worker_restarts = 0  # worker restarts of supervisors that ended: the total never drops
        self.supervisor_restarts = 0  # supervisors replaced after failing, over every sidecar ever run
        self._gathers = SharedRefresh(self._gather_metrics, METRICS_INTERVAL)

    # ------------------------------------------------------------------ reads (HTTP, metrics)

    def proxies(self) -> list[str]:
        """The local sidecars this runner runs."""
        return sorted(self._proxies)

    def snapshot(self, proxy_id: str) -> tuple[int, ProxySnapshot] | None:
        """The current (version, snapshot) of a sidecar; None when unknown or not built yet (no leaf)."""
        p = self._proxies.get(proxy_id)
        if p is None or p.snapshot is None:
            return None
        return p.snapshot.version, p.snapshot

    async def wait_snapshot(self, proxy_id: str, after_version: int,
                            timeout: float) -> tuple[int, ProxySnapshot] | None:
        """The sidecar's snapshot once its version is above `after_version`, or whatever it is after
        `timeout` seconds (None when it has none)."""
        with trio.move_on_after(max(0.0, timeout)):
            while True:
                current = self.snapshot(proxy_id)
                if current is not None and current[0] > after_version:
                    return current
                await self._changed.wait()
        return self.snapshot(proxy_id)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per sidecar: version, last build error, supervisor restarts and the supervisor's own status."""
        out: dict[str, dict[str, Any]] = {}
        for pid, p in sorted(self._proxies.items()):
            out[pid] = {"version": p.snapshot.version if p.snapshot else 0, "error": p.error,
                        "restarts": p.restarts, "supervisor": p.supervisor.status() if p.supervisor else {}}
        return out

    def worker_restarts(self) -> int:
        """Worker processes restarted by every supervisor this runner ever ran (never goes down)."""
        total = self._gone_worker_restarts
        for p in self._proxies.values():
            if p.supervisor is not None:
                total += _restarts_of(p.supervisor)
        return total

    async def metrics(self) -> list[dict[str, Any]]:
        """Every running sidecar's merged metrics wire (proxy/metrics.py), each asked with a time limit.
        Concurrent callers share one gather, gathers start at most every METRICS_INTERVAL seconds, and each
        caller's answer counts everything up to its call."""
        return await self._gathers.get()

    async def _gather_metrics(self) -> list[dict[str, Any]]:
        wires: list[dict[str, Any]] = []

        async def one(sup: Supervisor) -> None:
            with trio.move_on_after(METRICS_TIMEOUT):
                try:
                    wires.append(await sup.metrics())
                except Exception as exc:  # a supervisor between restarts: its figures come next scrape
                    log.debug("proxy metrics: %s", exc)

        async with trio.open_nursery() as nursery:
            for p in list(self._proxies.values()):
                if p.supervisor is not None and p.snapshot is not None:
                    nursery.start_soon(one, p.supervisor)
        return wires

    # ------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow local state until cancelled; every supervisor (and its workers) stops with it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                keys = [f"node:{self.node_name.lower()}"]  # every write of this node's services touches it
                while True:
                    self._sync_local(nursery)
                    await self.store.hub.wait(keys, self.local_poll)
            finally:
                self._nursery = None
                for p in self._proxies.values():
                    p.scope.cancel()

    def _sync_local(self, nursery: trio.Nursery) -> None:
        """Start a supervisor for each new local sidecar, stop those gone, flag the changed ones."""
        wanted = {sid: d for sid, d in self._local_services().items() if d.kind == PROXY_KIND}
        changed = False
        for pid in [pid for pid, p in self._proxies.items()
                    if pid not in wanted or destination_of(wanted[pid]) != destination_of(p.defn)]:
            log.info("sidecar %s: stopping its proxy", pid)
            self._proxies.pop(pid).scope.cancel()
            changed = True
        for pid, defn in wanted.items():
            p = self._proxies.get(pid)
            if p is None:
                log.info("sidecar %s: starting its proxy for %s", pid, destination_of(defn))
                p = self._proxies[pid] = _Proxy(pid, defn)
                nursery.start_soon(self._keep, p)
                changed = True
            elif p.defn != defn:
                p.defn = defn
                p.dirty.set()
        if changed:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        for p in self._proxies.values():
            if p.error is not None:  # e.g. a listener conflict that this change may have ended
                p.dirty.set()

    async def _keep(self, p: _Proxy) -> None:
        """One sidecar until it is removed: its leaf watch, its supervisor, and the rebuild loop."""
        with p.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_leaf, p)
                await self._feed(p, nursery)

    async def _watch_leaf(self, p: _Proxy) -> None:
        """Keep p.leaf the service's current leaf (first one, renewals, reissues)."""
        service = destination_of(p.defn)
        min_index, delay, last_error = 0, RETRY_MIN, ""
        while True:
            try:
                record = await self._leaves.get(service, min_index, LEAF_WAIT)
            except Exception as exc:  # no CA yet, no server, an invalid name: retry, log each new reason once
                text = f"{type(exc).__name__}: {str(exc)[:200]}"
                if text != last_error:
                    log.warning("sidecar %s: no leaf certificate for %s yet (%s); retrying", p.id, service, text)
                    last_error = text
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay, last_error = RETRY_MIN, ""
            if p.leaf is None or record.index != p.leaf.index:
                p.leaf = record
                p.dirty.set()
            min_index = record.index

    async def _feed(self, p: _Proxy, nursery: trio.Nursery) -> None:
        """Rebuild on every change of the leaf, the definition or a watched catalog key; push what differs."""
        supervising: trio.CancelScope | None = None
        while True:
            keys = watch_keys(p.defn, self.store.catalog, self.datacenter)
            seen = self.store.index_for(keys)
            p.dirty = trio.Event()  # replaced before the build: a change during it sets the new one
            built = self._rebuild(p)
            # Config.embedded = false: the snapshot is built (for `meshagent connect proxy`), no workers run here.
            if built and embedded(p.defn) and supervising is None:
                supervising = trio.CancelScope()
                nursery.start_soon(self._supervise, p, supervising)
            elif not embedded(p.defn) and supervising is not None:
                log.info("sidecar %s: embedded = false, stopping its workers here", p.id)
                supervising.cancel()
                supervising = None
            await self._wait(keys, seen, p.dirty)
            await trio.sleep(self.debounce)  # coalesce a burst into one snapshot

    async def _wait(self, keys: list[str], seen: int, dirty: trio.Event) -> None:
        """Until one of `keys` moves past `seen` or `dirty` is set."""
        async with trio.open_nursery() as nursery:
            async def catalog() -> None:
                # Checked in the same step as hub.wait registers (no checkpoint between): nothing is missed.
                if self.store.index_for(keys) == seen:
                    await self.store.hub.wait(keys, CATALOG_WAIT)
                nursery.cancel_scope.cancel()

            async def local() -> None:
                await dirty.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(catalog)
            nursery.start_soon(local)

    def _rebuild(self, p: _Proxy) -> bool:
        """Build p's snapshot and hand it to its supervisor if it changed; True once p has a snapshot."""
        if p.leaf is None:
            return False
        self.builds += 1
        services = self._local_services()
        parent_id = p.defn.proxy.get("DestinationServiceID")
        parent = services.get(parent_id) if isinstance(parent_id, str) else None
        catalog = self.store.catalog
        try:
            snap, report = build_report(p.defn, parent, catalog, p.leaf, self._compiled(catalog),
                                        self._default_allow(), datacenter=self.datacenter,
                                        bind_address=self.bind_address)
            self._check_listeners(p, snap)
        except Exception as exc:  # SnapshotError names the field; anything else is a bug, but never fatal here
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            if text != p.error:
                log.error("%s; the proxy keeps its last good configuration", text,
                          exc_info=not isinstance(exc, ValueError))
            p.error = text
            return p.snapshot is not None
        # An upstream whose chain failed has no endpoints; the rest applies (its leaf, intentions, upstreams).
        error = "; ".join(report.errors)[:4096] or None  # bounded: messages quote entries
        if error is not None and error != p.error:
            log.error("%s; the rest of the sidecar is applied", error)
        for note in report.notes:
            if note not in p.notes:
                log.warning("%s", note)
        p.error, p.notes = error, report.notes
        if same_config(p.snapshot, snap):
            return True
        snap = _with_version(snap, next(self._versions))
        p.snapshot = snap
        if p.supervisor is not None:
            p.supervisor.update(snap)
        log.debug("sidecar %s: snapshot version %d", p.id, snap.version)
        self._notify()
        return True

    async def _supervise(self, p: _Proxy, scope: trio.CancelScope) -> None:
        """Run p's supervisor until `scope` is cancelled; one that fails is replaced (with the latest snapshot)
        after a back-off."""
        with scope:
            try:
                await self._supervise_loop(p)
            finally:
                p.supervisor = None

    async def _supervise_loop(self, p: _Proxy) -> None:
        delay = RETRY_MIN
        while True:
            try:
                sup = self._factory(p.id)
                if p.snapshot is not None:
                    sup.update(p.snapshot)
                p.supervisor = sup
                try:
                    await sup.run()
                finally:  # ended, failed or the sidecar removed: keep its worker restarts in the total
                    p.supervisor = None
                    self._gone_worker_restarts += _restarts_of(sup)
                log.error("sidecar %s: the proxy supervisor stopped by itself; restarting it", p.id)
            except Exception:
                log.exception("sidecar %s: the proxy supervisor failed; restarting it in %.1f s", p.id, delay)
            p.supervisor = None
            p.restarts += 1
            self.supervisor_restarts += 1
            await trio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    def _check_listeners(self, p: _Proxy, snap: ProxySnapshot) -> None:
        """Refuse a listener another local sidecar holds: workers bind with SO_REUSEPORT, so the kernel would
        not refuse it but silently spread connections between two different proxies."""
        mine = _listeners(snap)
        for other in self._proxies.values():
            if other is p or other.snapshot is None:
                continue
            for addr, port in _listeners(other.snapshot):
                for my_addr, my_port in mine:
                    if port == my_port and (addr == my_addr or _wildcard(addr) or _wildcard(my_addr)):
                        raise ValueError(f"sidecar {p.id!r}: listener {my_addr}:{my_port} is already a listener "
                                         f"of sidecar {other.id!r} on this agent")

    def _compiled(self, catalog: Catalog) -> IntentionIndex:
        """The intentions compiled once per change of the service-intentions entries (all sidecars share it)."""
        index = catalog.index_for([INTENTIONS_KEY])
        cached = self._intentions
        if cached is not None and cached[0] is catalog and cached[1] == index:
            return cached[2]
        compiled = IntentionIndex(intentions_of(catalog.config_entries.list("service-intentions")))
        self._intentions = (catalog, index, compiled)
        return compiled


def _restarts_of(sup: Supervisor) -> int:
    """A supervisor's worker restarts (its status' "restarts"); 0 when it does not say."""
    try:
        value = sup.status().get("restarts", 0)
    except Exception:  # a stand-in or a broken supervisor: its count is unknown, not fatal
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _listeners(snap: ProxySnapshot) -> list[tuple[str, int]]:
    out = [(snap.public_address, snap.public_port)]
    out.extend((u.local_bind_address, u.local_bind_port) for u in snap.upstreams)
    return out


def _wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::", "")


def _with_version(snap: ProxySnapshot, version: int) -> ProxySnapshot:
    return replace(snap, version=version)
