"""LeafCache against a real in-process signer (the CA's own code: ca.new_root, ca.sign_leaf) on a real catalog
store: a local key per service, the exact SPIFFE ID, renewal in the 60-90 % window, reissue after a root
rotation, the current leaf served while no server signs, idle services forgotten.

Time is trio's MockClock (autojump) and the certificates are signed at that virtual time, so a full 72 h
lifetime runs in milliseconds; nothing else is simulated.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshagent.agent.catalog import commands
from meshagent.agent.connect import ca
from meshagent.agent.connect.authority import SignedLeaf
from meshagent.agent.connect.ca_plan import ca_root, root_fields, stored_config
from meshagent.agent.connect.leaf_cache import LeafCache, LeafError
from meshagent.agent.connect.leaf_plan import IDLE_TTL, RETRY_MAX
from meshagent.agent.connect.renewal import ROOT_CHANGE_JITTER
from meshagent.agent.rpc.errors import Unreachable
from meshagent.agent.store import CatalogStore

HOUR = 3600.0
DC = "dc1"
BASE = 1_800_000_000.0  # the virtual epoch of trio's clock 0 (a plausible wall-clock time for certificates)


def now() -> float:
    return BASE + trio.current_time()


class LocalAuthority:
    """A real signer in this process: the catalog's active root signs with ca.sign_leaf at the clock's time.
    `down` makes it fail as an unreachable server does."""

    def __init__(self, store: CatalogStore, ttl: float = 72 * HOUR) -> None:
        self.store = store
        self.ttl = ttl
        self.down = False
        self.csrs: list[str] = []
        self.attempts: list[float] = []

    async def init(self) -> None:
        cluster = str(uuid.uuid4())
        root = ca.new_root(f"{cluster}.mesh", _dt(now()))
        await self.store.apply(commands.connect_ca("init", cluster_id=cluster, trust_domain=f"{cluster}.mesh",
                                                   root=root_fields(root),
                                                   config=stored_config("consul", {}, False)))

    async def rotate(self) -> None:
        connect = self.store.catalog.connect
        old = connect.active_root
        assert old is not None
        new = ca.new_root(connect.trust_domain, _dt(now()))
        cross = ca.cross_sign(ca_root(old, connect.trust_domain), new, _dt(now()))
        fields = root_fields(new) | {"intermediate_certs": [cross]}
        await self.store.apply(commands.connect_ca("rotate", root=fields, rotated_at=now()))

    async def sign(self, csr_pem: str) -> SignedLeaf:
        self.attempts.append(now())
        if self.down:
            raise Unreachable("no server answered")
        self.csrs.append(csr_pem)
        connect = self.store.catalog.connect
        row = connect.active_root
        assert row is not None
        leaf = ca.sign_leaf(ca_root(row, connect.trust_domain), csr_pem, DC, _dt(now()),
                            datetime.timedelta(seconds=self.ttl))
        return SignedLeaf(leaf.cert_pem, leaf.serial_number, leaf.service.service, leaf.service.uri(),
                          leaf.valid_after.timestamp(), leaf.valid_before.timestamp(), row.id,
                          row.intermediate_certs, self.store.catalog.last_index)


def _dt(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


Scenario = Callable[[LeafCache, LocalAuthority, CatalogStore], Awaitable[Any]]


def run(scenario: Scenario, *, init: bool = True, ttl: float = 72 * HOUR,
        registered: tuple[str, ...] = ()) -> Any:
    """Run `scenario` with a running cache over a fresh store and authority, on trio's autojump clock."""
    result: list[Any] = []

    async def main() -> None:
        store = CatalogStore()
        authority = LocalAuthority(store, ttl)
        if init:
            await authority.init()
        cache = LeafCache(store, DC, lambda: authority, lambda: registered, clock=now, rng=random.Random(1))
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            result.append(await scenario(cache, authority, store))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]


def test_a_first_request_gets_a_leaf_for_the_exact_spiffe_id_with_a_key_made_here(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshagent")

    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        record = await cache.get("web")
        return record, store.catalog.connect.trust_domain, list(authority.csrs)

    record, trust_domain, csrs = run(scenario)
    cert = x509.load_pem_x509_certificate(record.cert_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uri = f"spiffe://{trust_domain}/ns/default/dc/{DC}/svc/web"
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [uri] and len(list(sans)) == 1
    assert record.service_uri == uri and record.service == "web" and record.index >= 1
    key = serialization.load_pem_private_key(record.private_key_pem.encode(), password=None)
    assert cert.public_key() == key.public_key()
    # The key never left: the authority saw one CSR, no private key; nothing logged it.
    assert len(csrs) == 1 and "PRIVATE KEY" not in csrs[0]
    assert record.private_key_pem.strip().splitlines()[1] not in caplog.text
    assert "PRIVATE" not in caplog.text


def test_a_blocking_get_wakes_with_a_renewed_leaf_inside_the_60_to_90_percent_window() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        seen = [await cache.get("web")]
        for _ in range(4):
            seen.append(await cache.get("web", seen[-1].index, wait=200 * HOUR))
        return seen

    seen = run(scenario)
    for old, new in itertools.pairwise(seen):
        life = old.valid_before - old.issued_at
        assert old.issued_at + 0.6 * life <= new.issued_at <= old.issued_at + 0.9 * life
        assert new.index > old.index and new.serial_number != old.serial_number
        assert new.private_key_pem != old.private_key_pem  # a new key for every leaf, as Consul does


def test_a_root_rotation_reissues_the_leaf_within_the_jitter_window_with_the_cross_signed_chain() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        first = await cache.get("web")
        await trio.sleep(HOUR)
        rotated_at = now()
        await authority.rotate()
        second = await cache.get("web", first.index, wait=10 * HOUR)
        return first, second, rotated_at, store.catalog.connect.active_root

    first, second, rotated_at, active = run(scenario)
    assert second.root_id == active.id != first.root_id
    assert rotated_at <= second.issued_at <= rotated_at + ROOT_CHANGE_JITTER
    assert second.intermediate_pems == active.intermediate_certs and len(second.intermediate_pems) == 1


def test_without_a_server_the_current_leaf_is_served_and_signing_retried_with_backoff() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        first = await cache.get("web")
        authority.down = True
        await trio.sleep(first.valid_before - now() + HOUR)  # past renewal and even past expiry
        served = await cache.get("web")
        attempts = list(authority.attempts)
        authority.down = False
        renewed = await cache.get("web", first.index, wait=2 * RETRY_MAX)
        return first, served, attempts, renewed

    first, served, attempts, renewed = run(scenario, ttl=2 * HOUR)
    assert served is first  # still served: better an old leaf than none (Consul's cache does the same)
    failing = attempts[1:]
    gaps = [b - a for a, b in itertools.pairwise(failing)]
    assert len(failing) > 5 and gaps[0] < gaps[3] and max(gaps) <= RETRY_MAX
    assert renewed.index > first.index


def test_a_first_request_without_a_server_raises_its_error_and_without_a_ca_a_leaf_error() -> None:
    async def unreachable(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        authority.down = True
        with pytest.raises(Unreachable):
            await cache.get("web")
        return True

    assert run(unreachable)

    async def no_ca(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        with pytest.raises(LeafError) as err:
            await cache.get("web")
        assert err.value.status == 500 and "not initialized" in str(err.value)
        await authority.init()  # the CA comes up: the waiting service task signs at once
        return await cache.get("web", 0, wait=60)

    assert run(no_ca, init=False).service == "web"


def test_bad_service_names_are_refused_before_any_signing() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        for name in ("", "a/b", "..", "x" * 3000, "web\n", "ü"):
            with pytest.raises(LeafError) as err:
                await cache.get(name)
            assert err.value.status == 400
        return cache.services(), authority.attempts

    assert run(scenario) == ([], [])


def test_an_unrequested_service_is_forgotten_after_72h_a_registered_one_kept_fresh() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        await cache.get("web")
        await cache.get("db")
        await trio.sleep(IDLE_TTL + 2 * HOUR)
        kept = cache.services()
        leaf = cache.peek("db")
        return kept, leaf is not None and leaf.valid_before > now()

    kept, fresh = run(scenario, registered=("db",))
    assert kept == ["db"] and fresh


def test_a_blocking_get_without_a_new_leaf_returns_the_current_one_when_the_wait_ends() -> None:
    async def scenario(cache: LeafCache, authority: LocalAuthority, store: CatalogStore) -> Any:
        first = await cache.get("web")
        start = trio.current_time()
        again = await cache.get("web", first.index, wait=60)
        return first, again, trio.current_time() - start

    first, again, waited = run(scenario)
    assert again is first and 60 <= waited < 61
