"""CAManager on the -dev store (no Raft: it always leads): init once, signing under the CSR rate limit with
callers never seeing RateLimited, rotation, prune on its timer, configuration errors, bootstrap entries."""

from __future__ import annotations

import datetime
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from cryptography import x509
from meshagent.agent.catalog import commands
from meshagent.agent.config.connect_defaults import default_ca_config
from meshagent.agent.connect import ca
from meshagent.agent.connect.authority import SignedLeaf
from meshagent.agent.connect.ca_manager import BACKOFF_CAP, CAManager, backoff
from meshagent.agent.connect.spiffe import ServiceID
from meshagent.agent.rpc.errors import RateLimited, Rejected
from meshagent.agent.store import CatalogStore


def _run(fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            await fn()
    trio.run(main)


def _csr(manager: CAManager, service: str = "web", trust_domain: str | None = None) -> str:
    td = trust_domain or manager.state.trust_domain
    return ca.leaf_key_and_csr(ServiceID(td, "default", manager.datacenter, service))[1]


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _manager(store: CatalogStore | None = None, clock: Callable[[], float] | None = None,
             **ca_config: Any) -> CAManager:
    cfg = {**default_ca_config(), **ca_config}
    kw: dict[str, Any] = {"clock": clock} if clock else {}
    return CAManager(store or CatalogStore(), "dc1", ca_config=cfg, min_leaf_ttl=1.0, **kw)


def test_run_initializes_once_and_a_later_leader_keeps_the_root() -> None:
    async def go() -> None:
        store = CatalogStore()
        first = _manager(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            with trio.fail_after(10):
                while not store.catalog.connect.cluster_id:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        state = store.catalog.connect
        root_id, cluster_id = state.active_root.id if state.active_root else "", state.cluster_id
        assert state.trust_domain == f"{cluster_id}.mesh"
        second = _manager(store)  # the next leader, on the same (replicated) catalog
        await second.initialized()
        leaf = await second.sign(_csr(second))
        assert leaf.root_id == root_id and store.catalog.connect.cluster_id == cluster_id
        assert len(store.catalog.connect.roots) == 1
    _run(go)


def test_a_signed_leaf_reports_consul_fields_and_chains_to_the_active_root() -> None:
    async def go() -> None:
        m = _manager(leaf_cert_ttl=7200.0)
        await m.initialized()  # the first call sets the CA up (-dev, before run() got to it)
        leaf = await m.sign(_csr(m, "billing"))
        state = m.state
        assert state.active_root is not None and leaf.root_id == state.active_root.id
        assert leaf.service == "billing"
        assert leaf.service_uri == f"spiffe://{state.trust_domain}/ns/default/dc/dc1/svc/billing"
        assert leaf.valid_before - leaf.valid_after == pytest.approx(7200 + 60, abs=1)
        assert leaf.intermediate_pems == () and leaf.index == m.store.catalog.last_index
        cert = _cert(leaf.cert_pem)
        assert cert.serial_number == leaf.serial_number
        cert.verify_directly_issued_by(_cert(state.active_root.root_cert))
        assert SignedLeaf.from_wire(leaf.to_wire()) == leaf  # the connect_ca_sign answer's wire form
    _run(go)


@pytest.mark.parametrize("make", [
    lambda m: "not a CSR",
    lambda m: "x" * (ca.MAX_CSR_BYTES + 1),
    lambda m: _csr(m, trust_domain="someone-else.mesh"),
    lambda m: ca.leaf_key_and_csr(ServiceID(m.state.trust_domain, "default", "dc2", "web"))[1],
])
def test_bad_csrs_are_rejected_with_the_reason(make: Callable[[CAManager], str]) -> None:
    async def go() -> None:
        m = _manager()
        await m.initialized()
        with pytest.raises(Rejected) as info:
            await m.sign(make(m))
        assert "csr" in str(info.value).lower()
    _run(go)


def test_over_the_rate_the_leader_answers_ratelimited_with_a_hint_and_sign_retries_it() -> None:
    rate, n = 30.0, 30

    async def go() -> None:
        m = _manager(csr_max_per_second=rate)
        await m.initialized()
        csrs = [_csr(m, f"svc{i}") for i in range(n)]
        # Back to back: the full bucket (rate tokens) and what refills meanwhile pass, then the leader refuses
        # with the wait the next token needs.
        signed, start = 0, trio.current_time()
        with pytest.raises(RateLimited) as info:
            for csr in csrs * 3:
                await m.sign_local(csr)
                signed += 1
        assert rate <= signed <= rate + rate * (trio.current_time() - start) + 1
        assert 0 < info.value.retry_after <= 1 / rate + 0.01
        # Concurrent callers of sign(): all signed, none sees RateLimited, never faster than the bucket.
        done: list[float] = []
        t0 = trio.current_time()

        async def one(csr: str) -> None:
            await m.sign(csr)
            done.append(trio.current_time() - t0)

        refused_before = m.rate_limited
        async with trio.open_nursery() as nursery:
            for csr in csrs:
                nursery.start_soon(one, csr)
        assert len(done) == n and m.rate_limited > refused_before
        for k, t in enumerate(sorted(done), start=1):
            assert k <= rate * t + 1 + 1e-6, (k, t)  # the bucket was empty at t0: 1 token + rate/s
    _run(go)


def test_backoff_starts_at_the_hint_grows_and_is_capped() -> None:
    rng = random.Random(7)
    assert all(0.25 <= backoff(0.25, 0, rng) <= 0.75 for _ in range(100))
    late = [backoff(0.02, 8, rng) for _ in range(200)]
    assert max(late) <= 0.02 + BACKOFF_CAP and max(late) > 1.0
    assert backoff(1e9, 0, rng) <= RateLimited.MAX_RETRY_AFTER + BACKOFF_CAP


def test_rotation_leaves_carry_the_cross_signed_root_and_prune_runs_on_its_timer() -> None:
    now = [datetime.datetime.now(datetime.UTC).timestamp()]

    async def go() -> None:
        store = CatalogStore()
        m = _manager(store, clock=lambda: now[0], leaf_cert_ttl=2.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            await m.initialized()
            before = await m.sign(_csr(m))
            old_root = _cert(m.state.roots[before.root_id].root_cert)
            await m.set_config("consul", {"PrivateKeyBits": 384})
            after = await m.sign(_csr(m))
            assert after.root_id != before.root_id and len(after.intermediate_pems) == 1
            inter = _cert(after.intermediate_pems[0])
            inter.verify_directly_issued_by(old_root)
            _cert(after.cert_pem).verify_directly_issued_by(inter)
            assert set(m.state.roots) == {before.root_id, after.root_id}
            # 2 x LeafCertTTL later (the CA's clock), the leader's prune tick (every 1 s here) drops the old root.
            now[0] += 4.5
            with trio.fail_after(10):
                while before.root_id in m.state.roots:
                    await trio.sleep(0.02)
            assert set(m.state.roots) == {after.root_id}
            nursery.cancel_scope.cancel()
    _run(go)


def test_bad_configuration_is_rejected_naming_the_field_and_changes_nothing() -> None:
    async def go() -> None:
        m = _manager()
        await m.initialized()
        config, index = dict(m.state.config), m.store.catalog.last_index
        with pytest.raises(Rejected) as info:
            await m.set_config("consul", {"LeafCertTTL": "500ms"})  # below the (test) minimum of 1 s
        assert "Config.LeafCertTTL" in str(info.value) and info.value.status == 400
        with pytest.raises(Rejected) as info:
            await m.set_config("consul", {"PrivateKeyBits": 4096})
        assert "Config.PrivateKeyBits" in str(info.value)
        assert m.state.config == config and m.store.catalog.last_index == index
        await m.set_config("consul", {"LeafCertTTL": "24h"})
        assert m.state.config["Config"]["LeafCertTTL"] == "24h"
        leaf = await m.sign(_csr(m))
        assert leaf.valid_before - leaf.valid_after == pytest.approx(24 * 3600 + 60, abs=1)
    _run(go)


def test_a_disabled_ca_refuses_to_sign() -> None:
    async def go() -> None:
        m = CAManager(CatalogStore(), "dc1", enabled=False)
        with pytest.raises(Rejected) as info:
            await m.sign("x")
        assert "not enabled" in str(info.value)
        assert not m.state.cluster_id
    _run(go)


def test_bootstrap_entries_are_written_on_leadership_and_never_overwrite() -> None:
    async def go() -> None:
        store = CatalogStore()
        entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
        m = CAManager(store, "dc1", bootstrap_entries=[entry])
        await m.initialized()
        row = store.catalog.config_entries.get("service-defaults", "web")
        assert row is not None and row.entry["Protocol"] == "http"
        # An operator changes it; the next leader's bootstrap leaves it alone.
        await store.apply(commands.config_entry_set({**row.entry, "Protocol": "grpc"}))
        await CAManager(store, "dc1", bootstrap_entries=[entry])._on_leadership()
        row = store.catalog.config_entries.get("service-defaults", "web")
        assert row is not None and row.entry["Protocol"] == "grpc"
    _run(go)
