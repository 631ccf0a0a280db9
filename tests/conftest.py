"""Fixtures shared by every suite: real agent processes that are always stopped, also on failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agents import AgentProcess, start_agent
from tests.support.markers import mark_slow

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
NAMESPACE_FIXTURES = {"hosts"}  # tests/raft's netns.Hosts: one network namespace per server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `cluster` every test that makes network namespaces: tests/cluster and users of the `hosts`
    fixture (they need root and `ip`, take a bridge and a /24 each, and run for tens of seconds); mark
    `slow` the long tests tests/support/markers.py lists."""
    for item in items:
        if CLUSTER_DIR in item.path.parents or NAMESPACE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
        mark_slow(item)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start real agents with `agent_factory(*flags, dev=True)`; all are stopped at teardown."""
    started: list[AgentProcess] = []

    def factory(*extra: str, dev: bool = True, node: str | None = None) -> AgentProcess:
        agent = start_agent(tmp_path, *extra, dev=dev, node=node)
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        agent.stop()


@pytest.fixture
def dev_agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    """A running `meshagent agent -dev` on its own 127.0.0.N (HTTP :8500, DNS :8600)."""
    return agent_factory()
