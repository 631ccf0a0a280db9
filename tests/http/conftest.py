"""Fixtures for the HTTP suites: an in-process API server on a real CatalogStore."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.http_harness import ServerThread


@pytest.fixture
def api_server() -> Iterator[ServerThread]:
    """The /v1 API on 127.0.0.1:<free port>, backed by a fresh in-memory CatalogStore."""
    server = ServerThread().start()
    try:
        yield server
    finally:
        server.stop()
