"""In-process HTTP API under test: a real CatalogStore and HTTPServer on a trio loop in a background thread.

Tests talk to it with real HTTP clients (httpx, py-consul, raw sockets) from the main thread and write
to the store through `server.apply(...)`, which runs on the server's loop.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import PASSING, SERF_CHECK_ID, SERF_CHECK_NAME, Check, Node, Service, commands
from meshagent.agent.config.types import AgentConfig, CheckDefinition, Ports, ServiceDefinition
from meshagent.agent.connect.ca_manager import CAManager
from meshagent.agent.connect.leaf_cache import LeafCache
from meshagent.agent.http.api import API
from meshagent.agent.http.messages import Handler
from meshagent.agent.http.server import HTTPServer
from meshagent.agent.http.view import AgentView, GossipView, Metrics, ServerView
from meshagent.agent.local_sync import LocalCheck
from meshagent.agent.store import CatalogStore
from meshagent.agent.user_events import UserEventRecord
from meshagent.gossip.member import Member, MemberStatus

from tests.support.wait import wait_for


@dataclass
class FakeLocal:
    """Stands in for LocalState where catalog/health/KV tests need none of it."""

    _services: dict[str, ServiceDefinition] = field(default_factory=dict)
    _checks: dict[str, LocalCheck] = field(default_factory=dict)

    def services(self) -> dict[str, ServiceDefinition]:
        return dict(self._services)

    def checks(self) -> dict[str, LocalCheck]:
        return dict(self._checks)

    async def register_service(self, defn: ServiceDefinition, replace_existing_checks: bool = False,
                               token: str | None = None) -> None:
        self._services[defn.id or defn.name] = defn

    async def deregister_service(self, service_id: str) -> None:
        self._services.pop(service_id, None)

    async def register_check(self, cdef: CheckDefinition, token: str | None = None) -> None:
        return None

    async def deregister_check(self, check_id: str) -> None:
        self._checks.pop(check_id, None)

    async def update_ttl(self, check_id: str, status: str, output: str) -> None:
        return None

    async def set_node_maintenance(self, enable: bool, reason: str) -> None:
        return None

    async def set_service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        return None


class FakeEvents:
    """User events fired through the fake agent (no gossip: they arrive only here)."""

    def __init__(self) -> None:
        self.recent: list[UserEventRecord] = []
        self.arrived = trio.Event()

    def add(self, record: UserEventRecord) -> None:
        self.recent.append(record)
        self.arrived.set()
        self.arrived = trio.Event()


class FakeAgent:
    """An AgentView without gossip or Raft: config, names, a real store, a fake local state, one member."""

    def __init__(self, node_name: str = "node1", datacenter: str = "dc1") -> None:
        self.config = AgentConfig(node_name=node_name, datacenter=datacenter, dev=True,
                                  ports=Ports(http=0, dns=-1), advertise_addr="127.0.0.1")
        self.node_name = node_name
        self.node_id = str(uuid.uuid4())
        self.datacenter = datacenter
        self.advertise_addr = "127.0.0.1"
        self.store = CatalogStore()
        self.local = FakeLocal()
        self.is_server = True
        self.server: ServerView | None = None
        self.gossip: GossipView | None = None
        self.events = FakeEvents()
        # A real in-memory CA (as under -dev): it sets itself up on the first call, so tests can sign at once.
        self.ca = CAManager(self.store, datacenter, min_leaf_ttl=1.0)
        self.shutdowns = 0
        self.leave_calls = 0
        # Leaf certificates signed by `self.ca` once a test (or the harness) sets one.
        self.leaves = LeafCache(self.store, datacenter, lambda: getattr(self, "ca", None),
                                lambda: [d.name for d in self.local.services().values()])
        self._ltime = 0
        self.proxy_runner = None  # no sidecar data plane here (tests/connect/test_proxy_agent.py runs one)
        self.acl = ACLResolver(self.config, self.store)  # tests set acl.enabled on self.config to turn ACLs on

    def members(self) -> list[Member]:
        return [Member(self.node_name, self.advertise_addr, 8301,
                       {"role": "consul", "dc": self.datacenter, "port": "8300", "id": self.node_id},
                       MemberStatus.ALIVE, (1, 5, 2, 2, 5, 4))]

    def leader_status(self) -> tuple[bool, int]:
        return True, 0  # no Raft here: this agent leads itself, as -dev does

    def metrics(self) -> Metrics:
        return Metrics()

    def fire_event(self, name: str, payload: bytes) -> UserEventRecord:
        self._ltime += 1
        record = UserEventRecord.of(self._ltime, name, payload)
        self.events.add(record)
        return record

    async def reload(self) -> None:
        return None

    def shutdown(self) -> None:
        self.shutdowns += 1

    async def leave(self) -> None:
        self.leave_calls += 1


def _is_agent_view(agent: FakeAgent) -> AgentView:
    return agent  # mypy checks here that FakeAgent implements AgentView


class ServerThread:
    """Runs an HTTPServer (and anything else async) on its own trio loop in a daemon thread."""

    def __init__(self, handler: Handler | None = None, agent: FakeAgent | None = None, *, host: str = "127.0.0.1",
                 **server_kw: Any) -> None:
        self.agent = agent or FakeAgent()
        self.api = API(self.agent)
        self.host = host  # a suite's own 127.X.Y.N, else 127.0.0.1; the port is ephemeral
        self.server = HTTPServer(handler or self.api, host, 0, **server_kw)
        self.port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="http-under-test")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            ca = getattr(self.agent, "ca", None)  # a test's CA authority (e.g. a -dev CAManager) runs here too
            if ca is not None and hasattr(ca, "run"):
                await nursery.start(ca.run)
            await nursery.start(self.agent.leaves.run)
            self.port = await nursery.start(self.server.run)
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("HTTP server did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def run(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run an async function on the server's loop and return its result."""
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def apply(self, command: dict[str, Any]) -> Any:
        """Apply a catalog command on the server's loop."""
        return self.run(self.agent.store.apply, command)

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None and self._thread.is_alive():
            cancel = self._cancel
            trio.from_thread.run_sync(cancel.cancel, trio_token=self._token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


@dataclass
class ACLEnv:
    """A running harness server, an httpx client to it, and the suite's test tokens by name."""

    srv: ServerThread
    http: httpx.Client
    secrets: dict[str, str]

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """One request as the token named `token` in `secrets` (else `token` is the secret itself; None: none)."""
        headers = {"X-Consul-Token": self.secrets.get(token, token)} if token else {}
        return self.http.request(method, path, headers=headers, **kw)


class TokenRecorder:
    """Stands in for a client agent's ServerForwarder (store.replicator): applies each write here and keeps
    the token it carries (the servers would re-check the write as that token)."""

    def __init__(self, store: CatalogStore) -> None:
        self.store = store
        self.tokens: list[str | None] = []

    async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
        self.tokens.append(token)
        return self.store.catalog.apply(self.store.catalog.last_index + 1, command)

    async def read_barrier(self, consistent: bool) -> None:
        return None


def node(name: str, address: str = "10.0.0.1", meta: dict[str, str] | None = None) -> Node:
    """A node row for tests."""
    return Node(node=name, address=address, datacenter="dc1", id=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                tagged_addresses={"lan": address, "wan": address}, meta=dict(meta or {}))


def register_instance(server: ServerThread, node_name: str, service: str, *, sid: str = "",
                      address: str = "10.0.0.1", port: int = 8080, tags: list[str] | None = None,
                      meta: dict[str, str] | None = None, node_meta: dict[str, str] | None = None,
                      status: str = PASSING) -> None:
    """Register a node with serfHealth, one service instance and one service check with `status`."""
    sid = sid or service
    n = node(node_name, address, node_meta)
    svc = Service(node=node_name, id=sid, service=service, tags=list(tags or []), port=port,
                  meta=dict(meta or {}))
    checks = [Check(node=node_name, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=PASSING),
              Check(node=node_name, check_id=f"service:{sid}", name=f"Service '{service}' check",
                    status=status, service_id=sid, type="http")]
    server.apply(commands.register(n, svc, checks))


def wait_waiting(server: ServerThread, count: int, timeout: float = 5.0) -> None:
    """Wait until `count` blocking queries are parked in the store's watch hub."""
    wait_for(lambda: server.agent.store.hub.waiting >= count, timeout, interval=0.005,
             what=f"{count} blocking queries to park")
