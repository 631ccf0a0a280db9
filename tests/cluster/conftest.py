"""Fixtures for the VM-cluster suites: hosts in network namespaces (tests/support/cluster_hosts.py), always removed.

`cluster_factory(servers, clients, **kw)` makes clusters that are stopped when the test ends, pass or fail;
`cluster` is one started cluster (3 servers, 2 clients) shared by a module (a module may define its own).
Without root or `ip`, hosts fall back to loopback addresses and `cluster.isolated` is False: tests that
cut links skip then (`cluster.require_isolation()`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster_hosts import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`cluster_factory(servers=3, clients=3, **Cluster kwargs)`: a new (not yet started) cluster."""
    made: list[Cluster] = []

    def make(servers: int = 3, clients: int = 3, **kwargs: object) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", servers, clients, **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A started cluster of 3 servers and 2 clients, shared by the tests of one module."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), servers=3, clients=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()
