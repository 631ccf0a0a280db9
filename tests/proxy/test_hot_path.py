"""The data plane's hot-path shortcuts keep the behaviour they replace: P2C with one or two endpoints,
Endpoint's cached hash, the reactor's clock."""

from __future__ import annotations

import pickle
import random
import time
from collections import Counter

import pytest
from meshagent.proxy.balancer import LeastRequest, PeakEwma
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import Endpoint, ProxySnapshot, TLSMaterial, Upstream


class CountingRandom(random.Random):
    """Counts draws: the one-endpoint path must not draw at all."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


@pytest.mark.parametrize("cls", [PeakEwma, LeastRequest])
def test_one_endpoint_is_picked_without_drawing(cls: type) -> None:
    rng = CountingRandom(1)
    b = cls(rng)
    ep = Endpoint("127.0.25.1", 21000)
    b.update([ep])
    rng.draws = 0
    assert all(b.pick() is ep for _ in range(100))
    assert rng.draws == 0
    assert b.pick(exclude={Endpoint("127.0.25.1", 21000)}) is None  # an equal endpoint excludes it
    assert b.pick(exclude={Endpoint("127.0.25.2", 21000)}) is ep


@pytest.mark.parametrize("cls", [PeakEwma, LeastRequest])
def test_two_equal_endpoints_tie_break_at_random(cls: type) -> None:
    b = cls(random.Random(7))
    eps = [Endpoint("127.0.25.1", 21000), Endpoint("127.0.25.2", 21000)]
    b.update(eps)
    share = Counter(b.pick() for _ in range(2000))
    assert set(share) == set(eps)
    assert 800 < share[eps[0]] < 1200
    assert b.pick(exclude={eps[0]}) == eps[1]


def test_two_endpoints_first_candidate_follows_weight() -> None:
    b = PeakEwma(random.Random(3))
    eps = [Endpoint("127.0.25.1", 21000, weight=9), Endpoint("127.0.25.2", 21000, weight=1)]
    b.update(eps)
    share = Counter(b.pick() for _ in range(4000))  # equal costs: the tie goes to the first drawn
    assert 0.85 < share[eps[0]] / 4000 < 0.95


def test_busier_of_two_is_avoided() -> None:
    b = LeastRequest(random.Random(5))
    eps = [Endpoint("127.0.25.1", 21000), Endpoint("127.0.25.2", 21000)]
    b.update(eps)
    b.started(eps[0])
    assert all(b.pick() == eps[1] for _ in range(50))


def test_endpoint_hash_is_cached_and_stays_off_the_wire() -> None:
    a = Endpoint("127.0.25.1", 21000, 2, "n1", "db-sidecar")
    b = Endpoint("127.0.25.1", 21000, 2, "n1", "db-sidecar")
    assert a == b and a is not b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != Endpoint("127.0.25.1", 21001, 2, "n1", "db-sidecar")
    c = pickle.loads(pickle.dumps(a))
    assert c == a and hash(c) == hash(a)
    snap = ProxySnapshot(
        proxy_id="web-sidecar-proxy", service="web", datacenter="dc1",
        tls=TLSMaterial("CERT", "KEY", ("ROOT",), "td.mesh", "spiffe://td.mesh/ns/default/dc/dc1/svc/web"),
        public_address="127.0.25.1", public_port=21000, local_service_port=8080,
        upstreams=(Upstream("db", "127.0.25.1", 9191, endpoints=(a, Endpoint("127.0.25.2", 21000))),))
    wire = snap.to_wire()
    for up in wire["upstreams"]:
        for ep in up["endpoints"]:
            assert set(ep) == {"address", "port", "weight", "node", "service_id"}
    assert ProxySnapshot.from_wire(wire) == snap


def test_reactor_now_is_the_monotonic_clock() -> None:
    r = Reactor()
    try:
        before = time.monotonic()
        assert before <= r.now() <= time.monotonic()
    finally:
        r.close()


def test_endpoint_equality_compares_every_field() -> None:
    a = Endpoint("127.0.25.1", 21000, 2, "n1", "db-sidecar")
    assert a == a and not a != a
    assert a == Endpoint("127.0.25.1", 21000, 2, "n1", "db-sidecar")
    others = [("127.0.25.9", 21000, 2, "n1", "db-sidecar"), ("127.0.25.1", 21009, 2, "n1", "db-sidecar"),
              ("127.0.25.1", 21000, 3, "n1", "db-sidecar"), ("127.0.25.1", 21000, 2, "n9", "db-sidecar"),
              ("127.0.25.1", 21000, 2, "n1", "db-sidecar-2")]
    for fields in others:
        other = Endpoint(*fields)  # type: ignore[arg-type]
        assert a != other and not a == other
    assert a != ("127.0.25.1", 21000, 2, "n1", "db-sidecar") and a != 1
