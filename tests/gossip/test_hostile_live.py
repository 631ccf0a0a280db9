"""Hostile gossip against a live 3-server cluster with plaintext gossip (issue 11, acceptance and fuzz).

The overflow packets of the issue (a dead message at incarnation 2^64-1 naming a real node, its suspect
and alive variants at 2^64-1, 2^32 and -1, Serf intents at Lamport time 2^64-1), then 100,000 hostile
packets and a few hundred push-pull streams from `tests.support.hostile_gossip`: every server stays up
and keeps its leader, nobody is marked failed, nothing out of range is persisted or counted as a bug.
Agents live on 127.0.0.50-79.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from meshagent.gossip import limits
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm

from tests.support import hostile_gossip as h
from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

PORTS = (8500, 8600, 8300, 8301)
NAMES = ("hs0", "hs1", "hs2")
ALIVE = 1
PACKETS = 100_000
STREAMS = 150
FUZZ_SEED = int(os.environ.get("MESHAGENT_GOSSIP_FUZZ_SEED", "20261204"))


def _hosts(n: int) -> list[str]:
    free = [f"127.0.0.{i}" for i in range(50, 79) if ports_free(f"127.0.0.{i}", PORTS)]
    if len(free) < n:
        pytest.fail("not enough free addresses in 127.0.0.50-78 (something else holds the agent ports)")
    return free[:n]


class Servers:
    """Three servers, each on its own 127.0.0.N with a data dir; every process killed by PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hosts = _hosts(3)
        self.agents: list[AgentProcess] = []
        for i, host in enumerate(self.hosts):
            joins = [a for other in self.hosts if other != host for a in ("-retry-join", other)]
            args = ["-server", "-bootstrap-expect", "3", "-data-dir", str(tmp / NAMES[i]), "-node", NAMES[i],
                    "-bind", host, "-client", host, *joins]
            self.agents.append(AgentProcess(host=host, args=args, workdir=tmp))

    def start(self) -> None:
        for agent in self.agents:
            agent.start(wait=False)

    def wait_ready(self) -> None:
        for agent in self.agents:
            agent.wait_ready(30)
        wait_for(lambda: all(self.view(a) == dict.fromkeys(NAMES, ALIVE) for a in self.agents), 30,
                 what="every server to see all three alive")
        wait_for(self.leader, 30, what="a Raft leader every server agrees on")

    def view(self, agent: AgentProcess) -> dict[str, int]:
        return {x["Name"]: x["Status"] for x in httpx.get(f"{agent.http_addr}/v1/agent/members", timeout=5).json()}

    def leader(self) -> str | None:
        """The leader's address if every server names the same one, else None."""
        seen = {httpx.get(f"{a.http_addr}/v1/status/leader", timeout=5).json() for a in self.agents}
        return seen.pop() if len(seen) == 1 and "" not in seen else None

    def counters(self, agent: AgentProcess) -> dict[str, int]:
        data = httpx.get(f"{agent.http_addr}/v1/agent/metrics", timeout=5).json()
        return {c["Name"].removeprefix("meshagent.gossip."): int(c["Count"]) for c in data["Counters"]
                if c["Name"].startswith("meshagent.gossip.")}

    def serf_stats(self, agent: AgentProcess) -> dict[str, str]:
        stats: dict[str, str] = httpx.get(f"{agent.http_addr}/v1/agent/self", timeout=5).json()["Stats"]["serf_lan"]
        return stats

    def assert_healthy(self, leader: str) -> None:
        """Every process up, the same leader, all three alive in every view, no bug counted, clocks sane."""
        for agent in self.agents:
            assert agent.proc is not None and agent.proc.poll() is None, agent.log()
            assert self.view(agent) == dict.fromkeys(NAMES, ALIVE)
            assert self.counters(agent)["handler_errors"] == 0, agent.log()
            stats = self.serf_stats(agent)
            for clock in ("member_time", "event_time", "query_time"):
                assert int(stats[clock]) < 1_000, (clock, stats)
            assert "Traceback" not in agent.log()
        assert self.leader() == leader

    def stop(self) -> None:
        for agent in self.agents:
            agent.kill()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    cluster = Servers(tmp_path_factory.mktemp("hostile-gossip"))
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def _send_all(packets: list[bytes], targets: list[AgentProcess], servers: Servers, batch: int = 1_000) -> None:
    """Send each packet to one server in turn, batch by batch, each batch only once the last was read (the
    servers' packets_in counters), so that the packets are handled rather than dropped by the kernel."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.79", 0))
    base = [servers.counters(a)["packets_in"] for a in targets]
    sent = [0] * len(targets)
    try:
        for start in range(0, len(packets), batch * len(targets)):
            chunk = packets[start:start + batch * len(targets)]
            for i, data in enumerate(chunk):
                k = i % len(targets)
                sock.sendto(data, (targets[k].host, 8301))
                sent[k] += 1
            for k, agent in enumerate(targets):
                wait_for(lambda a=agent, k=k: _read(servers, a, base[k], sent[k]), 60,
                         what=f"{agent.host} to read its packets")
    finally:
        sock.close()


def _read(servers: Servers, agent: AgentProcess, base: int, sent: int) -> bool:
    """Whether `agent` has read (nearly) all `sent` packets; fails at once if it exited."""
    assert agent.proc is not None
    if agent.proc.poll() is not None:
        pytest.fail(f"{agent.host} exited with {agent.proc.returncode}:\n{agent.log()[-3000:]}")
    return servers.counters(agent)["packets_in"] - base >= sent * 0.98


def _overflow_packets() -> list[bytes]:
    """The issue's packet and its variants, naming each real node (alone, in a compound, behind a CRC)."""
    singles = []
    for node in NAMES:
        for inc in h.OVERFLOW_INCARNATIONS:
            for kind in (m.MessageType.DEAD, m.MessageType.SUSPECT, m.MessageType.ALIVE):
                singles.append(h.overflow_claim(kind, node, inc))
        for inc in (limits.INCARNATION_MAX, limits.CLAIM_INCARNATION_MAX + 1):
            singles.append(h.overflow_claim(m.MessageType.DEAD, node, inc))
            singles.append(h.overflow_claim(m.MessageType.SUSPECT, node, inc))
        for kind in (sm.SerfMessageType.JOIN, sm.SerfMessageType.LEAVE):
            singles.append(h.serf_intent(kind, node, h.U64_MAX))
            singles.append(h.serf_intent(kind, node, limits.LTIME_MAX + 1))
    return singles + [h.compound(singles[i:i + 3]) for i in range(0, len(singles), 3)] + \
        [h.with_crc(p) for p in singles]


def _serf_files_sane(data_dir: Path, hosts: list[str]) -> None:
    """What the agent keeps under <data-dir>/serf/ holds only our peers and no number out of range."""
    serf = data_dir / "serf"
    for path in serf.glob("*") if serf.exists() else []:
        if path.suffix == ".json":
            content = json.loads(path.read_text())
            _no_big_numbers(content)
            for peer in content.get("peers", []):
                assert peer.rsplit(":", 1)[0] in hosts, (path, peer)


def _no_big_numbers(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        assert -(1 << 31) <= value <= limits.INCARNATION_MAX, value
    elif isinstance(value, dict):
        for item in value.values():
            _no_big_numbers(item)
    elif isinstance(value, list):
        for item in value:
            _no_big_numbers(item)


def test_overflow_packets_leave_every_server_up_with_its_leader(servers: Servers) -> None:
    leader = servers.leader()
    assert leader is not None
    packets = _overflow_packets()
    assert any(len(p) <= 100 for p in packets)  # the packet was 96 bytes
    before = [servers.counters(a)["bad_packets"] for a in servers.agents]
    _send_all(packets * 3, servers.agents, servers, batch=len(packets))
    # Every one of them is dropped and counted (each compound counts once per message in it).
    for agent, old in zip(servers.agents, before, strict=True):
        wait_for(lambda a=agent, o=old: servers.counters(a)["bad_packets"] - o >= len(packets), 30,
                 what=f"{agent.host} to count the overflow packets")
    servers.assert_healthy(leader)

    # The named node restarts (a follower, so that the leader stays): its memberships and files are sane.
    named = next(a for a in servers.agents if not leader.startswith(a.host + ":"))
    named.kill()
    named.start(wait=False)
    named.wait_ready(30)
    wait_for(lambda: all(servers.view(a) == dict.fromkeys(NAMES, ALIVE) for a in servers.agents), 30,
             what="the restarted node to be alive in every view")
    wait_for(lambda: servers.leader() == leader, 30, what="the leader to stay the same")
    servers.assert_healthy(leader)
    for i in range(3):
        _serf_files_sane(servers.tmp / NAMES[i], servers.hosts)


def _stream(host: str, data: bytes) -> None:
    """One push-pull stream: send, half-close, read whatever comes back until EOF."""
    with socket.create_connection((host, 8301), timeout=5) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            pass  # the server may close first: that is a refusal too


@pytest.mark.slow
def test_100k_hostile_packets_and_streams_change_nothing(servers: Servers) -> None:
    leader = servers.leader()
    assert leader is not None
    t0 = time.monotonic()
    # Hypothesis costs ~5 ms an example here: draw 1,000 packets five per example, then make 100,000 of them
    # (each alone, then compounds of 2-4 chosen by a seeded RNG).
    pieces = [p for batch in h.draw_many(st.lists(h.packet(NAMES), min_size=5, max_size=5), 200, FUZZ_SEED)
              for p in batch]
    streams = [s for batch in h.draw_many(st.lists(h.push_pull_stream(NAMES), min_size=5, max_size=5),
                                          STREAMS // 5, FUZZ_SEED + 1) for s in batch]
    packets = h.expand([p for p in pieces if len(p) < 60_000], PACKETS, FUZZ_SEED)
    print(f"hostile gossip fuzz: seed {FUZZ_SEED} (MESHAGENT_GOSSIP_FUZZ_SEED), {len(pieces)} pieces -> "
          f"{len(packets)} packets, {len(streams)} streams, generated in {time.monotonic() - t0:.1f} s")
    before = [servers.counters(a) for a in servers.agents]
    t1 = time.monotonic()
    _send_all(packets, servers.agents, servers)
    for i, data in enumerate(streams):
        _stream(servers.agents[i % 3].host, data)
    print(f"sent in {time.monotonic() - t1:.1f} s")
    after = [servers.counters(a) for a in servers.agents]
    for old, now in zip(before, after, strict=True):
        assert now["bad_packets"] - old["bad_packets"] >= PACKETS // 3, (old, now)
    # A stream whose only fault is its Serf state counts as a bad Serf message instead (a fifth of them).
    assert sum(now["bad_streams"] - old["bad_streams"] for old, now in zip(before, after, strict=True)) >= \
        STREAMS * 0.6, (before, after)
    servers.assert_healthy(leader)
    # The agents keep answering: a write goes through Raft.
    put = httpx.put(f"{servers.agents[0].http_addr}/v1/kv/hostile-gossip", content=b"still here", timeout=10)
    assert put.status_code == 200 and put.json() is True
