"""Process lifecycle: readiness for systemd, whether a signal means a graceful leave, the start-up banner."""

from __future__ import annotations

import logging
import os
import signal
import socket

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
