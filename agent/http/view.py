"""AgentView: what the HTTP layer needs from an agent, as Protocols. The Agent implements it, and so does
the test harness's fake (tests/support/http_harness.py), so that mypy checks both against one contract.

Server-only and gossip-only parts are explicit optional members (`server`, `gossip` are None where they do
not run), never attributes to probe for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    from ...gossip.key_query import KeyQueryResult
    from ...gossip.member import Member
    from ..acl.resolver import ACLResolver
    from ..config.types import AgentConfig, CheckDefinition, ServiceDefinition
    from ..connect.authority import CAAuthority
    from ..connect.leaf_cache import LeafCache
    from ..connect.proxy_runner import ProxyRunner
    from ..local_sync import LocalCheck
    from ..server.peers import RaftPeer
    from ..store import CatalogStore
    from ..user_events import UserEventRecord


class LocalView(Protocol):
    """This agent's own services and checks (LocalState)."""

    def services(self) -> dict[str, ServiceDefinition]: ...
    def checks(self) -> dict[str, LocalCheck]: ...
    async def register_service(self, defn: ServiceDefinition, replace_existing_checks: bool = False,
                               token: str | None = None) -> None: ...
    async def deregister_service(self, service_id: str) -> None: ...
    async def register_check(self, cdef: CheckDefinition, token: str | None = None) -> None: ...
    async def deregister_check(self, check_id: str) -> None: ...
    async def update_ttl(self, check_id: str, status: str, output: str) -> None: ...
    async def set_node_maintenance(self, enable: bool, reason: str) -> None: ...
    async def set_service_maintenance(self, service_id: str, enable: bool, reason: str) -> None: ...


class GossipView(Protocol):
    """The Serf LAN pool's operator surface (GossipAgent)."""

    async def join(self, addrs: Sequence[str]) -> int: ...
    def force_leave(self, node: str, prune: bool = False) -> bool: ...
    async def key_operation(self, name: str, key: bytes = b"") -> KeyQueryResult: ...
    def stats_view(self) -> dict[str, str]: ...


class ServerView(Protocol):
    """A server's Raft operator surface (RaftServer): status, configuration, peers, snapshots."""

    def leader_info(self) -> tuple[bool, int]: ...
    def leader_address(self) -> str | None: ...
    def peers(self) -> list[str]: ...
    def configuration(self) -> tuple[int, list[RaftPeer]]: ...
    async def remove_peer(self, *, server_id: str | None, address: str | None) -> None: ...
    async def snapshot(self, stale: bool) -> tuple[dict[str, Any], bytes]: ...
    async def restore(self, meta: dict[str, Any], state: bytes) -> None: ...
    def stats(self) -> dict[str, str]: ...


class EventLog(Protocol):
    """The user events this agent saw (newest last), and a trio.Event set when the next one arrives."""

    @property
    def recent(self) -> Sequence[UserEventRecord]: ...
    @property
    def arrived(self) -> trio.Event: ...


@dataclass(frozen=True, slots=True)
class Metrics:
    """Counters and gauges by name (without the `meshagent.` prefix), for /v1/agent/metrics."""

    counters: list[tuple[str, int]] = field(default_factory=list)
    gauges: list[tuple[str, float]] = field(default_factory=list)


class AgentView(Protocol):
    """The agent as the `/v1` API sees it."""

    @property
    def config(self) -> AgentConfig: ...
    @property
    def node_name(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def datacenter(self) -> str: ...
    @property
    def advertise_addr(self) -> str: ...
    @property
    def is_server(self) -> bool: ...
    @property
    def store(self) -> CatalogStore: ...
    @property
    def local(self) -> LocalView: ...
    @property
    def server(self) -> ServerView | None:
        """The Raft operator surface; None on a client (server-only endpoints answer 500)."""
    @property
    def gossip(self) -> GossipView | None:
        """The gossip pool; None where gossip does not run."""
    @property
    def events(self) -> EventLog: ...
    @property
    def ca(self) -> CAAuthority:
        """The mesh CA: signs leaves, changes its configuration (agent/connect/authority.py)."""
    @property
    def leaves(self) -> LeafCache:
        """Local services' leaf certificates (agent/connect/leaf_cache.py)."""
    @property
    def acl(self) -> ACLResolver:
        """Token resolution for every enforcement point (agent/acl/resolver.py); ALLOW_ALL with ACLs off."""
    @property
    def proxy_runner(self) -> ProxyRunner | None:
        """The local sidecars' data plane (agent/connect/proxy_runner.py); None when connect is disabled."""

    def members(self) -> list[Member]: ...
    def leader_status(self) -> tuple[bool, int]:
        """(a leader is known, ms since it was last heard from): X-Consul-KnownLeader / LastContact."""
    def metrics(self) -> Metrics: ...
    def fire_event(self, name: str, payload: bytes) -> UserEventRecord: ...
    async def reload(self) -> None: ...
    async def leave(self) -> None: ...
    def shutdown(self) -> None: ...
