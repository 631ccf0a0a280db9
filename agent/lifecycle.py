"""Process lifecycle: readiness for systemd, and whether a signal means a graceful leave."""

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
