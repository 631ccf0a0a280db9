"""ProxySupervisor with real worker processes: snapshots reach every worker, a SIGKILLed worker comes back
with the current snapshot, metrics merge across workers and never go backwards, cancelling leaves no
process, the per-proxy /metrics listener; and a static worker with the real data plane.

Most tests run workers with a small stand-in data plane (`StandInDataPlane`, below: one request counted per
snapshot applied), so what they check is the supervisor's, not the data path's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from meshagent.proxy.metrics import ProxyMetrics
from meshagent.proxy.snapshot import ProxySnapshot, TLSMaterial
from meshagent.proxy.supervisor import BACKOFF_MAX_S, BACKOFF_MIN_S, ProxySupervisor, next_backoff
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dataplane_harness import pid_alive, server_snapshot
from tests.support.ports import free_ports
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.16.1"
STAND_IN = ["--dataplane", "tests.proxy.test_supervisor:StandInDataPlane"]


class StandInDataPlane:
    """Counts one inbound request per snapshot applied; a proxy_id ending in "-bad" reports a bind error."""

    def __init__(self, reactor: Any, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def apply(self, snapshot: ProxySnapshot) -> list[str]:
        self.metrics.request("inbound", "", 200, 0.001)
        return [f"{HOST}:1: bind failed (stand-in)"] if snapshot.proxy_id.endswith("-bad") else []


def snapshot(version: int, workers: int = 2, proxy_id: str = "web-sidecar-proxy", **kw: Any) -> ProxySnapshot:
    tls = TLSMaterial(cert_pem="", key_pem="", roots_pem=(), trust_domain="t.mesh",
                      spiffe_id="spiffe://t.mesh/ns/default/dc/dc1/svc/web")
    return ProxySnapshot(proxy_id=proxy_id, service="web", datacenter="dc1", tls=tls, public_address=HOST,
                         public_port=21000, workers=workers, version=version, **kw)


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers import the stand-in from this file: the repo root on their path."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


async def until(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `cond` inside trio until truthy, or fail naming `what`."""
    with trio.move_on_after(timeout):
        while True:
            value = cond()
            if value:
                return value
            await trio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_applied(sup: ProxySupervisor, version: int, n: int) -> bool:
    workers = [w for w in sup.status()["workers"] if w["alive"]]
    return len(workers) == n and all(w["applied_version"] == version for w in workers)


def requests(wire_text: str) -> float:
    for family in text_string_to_metric_families(wire_text):
        if family.name == "meshagent_proxy_requests":
            return sum(s.value for s in family.samples if s.name == "meshagent_proxy_requests_total")
    return 0.0


def run(body: Callable[[ProxySupervisor, trio.Nursery], Awaitable[None]], **kw: Any) -> list[int]:
    """Run `body` with a started supervisor; cancel it afterwards; every worker PID it ever saw."""
    seen: set[int] = set()

    async def main() -> None:
        sup = ProxySupervisor("web-sidecar-proxy", worker_args=kw.get("worker_args", STAND_IN))
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)

            async def watch() -> None:
                while True:
                    seen.update(sup.worker_pids())
                    await trio.sleep(0.01)
            nursery.start_soon(watch)
            try:
                await body(sup, nursery)
            finally:
                seen.update(sup.worker_pids())
                nursery.cancel_scope.cancel()
        assert sup.worker_pids() == []

    trio.run(main)
    return sorted(seen)


def test_snapshots_reach_every_worker_and_metrics_merge_across_them() -> None:
    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        assert sup.worker_pids() == []  # nothing before the first snapshot
        sup.update(snapshot(1))
        await until(lambda: all_applied(sup, 1, 2), "both workers on version 1")
        sup.update(snapshot(2))
        sup.update(snapshot(3))  # latest wins: 2 may be skipped, 3 must arrive
        await until(lambda: all_applied(sup, 3, 2), "both workers on version 3")
        pids = sup.worker_pids()
        assert len(set(pids)) == 2
        # below the agent's priority, so gossip, Raft and DNS are scheduled first under a saturating load
        assert {os.getpriority(os.PRIO_PROCESS, p) - os.getpriority(os.PRIO_PROCESS, 0) for p in pids} == {5}
        from meshagent.proxy.metrics import render_prometheus
        total = requests(render_prometheus(await sup.metrics()))
        assert total in (4, 5, 6)  # each worker counted its applies: 2 or 3 each (2 may be skipped)
        assert sup.status()["restarts"] == 0

    pids = run(body)
    assert pids and not any(pid_alive(p) for p in pids)


@pytest.mark.slow  # several worker processes, restarts with real backoff
def test_a_killed_worker_is_restarted_with_the_current_snapshot_and_counters_never_go_back() -> None:
    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        from meshagent.proxy.metrics import render_prometheus
        sup.update(snapshot(1))
        await until(lambda: all_applied(sup, 1, 2), "both workers on version 1")
        before = requests(render_prometheus(await sup.metrics()))
        assert before == 2
        victim = sup.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: victim not in sup.worker_pids(), "the killed worker noticed")
        sup.update(snapshot(2))  # while it is down: the restarted worker must get this one
        await until(lambda: all_applied(sup, 2, 2) and victim not in sup.worker_pids(),
                    "a new worker on version 2")
        after = requests(render_prometheus(await sup.metrics()))
        # dead worker's last totals (1) + survivor (2 applies) + the new worker (1 apply)
        assert after == 4 >= before
        status = sup.status()
        assert status["restarts"] == 1
        died = [w for w in status["workers"] if w["restarts"]]
        assert len(died) == 1 and "SIGKILL" in died[0]["last_exit"]

    run(body)


@pytest.mark.slow  # several worker processes, restarts with real backoff
def test_cancelling_the_supervisor_leaves_no_worker_process() -> None:
    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        sup.update(snapshot(1, workers=3))
        await until(lambda: all_applied(sup, 1, 3), "three workers")

    pids = run(body)
    assert len(pids) == 3
    assert [p for p in pids if pid_alive(p)] == []


def test_fewer_workers_retires_the_extra_ones_and_apply_errors_show_in_status() -> None:
    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        sup.update(snapshot(1, workers=2))
        await until(lambda: all_applied(sup, 1, 2), "two workers")
        pids = sup.worker_pids()
        sup.update(snapshot(2, workers=1, proxy_id="web-bad"))
        await until(lambda: all_applied(sup, 2, 1), "one worker left")
        gone = [p for p in pids if p not in sup.worker_pids()]
        assert len(gone) == 1
        await until(lambda: not pid_alive(gone[0]), "the retired worker exited")
        status = sup.status()
        assert status["restarts"] == 0
        assert [w["errors"] for w in status["workers"]] == [[f"{HOST}:1: bind failed (stand-in)"]]

    run(body)


def test_the_per_proxy_metrics_listener_serves_prometheus_text() -> None:
    port = free_ports(1, HOST)[0]

    async def get(path: str) -> bytes:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        return data

    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        sup.update(snapshot(1, metrics_bind=f"{HOST}:{port}"))
        await until(lambda: all_applied(sup, 1, 2) and sup.metrics_address, "workers and the listener")
        data = await get("/metrics")
        head, _, body_bytes = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"version=0.0.4" in head
        assert requests(body_bytes.decode()) == 2
        assert (await get("/other")).startswith(b"HTTP/1.1 404")
        rude = trio.socket.socket()  # half a request, then a reset: the listener shrugs
        await rude.connect((HOST, port))
        await rude.send(b"GET /met")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()
        assert (await get("/metrics")).startswith(b"HTTP/1.1 200")
        taken = socket.socket()
        taken.bind((HOST, 0))
        try:  # a bind that fails is reported, not fatal
            sup.update(snapshot(2, metrics_bind=f"{HOST}:{taken.getsockname()[1]}"))
            await until(lambda: sup.status()["metrics_error"], "the bind error in status")
            assert all_applied(sup, 2, 2) or await until(lambda: all_applied(sup, 2, 2), "version 2")
        finally:
            taken.close()

    run(body)


# ---------------------------------------------------------------------- the real data plane


def real_snapshot(tmp: Path, version: int, workers: int, metrics_port: int = 0) -> ProxySnapshot:
    from tests.support.mesh_certs import MeshCA  # here: workers import this module for the stand-in
    public, app = free_ports(2, HOST)
    return server_snapshot(MeshCA(), HOST, public, app, service="web", workers=workers, version=version,
                           metrics_bind=f"{HOST}:{metrics_port}" if metrics_port else "")


@pytest.mark.slow  # several worker processes, restarts with real backoff
def test_real_workers_share_the_public_listener_and_survive_a_kill(tmp_path: Path) -> None:
    snap = real_snapshot(tmp_path, 1, workers=2)

    def connects() -> bool:
        with socket.create_connection((HOST, snap.public_port), timeout=5):
            return True

    async def body(sup: ProxySupervisor, _: trio.Nursery) -> None:
        sup.update(snap)
        await until(lambda: all_applied(sup, 1, 2), "both real workers applied")
        assert [w["errors"] for w in sup.status()["workers"]] == [[], []]  # SO_REUSEPORT: both bound
        assert await trio.to_thread.run_sync(connects)
        victim = sup.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: all_applied(sup, 1, 2) and victim not in sup.worker_pids(), "a replacement")
        assert [w["errors"] for w in sup.status()["workers"]] == [[], []]
        assert await trio.to_thread.run_sync(connects)

    pids = run(body, worker_args=())
    assert [p for p in pids if pid_alive(p)] == []


def test_a_static_worker_serves_its_metrics(tmp_path: Path) -> None:
    import urllib.request
    port = free_ports(1, HOST)[0]
    snap = real_snapshot(tmp_path, 1, workers=1, metrics_port=port)
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snap.to_wire()))
    proc = subprocess.Popen([sys.executable, "-m", "meshagent.proxy.worker", "--snapshot", str(path)],
                            stdin=subprocess.DEVNULL)
    try:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        text = wait_for(scrape, timeout=20, what="static worker's /metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert "meshagent_proxy_connections_active" in names
        with socket.create_connection((HOST, snap.public_port), timeout=5):
            pass  # the public listener is up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- workers that fail


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_life() -> None:
    waits, backoff = [], BACKOFF_MIN_S
    for alive_s in (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 61.0, 0.0):
        backoff = next_backoff(backoff, alive_s)
        waits.append(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX_S)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.1, 0.2]


def fake_python(tmp: Path, script: str) -> str:
    """An executable the supervisor runs as `python -m meshagent.proxy.worker --control-fd N` (a Python
    script: sys.argv[4] is N)."""
    path = tmp / "fake-python"
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.mark.slow  # several worker processes, restarts with real backoff
def test_a_worker_that_cannot_start_is_retried_with_backoff(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "sys.exit(3)\n")

    async def main() -> None:
        sup = ProxySupervisor("web-sidecar-proxy", python=python)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            sup.update(snapshot(1, workers=1))
            # A death is counted when seen, then the slot waits 0.1, 0.2, 0.4, 0.8 s before the next start.
            await until(lambda: sup.status()["restarts"] >= 4, "four deaths")
            t0 = trio.current_time()
            await until(lambda: sup.status()["restarts"] >= 5, "a fifth death")
            assert trio.current_time() - t0 >= 0.6  # backing off (0.8 s), not spinning
            assert sup.status()["workers"][0]["last_exit"].endswith("; exited with code 3")
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.slow  # several worker processes, restarts with real backoff
def test_a_worker_speaking_garbage_is_cut_off_terminated_and_replaced(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "os.write(int(sys.argv[4]), b'\\xff' * 4)\ntime.sleep(60)\n")

    async def main() -> None:
        sup = ProxySupervisor("web-sidecar-proxy", python=python)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            sup.update(snapshot(1, workers=1))
            await until(lambda: sup.status()["restarts"] >= 1, "the garbage worker replaced")
            last_exit = sup.status()["workers"][0]["last_exit"]
            assert last_exit.startswith("bad control frame") and "SIGTERM" in last_exit, last_exit
            nursery.cancel_scope.cancel()
        assert sup.worker_pids() == []

    trio.run(main)
