"""Access logs that cannot block a worker (review finding 6), L4 connections in the access log (finding 7)
and inbound series that name the caller (finding 11), on loopback 127.0.27.0/24 through real DataPlanes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from meshagent.proxy import access_log
from meshagent.proxy.dataplane import DataPlane
from meshagent.proxy.metrics import MAX_SOURCES, OTHER_SOURCE, ProxyMetrics
from meshagent.proxy.reactor import Reactor
from meshagent.proxy.snapshot import AccessLog, Endpoint, ProxySnapshot
from meshagent.proxy.worker import Worker

from tests.support import dataplane_harness as harness
from tests.support.dataplane_harness import EchoServer, Loop
from tests.support.mesh_certs import MeshCA
from tests.support.ports import free_ports
from tests.support.wait import wait_for

HOST = "127.0.27.1"


@pytest.fixture(autouse=True)
def fresh_loggers() -> Iterator[None]:
    access_log.close_all()
    yield
    access_log.close_all()


# ---------------------------------------------------------------------- finding 6: never block


def test_a_fifo_or_a_symlink_is_refused_when_the_snapshot_is_applied(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with a reader, a plain open would succeed
    try:
        errors = access_log.configure(AccessLog(enabled=True, path=str(fifo)))
        assert len(errors) == 1 and "not a regular file" in errors[0] and str(fifo) in errors[0]
    finally:
        os.close(reader)
    # No reader: a blocking open would hang the worker here.
    assert "cannot be opened" in access_log.configure(AccessLog(enabled=True, path=str(fifo)))[0]
    target = tmp_path / "real.log"
    target.write_text("")
    link = tmp_path / "link.log"
    link.symlink_to(target)
    assert "cannot be opened" in access_log.configure(AccessLog(enabled=True, path=str(link)))[0]
    assert access_log.logger_for(AccessLog(enabled=True, path=str(link))) is None


class _NoDataPlane:
    def __init__(self, reactor: Reactor, metrics: ProxyMetrics) -> None:
        pass

    def apply(self, snapshot: ProxySnapshot) -> list[str]:
        return []


def test_the_worker_reports_an_unusable_access_log_with_the_applied_snapshot(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    worker = Worker(Reactor(), _NoDataPlane)
    snap = harness.server_snapshot(MeshCA(), HOST, 1, 2, access_log=AccessLog(enabled=True, path=str(fifo)))
    try:
        errors = worker.apply(snap)
        assert any("access log" in e and "fifo" in e for e in errors), errors
        assert worker.apply(replace(snap, access_log=AccessLog(enabled=True, path=str(tmp_path / "a.log")))) == []
        assert access_log.logger_for(AccessLog(enabled=True, path=str(tmp_path / "a.log"))) is not None
    finally:
        worker.close()


def test_access_logs_to_a_stuck_stderr_pipe_drop_lines_instead_of_blocking() -> None:
    # A child whose stderr is a pipe nobody reads: flushes must return at once, lines beyond the buffer are
    # dropped and counted, and its own fd 2 stays blocking (the access log writes through a file of its own).
    script = textwrap.dedent("""
        import os, sys, time
        from meshagent.proxy import access_log
        from meshagent.proxy.snapshot import AccessLog
        cfg = AccessLog(enabled=True, path="")
        assert access_log.configure(cfg) == []
        logger = access_log.logger_for(cfg)
        t0 = time.monotonic()
        for _ in range(200):
            for _ in range(200):
                logger.log(start=0.0, duration_s=0.0, source="web", destination="db", path="/" + "p" * 500)
            access_log.flush_all()
        print(round(time.monotonic() - t0, 3), logger.dropped, logger.written, os.get_blocking(2), flush=True)
    """)
    r, w = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-c", script], stderr=w, stdout=subprocess.PIPE, timeout=60,
                              check=False)
    finally:
        os.close(w)
        os.close(r)
    assert proc.returncode == 0, proc.stdout
    elapsed, dropped, written, blocking = proc.stdout.decode().split()
    assert float(elapsed) < 30 and int(dropped) > 0 and int(written) > 0 and blocking == "True"


# ---------------------------------------------------------------------- findings 7 and 11: through L4


class Mesh:
    """db's sidecar in front of an echo app, web's sidecar with an L4 upstream listener for db."""

    def __init__(self, loop: Loop, ca: MeshCA, log_path: Path | None) -> None:
        self.loop = loop
        self.app = EchoServer(HOST)
        self.public_port, self.bind_port, self.dead_port = free_ports(3, HOST)
        self.server_metrics = ProxyMetrics("db", "dc1")
        self.client_metrics = ProxyMetrics("web", "dc1")
        self.server = loop.call(lambda: DataPlane(loop.reactor, self.server_metrics))
        self.client = loop.call(lambda: DataPlane(loop.reactor, self.client_metrics))
        cfg = AccessLog(enabled=True, path=str(log_path)) if log_path else AccessLog()
        server = replace(harness.server_snapshot(ca, HOST, self.public_port, self.app.port), access_log=cfg)
        self.client_snap = replace(harness.client_snapshot(ca, HOST, self.bind_port,
                                                           (Endpoint(HOST, self.public_port),)), access_log=cfg)
        assert loop.call(lambda: self.server.apply(server)) == []
        assert loop.call(lambda: self.client.apply(self.client_snap)) == []
        assert loop.call(lambda: access_log.configure(cfg)) == []  # the worker's step after apply

    def close(self) -> None:
        self.loop.call(self.server.close)
        self.loop.call(self.client.close)
        self.app.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def lines(loop: Loop, path: Path) -> list[dict[str, Any]]:
    loop.call(access_log.flush_all)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_l4_connection_is_logged_when_it_closes(loop: Loop, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    mesh = Mesh(loop, MeshCA(), path)
    try:
        payload = b"x" * 100_000
        assert harness.roundtrip(HOST, mesh.bind_port, payload) == payload
        got = wait_for(lambda: e if len(e := lines(loop, path)) == 2 else None, 10,
                       what="an outbound and an inbound entry")
        by_dir = {e["direction"]: e for e in got}
        out, inb = by_dir["outbound"], by_dir["inbound"]
        assert (out["source"], out["destination"], out["upstream_host"]) == ("web", "db",
                                                                            f"{HOST}:{mesh.public_port}")
        assert (inb["source"], inb["destination"], inb["upstream_host"]) == ("web", "db", f"{HOST}:{mesh.app.port}")
        for e in (out, inb):
            assert (e["bytes_received"], e["bytes_sent"], e["flags"], e["code"]) == (len(payload), len(payload), "", 0)
            assert e["duration_ms"] >= 0 and e["start_time"].endswith("Z")
        # An upstream that refuses: one entry flagged as a connect failure.
        dead = replace(mesh.client_snap, upstreams=(replace(mesh.client_snap.upstreams[0],
                                                            endpoints=(Endpoint(HOST, mesh.dead_port),)),))
        assert loop.call(lambda: mesh.client.apply(dead)) == []
        assert harness.roundtrip(HOST, mesh.bind_port, b"hello") == b""
        failed = wait_for(lambda: [e for e in lines(loop, path) if e["flags"]] or None, 10, what="a UF entry")
        assert [(e["flags"], e["upstream_host"]) for e in failed] == [("UF", f"{HOST}:{mesh.dead_port}")]
    finally:
        mesh.close()


def test_no_access_log_no_entries(loop: Loop, tmp_path: Path) -> None:
    mesh = Mesh(loop, MeshCA(), None)
    try:
        assert harness.roundtrip(HOST, mesh.bind_port, b"abc") == b"abc"
        assert access_log._loggers == {}
    finally:
        mesh.close()


def test_inbound_series_name_the_calling_service(loop: Loop) -> None:
    mesh = Mesh(loop, MeshCA(), None)
    try:
        assert harness.roundtrip(HOST, mesh.bind_port, b"abc") == b"abc"

        def inbound_labels() -> set[tuple[str, ...]]:
            wire = loop.call(mesh.server_metrics.to_wire)
            return {tuple(labels) for labels, _ in wire["counter"]["connections_total"]}
        got = wait_for(lambda: inbound_labels() or None, 10, what="db's inbound connection")
        assert got == {("web", "db", "dc1", "inbound")}  # source: the caller; destination: this service
        wire = loop.call(mesh.client_metrics.to_wire)
        assert {tuple(labels) for labels, _ in wire["counter"]["connections_total"]} == {
            ("web", "db", "dc1", "outbound")}
    finally:
        mesh.close()


def test_distinct_inbound_sources_are_bounded() -> None:
    m = ProxyMetrics("db", "dc1")
    labels = [m.source_label(f"svc{i}") for i in range(MAX_SOURCES + 50)]
    assert labels[:MAX_SOURCES] == [f"svc{i}" for i in range(MAX_SOURCES)]
    assert set(labels[MAX_SOURCES:]) == {OTHER_SOURCE}
    assert m.source_label("svc0") == "svc0" and m.source_label(None) == "" and m.source_label("") == ""
    for label in labels:
        m.connection_opened("inbound", label)
    m.connection_opened("inbound", "")  # a caller not known (an older call site): counted as this service
    sources = {labels[0] for labels, _ in m.to_wire()["counter"]["connections_total"]}
    assert len(sources) == MAX_SOURCES + 2 and OTHER_SOURCE in sources and "db" in sources
