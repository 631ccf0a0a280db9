"""SessionRunner (the leader's TTL timers and implicit invalidation) on trio's MockClock over a real catalog store,
and its `session_renew` RPC handler (a follower forwarding to a leader through a stand-in link); then (slow) a
leader failover among three in-process Raft servers on real sockets, and a real server process restarted from a
Raft snapshot."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import pytest
import trio
import trio.testing
from meshagent.agent.catalog import CRITICAL, PASSING, SERF_CHECK_ID, Check, Node, Service, commands
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import NoLeader, NotLeader, Rejected
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.server.session_runner import ForwardedSessions, RenewEndpoint, SessionRunner
from meshagent.agent.store import CatalogStore

from tests.support.acl_raft import common_port
from tests.support.agents import AgentProcess
from tests.support.ports import free_host_in, port_free
from tests.support.wait import wait_for, wait_for_async

TTL = 10.0  # Consul's smallest TTL


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def run_mock(afn: Callable[[], Any]) -> None:
    trio.run(afn, clock=mock_clock())


class Wall:
    """The unix clock the runner stamps into destroy commands (lock-delay deadlines), set by the test."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def apply(store: CatalogStore, command: dict[str, Any]) -> Any:
    return store.catalog.apply(store.catalog.last_index + 1, command)


def add_node(store: CatalogStore, name: str = "n1", serf: str = PASSING, service_check: str | None = None) -> None:
    checks = [Check(node=name, check_id=SERF_CHECK_ID, status=serf)]
    svc = None
    if service_check is not None:
        svc = Service(node=name, id="db", service="db")
        checks.append(Check(node=name, check_id="service:db", status=service_check, service_id="db"))
    apply(store, commands.register(Node(node=name, address="10.0.0.1"), svc, checks))


def create(store: CatalogStore, node: str = "n1", ttl: str = "", **fields: Any) -> str:
    sid = str(uuid.uuid4())
    result = apply(store, commands.session_create({"id": sid, "node": node, "ttl": ttl, **fields}))
    assert result == sid
    return sid


class Link:
    """A stand-in for RaftServer's leadership and calls: `leading` is set by the test, calls go to `peer`."""

    def __init__(self, leading: bool, peer: SessionRunner | None = None) -> None:
        self.leading = leading
        self.peer = peer
        self.calls: list[tuple[str, Any]] = []

    def is_leader(self) -> bool:
        return self.leading

    def leader_address(self) -> str | None:
        return None if self.peer is None else "127.0.50.9:8300"

    async def call_server(self, address: str, method: str, args: Any, timeout: float = 10.0) -> Any:
        self.calls.append((method, args))
        assert self.peer is not None and method == "session_renew"
        return await self.peer.rpc_renew(args)


def test_ttl_session_expires_at_twice_its_ttl_not_before() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        runner = SessionRunner(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            sid = create(store, ttl="10s")
            keep = create(store)  # no TTL: never expires
            await trio.sleep(2 * TTL - 0.5)
            assert store.catalog.sessions.get(sid) is not None  # TTL passed, the 2x grace has not
            await trio.sleep(1.0)
            assert store.catalog.sessions.get(sid) is None
            assert store.catalog.sessions.get(keep) is not None
            assert runner.expired == 1 and runner.timers == 0
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_renew_restarts_the_timer_and_unknown_sessions_are_none() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        runner = SessionRunner(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            sid = create(store, ttl="10s")
            await trio.sleep(15)
            renewed = await runner.renew(sid)
            assert renewed is not None and renewed.id == sid and renewed.ttl == "10s"
            await trio.sleep(19)  # 34 s: past the first deadline (20 s), before the renewed one (35 s)
            assert store.catalog.sessions.get(sid) is not None
            await trio.sleep(2)
            assert store.catalog.sessions.get(sid) is None
            assert await runner.renew(sid) is None
            assert await runner.renew("no-such-session") is None
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_each_new_leadership_restarts_every_timer_and_followers_expire_nothing() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        link = Link(leading=True)
        runner = SessionRunner(store, link)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            sid = create(store, ttl="10s")
            await trio.sleep(5)
            link.leading = False
            await trio.sleep(25)  # 30 s: the old deadline (20 s) passed while no one led here
            assert store.catalog.sessions.get(sid) is not None
            link.leading = True  # leadership again at ~30 s: the timer starts over (2 x TTL)
            await trio.sleep(2 * TTL - 1)
            assert store.catalog.sessions.get(sid) is not None
            await trio.sleep(1.5)
            assert store.catalog.sessions.get(sid) is None
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_serf_health_critical_destroys_the_session_releases_its_lock_and_lock_delay_applies() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store, "n1")
        add_node(store, "n2")
        wall = Wall()
        runner = SessionRunner(store, wall=wall)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            holder = create(store, "n1", lock_delay=15.0)
            other = create(store, "n2")
            assert apply(store, commands.kv_lock("service/leader", b"n1", holder, wall.now)) is True
            assert apply(store, commands.kv_lock("service/leader", b"n2", other, wall.now)) is False
            add_node(store, "n1", serf=CRITICAL)  # gossip declared n1 failed
            await trio.sleep(0.01)
            assert store.catalog.sessions.get(holder) is None
            entry = store.catalog.kv_get("service/leader")
            assert entry is not None and entry.session == "" and entry.lock_index == 1 and entry.value == b"n1"
            assert runner.invalidated == 1
            # Lock-delay: 15 s from the invalidation's `now` (the wall clock the runner stamped).
            assert apply(store, commands.kv_lock("service/leader", b"n2", other, wall.now + 14)) is False
            assert apply(store, commands.kv_lock("service/leader", b"n2", other, wall.now + 16)) is True
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_delete_behaviour_deletes_held_keys() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        runner = SessionRunner(store, wall=Wall())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            sid = create(store, ttl="10s", behavior="delete")
            assert apply(store, commands.kv_lock("ephemeral/me", b"x", sid, 0.0)) is True
            await trio.sleep(2 * TTL + 0.5)
            assert store.catalog.sessions.get(sid) is None
            assert store.catalog.kv_get("ephemeral/me") is None
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_a_removed_service_check_or_a_deregistered_node_destroys_its_sessions() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store, "n1", service_check=PASSING)
        add_node(store, "n2")
        runner = SessionRunner(store, wall=Wall())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            bound = create(store, "n1", service_checks=[{"ID": "service:db", "Namespace": ""}])
            unbound = create(store, "n1", node_checks=[])
            on_n2 = create(store, "n2")
            apply(store, commands.deregister("n1", check_id="service:db"))
            await trio.sleep(0.01)
            assert store.catalog.sessions.get(bound) is None
            assert store.catalog.sessions.get(unbound) is not None  # bound to no check: only the node counts
            apply(store, commands.deregister("n1"))
            await trio.sleep(0.01)
            assert store.catalog.sessions.get(unbound) is None
            assert store.catalog.sessions.get(on_n2) is not None
            assert runner.invalidated == 2
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_a_restored_catalog_is_followed() -> None:
    async def main() -> None:
        source = CatalogStore()
        add_node(source)
        sid = create(source, ttl="10s")
        store = CatalogStore()
        runner = SessionRunner(store, wall=Wall())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            store.restore(source.catalog.snapshot())
            await trio.sleep(1)
            assert store.catalog.sessions.get(sid) is not None and runner.timers == 1
            add_node(store, serf=CRITICAL)  # the restored catalog's changes are seen too
            await trio.sleep(0.01)
            assert store.catalog.sessions.get(sid) is None
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_a_failing_destroy_is_retried_once_a_second_not_in_a_spin() -> None:
    class NoQuorum:
        """A replicator whose every write fails (no quorum): the expired session cannot be destroyed yet."""

        def __init__(self) -> None:
            self.writes = 0

        async def apply(self, command: dict[str, Any], token: str | None = None) -> Any:
            self.writes += 1
            raise NoLeader()

        async def read_barrier(self, consistent: bool) -> None:
            return None

    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        sid = create(store, ttl="10s")
        replicator = store.replicator = NoQuorum()
        runner = SessionRunner(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await trio.sleep(2 * TTL + 10)
            assert 5 <= replicator.writes <= 12 and runner.failures == replicator.writes
            store.replicator = None  # quorum is back
            await trio.sleep(1.5)
            assert store.catalog.sessions.get(sid) is None and runner.expired == 1
            nursery.cancel_scope.cancel()

    run_mock(main)


def test_a_follower_forwards_renew_to_the_leader_with_the_token() -> None:
    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        leader = SessionRunner(store, Link(leading=True))
        link = Link(leading=False, peer=leader)
        follower = SessionRunner(store, link)
        sid = create(store, ttl="10s")
        renewed = await follower.renew(sid, token="secret")
        assert renewed is not None and renewed.id == sid and renewed.create_index > 0
        assert link.calls == [("session_renew", {"id": sid, "forwarded": True, "token": "secret"})]
        assert leader.renewed == 1 and leader.timers == 1 and follower.forwarded == 1
        assert await follower.renew("gone") is None
        with pytest.raises(NotLeader):  # a forwarded call is never forwarded again
            await follower.rpc_renew({"id": sid, "forwarded": True})

    run_mock(main)


@pytest.mark.parametrize("args", [b"id", ["id"], {"id": 5}, {"id": ""}, {"id": "x" * 65},
                                  {"id": "a", "token": 1}, {"id": "a", "forwarded": "yes"},
                                  {"id": "a", "extra": 1}])
def test_rpc_renew_refuses_malformed_arguments(args: Any) -> None:
    async def main() -> None:
        endpoint = RenewEndpoint()
        with pytest.raises(Rejected):
            await endpoint.call({"id": "a"})  # no runner attached
        endpoint.runner = SessionRunner(CatalogStore())
        with pytest.raises(Rejected):
            await endpoint.call(args)
        assert await endpoint.call({"id": "unknown"}) is None

    run_mock(main)


def test_forwarded_sessions_checks_what_the_server_answers() -> None:
    class Caller:
        def __init__(self, answer: Any) -> None:
            self.answer = answer
            self.sent: list[Any] = []

        async def call(self, method: str, args: Any) -> Any:
            self.sent.append((method, args))
            return self.answer

    async def main() -> None:
        store = CatalogStore()
        add_node(store)
        sid = create(store, ttl="10s")
        row = store.catalog.sessions.get(sid)
        assert row is not None
        good = Caller(await SessionRunner(store).rpc_renew({"id": sid}))
        renewed = await ForwardedSessions(good).renew(sid, "tok")
        assert renewed == row and good.sent == [("session_renew", {"id": sid, "token": "tok"})]
        assert await ForwardedSessions(Caller(None)).renew(sid) is None
        for bad in ("x", {"id": "not-a-uuid"}, {**(good.answer or {}), "create_index": "1"}):
            with pytest.raises(Rejected):
                await ForwardedSessions(Caller(bad)).renew(sid)

    run_mock(main)


# ------------------------------------------------------------------------------------------ real Raft servers

FAILOVER_HOSTS = ["127.0.50.3", "127.0.50.4", "127.0.50.5"]


@pytest.mark.slow
def test_sessions_survive_a_leader_failover_whose_new_leader_restarts_their_timers() -> None:
    """Three in-process Raft servers on real :8300 sockets, each with its runner (as server agents have)."""
    for host in FAILOVER_HOSTS:
        if not port_free(host, 0):
            pytest.skip(f"{host} is not usable here")

    async def main() -> None:
        port = common_port(FAILOVER_HOSTS)
        servers: list[RaftServer] = []
        runners: list[SessionRunner] = []
        scopes: list[trio.CancelScope] = []
        for i, host in enumerate(FAILOVER_HOSTS):
            store = CatalogStore()
            server = RaftServer(node_id=str(uuid.uuid4()), node_name=f"s{i}", bind=host, advertise=host, port=port,
                                data_dir=None, store=store, bootstrap_expect=3,
                                join=[h for h in FAILOVER_HOSTS if h != host])
            store.replicator = server
            runner = SessionRunner(store, server)
            server.endpoints.session_renew.runner = runner
            servers.append(server)
            runners.append(runner)

        async def run_one(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                async with trio.open_nursery() as inner:
                    await inner.start(servers[i].run)
                    await inner.start(runners[i].run)
                    task_status.started()

        def leader() -> int | None:
            leading = [i for i, s in enumerate(servers) if s.is_leader() and not scopes[i].cancel_called]
            return leading[0] if len(leading) == 1 else None

        async with trio.open_nursery() as nursery:
            for i in range(3):
                await nursery.start(run_one, i)
            await wait_for_async(lambda: leader() is not None, 20, what="a leader")
            first = leader()
            assert first is not None
            store = servers[first].store
            await store.apply(commands.register(Node(node="n1", address="10.0.0.1"), None,
                                                [Check(node="n1", check_id=SERF_CHECK_ID, status=PASSING)]))
            sid = str(uuid.uuid4())
            assert await store.apply(commands.session_create({"id": sid, "node": "n1", "ttl": "10s"})) == sid
            assert await store.apply(commands.kv_lock("lock", b"n1", sid, time.time())) is True
            follower = next(i for i in range(3) if i != first)
            renewed = await runners[follower].renew(sid)  # over :8300 to the leader
            assert renewed is not None and renewed.id == sid and runners[follower].forwarded == 1
            assert runners[first].deadline(sid) is not None
            await wait_for_async(lambda: all(s.store.catalog.sessions.get(sid) for s in servers), 10,
                                 what="the session on every server")
            scopes[first].cancel()  # the leader is gone
            failed_at = trio.current_time()
            await wait_for_async(lambda: leader() is not None, 30, what="a new leader")
            second = leader()
            assert second is not None and second != first
            runner = runners[second]
            await wait_for_async(lambda: runner.deadline(sid) is not None, 10, what="the new leader's timer")
            deadline = runner.deadline(sid)
            assert deadline is not None and deadline >= failed_at + 2 * TTL  # started over, not carried
            new_store = servers[second].store
            assert new_store.catalog.sessions.get(sid) is not None
            entry = new_store.catalog.kv_get("lock")
            assert entry is not None and entry.session == sid
            other = next(i for i in range(3) if i not in (first, second))
            assert await runners[other].renew(sid) is not None  # renew reaches the new leader
            assert await runners[other].renew(str(uuid.uuid4())) is None
            # As a client agent calls it: RPC session_renew to a follower, which passes it on to the leader.
            client = RPCClient(f"{FAILOVER_HOSTS[other]}:{port}")
            answer = await client.call(nursery, "session_renew", {"id": sid}, 5.0)
            assert answer["id"] == sid and answer["ttl"] == "10s"
            assert await client.call(nursery, "session_renew", {"id": str(uuid.uuid4())}, 5.0) is None
            nursery.cancel_scope.cancel()

    trio.run(main)


RESTART_CONFIG = "raft_snapshot_threshold = 4\nraft_trailing_logs = 2\n"


@pytest.mark.slow
def test_sessions_and_locks_survive_a_server_restart_from_a_raft_snapshot(tmp_path: Path) -> None:
    """One real `meshagent agent -server` process: a session with a lock, written past a Raft snapshot, is
    there after a restart (from the snapshot and the log after it), and renews."""
    host = free_host_in("127.0.50", 6, 20)
    config = tmp_path / "raft.hcl"
    config.write_text(RESTART_CONFIG)
    data = tmp_path / "data"
    agent = AgentProcess(host=host, workdir=tmp_path, args=[
        "-server", "-bootstrap-expect", "1", "-data-dir", str(data), "-client", host, "-bind", host,
        "-node", "sess-restart", "-config-file", str(config)])
    agent.start(timeout=20)
    try:
        c = consul.Consul(host=host, port=8500)

        def created() -> str | None:
            try:
                return str(c.session.create(name="survivor", ttl=60, lock_delay=0))
            except consul.ConsulException:
                return None  # the leader has not registered this node's serfHealth yet

        sid = wait_for(created, 15, what="a session on the server's own node")
        assert c.kv.put("svc/leader", "me", acquire=sid) is True
        for n in range(6):  # past raft_snapshot_threshold: the state is in a snapshot
            assert c.kv.put(f"filler/{n}", "x") is True
        wait_for(lambda: list(data.rglob("*.snap")), 10, what="a Raft snapshot")
        _, before = c.session.info(sid)
        assert agent.stop() == 0
        agent.start(timeout=20)
        after = wait_for(lambda: c.session.info(sid)[1], 10, what="the session after the restart")
        assert after == before
        assert c.kv.get("svc/leader")[1]["Session"] == sid
        assert wait_for(lambda: c.session.renew(sid), 10, what="a renew at the new leader")["ID"] == sid
    finally:
        agent.stop()
