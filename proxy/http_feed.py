"""HTTPFeed: a standalone proxy's snapshots (`meshagent connect proxy`), read from its agent's
`/v1/agent/connect/proxy/:id` with blocking queries.

The agent is a peer on the network here, so every answer is hostile input: the body is read up to
MAX_BODY, must be JSON, and must pass `ProxySnapshot.from_wire`; the version header must be a positive
integer. While the agent cannot be reached or answers errors, the feed backs off (exponential, jittered)
and the proxy keeps its last good snapshot: open connections and listeners are never touched by an outage.
The sidecar itself gone (404), no longer a connect-proxy (400) or taken back by the agent (`embedded` no
longer false, seen by `watch_registration`) is different: FeedStopped, and the command stops its workers.
"""

from __future__ import annotations

import json
import logging
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from .snapshot import ProxyConfigError, ProxySnapshot

log = logging.getLogger("meshagent.proxy.feed")

MAX_BODY = 64 * 1024 * 1024  # a snapshot with every list at its bound stays well under this
DEFAULT_WAIT_S = 300.0  # blocking wait asked of the agent (Consul's default query time)
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 30.0
_SLACK_S = 30.0  # the agent adds up to wait/16 of jitter and may be slow: the read timeout allows for it
STOP_AFTER = 3  # consecutive "this proxy is gone" answers before the feed gives up (one could be a race)
REGISTRATION_POLL_S = 1.0  # how often watch_registration reads /v1/agent/service/:id
_CONFIRM_S = 0.25  # a "gone" answer is re-checked this soon
MAX_SERVICE_BODY = 4 * 1024 * 1024


class FeedError(Exception):
    """The agent's answer could not give a snapshot. `fatal`: retrying cannot help (unknown id, not a
    connect-proxy); otherwise the agent may come back."""

    def __init__(self, message: str, *, fatal: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status


class FeedStopped(Exception):
    """The proxy must stop: its sidecar was deregistered, is no longer a connect-proxy, or the agent runs
    it itself now (`embedded`). The message says which."""


def registration_problem(svc: object, proxy_id: str) -> str:
    """Why `svc` (a /v1/agent/service/:id body) means this command must not run proxy `proxy_id`; "" if none."""
    if not isinstance(svc, dict):
        return ""  # not the agent's answer: judged as an outage, not as a stop
    if svc.get("Kind") != "connect-proxy":
        return f"service {proxy_id!r} is no longer a connect-proxy (its kind is {svc.get('Kind') or 'typical'})"
    proxy = svc.get("Proxy")
    config = proxy.get("Config") if isinstance(proxy, dict) else None
    if not (isinstance(config, dict) and config.get("embedded") is False):
        return (f"proxy {proxy_id!r} is no longer registered with embedded = false: the agent runs its data "
                f"plane itself now (two data planes on one SO_REUSEPORT port would split its connections)")
    return ""


@dataclass(slots=True)
class FeedStatus:
    """What the feed knows, for logs and tests: the version served, and the last problem."""

    version: int = 0
    updates: int = 0  # snapshots handed on
    errors: int = 0  # failed polls since the start
    last_error: str = ""
    healthy: bool = False  # the last poll succeeded


def _backoff(failures: int, rng: random.Random, low: float = BACKOFF_MIN_S, high: float = BACKOFF_MAX_S) -> float:
    """Seconds before retry number `failures` (1, 2, ...): doubling from `low` up to `high`, full jitter over
    the upper half so that many proxies do not hammer a restarted agent in step."""
    ceiling = min(high, low * (2.0 ** min(failures - 1, 30)))
    return rng.uniform(ceiling / 2, ceiling)


class HTTPFeed:
    """Polls one proxy's configuration from the agent at `base_url` (http://host:port)."""

    def __init__(self, base_url: str, proxy_id: str, *, token: str = "", wait_s: float = DEFAULT_WAIT_S,
                 backoff_min_s: float = BACKOFF_MIN_S, backoff_max_s: float = BACKOFF_MAX_S,
                 rng: random.Random | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.proxy_id = proxy_id
        self.path = "/v1/agent/connect/proxy/" + urllib.parse.quote(proxy_id, safe="")
        self.wait_s = wait_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.service_path = "/v1/agent/service/" + urllib.parse.quote(proxy_id, safe="")
        self.status = FeedStatus()
        self._rng = rng or random.Random()
        self._headers = {"X-Consul-Token": token} if token else {}

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for this feed (the caller closes it)."""
        return httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                 timeout=httpx.Timeout(10.0, read=self.wait_s + _SLACK_S))

    async def fetch(self, client: httpx.AsyncClient, index: int = 0) -> tuple[int, ProxySnapshot]:
        """One poll: (version, snapshot), blocking while the version is still `index` (0: answer at once)."""
        # ?wait without ?index bounds how long the agent waits for a first snapshot (a leaf being signed).
        params = {"wait": f"{max(1, int(self.wait_s))}s"}
        if index > 0:
            params["index"] = str(index)
        where = f"the agent at {self.base_url}"
        try:
            async with client.stream("GET", self.path, params=params) as resp:
                body = await _read_bounded(resp, MAX_BODY)
        except httpx.ConnectError as exc:
            raise FeedError(f"cannot connect to {where} ({_reason(exc)}); is the agent running?") from None
        except httpx.TimeoutException:
            raise FeedError(f"{where} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise FeedError(f"{type(exc).__name__} talking to {where}: {exc}") from None
        text = _one_line(body)
        if resp.status_code in (400, 404):  # the agent's answer names the id and the reason
            raise FeedError(f"{where} refused proxy {self.proxy_id!r}: {text}", fatal=True,
                            status=resp.status_code)
        if resp.status_code != 200:
            raise FeedError(f"{where} answered {resp.status_code} for proxy {self.proxy_id!r}: {text}",
                            status=resp.status_code)
        version = _version(resp.headers.get("x-consul-index", ""))
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise FeedError(f"{where} sent a configuration that is not JSON: {text[:120]}") from None
        try:
            snapshot = ProxySnapshot.from_wire(raw)
        except ProxyConfigError as exc:
            raise FeedError(f"{where} sent a bad configuration: {exc}") from None
        if snapshot.proxy_id != self.proxy_id:
            raise FeedError(f"{where} sent the configuration of {snapshot.proxy_id!r}, not {self.proxy_id!r}")
        return version, snapshot

    async def first(self) -> ProxySnapshot:
        """The current snapshot at once (FeedError when there is none), as the start of `run`."""
        async with self.client() as client:
            version, snapshot = await self.fetch(client)
        self._served(version)
        return snapshot

    async def run(self, on_snapshot: Callable[[ProxySnapshot], None], last: ProxySnapshot | None = None) -> None:
        """Hand every new snapshot to `on_snapshot` until cancelled; errors back off and keep the last good
        snapshot where it is. `last`: the snapshot already in use (from `first`). Raises FeedStopped after
        STOP_AFTER answers in a row saying the proxy is gone (404) or not a connect-proxy (400)."""
        index = self.status.version if last is not None else 0
        failures = gone = 0
        async with self.client() as client:
            while True:
                try:
                    version, snapshot = await self.fetch(client, index)
                except FeedError as exc:
                    gone = gone + 1 if exc.fatal else 0
                    if gone >= STOP_AFTER:
                        what = "was deregistered from" if exc.status == 404 else "is no longer a connect-proxy on"
                        raise FeedStopped(f"proxy {self.proxy_id!r} {what} the agent ({exc})") from None
                    failures += 1
                    self.status.errors += 1
                    self.status.healthy = False
                    delay = _backoff(failures, self._rng, self.backoff_min_s, self.backoff_max_s)
                    if str(exc) != self.status.last_error:  # once per kind of problem, not per retry
                        log.warning("proxy %s: %s; keeping configuration version %d, retrying with backoff "
                                    "(up to %g s apart)", self.proxy_id, exc, self.status.version,
                                    self.backoff_max_s)
                    self.status.last_error = str(exc)
                    await trio.sleep(delay)
                    continue
                if failures:
                    log.info("proxy %s: the agent answers again (version %d)", self.proxy_id, version)
                failures = gone = 0
                self.status.healthy, self.status.last_error = True, ""
                # Judged by content, not only by version: a restarted agent counts from 1 again (Consul
                # resets the index when it goes backwards) and may reach our number with other content.
                index = version
                if snapshot != last:
                    on_snapshot(snapshot)
                    self._served(version)
                    last = snapshot

    async def watch_registration(self, interval_s: float = REGISTRATION_POLL_S) -> None:
        """Read the sidecar's registration every `interval_s` until cancelled; FeedStopped once STOP_AFTER
        reads in a row find it deregistered, not a connect-proxy, or `embedded` no longer false. Polled: the
        agent's /v1/agent/service/:id does not block, and a flip of `embedded` changes no snapshot version.
        An unreachable agent or an odd answer is an outage (the feed reports it), never a stop."""
        gone = 0
        async with self.client() as client:
            while True:
                problem = await self._registration(client)
                gone = gone + 1 if problem else 0
                if gone >= STOP_AFTER:
                    raise FeedStopped(problem)
                await trio.sleep(min(_CONFIRM_S, interval_s) if gone else interval_s)

    async def _registration(self, client: httpx.AsyncClient) -> str:
        try:
            async with client.stream("GET", self.service_path) as resp:
                body = await _read_bounded(resp, MAX_SERVICE_BODY)
        except (httpx.HTTPError, FeedError):
            return ""
        if resp.status_code == 404:
            return f"proxy {self.proxy_id!r} was deregistered from the agent"
        if resp.status_code != 200:
            return ""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return ""
        return registration_problem(data, self.proxy_id)

    def _served(self, version: int) -> None:
        self.status.version = version
        self.status.updates += 1
        self.status.healthy = True


async def _read_bounded(resp: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():  # decoded: the bound holds after gzip too
        size += len(chunk)
        if size > limit:
            raise FeedError(f"the agent's answer is larger than {limit // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _version(header: str) -> int:
    if not header.isdigit() or len(header) > 19 or int(header) < 1:
        raise FeedError(f"the agent's X-Consul-Index {header[:40]!r} is not a positive integer")
    return int(header)


def _one_line(body: bytes) -> str:
    text = " ".join(body[:2000].decode("utf-8", "replace").split())
    return "".join(ch for ch in text if ch.isprintable())[:500]


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or type(exc).__name__
