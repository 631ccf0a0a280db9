"""Server choice from gossip tags, signal policy, sd_notify over a real unix socket, AE interval scaling."""

from __future__ import annotations

import random
import signal
import socket
from pathlib import Path

import pytest
from meshagent.agent.client.servers import ServerPool, server_addresses
from meshagent.agent.lifecycle import leaves_on, notify_systemd
from meshagent.agent.local_state import anti_entropy_interval
from meshagent.gossip.member import Member, MemberStatus


def _member(name: str, addr: str, status: int = 1, role: str = "consul", dc: str = "dc1") -> Member:
    tags = {"role": role, "dc": dc}
    if role == "consul":
        tags["port"] = "8300"
    return Member(name, addr, 8301, tags, MemberStatus(status))


def test_only_alive_servers_of_our_datacenter_are_candidates() -> None:
    members = [_member("s1", "198.18.0.11"), _member("s2", "198.18.0.12", status=4),
               _member("s3", "198.18.0.13", dc="dc2"), _member("c1", "198.18.0.21", role="node")]
    assert server_addresses(members, "dc1") == ["198.18.0.11:8300"]


def test_a_failed_server_goes_to_the_back_and_fallback_hosts_are_used_until_gossip_shows_servers() -> None:
    members: list[Member] = []
    pool = ServerPool(lambda: members, "dc1", ["198.18.0.11"], 8300, rng=random.Random(1))
    assert pool.pick() == "198.18.0.11:8300"
    members[:] = [_member(f"s{i}", f"198.18.0.1{i}") for i in (1, 2, 3)]
    first = pool.pick()
    assert first in {f"198.18.0.1{i}:8300" for i in (1, 2, 3)}
    pool.failed(first)  # type: ignore[arg-type]
    assert pool.pick() != first and pool.candidates()[-1] == first


def test_clients_spread_over_servers() -> None:
    members = [_member(f"s{i}", f"198.18.0.1{i}") for i in (1, 2, 3)]
    picks = {ServerPool(lambda: members, "dc1", [], 8300, rng=random.Random(seed)).pick() for seed in range(30)}
    assert len(picks) == 3


@pytest.mark.parametrize(("signum", "server", "terminate", "skip_interrupt", "leaves"), [
    (signal.SIGTERM, False, None, None, True),   # client: SIGTERM is a graceful leave
    (signal.SIGTERM, True, None, None, False),   # server: stays in the quorum
    (signal.SIGINT, False, None, None, True),
    (signal.SIGINT, True, None, None, False),
    (signal.SIGTERM, True, True, None, True),    # leave_on_terminate overrides
    (signal.SIGINT, False, None, True, False),   # skip_leave_on_interrupt overrides
    (signal.SIGHUP, False, None, None, False),
])
def test_which_signals_leave(signum: int, server: bool, terminate: bool | None, skip_interrupt: bool | None,
                             leaves: bool) -> None:
    assert leaves_on(signum, server, terminate, skip_interrupt) is leaves


def test_sd_notify_sends_ready_to_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify_systemd("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert not notify_systemd("READY=1")  # logged, not fatal
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify_systemd("READY=1")


def test_anti_entropy_interval_scales_like_consul() -> None:
    assert [anti_entropy_interval(n) for n in (1, 128, 129, 256, 257, 512, 1024)] == [60, 60, 120, 120, 180,
                                                                                      180, 240]
