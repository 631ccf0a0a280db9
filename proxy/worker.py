"""A data-plane worker process: `python -m meshagent.proxy.worker --control-fd N | --snapshot FILE.json`.

Under the supervisor (`--control-fd`), snapshots arrive over the control socket and the worker answers with
`applied` and `metrics`; EOF on that socket means the supervisor (the agent) is gone, and the worker exits
(PR_SET_PDEATHSIG is the second guard against orphans). Static mode (`--snapshot`) applies one file and
serves its own metrics on `metrics_bind`: for tests and the benchmark. No trio here: one epoll reactor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

from . import access_log
from .control import Message, ReactorChannel
from .metrics import ProxyMetrics, render_prometheus
from .metrics_http import ReactorMetricsServer
from .reactor import Reactor
from .snapshot import ProxyConfigError, ProxySnapshot

MAX_SNAPSHOT_FILE = 64 * 1024 * 1024
PR_SET_PDEATHSIG = 1
PDEATH_SIGNAL = signal.SIGUSR1  # not SIGTERM: a thread of the parent exiting sends it too (see below)

log = logging.getLogger("meshagent.proxy.worker")


class DataPlaneLike(Protocol):
    """What the worker needs of proxy/dataplane.py's DataPlane."""

    def apply(self, snapshot: ProxySnapshot) -> list[str]: ...


DEFAULT_DATAPLANE = "meshagent.proxy.dataplane:DataPlane"


def dataplane_factory(spec: str = DEFAULT_DATAPLANE) -> Callable[[Reactor, ProxyMetrics], DataPlaneLike]:
    """The data-plane class named "module:attribute" (proxy/dataplane.py's DataPlane; tests name a
    stand-in), imported when the first snapshot arrives."""
    module_name, _, attr = spec.partition(":")

    def make(reactor: Reactor, metrics: ProxyMetrics) -> DataPlaneLike:
        dp: DataPlaneLike = getattr(importlib.import_module(module_name), attr)(reactor, metrics)
        return dp
    return make


default_dataplane = dataplane_factory()


class Worker:
    """One worker's state: the reactor, and (from the first snapshot on) its metrics and data plane."""

    def __init__(self, reactor: Reactor,
                 make_dataplane: Callable[[Reactor, ProxyMetrics], DataPlaneLike] = default_dataplane) -> None:
        self.reactor = reactor
        self._make_dataplane = make_dataplane
        self.metrics: ProxyMetrics | None = None
        self.dataplane: DataPlaneLike | None = None
        self.snapshot: ProxySnapshot | None = None
        self.exit_code = 0
        self._flush_timer: Any = None

    def apply(self, snapshot: ProxySnapshot) -> list[str]:
        """Swap to `snapshot`; the errors the data plane reports (a listener that cannot bind, ...)."""
        _LogContext.proxy_id = snapshot.proxy_id
        try:
            if self.metrics is None:
                self.metrics = ProxyMetrics(snapshot.service, snapshot.datacenter)
            if self.dataplane is None:
                self.dataplane = self._make_dataplane(self.reactor, self.metrics)
            errors = list(self.dataplane.apply(snapshot))
            errors.extend(access_log.configure(snapshot.access_log))  # opened here, never on a request
        except Exception as exc:  # a data-plane bug must not take every other listener down
            log.exception("applying snapshot version %d failed", snapshot.version)
            errors = [f"apply failed: {type(exc).__name__}: {exc}"]
        self.snapshot = snapshot
        for error in errors:
            log.warning("snapshot version %d: %s", snapshot.version, error)
        log.info("applied snapshot version %d (%d upstreams)", snapshot.version, len(snapshot.upstreams))
        return errors

    def metrics_wire(self) -> dict[str, Any]:
        """This worker's metrics as a wire map (empty before the first snapshot)."""
        return self.metrics.to_wire() if self.metrics is not None else {}

    def render(self) -> str:
        """Prometheus text of this worker alone (static mode)."""
        return render_prometheus(self.metrics_wire())

    def start_flushing(self) -> None:
        """Flush access logs on a short timer, never on the request path."""
        access_log.flush_all()
        self._flush_timer = self.reactor.call_later(access_log.FLUSH_INTERVAL_S, self.start_flushing)

    def close(self) -> None:
        """Release the data plane's sockets and the access logs (the reactor is the caller's)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        close = getattr(self.dataplane, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing the data plane failed")
        access_log.close_all()


class ControlledWorker:
    """The control-channel side of a worker under the supervisor."""

    def __init__(self, worker: Worker, sock: socket.socket) -> None:
        self.worker = worker
        self.channel = ReactorChannel(worker.reactor, sock, self._on_message, self._on_close)

    def start(self) -> None:
        """Say hello; the supervisor sends the current snapshot."""
        self.channel.send({"t": "ready", "pid": os.getpid()})

    def _on_message(self, message: Message) -> None:
        kind = message["t"]
        if kind == "snapshot":
            self._snapshot(message.get("s"))
        elif kind == "metrics":
            answer: dict[str, Any] = {"t": "metrics", "m": self.worker.metrics_wire()}
            request_id = message.get("id")
            if isinstance(request_id, int) and not isinstance(request_id, bool):
                answer["id"] = request_id  # the supervisor matches answers to requests by it
            self.channel.send(answer)
        elif kind == "stop":
            log.info("stop requested by the supervisor")
            self.channel.close("stop")
        else:  # a worker-to-supervisor message sent to us: the peer is confused or hostile
            self.channel.close(f"unexpected message {kind!r} from the supervisor")
            self.worker.exit_code = 1

    def _snapshot(self, raw: Any) -> None:
        version = raw.get("version") if isinstance(raw, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            version = -1
        try:
            snapshot = ProxySnapshot.from_wire(raw)
        except ProxyConfigError as exc:
            log.error("snapshot refused: %s", exc)
            self.channel.send({"t": "applied", "version": version, "errors": [f"snapshot refused: {exc}"]})
            return
        errors = self.worker.apply(snapshot)
        self.channel.send({"t": "applied", "version": snapshot.version, "errors": errors})

    def _on_close(self, reason: str) -> None:
        if reason != "stop":
            log.info("exiting: %s", reason)
        if reason.startswith("bad control frame"):
            self.worker.exit_code = 1
        self.worker.reactor.stop()


# ---------------------------------------------------------------------- process main


class _LogContext(logging.Filter):
    proxy_id = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.proxy_id = _LogContext.proxy_id
        return True


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_LogContext())
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [%(levelname)s] proxy %(proxy_id)s worker {os.getpid()}: %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _die_with_parent(reactor: Reactor) -> None:
    """The second guard against orphans (Linux): a signal when the parent dies. The kernel sends it when the
    parent *thread* exits (trio spawns from a worker thread that ends when idle), so the handler stops the
    worker only when the parent process is really gone: we were reparented."""
    parent = os.getppid()

    def on_parent_death(signum: int, frame: Any) -> None:
        if os.getppid() != parent:
            log.warning("the supervisor process %d is gone: exiting", parent)
            reactor.stop()

    signal.signal(PDEATH_SIGNAL, on_parent_death)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(PDEATH_SIGNAL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control socket's EOF is the only guard
        return
    if os.getppid() != parent:  # it died before prctl took effect
        reactor.stop()


def _load_file(path: str) -> ProxySnapshot:
    with open(path, "rb") as f:
        data = f.read(MAX_SNAPSHOT_FILE + 1)
    if len(data) > MAX_SNAPSHOT_FILE:
        raise ProxyConfigError(f"{path}: larger than {MAX_SNAPSHOT_FILE} bytes")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ProxyConfigError(f"{path}: not JSON: {exc}") from None
    return ProxySnapshot.from_wire(raw)


def main(argv: list[str] | None = None) -> int:
    """Run one worker until stopped; the process exit code."""
    parser = argparse.ArgumentParser(prog="meshagent.proxy.worker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--control-fd", type=int, help="the supervisor's end of the control socketpair")
    mode.add_argument("--snapshot", help="a ProxySnapshot wire map as JSON (static mode)")
    parser.add_argument("--metrics-bind", default="", help="host:port for Prometheus text (static mode)")
    parser.add_argument("--dataplane", default=DEFAULT_DATAPLANE, help=argparse.SUPPRESS)  # tests: a stand-in
    parser.add_argument("--log-level", default=os.environ.get("MESHAGENT_PROXY_LOG_LEVEL", "info"))
    parser.add_argument("--nice", type=int, default=0, help="lower this worker's priority by N (0-19)")
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.nice > 0:
        os.nice(min(args.nice, 19))
    reactor = Reactor()
    worker = Worker(reactor, dataplane_factory(args.dataplane))
    stop = lambda *_: reactor.stop()  # noqa: E731  (a signal handler: wakes the loop, which exits)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics_server: ReactorMetricsServer | None = None
    try:
        if args.control_fd is not None:
            _die_with_parent(reactor)
            sock = socket.socket(fileno=args.control_fd)
            ControlledWorker(worker, sock).start()
        else:
            try:
                snapshot = _load_file(args.snapshot)
            except (OSError, ProxyConfigError) as exc:
                log.error("cannot load %s: %s", args.snapshot, exc)
                return 2
            worker.apply(snapshot)
            bind = args.metrics_bind or snapshot.metrics_bind
            if bind:
                try:
                    metrics_server = ReactorMetricsServer(reactor, bind, worker.render)
                except (OSError, ValueError) as exc:
                    log.error("metrics listener %s: %s", bind, exc)
        worker.start_flushing()
        reactor.run()
    finally:
        if metrics_server is not None:
            metrics_server.close()
        worker.close()
        reactor.close()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
