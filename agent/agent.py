"""Agent: one process's components (store, local state and checks, gossip, Raft or a client's replica, HTTP,
DNS) wired and run in one nursery. It is the AgentView the HTTP API serves (agent/http/view.py).

Start-up prerequisites are in startup.py, the gossip pool's wiring in gossip_link.py, user events and their
watches in user_events.py, metrics in metrics.py, the banner and signal policy in lifecycle.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import meshagent
import trio

from ..gossip.member import Member
from ..gossip.serf import MemberEvent, SerfEvent, UserEvent
from ..raft.config import RaftConfig
from ..raft.storage import StorageError
from . import metrics as agent_metrics
from .acl.resolver import ACLResolver
from .addresses import advertise_address
from .catalog import Node
from .client.forward import ServerForwarder
from .client.replica import CatalogReplica
from .client.servers import ServerPool, server_addresses
from .config.loader import ConfigErrors
from .config.types import AgentConfig
from .connect.authority import CAAuthority
from .connect.ca_manager import CAManager
from .connect.forwarded_ca import ForwardedCA
from .connect.leaf_cache import LeafCache, leaf_token
from .connect.proxy_runner import ProxyRunner
from .dns.server import DNSServer
from .gossip_link import GossipLink
from .heap_trim import trim_heap
from .http.api import API
from .http.server import HTTPServer
from .lifecycle import LogGate, banner, bind_error_text, leaves_on, listen_failure, notify_systemd
from .local_persist import AgentTokenFile
from .local_state import LocalState
from .logs import parse_level, set_agent_level
from .rpc.framing import split_address
from .server.acl_init import ACLInitializer
from .server.leader import MembershipReconciler
from .server.raft_server import RaftServer
from .server.session_runner import ForwardedSessions, SessionRunner
from .startup import AgentError, load_keyring, lock_data_dir, node_id, rpc_tls
from .store import CatalogStore
from .telemetry.http_timing import TimedHandler
from .telemetry.registry import Registry
from .user_events import UserEventLog, UserEventRecord
from .watch_runner import WatchRunner

if TYPE_CHECKING:
    from .http.view import AgentView, Metrics

__all__ = ["Agent", "AgentError"]

log = logging.getLogger("meshagent.agent")

ConfigLoader = Callable[[], AgentConfig]

HEAP_TRIM_DELAY = 10.0  # seconds after start: the first election, join and anti-entropy sync are over by then


class Agent:
    """A single meshagent process. Build it, then `await agent.run()`; `shutdown()` stops it."""

    def __init__(self, config: AgentConfig, reload_config: ConfigLoader | None = None) -> None:
        if not config.dev and not config.data_dir:
            raise AgentError("Must specify data directory using -data-dir")
        self.config = config
        self._reload_config = reload_config
        self.node_name = config.node_name or socket.gethostname()
        self.datacenter = config.datacenter
        data_dir = Path(config.data_dir) if config.data_dir and not config.dev else None
        self._lock_fd = lock_data_dir(data_dir) if data_dir else None
        self.node_id = node_id(data_dir, config.node_id)
        bind = "127.0.0.1" if config.dev and config.bind_addr == "0.0.0.0" else config.bind_addr
        try:
            self.advertise_addr = advertise_address(bind, config.advertise_addr)
        except Exception as exc:
            raise AgentError(str(exc)) from exc
        # A server's catalog comes from Raft (log and snapshots in the data dir), a client's is a replica of
        # the servers', -dev keeps it in memory.
        self.store = CatalogStore()
        self.server: RaftServer | None = None
        self.reconciler: MembershipReconciler | None = None
        self.replica: CatalogReplica | None = None
        self.forwarder: ServerForwarder | None = None
        if config.server:
            self._wire_server(bind, data_dir)
        elif not config.dev:
            self._wire_client()
        # The mesh CA: on servers the leader's (followers forward to it), under -dev in memory, on clients
        # through a server.
        self.ca_manager: CAManager | None = None
        self.ca: CAAuthority
        if self.forwarder is not None:
            self.ca = ForwardedCA(self.forwarder)
        else:
            self.ca = self.ca_manager = CAManager.for_agent(config, self.store, self.server)
            if self.server is not None:
                self.server.endpoints.ca = self.ca_manager
        self.node = Node(node=self.node_name, address=self.advertise_addr, id=self.node_id,
                         datacenter=self.datacenter,
                         tagged_addresses={"lan": self.advertise_addr, "lan_ipv4": self.advertise_addr,
                                           "wan": self.advertise_addr, "wan_ipv4": self.advertise_addr},
                         meta=dict(config.node_meta))
        self.local = LocalState(node=self.node, store=self.store, data_dir=str(data_dir) if data_dir else None,
                                enable_local_script_checks=config.enable_local_script_checks,
                                enable_script_checks=config.enable_script_checks,
                                check_update_interval=config.check_update_interval,
                                cluster_size=lambda: len(self.members()),
                                sidecar_ports=(config.ports.sidecar_min_port, config.ports.sidecar_max_port))
        if bind not in ("0.0.0.0", "::"):
            self.local.sidecar_listen_address = bind  # ProxyRunner binds sidecars there (bind_address below)
        keyring, keyring_path = load_keyring(data_dir, config.encrypt)
        self.rpc_tls = rpc_tls(config, keyring)
        if self.server is not None:
            self.server.listener.tls = self.rpc_tls
        if self.forwarder is not None and self.replica is not None:
            self.forwarder.tls = self.replica.tls = self.rpc_tls
        self.lan = GossipLink(config, node_name=self.node_name, node_id=self.node_id, bind=bind,
                              advertise=self.advertise_addr, keyring=keyring, keyring_path=keyring_path,
                              data_dir=data_dir, on_event=self._on_gossip_event)
        self.gossip = self.lan.agent
        self.events = UserEventLog(config.watches)
        # Leaf certificates of local services, signed through self.ca (the CA authority).
        self.leaves = LeafCache(self.store, self.datacenter, lambda: self.ca,
                                lambda: [d.name for d in self.local.services().values()],
                                token_for=lambda name: leaf_token(name, self.local.services(),
                                                                  self.local.sync.service_token, self.acl))
        # The data plane of every local sidecar (issue 14): worker processes per sidecar, fed by this agent.
        self.proxy_runner: ProxyRunner | None = None
        if config.connect_enabled:
            self.proxy_runner = ProxyRunner(self.store, self.local.services, self.leaves, datacenter=self.datacenter,
                                       node_name=self.node_name, bind_address=bind,
                                       default_allow=lambda: str(self.config.acl_default_policy).lower() != "deny")
        # ACLs (issue 15): resolved from this agent's catalog; the clock is store.stale_since's (down_policy).
        self.acl = ACLResolver(config, self.store, clock=trio.current_time)
        self.acl.node_name = self.node_name
        self.acl_init: ACLInitializer | None = None  # the builtins, written while this server leads
        if config.acl.enabled and (self.server is not None or config.dev):
            self.acl_init = ACLInitializer(self.store, self.acl.tokens,
                                           self.server.is_leader if self.server is not None else lambda: True)
        # PUT /v1/agent/token/<type> values, kept with acl.enable_token_persistence; they win over the config's
        self.acl_token_file = AgentTokenFile(str(data_dir) if data_dir and config.acl.enable_token_persistence
                                             else None)
        for kind, secret in self.acl_token_file.load().items():
            setattr(self.acl.tokens, kind, secret)
        self.local.sync.acl = self.acl  # anti-entropy writes as registering/agent tokens
        self.store.write_acl = self.acl  # -dev (no replicator): a write with a token is checked as an RPC write is
        if self.server is not None:
            self.server.endpoints.acl = self.acl  # servers re-check every write arriving over RPC apply
        if self.ca_manager is not None:
            self.ca_manager.acl = self.acl  # ... and every connect_ca_* call (agent/connect/ca_acl.py)
        self.api = API(self)
        self.watches = WatchRunner(config.watches, self.api)  # config `watches` but events (user_events.py)
        # Sessions (issue 16): the leader's TTL timers and invalidation on servers (and -dev); renew goes there.
        self.session_runner: SessionRunner | None = None
        if self.forwarder is None:
            self.session_runner = SessionRunner(self.store, self.server)
            self.session_runner.acl = self.acl  # session_renew calls over RPC are checked with it
            self.api.sessions = self.session_runner
            if self.server is not None:
                self.server.endpoints.session_renew.runner = self.session_runner
        else:
            self.api.sessions = ForwardedSessions(self.forwarder)
        if self.server is not None:
            self.server.endpoints.acl_http.api = self.api  # client agents' /v1/acl/ requests run through it
        self.telemetry = Registry()  # every part's metrics (agent/metrics.py registers them; issue 16)
        self.http = HTTPServer(TimedHandler(self.api, self.telemetry), config.client_addr, config.ports.http)
        self.dns = DNSServer(config, self.store, server=self.server, acl=self.acl)  # answers as `default`
        self.telemetry_parts = agent_metrics.AgentTelemetry(self, self.telemetry)
        self._cancel: trio.CancelScope | None = None
        self._until_leave = trio.CancelScope()

    def _wire_server(self, bind: str, data_dir: Path | None) -> None:
        """A server: Raft holds the catalog; the reconciler turns gossip's view into catalog health."""
        config = self.config
        self.server = RaftServer(
            node_id=self.node_id, node_name=self.node_name, bind=bind, advertise=self.advertise_addr,
            port=config.ports.server, data_dir=str(data_dir) if data_dir else None, store=self.store,
            bootstrap_expect=1 if config.dev else config.bootstrap_expect, join=list(config.retry_join),
            datacenter=self.datacenter,
            config=RaftConfig(snapshot_threshold=max(1, config.raft_snapshot_threshold),
                              trailing_logs=max(0, config.raft_trailing_logs)))
        self.store.replicator = self.server
        self.server.discover = lambda: server_addresses(self.members(), self.datacenter)
        self.reconciler = MembershipReconciler(self.server, self.store, self.members, self.datacenter,
                                               config.reconnect_timeout)

    def _wire_client(self) -> None:
        """A client: a replica of the servers' catalog, and writes forwarded to them."""
        config = self.config
        pool = ServerPool(self.members, self.datacenter,
                          [split_address(a, config.ports.serf_lan)[0] for a in config.retry_join],
                          config.ports.server)
        self.replica = CatalogReplica(self.store, pool, self.node_name)
        self.forwarder = ServerForwarder(pool, self.replica)
        self.store.replicator = self.forwarder

    # ------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  banner: TextIO | None = None, handle_signals: bool = False) -> None:
        """Start every component, report readiness, and serve until cancelled or shut down."""
        # With a banner, log lines wait for it (Consul's order: banner, then "Log data will now stream in").
        gate = LogGate() if banner is not None else None
        try:
            await self._run(task_status, banner, handle_signals, gate)
        finally:
            if gate is not None:
                gate.open()  # a start-up failure's lines still come out

    async def _listen(self, what: str, hosts: list[str], port: int, start: Callable[[], Awaitable[object]],
                      udp: bool = False) -> None:
        """nursery.start(...) of a listening part; a failed bind becomes an AgentError naming the address."""
        try:
            await start()
        except BaseException as exc:
            error = listen_failure(exc)
            if error is None or isinstance(exc, AgentError):
                raise
            raise AgentError(bind_error_text(what, hosts, port, error, udp)) from exc

    async def _run(self, task_status: trio.TaskStatus[None], banner: TextIO | None, handle_signals: bool,
                   gate: LogGate | None) -> None:
        for warning in self.config.warnings:  # exposure and clamped values, from the config loader
            log.warning("config: %s", warning)
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                if self.server is not None:
                    server = self.server
                    try:
                        await self._listen("server RPC", [server.bind], server.port,
                                           lambda: nursery.start(server.run))
                    except StorageError as exc:
                        raise AgentError(f"cannot open the Raft log: {exc}") from exc
                if self.lan.enabled:
                    await self._listen("Serf LAN", [self.config.bind_addr], self.config.ports.serf_lan,
                                       lambda: nursery.start(self.lan.run), udp=True)
                    if self.config.retry_join:
                        nursery.start_soon(self.lan.retry_join, list(self.config.retry_join), self.shutdown)
                    else:
                        notify_systemd("READY=1")
                    nursery.start_soon(self.events.run_watches)
                if self.reconciler is not None:
                    nursery.start_soon(self.reconciler.run)
                if self.session_runner is not None:
                    await nursery.start(self.session_runner.run)
                if self.ca_manager is not None:
                    await nursery.start(self.ca_manager.run)
                if self.acl_init is not None:
                    await nursery.start(self.acl_init.run)
                if self.replica is not None and self.forwarder is not None:
                    if self.rpc_tls is not None and self.rpc_tls.config.auto_encrypt_tls:
                        from .tls.auto_encrypt import keep_certificate
                        await nursery.start(keep_certificate, self.rpc_tls, self.forwarder.pool.candidates,
                                            self.node_name)
                    await nursery.start(self.forwarder.run)
                    await nursery.start(self.replica.run)
                await nursery.start(self._run_until_leave)
                await nursery.start(self.leaves.run)
                if self.proxy_runner is not None:
                    await nursery.start(self.proxy_runner.run)
                if self.config.ports.http >= 0:
                    await self._listen("HTTP server", self.http.hosts, self.config.ports.http,
                                       lambda: nursery.start(self.http.run))
                if self.config.ports.dns >= 0:
                    await self._listen("DNS server", self.config.client_addr.split(), self.config.ports.dns,
                                       lambda: nursery.start(self.dns.run), udp=True)
                await nursery.start(self.watches.run)
                if handle_signals:
                    nursery.start_soon(self._handle_signals)
                if banner is not None:
                    self.print_banner(banner)
                if gate is not None:
                    gate.open()
                log.info("agent started: node=%s datacenter=%s", self.node_name, self.datacenter)
                nursery.start_soon(self._trim_heap_once_settled)
                nursery.start_soon(self.telemetry_parts.run)
                task_status.started()
        log.info("agent stopped")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def join_failed(self) -> bool:
        """-retry-join gave up after retry_max attempts (the CLI exits with an error)."""
        return self.lan.join_failed

    async def _trim_heap_once_settled(self) -> None:
        """Return start-up's freed heap to the OS once the first election, join and syncs are done."""
        await trio.sleep(HEAP_TRIM_DELAY)
        trim_heap()

    async def _run_until_leave(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """What a graceful leave stops first: local services and checks synced to the catalog (nothing may
        re-register this node) and the peer snapshot (which records the leave)."""
        with self._until_leave:
            async with trio.open_nursery() as nursery:
                if self.lan.peer_snapshot is not None and self.lan.enabled:
                    nursery.start_soon(self.lan.keep_peer_snapshot)
                await nursery.start(self.local.run)
                if self.config.dev:
                    await self.local.start(self.config.services, self.config.checks)
                    task_status.started()
                    return
                # Registering needs a leader (and, on a client, a server), which may take a while to
                # appear; the HTTP API and DNS must not wait for it.
                task_status.started()
                if self.replica is not None:
                    # Syncing compares with the catalog: wait (a little) for our replica's first snapshot.
                    with trio.move_on_after(5):
                        await self.replica.synced.wait()
                await self.local.start(self.config.services, self.config.checks)

    def _on_gossip_event(self, event: SerfEvent) -> None:
        if isinstance(event, MemberEvent):
            self.telemetry_parts.member_event(event)
            if self.reconciler is not None:
                self.reconciler.member_changed(event.member.name, reaped=event.kind == "member-reap")
            return
        if isinstance(event, UserEvent):
            self.events.add(UserEventRecord.of(event.ltime, event.name, event.payload), event.coalesce)

    def fire_event(self, name: str, payload: bytes) -> UserEventRecord:
        """Send a user event to every member (this one included); its record."""
        ltime = self.gossip.user_event(name, payload)
        return UserEventRecord.of(ltime, name, payload)

    async def leave(self) -> None:
        """Graceful leave: stop syncing local state (so nothing re-registers this node), then leave the
        gossip pool; members show this node as left and the leader deregisters it."""
        self._until_leave.cancel()
        await self.lan.leave()

    def shutdown(self) -> None:
        """Stop the agent: cancel every component's tasks."""
        if self._cancel is not None:
            self._cancel.cancel()

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("caught signal: hangup; reloading configuration")
                    try:
                        await self.reload()
                    except ConfigErrors as exc:
                        log.error("reload failed, keeping the running configuration: %s", exc)
                    continue
                name = signal.Signals(signum).name
                if leaves_on(signum, self.is_server, self.config.leave_on_terminate,
                             self.config.skip_leave_on_interrupt):
                    log.info("caught signal: %s; leaving the cluster gracefully, then shutting down", name)
                    with trio.move_on_after(15):
                        await self.leave()
                else:
                    log.info("caught signal: %s; shutting down without leaving", name)
                self.shutdown()
                return

    async def reload(self) -> None:
        """Reload config files: services and checks from files, log level. Raises ConfigErrors and changes
        nothing when any file is broken."""
        if self._reload_config is None:
            return
        new = self._reload_config()
        self.config.log_level = new.log_level
        set_agent_level(parse_level(new.log_level))  # stderr's level; monitor clients keep theirs
        self.config.services, self.config.checks = new.services, new.checks
        self.local.sidecar_ports = (new.ports.sidecar_min_port, new.ports.sidecar_max_port)
        await self.local.load_files(new.services, new.checks)
        self.watches.reload(new.watches)
        self._reload_acl_tokens(new)
        log.info("reload complete: %d services from files", len(new.services))

    def _reload_acl_tokens(self, new: AgentConfig) -> None:
        """Consul reloads the agent's own tokens (not initial_management); persisted API-set ones keep winning."""
        persisted = self.acl_token_file.load()
        changed = False
        for kind in ("default", "agent", "agent_recovery", "replication", "config_file_service_registration"):
            if kind not in persisted and getattr(self.acl.tokens, kind) != getattr(new.acl.tokens, kind):
                setattr(self.acl.tokens, kind, getattr(new.acl.tokens, kind))
                changed = True
        if changed:
            self.local.sync.tokens_changed()  # anti-entropy writes as the new tokens (a full sync, as Consul)

    # ------------------------------------------------------------------ views (AgentView)

    def members(self) -> list[Member]:
        """Gossip members, this node included."""
        return self.lan.members()

    @property
    def is_server(self) -> bool:
        """True for servers (and -dev, which is a single-node server)."""
        return self.config.server or self.config.dev

    def leader_status(self) -> tuple[bool, int]:
        """(a leader is known, ms since it was last heard from), from Raft or the client's replica."""
        if self.server is not None:
            return self.server.leader_info()
        if self.replica is not None:
            return self.replica.leader_known, self.replica.last_contact_ms()
        return True, 0  # -dev without Raft leads itself

    def metrics(self) -> Metrics:
        """Counters and gauges of every part."""
        return agent_metrics.collect(self)

    def print_banner(self, out: TextIO = sys.stdout) -> None:
        """Consul-style start-up banner."""
        c = self.config
        out.write(banner(version=meshagent.__version__, node_id=self.node_id, node_name=self.node_name,
                         datacenter=self.datacenter, server=self.is_server, dev=c.dev, client_addr=c.client_addr,
                         http_port=self.http.bound_port or c.ports.http, dns_port=self.dns.bound_port or c.ports.dns,
                         advertise=self.advertise_addr, serf_lan=c.ports.serf_lan, serf_wan=c.ports.serf_wan,
                         data_dir=c.data_dir, encrypt=bool(c.encrypt), domain=c.domain))
        out.flush()


def _is_agent_view(agent: Agent) -> AgentView:
    return agent  # mypy checks here that Agent implements the HTTP layer's AgentView
