"""Fixtures for the Raft suites on real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.netns import Hosts


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Hosts for server processes (network namespaces, or 127.0.0.N), all removed at the end."""
    h = Hosts()
    yield h
    h.close()
