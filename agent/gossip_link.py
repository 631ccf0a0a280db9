"""This agent in the Serf LAN pool: its tags, joining (-retry-join, the last run's peers), the peer list on
disk, a graceful leave, and the members as typed values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import meshagent
import trio

from ..gossip.keyring import Keyring
from ..gossip.member import Member, MemberStatus
from ..gossip.runtime import GossipAgent
from ..gossip.serf import SerfEvent
from .lifecycle import notify_systemd
from .peer_snapshot import PeerSnapshot

if TYPE_CHECKING:
    from .config.types import AgentConfig

log = logging.getLogger("meshagent.agent")

PEER_SNAPSHOT_INTERVAL = 5.0  # seconds between checks of the peer list on disk


def gossip_tags(config: AgentConfig, node_id: str) -> dict[str, str]:
    """The tags this agent gossips (Consul's: role, dc, id, versions, and the server port for servers)."""
    tags = {
        "role": "consul" if config.server or config.dev else "node",
        "dc": config.datacenter,
        "id": node_id,
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


class GossipLink:
    """Owns the GossipAgent and the peer snapshot; the Agent runs its tasks in its own nurseries."""

    def __init__(self, config: AgentConfig, *, node_name: str, node_id: str, bind: str, advertise: str,
                 keyring: Keyring | None, keyring_path: str | None, data_dir: Path | None,
                 on_event: Callable[[SerfEvent], None]) -> None:
        self.config = config
        self.node_name = node_name
        self.advertise = advertise
        self.tags = gossip_tags(config, node_id)
        self.agent = GossipAgent(name=node_name, bind=bind, advertise=advertise, port=config.ports.serf_lan,
                                 tags=dict(self.tags), keyring=keyring, keyring_path=keyring_path,
                                 on_event=on_event, verify_incoming=config.encrypt_verify_incoming,
                                 verify_outgoing=config.encrypt_verify_outgoing,
                                 reconnect_timeout=config.reconnect_timeout)
        self.peer_snapshot = PeerSnapshot(data_dir / "serf" / "peers.json") if data_dir else None
        self.enabled = config.ports.serf_lan >= 0
        self.running = False  # set once the LAN port is bound
        self.join_failed = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the LAN port and gossip until cancelled (OSError when the port cannot be bound)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.agent.run)
            self.running = True
            task_status.started()

    def members(self) -> list[Member]:
        """Gossip members, this node included (only this node while gossip is off or not started)."""
        if not self.enabled or not self.running:
            return [Member(self.node_name, self.advertise, self.config.ports.serf_lan, dict(self.tags),
                           MemberStatus.ALIVE)]
        return self.agent.members()

    def peer_addresses(self) -> list[str]:
        """"ip:port" of every other alive member (what the peer snapshot keeps)."""
        return [f"{m.addr}:{m.port}" for m in self.agent.members() if m.alive and m.name != self.node_name]

    async def keep_peer_snapshot(self) -> None:
        """Rejoin the last run's peers (unless we left gracefully, without -rejoin), then keep the peer
        list on disk up to date."""
        assert self.peer_snapshot is not None
        peers, left = self.peer_snapshot.load()
        if peers and left and not self.config.rejoin_after_leave:
            log.info("not rejoining the last run's %d peers: this agent left gracefully (use -rejoin)",
                     len(peers))
        elif peers:
            joined = await self.agent.join(peers)
            log.info("rejoin: contacted %d of the last run's %d peers", joined, len(peers))
        saved: list[str] = []
        while True:
            current = sorted(self.peer_addresses())
            if current and current != saved:
                await trio.to_thread.run_sync(self.peer_snapshot.save, current, False)
                saved = current
            await trio.sleep(PEER_SNAPSHOT_INTERVAL)

    async def retry_join(self, addrs: list[str], give_up: Callable[[], None]) -> None:
        """-retry-join: try the addresses until one answers, backing off to every retry_interval; after
        retry_max failed attempts (when set) `give_up` is called (the agent exits, as Consul does)."""
        attempt = 0
        while True:
            attempt += 1
            joined = await self.agent.join(addrs)
            if joined:
                log.info("join: joined cluster by contacting %d nodes", joined)
                notify_systemd("READY=1")
                return
            if self.config.retry_max and attempt >= self.config.retry_max:
                log.error("join: max join retry exhausted (%d attempts to %s), exiting", attempt, ", ".join(addrs))
                self.join_failed = True
                give_up()
                return
            # Beyond Consul: the first retries come sooner (1, 2, 4 ... s, up to retry_interval), so that a
            # fleet started all at once forms in seconds instead of after a full 30 s interval.
            delay = min(self.config.retry_interval, 2.0 ** (attempt - 1))
            log.warning("join: attempt %d failed, retrying in %gs", attempt, delay)
            await trio.sleep(delay)

    async def leave(self) -> None:
        """Leave the pool gracefully and record the leave in the peer snapshot."""
        if not self.enabled:
            return
        peers = self.peer_addresses()
        await self.agent.leave()
        if self.peer_snapshot is not None:
            await trio.to_thread.run_sync(self.peer_snapshot.save, peers, True)
