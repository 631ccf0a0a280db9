"""The mesh CA over :8300 against a real 3-server cluster (one `meshagent agent -server` process per network
namespace, tests/support/raft_cluster.py). The test process is a client agent minus gossip: a catalog
replica fed by a server, a ServerForwarder and a ForwardedCA, so every call takes the real path (client ->
any server -> the leader).

200 concurrent CSRs against csr_max_per_second = 50 are all signed, never faster than the leader's bucket,
and no RateLimited reaches the caller; RPC `apply` refuses connect-ca commands on every server (alone or in
a batch) and the CA is unchanged; set-config goes through a follower to the leader (errors name the field,
a key change rotates with a cross-signed root); after the leader is killed the new leader signs with the
same root (no second init).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgpack
import pytest
import trio
from cryptography import x509
from meshagent.agent.catalog import commands
from meshagent.agent.client.forward import ServerForwarder
from meshagent.agent.client.replica import CatalogReplica
from meshagent.agent.client.servers import ServerPool
from meshagent.agent.connect import ca, ca_plan
from meshagent.agent.connect.authority import SignedLeaf
from meshagent.agent.connect.forwarded_ca import ForwardedCA
from meshagent.agent.connect.spiffe import ServiceID
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import RateLimited, Rejected, ServerError
from meshagent.agent.store import CatalogStore

from tests.support.netns import Hosts
from tests.support.raft_cluster import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CSR_MAX_PER_SECOND = 50  # the servers run Consul's default
BURST = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    hosts = Hosts()
    try:
        c = Cluster(tmp_path_factory.mktemp("ca-rpc"), 3, hosts, name="ca")
        try:
            c.wait_one_leader(30)
            yield c
        finally:
            c.stop()
    finally:
        hosts.close()


def _addresses(cluster: Cluster, alive_only: bool = False) -> list[str]:
    return [f"{h.address}:8300" for h, a in cluster.members
            if not alive_only or (a.proc is not None and a.proc.poll() is None)]


@dataclass
class Client:
    """A client agent's CA path without gossip: replica, forwarder, ForwardedCA."""

    store: CatalogStore
    forwarder: ServerForwarder
    ca: ForwardedCA
    nursery: trio.Nursery

    @property
    def trust_domain(self) -> str:
        return self.store.catalog.connect.trust_domain

    def csr(self, service: str) -> str:
        return ca.leaf_key_and_csr(ServiceID(self.trust_domain, "default", "dc1", service))[1]

    def active_root_id(self) -> str:
        root = self.store.catalog.connect.active_root
        return root.id if root else ""

    async def wait_ca(self, done: Callable[[], bool], timeout: float = 20) -> None:
        # Polled: store.block answers at once while the replica's catalog is still empty (index 0).
        with trio.fail_after(timeout):
            while not done():
                await trio.sleep(0.02)


@asynccontextmanager
async def _client(addresses: list[str]) -> AsyncIterator[Client]:
    store = CatalogStore()
    pool = ServerPool(list, "dc1", [a.rpartition(":")[0] for a in addresses], 8300)
    replica = CatalogReplica(store, pool, "ca-rpc-test")
    forwarder = ServerForwarder(pool, replica)
    store.replicator = forwarder
    async with trio.open_nursery() as nursery:
        await nursery.start(forwarder.run)
        await nursery.start(replica.run)
        client = Client(store, forwarder, ForwardedCA(forwarder), nursery)
        await client.wait_ca(lambda: bool(store.catalog.connect.active_root))
        yield client
        nursery.cancel_scope.cancel()


def _run(cluster: Cluster, fn: Callable[[Client], Awaitable[None]], timeout: float = 120) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            async with _client(_addresses(cluster, alive_only=True)) as client:
                await fn(client)
    trio.run(main)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_200_concurrent_csrs_are_all_signed_no_faster_than_the_leader_allows(cluster: Cluster) -> None:
    async def go(client: Client) -> None:
        # The replica (what client agents hold) has the roots but never their keys.
        roots = client.store.catalog.connect.roots
        assert roots and all(r.private_key == "" for r in roots.values())
        csrs = [client.csr(f"svc{i}") for i in range(BURST)]
        signed: list[tuple[float, SignedLeaf]] = []
        t0 = trio.current_time()

        async def one(csr: str) -> None:
            leaf = await client.ca.sign(csr)  # any error here fails the test: none may reach the caller
            signed.append((trio.current_time() - t0, leaf))

        async with trio.open_nursery() as nursery:
            for csr in csrs:
                nursery.start_soon(one, csr)
        assert len(signed) == BURST
        assert client.ca.rate_limited > 0  # the limit was hit, and retried below the caller
        # However full the leader's bucket was at t0, by time t it can have signed at most
        # capacity (one second's worth) + rate x t of ours; each answer arrives after its signing.
        for k, (t, _) in enumerate(sorted(signed, key=lambda s: s[0]), start=1):
            assert k <= CSR_MAX_PER_SECOND * (1 + t) + 1, f"{k} leaves signed within {t:.3f}s"
        elapsed = max(t for t, _ in signed)
        assert elapsed >= (BURST - CSR_MAX_PER_SECOND - 1) / CSR_MAX_PER_SECOND
        root = client.store.catalog.connect.roots[client.active_root_id()]
        uris = set()
        for _, leaf in signed:
            assert leaf.root_id == root.id
            _cert(leaf.cert_pem).verify_directly_issued_by(_cert(root.root_cert))
            uris.add(leaf.service_uri)
        assert len(uris) == BURST
    _run(cluster, go)


def test_ratelimited_crosses_the_wire_with_its_wait_hint(cluster: Cluster) -> None:
    leader = cluster.wait_one_leader()

    async def go(client: Client) -> None:
        rpc = RPCClient(f"{leader.host}:8300")
        csr = client.csr("web")
        errors: list[ServerError] = []

        async def one() -> None:
            try:
                await rpc.call(client.nursery, "connect_ca_sign", {"csr": csr}, 30)
            except ServerError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3 * CSR_MAX_PER_SECOND):
                nursery.start_soon(one)
        limited = [e for e in errors if isinstance(e, RateLimited)]
        assert limited and len(limited) == len(errors), errors[:3]
        assert all(0 < e.retry_after <= 1.0 / CSR_MAX_PER_SECOND + 0.01 for e in limited)
        # Hostile arguments are refused, not crashed on.
        for bad in (None, "pem", {"csr": 7}, {"csr": "x" * (ca.MAX_CSR_BYTES + 1)}, {"csr": csr, "forwarded": 1}):
            with pytest.raises(Rejected):
                await rpc.call(client.nursery, "connect_ca_sign", bad, 30)
    _run(cluster, go)


def test_connect_ca_commands_over_rpc_apply_are_refused_by_every_server(cluster: Cluster) -> None:
    async def go(client: Client) -> None:
        before = client.active_root_id()
        cluster_id = client.store.catalog.connect.cluster_id
        now = datetime.datetime.now(datetime.UTC)
        planted = ca.new_root(client.trust_domain, now)
        rotate = commands.connect_ca("rotate", root=ca_plan.root_fields(planted), rotated_at=time.time())
        config = commands.connect_ca("set-config", config={"Provider": "consul", "Config": {"LeafCertTTL": "1s"}})
        prune = commands.connect_ca("prune", before=time.time() + 10**6)
        datas = [msgpack.packb(c, use_bin_type=True) for c in (rotate, config, prune)]
        datas.append(msgpack.packb({"op": "batch", "commands": datas[:1]}, use_bin_type=True))
        # A whole-catalog restore (CA keys included) is refused over apply too: servers use raft_restore.
        restore = msgpack.packb({"op": "restore", "state": client.store.catalog.snapshot()}, use_bin_type=True)
        for address in _addresses(cluster, alive_only=True):  # the leader (its fast path) and the followers
            rpc = RPCClient(address)
            for data in datas:
                with pytest.raises(Rejected) as info:
                    await rpc.call(client.nursery, "apply", data, 30)
                assert "connect-ca" in str(info.value)
            with pytest.raises(Rejected) as info:
                await rpc.call(client.nursery, "apply", restore, 30)
            assert "restore" in str(info.value)
            # An ordinary write over the same call still goes through.
            assert await rpc.call(client.nursery, "apply",
                                  msgpack.packb(commands.kv_set("ca-rpc/probe", address.encode()),
                                                use_bin_type=True), 30) is not None
        leaf = await client.ca.sign(client.csr("web"))
        assert leaf.root_id == before != planted.id
        assert client.store.catalog.connect.cluster_id == cluster_id
        assert list(client.store.catalog.connect.roots) == [before]
        assert leaf.valid_before - leaf.valid_after > 3600  # the planted LeafCertTTL of 1 s is not in effect
    _run(cluster, go)


def test_set_config_through_a_follower_rotates_with_a_cross_signed_root(cluster: Cluster) -> None:
    async def go(client: Client) -> None:
        with pytest.raises(Rejected) as info:
            await client.ca.set_config("consul", {"LeafCertTTL": "1m"})
        assert "Config.LeafCertTTL" in str(info.value)
        old = client.store.catalog.connect.roots[client.active_root_id()]
        await client.ca.set_config("consul", {"PrivateKeyBits": 384, "LeafCertTTL": "24h"})
        await client.wait_ca(lambda: client.active_root_id() != old.id)
        assert client.store.catalog.connect.config["Config"]["LeafCertTTL"] == "24h"
        assert "PrivateKey" not in client.store.catalog.connect.config["Config"]
        leaf = await client.ca.sign(client.csr("web"))
        assert leaf.root_id == client.active_root_id() and len(leaf.intermediate_pems) == 1
        inter = _cert(leaf.intermediate_pems[0])
        inter.verify_directly_issued_by(_cert(old.root_cert))  # peers trusting only the old root verify it
        _cert(leaf.cert_pem).verify_directly_issued_by(inter)
        assert leaf.valid_before - leaf.valid_after == pytest.approx(24 * 3600 + 60, abs=2)
        assert set(client.store.catalog.connect.roots) == {old.id, leaf.root_id}
    _run(cluster, go)


def test_after_a_leader_kill_the_new_leader_signs_with_the_same_root(cluster: Cluster) -> None:
    before: list[SignedLeaf] = []

    async def first(client: Client) -> None:
        before.append(await client.ca.sign(client.csr("web")))
    _run(cluster, first)
    old_leader = cluster.wait_one_leader()
    old_leader.kill()
    new_leader = cluster.wait_one_leader(30)
    assert new_leader is not old_leader

    async def second(client: Client) -> None:
        leaf = await client.ca.sign(client.csr("web"))
        assert leaf.root_id == before[0].root_id
        assert leaf.service_uri == before[0].service_uri  # same trust domain: no second init
        assert len(client.store.catalog.connect.roots) >= 1
    _run(cluster, second)
