"""Helpers for the traffic-management acceptance suite (tests/cluster/test_traffic_management.py, issue 17):
service files with Meta and a TTL check, wrk as a load the test stops when it has seen enough, the apps'
counters sampled over time, a sidecar's compiled splits read from `/v1/agent/connect/proxy/:id` (blocking),
and config-entry writes whose refusal the test reads.

Every tool runs as a real process in a host's namespace; nothing is mocked.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cluster_hosts import Host
from .proxy_mesh import App, UpstreamSpec, Wrk, parse_wrk, service_hcl

MAX_LOAD_S = 60  # wrk's own bound: a load the test forgets to stop still ends


def traffic_service_hcl(name: str, port: int, *, service_id: str, meta: Mapping[str, str] | None = None,
                        ttl_check: str | None = None, upstreams: Sequence[UpstreamSpec] = (),
                        proxy_config: Mapping[str, Any] | None = None, tcp_check: bool = True) -> str:
    """proxy_mesh.service_hcl plus `meta { ... }` and, with `ttl_check` (its id), a TTL check that starts
    passing: the test fails it (PUT /v1/agent/check/fail/:id) while the app keeps serving."""
    lines = service_hcl(name, port, service_id=service_id, upstreams=upstreams, proxy_config=proxy_config,
                        tcp_check=tcp_check).split("\n")
    extra = []
    if meta:
        extra += ["  meta {", *(f'    {k} = "{v}"' for k, v in meta.items()), "  }"]
    if ttl_check:
        extra += ["  check {", f'    id     = "{ttl_check}"', '    name   = "test-driven health"',
                  '    ttl    = "30m"', '    status = "passing"', "  }"]
    # service_hcl's first four lines are `service {`, name, id and port: the additions follow them.
    return "\n".join([*lines[:4], *extra, *lines[4:]])


# ---------------------------------------------------------------------- load the test stops


class Load:
    """wrk (keep-alive) inside a host's namespace until stop(): SIGINT makes wrk print its summary, so a
    test runs it exactly as long as its counters need instead of guessing a duration."""

    def __init__(self, host: Host, url: str, connections: int = 8, headers: Sequence[str] = ()) -> None:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{MAX_LOAD_S}s", "--timeout=10s"]
        for h in headers:
            argv += ["-H", h]
        self.proc = subprocess.Popen([*host.prefix, *argv, url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._result: Wrk | None = None

    def stop(self, timeout: float = 20.0) -> Wrk:
        """Stop wrk (only the process this object started) and parse its summary."""
        if self._result is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate(timeout=10)
            self._result = parse_wrk(out)
        return self._result

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ---------------------------------------------------------------------- the apps' counters over time


@dataclass
class Sample:
    """The apps' `served` counters at one moment (monotonic clock of the test process)."""

    at: float
    served: dict[str, int]

    def total(self, names: Sequence[str]) -> int:
        return sum(self.served[n] for n in names)


def sample(apps: Mapping[str, App]) -> Sample:
    """Every app's served count, read now; `at` is the time before the first read (every counter was read
    at or after it)."""
    at = time.monotonic()
    return Sample(at, {name: app.served() for name, app in apps.items()})


def served_between(apps: Mapping[str, App], since: float, until: float = float("inf")) -> dict[str, int]:
    """Each app's mesh requests that arrived in [since, until) (time.monotonic())."""
    return {name: app.served_between(since, until) for name, app in apps.items()}


def share_between(apps: Mapping[str, App], part: Sequence[str], since: float, until: float) -> tuple[float, int]:
    """(fraction of the apps' requests in [since, until) that `part` served, that many requests in all)."""
    counts = served_between(apps, since, until)
    n = sum(counts.values())
    return (sum(counts[p] for p in part) / n if n else 0.0), n


# ---------------------------------------------------------------------- a sidecar's compiled chain


def proxy_snapshot(host: Host, proxy_id: str, index: int = 0, wait: str = "10s") -> tuple[int, dict[str, Any]]:
    """(X-Consul-Index, body) of GET /v1/agent/connect/proxy/:id, blocking past `index` when it is set."""
    query = f"?index={index}&wait={wait}" if index else ""
    resp = host.cluster.http_client.get(f"{host.http_addr}/v1/agent/connect/proxy/{proxy_id}{query}", timeout=30)
    resp.raise_for_status()
    body = resp.json()
    assert isinstance(body, dict), body
    return int(resp.headers.get("x-consul-index", "0")), body


def default_splits(snapshot: Mapping[str, Any], upstream: str) -> dict[str, int]:
    """The catch-all (last) route's splits of `upstream` as target id → weight (hundredths of a percent);
    {} for a flat upstream."""
    [up] = [u for u in snapshot["upstreams"] if u["destination_name"] == upstream]
    routes = up.get("routes") or []
    return {s["target"]: int(s["weight"]) for s in routes[-1]["splits"]} if routes else {}


class SplitWatch:
    """In a thread per host: blocking reads of a sidecar's snapshot until its default route's splits are
    `want`; `seen[host name]` is the monotonic time each first showed them."""

    def __init__(self, hosts: Sequence[tuple[Host, str]], upstream: str, want: Mapping[str, int],
                 timeout: float = 15.0) -> None:
        self.want, self.upstream = dict(want), upstream
        self.seen: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self._deadline = time.monotonic() + timeout
        # Each watcher reads its current version first, so the blocking read after the write wakes on it.
        self._start = {host.name: proxy_snapshot(host, proxy_id)[0] for host, proxy_id in hosts}
        self._threads = [threading.Thread(target=self._watch, args=(h, p), daemon=True) for h, p in hosts]
        for t in self._threads:
            t.start()

    def _watch(self, host: Host, proxy_id: str) -> None:
        index = self._start[host.name]
        while time.monotonic() < self._deadline:
            try:
                index, body = proxy_snapshot(host, proxy_id, index)
            except Exception as exc:  # kept for the failure message; the loop retries
                self.errors[host.name] = repr(exc)
                threading.Event().wait(0.1)  # a retry pace after a failed read, not a synchronisation
                continue
            if default_splits(body, self.upstream) == self.want:
                self.seen[host.name] = time.monotonic()
                return

    def join(self) -> dict[str, float]:
        """Wait for every watcher (each ends by its deadline); the times seen."""
        for t in self._threads:
            t.join(max(0.0, self._deadline - time.monotonic()) + 35)
        return dict(self.seen)


# ---------------------------------------------------------------------- config entries


def write_entry(host: Host, entry: Mapping[str, Any]) -> tuple[int, str]:
    """PUT /v1/config with `entry` on this host's agent (a client forwards it to the leader): (status,
    body text), never raising for a refusal."""
    resp = host.cluster.http_client.put(f"{host.http_addr}/v1/config", json=dict(entry), timeout=10)
    return resp.status_code, resp.text


def splitter(service: str, weights: Mapping[str, float]) -> dict[str, Any]:
    """A service-splitter for `service` with subset → percent."""
    return {"Kind": "service-splitter", "Name": service,
            "Splits": [{"Weight": w, "ServiceSubset": s} for s, w in weights.items()]}


def write_ok(host: Host, entry: Mapping[str, Any]) -> None:
    """Write `entry` through `host` and assert it was accepted. Entries written back to back through one
    client refer to each other (a resolver, then its splitter): the client must check references against
    the leader's state, not a replica behind its own previous write (agent/http/config_api.py put)."""
    code, body = write_entry(host, entry)
    assert code == 200 and body.strip() == "true", f"PUT /v1/config {entry['Kind']} {entry['Name']}: {code} {body}"
