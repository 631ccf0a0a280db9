"""Fuzz the in-process HTTP API with 10,000 random and mutated requests; it must keep answering correctly."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import consul
import pytest

from tests.support.http_fuzz import run_fuzz
from tests.support.http_harness import FakeAgent, ServerThread, register_instance


@pytest.fixture
def fuzz_server() -> Iterator[ServerThread]:
    agent = FakeAgent()
    # Fuzzed `?index=` values must not park connections for the default five minutes.
    agent.config.default_query_time = 0.05
    agent.config.max_query_time = 0.1
    server = ServerThread(agent=agent).start()
    try:
        yield server
    finally:
        server.stop()


def test_fuzz_10000_requests(fuzz_server: ServerThread) -> None:
    seed = int(os.environ.get("MESH_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"HTTP fuzz seed: {seed} (re-run with MESH_FUZZ_SEED={seed})")
    register_instance(fuzz_server, "n1", "web", tags=["primary"])
    report = run_fuzz("127.0.0.1", fuzz_server.port, seed, 10_000)
    print(f"{report.cases} connections, {report.responses} responses, statuses {sorted(report.statuses.items())}")
    assert not report.problems, f"seed {seed}: " + "\n".join(report.problems[:20])
    assert report.statuses.get(200, 0) > 500 and report.statuses.get(400, 0) > 500

    # Correct answers afterwards, through an unmodified client.
    c = consul.Consul(host="127.0.0.1", port=fuzz_server.port)
    assert c.kv.put("after/fuzz", "ok") is True
    assert c.kv.get("after/fuzz")[1]["Value"] == b"ok"
    assert "web" in c.catalog.services()[1]
    assert [e["Node"]["Node"] for e in c.health.service("web", passing=True)[1]] == ["n1"]
    assert fuzz_server.server.connections <= 1
