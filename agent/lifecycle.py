"""Process lifecycle: readiness for systemd, whether a signal means a graceful leave, the start-up banner."""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import time

log = logging.getLogger("meshagent.agent")


def notify_systemd(state: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (e.g. "READY=1"). False when not
    started by systemd with Type=notify, or when the socket is gone (logged, never fatal)."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@name" is the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc)
        return False
    return True


def leaves_on(signum: int, server: bool, leave_on_terminate: bool | None,
              skip_leave_on_interrupt: bool | None) -> bool:
    """Whether this signal ends the agent with a graceful leave. Consul's defaults: a client leaves on
    SIGTERM and SIGINT; a server on neither, so that restarting it does not shrink the Raft quorum."""
    if signum == signal.SIGTERM:
        return (not server) if leave_on_terminate is None else leave_on_terminate
    if signum == signal.SIGINT:
        return (not server) if skip_leave_on_interrupt is None else not skip_leave_on_interrupt
    return False


def banner(*, version: str, node_id: str, node_name: str, datacenter: str, server: bool, dev: bool,
           client_addr: str, http_port: int, dns_port: int, advertise: str, serf_lan: int, serf_wan: int,
           data_dir: str, encrypt: bool, domain: str) -> str:
    """Consul-style start-up banner."""
    lines = [
        "==> Starting meshagent agent...",
        f"           Version: '{version}'",
        f"           Node ID: '{node_id}'",
        f"         Node name: '{node_name}'",
        f"        Datacenter: '{datacenter}' (Segment: '<all>')",
        f"            Server: {str(server).lower()} (Bootstrap: {str(dev).lower()})",
        f"       Client Addr: [{client_addr}] (HTTP: {http_port}, HTTPS: -1, gRPC: -1, DNS: {dns_port})",
        f"      Cluster Addr: {advertise} (LAN: {serf_lan}, WAN: {serf_wan})",
        f"          Data Dir: {'<in memory>' if dev else data_dir}",
        f" Gossip Encryption: {str(encrypt).lower()}",
        f"            Domain: {domain}",
        "",
        "==> Log data will now stream in as it occurs:",
        "",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- start-up errors and the banner's order


def listen_failure(exc: BaseException) -> OSError | None:
    """The OSError of a failed listen: `exc` itself, or the first inside (nested) exception groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = listen_failure(sub)
            if found is not None:
                return found
    return None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _taken(host: str, port: int, udp: bool) -> bool:
    """Whether binding host:port (TCP, and UDP when asked) fails now: which of several addresses clashed."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in kinds:
        try:
            with socket.socket(family, kind) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners set it
                sock.bind((host, port))
        except OSError:
            return True
    return False


def bind_error_text(what: str, hosts: list[str], port: int, error: OSError, udp: bool = False) -> str:
    """Go's wording with the address that failed: `HTTP server: bind 127.0.0.1:8500: address already in use`."""
    shown = hosts
    if len(hosts) > 1:  # the listeners don't say which one failed: ask each
        shown = [h for h in hosts if _taken(h, port, udp)] or hosts
    # Go's text for the errno ("address already in use"); a wrapped OSError's own words say no more than that
    reason = os.strerror(error.errno).lower() if error.errno else (str(error) or type(error).__name__)
    return f"{what}: bind {', '.join(_address(h, port) for h in shown)}: {reason}"


class _HeldHandler(logging.handlers.MemoryHandler):
    """Holds records for its target until closed, until `limit` are held, or past the deadline."""

    def __init__(self, limit: int, target: logging.Handler, deadline: float) -> None:
        super().__init__(limit, flushLevel=logging.CRITICAL + 1, target=target, flushOnClose=True)
        self.deadline = deadline

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return super().shouldFlush(record) or time.monotonic() > self.deadline


class LogGate:
    """Holds the agent's log lines until the start-up banner is out, then lets them through in order (Consul's
    gated writer). Bounded: past `limit` records or `max_wait` seconds (a start that waits on something), lines
    flow as before and the banner comes when it can."""

    def __init__(self, logger: str = "meshagent", limit: int = 10_000, max_wait: float = 5.0) -> None:
        self._logger = logging.getLogger(logger)
        self._originals = list(self._logger.handlers)
        deadline = time.monotonic() + max_wait
        self._gates = [_HeldHandler(limit, h, deadline) for h in self._originals]
        for gate, original in zip(self._gates, self._originals, strict=True):
            gate.setLevel(original.level)  # a flush skips the target's own level check
        self._open = False
        self._logger.handlers[:] = list(self._gates)

    def open(self) -> None:
        """Let held and future records through (idempotent)."""
        if self._open:
            return
        self._open = True
        if self._logger.handlers == self._gates:  # unless someone set up logging again meanwhile
            self._logger.handlers[:] = self._originals
        for gate in self._gates:
            gate.close()  # flushes what it held to its target
