"""The config's `watches` (all but type event, which user_events.py runs with Serf's coalescing): each one a
watch plan (meshagent/watch_plan.py) whose blocking queries go through this agent's own HTTP API in-process, and
whose handler runs once per change with the data as JSON on stdin and CONSUL_INDEX in its environment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import trio

from ..watch_plan import RETRY_BASE, WatchState, parse_watch
from .http.messages import Request, Response

log = logging.getLogger("meshagent.watch")

OUTPUT_KEPT = 4096  # bytes of a handler's output logged (its last ones), as Consul's WatchBufSize
STOP_GRACE = 5.0  # seconds a handler gets after SIGTERM when its watch stops (reload, shutdown)
API = Callable[[Request], Awaitable[Response]]


class WatchRunner:
    """Runs every non-event watch of the config as its own task; `reload` replaces the set."""

    def __init__(self, watches: Sequence[dict[str, Any]], api: API, wait: str = "",
                 retry_base: float = RETRY_BASE) -> None:
        self._watches = [dict(w) for w in watches if w.get("type") != "event"]
        self._api = api
        self._wait = wait  # "" : the agent's default_query_time, as Consul's watches send no wait
        self._retry_base = retry_base
        self._scope: trio.CancelScope | None = None
        self.handler_runs = 0  # handlers started, for tests

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the watches until cancelled; a reload with a different set starts them over."""
        task_status.started()
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    for watch in self._watches:
                        nursery.start_soon(self._run_one, watch)
                    await trio.sleep_forever()

    def reload(self, watches: Sequence[dict[str, Any]]) -> None:
        """New config: if its watches differ, stop the running ones and start the new (Consul's reload)."""
        new = [dict(w) for w in watches if w.get("type") != "event"]
        if new != self._watches:
            self._watches = new
            if self._scope is not None:
                self._scope.cancel()

    async def _run_one(self, watch: dict[str, Any]) -> None:
        """One plan's loop: query, hand over on a change, back off on errors; never raises."""
        spec = parse_watch(watch)  # checked by the config loader already
        args = list(watch["args"])
        state = WatchState(spec, retry_base=self._retry_base)
        headers = [(b"x-consul-token", spec.token.encode())] if spec.token else []
        while True:
            path, params = spec.query(state.next_index(), self._wait)
            try:
                status, answer_headers, body = await self._api(Request("GET", path, urlencode(params), headers, b""))
                index_header = next((v.decode("latin-1") for k, v in answer_headers if k == b"x-consul-index"),
                                    None)
                fire, index, data = state.answer(status, index_header, body)
            except Exception as exc:  # QueryError, or an endpoint's bug: the watch lives on, as the agent does
                delay = state.failed()
                log.error("watch %s errored: %s; retry in %gs", spec.type, exc, delay)
                await trio.sleep(delay)  # Consul's backoff between failed queries
                continue
            if fire:
                await self._handle(args, spec.type, index, data)

    async def _handle(self, args: list[str], kind: str, index: int, data: Any) -> None:
        """Run a handler to completion: output logged (debug; its last OUTPUT_KEPT bytes), failures logged."""
        self.handler_runs += 1
        env = {**os.environ, "CONSUL_INDEX": str(index)}
        output = bytearray()
        total = 0
        try:
            process = await trio.lowlevel.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            log.error("watch %s: cannot start handler %s: %s", kind, args[0], exc)
            return
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        async def feed() -> None:
            try:
                await stdin.send_all(json.dumps(data).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a handler that does not read its input is fine
            finally:
                await stdin.aclose()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                while chunk := await stdout.receive_some(65536):
                    total += len(chunk)
                    output += chunk
                    del output[:-OUTPUT_KEPT]
            code = await process.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                process.terminate()
                with trio.move_on_after(STOP_GRACE):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            raise
        finally:
            await stdout.aclose()
        text = output.decode(errors="replace")
        if total > OUTPUT_KEPT:
            text = f"Captured {OUTPUT_KEPT} of {total} bytes\n...\n{text}"
        if code != 0:
            log.error("watch %s: handler %s exited with %d: %s", kind, args[0], code, text.strip()[-500:])
        else:
            log.debug("watch %s: handler %s output: %s", kind, args[0], text)
