"""agent/watch_runner.py with a stand-in for the agent's API (blocking answers at an index, errors on demand) and
real handler processes: once per change, the token passed, failures logged and survived, reload."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio
from meshagent.agent.http.messages import Request, Response
from meshagent.agent.watch_runner import WatchRunner

from tests.support.wait import wait_for_async


class FakeAPI:
    """Answers every path from one (index, data), blocking while `?index=` equals the index (at most 0.1 s)."""

    def __init__(self) -> None:
        self.index = 5
        self.data: Any = []
        self.errors = 0  # the next N answers are 500s
        self.requests: list[Request] = []
        self._changed = trio.Event()

    def set(self, data: Any) -> None:
        """A write: a new index and new data."""
        self.index += 1
        self.data = data
        self._changed.set()
        self._changed = trio.Event()

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if self.errors:
            self.errors -= 1
            return 500, [], b"boom"
        asked = int(parse_qs(request.query).get("index", ["0"])[0])
        if asked == self.index:
            with trio.move_on_after(0.1):
                await self._changed.wait()
        return 200, [(b"x-consul-index", b"%d" % self.index)], json.dumps(self.data).encode()


def _runs(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _watch(out: Path, **params: Any) -> dict[str, Any]:
    return {"type": "nodes", **params, "args": ["sh", "-c", f'cat >> {out}; echo "$CONSUL_INDEX" >> {out}.idx']}


def test_handler_runs_once_per_change_with_the_token(tmp_path: Path) -> None:
    trio.run(_once_per_change, tmp_path)


async def _once_per_change(tmp_path: Path) -> None:
    api, out = FakeAPI(), tmp_path / "out"
    runner = WatchRunner([_watch(out, token="s3cret"), {"type": "event", "args": ["x"]}], api, wait="100ms")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for_async(lambda: len(_runs(out)) == 1, what="the first run")
        seen = len(api.requests)
        await wait_for_async(lambda: len(api.requests) >= seen + 3, what="blocking timeouts")
        api.set(["a"])
        await wait_for_async(lambda: len(_runs(out)) == 2, what="a run for the change")
        api.set(["a"])  # a new index, the same data: no run
        seen = len(api.requests)
        await wait_for_async(lambda: len(api.requests) >= seen + 3, what="more blocking queries")
        nursery.cancel_scope.cancel()
    assert _runs(out) == [[], ["a"]]
    assert (tmp_path / "out.idx").read_text().split() == ["5", "6"]
    assert runner.handler_runs == 2  # the event watch is user_events.py's, not run here
    request = api.requests[-1]
    assert request.path == "/v1/catalog/nodes" and "wait=100ms" in request.query and "index=7" in request.query
    assert request.header(b"x-consul-token") == b"s3cret"


def test_errors_back_off_and_failing_handlers_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    trio.run(_errors_and_failures, caplog)


async def _errors_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI()
    api.errors = 2
    watch = {"type": "key", "key": "k", "handler": "x", "args": ["sh", "-c", "echo said-this; exit 7"]}
    runner = WatchRunner([watch], api, wait="100ms", retry_base=0.01)
    with caplog.at_level(logging.DEBUG, logger="meshagent.watch"):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for_async(lambda: runner.handler_runs == 1, what="a run after two errors")
            api.set([{"Key": "k", "Value": "dg=="}])
            await wait_for_async(lambda: runner.handler_runs == 2, what="the watch carries on after a failure")
            await wait_for_async(lambda: caplog.text.count("exited with 7") == 2, what="both failures logged")
            nursery.cancel_scope.cancel()
    assert caplog.text.count("watch key errored: Unexpected response code: 500 (boom)") == 2
    assert "said-this" in caplog.text
    assert api.requests[0].path == "/v1/kv/k"


def test_reload_replaces_the_watches_and_stops_a_running_handler(tmp_path: Path) -> None:
    trio.run(_reload, tmp_path)


async def _reload(tmp_path: Path) -> None:
    api, out, started = FakeAPI(), tmp_path / "new", tmp_path / "started"
    slow = {"type": "services", "args": ["sh", "-c", f"touch {started}; exec sleep 60"]}
    runner = WatchRunner([slow], api, wait="100ms")
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for_async(started.exists, what="the slow handler to start")
        runner.reload([slow])  # the same set: nothing restarts
        runner.reload([_watch(out)])
        await wait_for_async(lambda: len(_runs(out)) == 1, what="the new watch's first run")
        nursery.cancel_scope.cancel()
    assert {r.path for r in api.requests} == {"/v1/catalog/services", "/v1/catalog/nodes"}
