"""Agent: one process's components (store, local state and checks, HTTP, DNS) in one nursery."""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import meshagent
import trio

from ..gossip.keyring import Keyring, KeyringError, decode_key, load_keyring_file, save_keyring_file
from ..gossip.runtime import GossipAgent
from ..gossip.serf import MemberEvent, SerfEvent, UserEvent
from ..raft.config import RaftConfig
from ..raft.storage import StorageError
from .addresses import advertise_address
from .catalog import Node
from .client.forward import ServerForwarder
from .client.replica import CatalogReplica
from .client.servers import ServerPool, server_addresses
from .config.loader import ConfigErrors
from .config.types import AgentConfig
from .dns.server import DNSServer
from .heap_trim import trim_heap
from .http.api import API
from .http.server import HTTPServer
from .lifecycle import leaves_on, notify_systemd
from .local_state import LocalState
from .logs import parse_level
from .peer_snapshot import PeerSnapshot
from .rpc.framing import split_address
from .server.leader import MembershipReconciler
from .server.raft_server import RaftServer
from .store import CatalogStore

if TYPE_CHECKING:
    from .tls.policy import RPCTLS

log = logging.getLogger("meshagent.agent")

ConfigLoader = Callable[[], AgentConfig]


USER_COALESCE_PERIOD = 3.0  # Serf agent's user event coalescing: at most this long after the first event
USER_QUIESCENT_PERIOD = 1.0  # ... or this long after the last one
HEAP_TRIM_DELAY = 10.0  # seconds after start: the first election, join and anti-entropy sync are over by then


def _load_keyring(data_dir: Path | None, encrypt: str) -> tuple[Keyring | None, str | None]:
    """The gossip keyring: <data-dir>/serf/local.keyring when it exists (it holds installed and rotated
    keys), else a new one from -encrypt, saved there; None without either (plaintext gossip)."""
    path = data_dir / "serf" / "local.keyring" if data_dir else None
    try:
        if path is not None and path.exists():
            keyring = load_keyring_file(path)
            if encrypt and decode_key(encrypt) not in keyring:
                log.warning("%s exists; the -encrypt key is not in it and is ignored (use meshagent keyring)", path)
            return keyring, str(path)
        if not encrypt:
            return None, str(path) if path else None
        keyring = Keyring([decode_key(encrypt)])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_keyring_file(path, keyring)
        return keyring, str(path) if path else None
    except (KeyringError, OSError) as exc:
        raise AgentError(f"gossip keyring: {exc}") from exc


def _rpc_tls(config: AgentConfig, keyring: Keyring | None) -> RPCTLS | None:
    """The server port's TLS policy (agent/tls): None keeps :8300 plaintext (no tls settings, no gossip key)."""
    from .tls.setup import rpc_tls_for, tls_configured

    if not keyring and not tls_configured(config.tls):
        return None
    from .tls.policy import TLSSetupError

    try:
        tls = rpc_tls_for(config, keyring)
    except TLSSetupError as exc:
        raise AgentError(f"tls: {exc}") from exc
    if tls is not None:
        log.info("server port :%d security: %s", config.ports.server, tls.describe())
    return tls


def user_event_record(ltime: int, name: str, payload: bytes) -> dict[str, Any]:
    """A user event as Consul's /v1/event API shows it; the ID is the same on every agent."""
    ident = uuid.uuid5(uuid.NAMESPACE_OID, f"{ltime}/{name}/{payload.hex()}")
    return {"ID": str(ident), "Name": name, "Payload": base64.b64encode(payload).decode() if payload else None,
            "NodeFilter": "", "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": ltime}


class AgentError(Exception):
    """The agent cannot start (bad data dir, address in use, ...); the message is for the operator."""


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir so two agents never share one (Consul requires locking too)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentError(f"data dir {data_dir} is in use by another meshagent process") from None
    return fd


def _node_id(data_dir: Path | None, configured: str) -> str:
    """The node's UUID: configured, else persisted in the data dir, else new."""
    if configured:
        return configured
    if data_dir is None:
        return str(uuid.uuid4())
    path = data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    node_id = str(uuid.uuid4())
    path.write_text(node_id)
    return node_id


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
        self._lock_fd = _lock_data_dir(data_dir) if data_dir else None
        self.node_id = _node_id(data_dir, config.node_id)
        try:
            self.advertise_addr = advertise_address(
                "127.0.0.1" if config.dev and config.bind_addr == "0.0.0.0" else config.bind_addr,
                config.advertise_addr)
        except Exception as exc:
            raise AgentError(str(exc)) from exc
        self.server: RaftServer | None = None
        # A server's catalog comes from Raft (log and snapshots in the data dir), a client's is a replica of
        # the servers', -dev keeps it in memory.
        self.store = CatalogStore()
        if config.server:
            bind = "127.0.0.1" if config.dev and config.bind_addr == "0.0.0.0" else config.bind_addr
            self.server = RaftServer(
                node_id=self.node_id, node_name=self.node_name, bind=bind, advertise=self.advertise_addr,
                port=config.ports.server, data_dir=str(data_dir) if data_dir else None, store=self.store,
                bootstrap_expect=1 if config.dev else config.bootstrap_expect, join=list(config.retry_join),
                datacenter=self.datacenter,
                config=RaftConfig(snapshot_threshold=max(1, config.raft_snapshot_threshold),
                                  trailing_logs=max(0, config.raft_trailing_logs)))
            self.store.replicator = self.server
            self.server.discover = lambda: server_addresses(self.members(), self.datacenter)
        self.reconciler = (MembershipReconciler(self.server, self.store, self.members, self.datacenter,
                                                config.reconnect_timeout) if self.server is not None else None)
        self.replica: CatalogReplica | None = None
        self.forwarder: ServerForwarder | None = None
        if not config.server and not config.dev:
            pool = ServerPool(self.members, self.datacenter,
                              [split_address(a, config.ports.serf_lan)[0] for a in config.retry_join],
                              config.ports.server)
            self.replica = CatalogReplica(self.store, pool, self.node_name)
            self.forwarder = ServerForwarder(pool, self.replica)
            self.store.replicator = self.forwarder
        self.node = Node(node=self.node_name, address=self.advertise_addr, id=self.node_id,
                         datacenter=self.datacenter,
                         tagged_addresses={"lan": self.advertise_addr, "lan_ipv4": self.advertise_addr,
                                           "wan": self.advertise_addr, "wan_ipv4": self.advertise_addr},
                         meta=dict(config.node_meta))
        self.local = LocalState(node=self.node, store=self.store, data_dir=str(data_dir) if data_dir else None,
                                enable_local_script_checks=config.enable_local_script_checks,
                                enable_script_checks=config.enable_script_checks,
                                check_update_interval=config.check_update_interval,
                                cluster_size=lambda: len(self.members()))
        bind = "127.0.0.1" if config.dev and config.bind_addr == "0.0.0.0" else config.bind_addr
        keyring, keyring_path = _load_keyring(data_dir, config.encrypt)
        self.rpc_tls = _rpc_tls(config, keyring)
        if self.server is not None:
            self.server.listener.tls = self.rpc_tls
        if self.forwarder is not None and self.replica is not None:
            self.forwarder.tls = self.replica.tls = self.rpc_tls
        self.gossip = GossipAgent(name=self.node_name, bind=bind, advertise=self.advertise_addr,
                                  port=config.ports.serf_lan, tags=self._gossip_tags(), keyring=keyring,
                                  keyring_path=keyring_path, on_event=self._on_gossip_event,
                                  verify_incoming=config.encrypt_verify_incoming,
                                  verify_outgoing=config.encrypt_verify_outgoing,
                                  reconnect_timeout=config.reconnect_timeout)
        self.peer_snapshot = PeerSnapshot(data_dir / "serf" / "peers.json") if data_dir else None
        self.user_events: deque[dict[str, Any]] = deque(maxlen=256)
        self.user_event_arrived = trio.Event()  # set (and replaced) on every event: wakes blocking event lists
        self.join_failed = False
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](1024)
        self.api = API(self)
        self.http = HTTPServer(self.api, config.client_addr, config.ports.http)
        self.dns = DNSServer(config, self.store)
        self._cancel: trio.CancelScope | None = None
        self._until_leave = trio.CancelScope()

    # ------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  banner: TextIO | None = None, handle_signals: bool = False) -> None:
        """Start every component, report readiness, and serve until cancelled or shut down."""
        for warning in self.config.warnings:  # exposure and clamped values, from the config loader
            log.warning("config: %s", warning)
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                if self.server is not None:
                    try:
                        await nursery.start(self.server.run)
                    except StorageError as exc:
                        raise AgentError(f"cannot open the Raft log: {exc}") from exc
                    except OSError as exc:
                        raise AgentError(f"cannot listen on server port {self.server.port}: {exc}") from exc
                if self.config.ports.serf_lan >= 0:
                    try:
                        await nursery.start(self.gossip.run)
                    except OSError as exc:
                        raise AgentError(f"cannot listen on the Serf LAN port {self.config.ports.serf_lan}: "
                                         f"{exc}") from exc
                    if self.config.retry_join:
                        nursery.start_soon(self._retry_join, list(self.config.retry_join))
                    else:
                        notify_systemd("READY=1")
                    nursery.start_soon(self._run_watches)
                if self.reconciler is not None:
                    nursery.start_soon(self.reconciler.run)
                if self.replica is not None and self.forwarder is not None:
                    if self.rpc_tls is not None and self.rpc_tls.config.auto_encrypt_tls:
                        from .tls.auto_encrypt import keep_certificate
                        await nursery.start(keep_certificate, self.rpc_tls, self.forwarder.pool.candidates,
                                            self.node_name)
                    await nursery.start(self.forwarder.run)
                    await nursery.start(self.replica.run)
                await nursery.start(self._run_until_leave)
                if self.config.ports.http >= 0:
                    await nursery.start(self.http.run)
                if self.config.ports.dns >= 0:
                    await nursery.start(self.dns.run)
                if handle_signals:
                    nursery.start_soon(self._handle_signals)
                if banner is not None:
                    self.print_banner(banner)
                log.info("agent started: node=%s datacenter=%s", self.node_name, self.datacenter)
                nursery.start_soon(self._trim_heap_once_settled)
                task_status.started()
        log.info("agent stopped")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _trim_heap_once_settled(self) -> None:
        """Return start-up's freed heap to the OS once the first election, join and syncs are done."""
        await trio.sleep(HEAP_TRIM_DELAY)
        trim_heap()

    async def _run_until_leave(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """What a graceful leave stops first: local services and checks synced to the catalog (nothing may
        re-register this node) and the peer snapshot (which records the leave)."""
        with self._until_leave:
            async with trio.open_nursery() as nursery:
                if self.peer_snapshot is not None and self.config.ports.serf_lan >= 0:
                    nursery.start_soon(self._keep_peer_snapshot)
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

    def _peer_addresses(self) -> list[str]:
        return [f"{m['Addr']}:{m['Port']}" for m in self.gossip.members()
                if m["Status"] == 1 and m["Name"] != self.node_name]

    async def _keep_peer_snapshot(self) -> None:
        """Rejoin the last run's peers (unless we left gracefully, without -rejoin), then keep the peer
        list on disk up to date."""
        assert self.peer_snapshot is not None
        peers, left = self.peer_snapshot.load()
        if peers and left and not self.config.rejoin_after_leave:
            log.info("not rejoining the last run's %d peers: this agent left gracefully (use -rejoin)",
                     len(peers))
        elif peers:
            joined = await self.gossip.join(peers)
            log.info("rejoin: contacted %d of the last run's %d peers", joined, len(peers))
        saved: list[str] = []
        while True:
            current = sorted(self._peer_addresses())
            if current and current != saved:
                await trio.to_thread.run_sync(self.peer_snapshot.save, current, False)
                saved = current
            await trio.sleep(5.0)

    async def _retry_join(self, addrs: list[str]) -> None:
        """-retry-join: try the addresses until one answers, backing off to every retry_interval; after
        retry_max failed attempts (when set) the agent gives up and exits, as Consul does."""
        attempt = 0
        while True:
            attempt += 1
            joined = await self.gossip.join(addrs)
            if joined:
                log.info("join: joined cluster by contacting %d nodes", joined)
                notify_systemd("READY=1")
                return
            if self.config.retry_max and attempt >= self.config.retry_max:
                log.error("join: max join retry exhausted (%d attempts to %s), exiting", attempt, ", ".join(addrs))
                self.join_failed = True
                self.shutdown()
                return
            # Beyond Consul: the first retries come sooner (1, 2, 4 ... s, up to retry_interval), so that a
            # fleet started all at once forms in seconds instead of after a full 30 s interval.
            delay = min(self.config.retry_interval, 2.0 ** (attempt - 1))
            log.warning("join: attempt %d failed, retrying in %gs", attempt, delay)
            await trio.sleep(delay)

    def _on_gossip_event(self, event: SerfEvent) -> None:
        if isinstance(event, MemberEvent):
            if self.reconciler is not None:
                self.reconciler.member_changed(event.member.name, reaped=event.kind == "member-reap")
            return
        if not isinstance(event, UserEvent):
            return
        record = user_event_record(event.ltime, event.name, event.payload)
        self.user_events.append(record)
        self.user_event_arrived.set()
        self.user_event_arrived = trio.Event()
        try:
            self._events_in.send_nowait({**record, "_coalesce": event.coalesce})
        except trio.WouldBlock:
            log.warning("event %s: handlers are behind; not running them for this one", event.name)

    async def _run_watches(self) -> None:
        """Run the `watches` of type event: matching events' JSON on the handler's stdin. Events fired with
        coalescing (the default) are delivered as the latest per name once the stream goes quiet for
        USER_QUIESCENT_PERIOD or USER_COALESCE_PERIOD has passed since the first (Serf's coalescer)."""
        pending: dict[str, dict[str, Any]] = {}
        first_at = 0.0
        async with trio.open_nursery() as nursery:
            while True:
                deadline = (min(first_at + USER_COALESCE_PERIOD, trio.current_time() + USER_QUIESCENT_PERIOD)
                            if pending else float("inf"))
                record = None
                with trio.move_on_at(deadline):
                    record = await self._events_out.receive()
                if record is not None and record.pop("_coalesce", False):
                    if not pending:
                        first_at = trio.current_time()
                    pending[record["Name"]] = record
                    continue
                batch = [record] if record is not None else []
                if record is None:
                    batch, pending = list(pending.values()), {}
                for item in batch:
                    for watch in self.config.watches:
                        if watch.get("type") == "event" and watch.get("name") in ("", None, item["Name"]):
                            nursery.start_soon(self._run_handler, list(watch["args"]), item)

    async def _run_handler(self, args: list[str], record: dict[str, Any]) -> None:
        data = json.dumps([record]).encode()
        try:
            with trio.fail_after(30):
                result = await trio.run_process(args, stdin=data, capture_stdout=True, capture_stderr=True,
                                                check=False)
        except (OSError, trio.TooSlowError) as exc:
            log.error("event handler %s failed: %s", args[0], exc)
            return
        if result.returncode != 0:
            log.error("event handler %s exited with %d: %s", args[0], result.returncode,
                      result.stderr.decode(errors="replace").strip()[:500])

    def fire_event(self, name: str, payload: bytes) -> dict[str, Any]:
        """Send a user event to every member (this one included); Consul's event record."""
        ltime = self.gossip.user_event(name, payload)
        return user_event_record(ltime, name, payload)

    async def leave(self) -> None:
        """Graceful leave: stop syncing local state (so nothing re-registers this node), then leave the
        gossip pool; members show this node as left and the leader deregisters it."""
        self._until_leave.cancel()
        if self.config.ports.serf_lan >= 0:
            peers = self._peer_addresses()
            await self.gossip.leave()
            if self.peer_snapshot is not None:
                await trio.to_thread.run_sync(self.peer_snapshot.save, peers, True)

    def _gossip_tags(self) -> dict[str, str]:
        config = self.config
        tags = {
            "role": "consul" if config.server or config.dev else "node",
            "dc": self.datacenter,
            "id": self.node_id,
            "vsn": "2", "vsn_min": "2", "vsn_max": "3",
            "build": meshagent.__version__,
            "segment": "",
        }
        if config.server or config.dev:
            tags["port"] = str(config.ports.server)
            if config.dev:
                tags["bootstrap"] = "1"
            elif config.bootstrap_expect:
                tags["expect"] = str(config.bootstrap_expect)
        return tags

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
        logging.getLogger("meshagent").setLevel(parse_level(new.log_level))
        self.config.services, self.config.checks = new.services, new.checks
        await self.local.load_files(new.services, new.checks)
        log.info("reload complete: %d services from files", len(new.services))

    # ------------------------------------------------------------------ views

    def members(self) -> list[dict[str, Any]]:
        """Gossip members in Consul's /v1/agent/members shape, this node included."""
        if self.config.ports.serf_lan < 0 or self.gossip._nursery is None:
            return [{"Name": self.node_name, "Addr": self.advertise_addr, "Port": self.config.ports.serf_lan,
                     "Tags": self._gossip_tags(), "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5,
                     "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}]
        return self.gossip.members()

    @property
    def is_server(self) -> bool:
        """True for servers (and -dev, which is a single-node server)."""
        return self.config.server or self.config.dev

    def print_banner(self, out: TextIO = sys.stdout) -> None:
        """Consul-style start-up banner."""
        c = self.config
        dns = self.dns.bound_port if getattr(self.dns, "bound_port", None) else c.ports.dns
        http = self.http.bound_port if getattr(self.http, "bound_port", None) else c.ports.http
        lines = [
            "==> Starting meshagent agent...",
            f"           Version: '{meshagent.__version__}'",
            f"           Node ID: '{self.node_id}'",
            f"         Node name: '{self.node_name}'",
            f"        Datacenter: '{self.datacenter}' (Segment: '<all>')",
            f"            Server: {str(self.is_server).lower()} (Bootstrap: {str(c.dev).lower()})",
            f"       Client Addr: [{c.client_addr}] (HTTP: {http}, HTTPS: -1, gRPC: -1, DNS: {dns})",
            f"      Cluster Addr: {self.advertise_addr} (LAN: {c.ports.serf_lan}, WAN: {c.ports.serf_wan})",
            f"          Data Dir: {'<in memory>' if c.dev else c.data_dir}",
            f" Gossip Encryption: {str(bool(c.encrypt)).lower()}",
            f"            Domain: {c.domain}",
            "",
            "==> Log data will now stream in as it occurs:",
            "",
        ]
        out.write("\n".join(lines) + "\n")
        out.flush()
