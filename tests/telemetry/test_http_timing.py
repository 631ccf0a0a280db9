"""Consul's HTTP timing keys: a request's route pattern (not its path) names the summary, so per-key KV reads
share `http.GET.v1.kv._`; 404s and 405s are not timed, and a failing handler is still timed."""

from __future__ import annotations

import pytest
import trio
from meshagent.agent.http.messages import Request, Response
from meshagent.agent.telemetry.http_timing import TimedHandler, route_key, route_of
from meshagent.agent.telemetry.registry import Registry, Summary


def test_route_keys_are_consuls() -> None:
    assert route_key("/v1/kv/") == "v1.kv._"
    assert route_key("/v1/agent/metrics") == "v1.agent.metrics"
    assert route_of("/v1/kv/a/b/c") == "/v1/kv/"
    assert route_of("/v1/agent/metrics") == "/v1/agent/metrics"
    assert route_of("/v2/nothing") is None


def test_requests_are_timed_by_route_and_method() -> None:
    reg = Registry()

    async def answer(request: Request) -> Response:
        if request.path.endswith("boom"):
            raise RuntimeError("boom")
        return 200, [], b""

    handler = TimedHandler(answer, reg)

    async def main() -> None:
        for path in ("/v1/kv/a", "/v1/kv/b/c", "/v2/none", "/v1/kv/boom"):
            try:
                await handler(Request("GET", path, "", [], b""))
            except RuntimeError:
                pass
        await handler(Request("PATCH", "/v1/kv/a", "", [], b""))  # no such method on the route: a 405
        await handler(Request("PUT", "/v1/kv/a", "", [], b""))

    trio.run(main)
    kv_get = reg.summary("http.GET.v1.kv._")
    assert kv_get.count == 3  # the raising handler counted too
    assert reg.summary("http.PUT.v1.kv._").count == 1
    assert reg.summary("api.http", labels={"method": "GET", "path": "v1.kv._"}).count == 3
    names = set(reg.families)
    assert not any("PATCH" in n or "v2" in n for n in names), names
    assert isinstance(reg.families["http.GET.v1.kv._"].members[()], Summary)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_head_is_timed_under_its_own_method(method: str) -> None:
    reg = Registry()

    async def answer(request: Request) -> Response:
        return 200, [], b""

    trio.run(TimedHandler(answer, reg), Request(method, "/v1/agent/metrics", "", [], b""))
    assert reg.summary(f"http.{method}.v1.agent.metrics").count == 1
