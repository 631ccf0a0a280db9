"""Fixtures the CLI tests share: a real `-dev` agent per test module, and an address nothing listens on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agents import AgentProcess, scratch_dir, start_agent
from tests.support.ports import free_ports


def closed_addr() -> str:
    """An HTTP address on which nothing listens (the CLI's connection errors)."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """A `meshagent agent -dev` process of this module's own, stopped by its PID afterwards."""
    proc = start_agent(scratch_dir())
    try:
        yield proc
    finally:
        proc.stop()
