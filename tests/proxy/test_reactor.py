"""Reactor: fd callbacks, timers, soon-callbacks, failures counted not fatal, stop from another thread."""

from __future__ import annotations

import os
import socket
import threading

from meshagent.proxy.reactor import Reactor

from tests.support.dataplane_harness import Loop
from tests.support.wait import wait_for


def test_reader_and_writer_callbacks_fire_and_stop_when_removed() -> None:
    reactor = Reactor()
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    writable: list[int] = []

    def on_read() -> None:
        got.append(a.recv(100))

    def on_write() -> None:
        writable.append(1)
        reactor.remove_writer(a.fileno())
        reactor.stop()

    reactor.add_reader(a.fileno(), on_read)
    b.sendall(b"ping")
    reactor.add_writer(a.fileno(), on_write)
    reactor.run()
    reactor.call_later(0.05, reactor.stop)
    reactor.run()
    assert got == [b"ping"] and writable == [1]
    reactor.remove_reader(a.fileno())
    b.sendall(b"again")
    reactor.call_later(0.05, reactor.stop)
    reactor.run()
    assert got == [b"ping"]  # no callback once removed
    reactor.close()
    a.close()
    b.close()


def test_timers_run_in_order_and_cancelled_ones_never() -> None:
    reactor = Reactor()
    order: list[str] = []
    reactor.call_later(0.03, lambda: order.append("late"))
    reactor.call_later(0.01, lambda: order.append("early"))
    reactor.call_later(0.02, lambda: order.append("cancelled")).cancel()
    reactor.call_soon(lambda: order.append("soon"))
    reactor.call_later(0.05, reactor.stop)
    reactor.run()
    assert order == ["soon", "early", "late"]
    reactor.close()


def test_call_soon_from_a_callback_runs_on_the_next_turn() -> None:
    reactor = Reactor()
    order: list[int] = []

    def first() -> None:
        order.append(1)
        reactor.call_soon(lambda: (order.append(3), reactor.stop()))
        order.append(2)

    reactor.call_soon(first)
    reactor.run()
    assert order == [1, 2, 3]
    reactor.close()


def test_a_failing_callback_is_counted_and_the_rest_of_the_batch_still_runs() -> None:
    reactor = Reactor()
    pairs = [socket.socketpair() for _ in range(3)]
    seen: list[int] = []

    def reader(i: int, sock: socket.socket) -> None:
        sock.recv(10)
        seen.append(i)
        if i == 1:
            raise RuntimeError("boom")

    for i, (a, b) in enumerate(pairs):
        reactor.add_reader(a.fileno(), lambda i=i, a=a: reader(i, a))
        b.sendall(b"x")
    reactor.call_later(0.05, lambda: 1 / 0)  # a failing timer too
    reactor.call_later(0.1, reactor.stop)
    reactor.run()
    assert sorted(seen) == [0, 1, 2]
    assert reactor.errors == 2
    reactor.close()
    for a, b in pairs:
        a.close()
        b.close()


def test_stop_and_call_soon_threadsafe_from_another_thread() -> None:
    reactor = Reactor()
    loop = Loop(reactor)
    ran = threading.Event()
    reactor.call_soon_threadsafe(ran.set)
    assert ran.wait(5)
    loop.close()  # stop() from this thread: the loop thread ends


def test_a_closed_fd_does_not_break_the_loop() -> None:
    reactor = Reactor()
    r, w = os.pipe()
    reactor.add_reader(r, lambda: None)
    os.close(r)
    os.close(w)
    reactor.remove_reader(r)  # epoll already forgot it: no error
    loop = Loop(reactor)
    done = threading.Event()
    reactor.call_soon_threadsafe(done.set)
    wait_for(done.is_set, 5, what="loop alive")
    loop.close()
