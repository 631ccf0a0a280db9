"""Fixtures for the DNS suites: `dns_server(config=None, limits=None)` starts an in-process responder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dns_harness import DNSServers, dns_servers


@pytest.fixture
def dns_server() -> Iterator[DNSServers]:
    """Start DNS servers on free loopback hosts; every one is stopped after the test."""
    yield from dns_servers()
