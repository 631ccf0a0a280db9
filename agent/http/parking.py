"""Blocking queries parked on their connections, and the sweep that ends those whose client hung up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from trio.socket import SocketType


class Parking:
    """Blocking queries parked on their connections; a sweep ends those whose client hung up.

    Watching each parked socket with its own task made every wake-up pay for an epoll unregister and a
    cancellation (2-3x the write-to-wake-up delay), so instead one sweep per interval asks the kernel for
    each parked socket's TCP state and cancels the queries whose peer has closed (Linux TCP_INFO).
    """

    def __init__(self) -> None:
        self._parked: dict[trio.CancelScope, SocketType] = {}

    def __len__(self) -> int:
        return len(self._parked)

    @contextmanager
    def watch(self, sock: SocketType) -> Iterator[None]:
        """Run the body in a scope that the sweep cancels if the client behind `sock` goes away."""
        with trio.CancelScope() as scope:
            self._parked[scope] = sock
            try:
                yield
            finally:
                del self._parked[scope]

    def sweep(self) -> int:
        """Cancel every parked query whose peer has closed or reset; returns how many."""
        ended = 0
        for scope, sock in list(self._parked.items()):
            try:
                state = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
            except OSError:
                state = _TCP_CLOSE
            if state in (_TCP_CLOSE_WAIT, _TCP_CLOSE):
                scope.cancel()
                ended += 1
        return ended


_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8  # linux/tcp_states.h
