"""Raft on real processes: elections, kill -9, a cut link, restarts, a linearizable KV history."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.linearizability import Op, check_history
from tests.support.netns import Host, Hosts
from tests.support.raft_cluster import Cluster
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5])
def test_servers_elect_exactly_one_leader(tmp_path: Path, hosts: Hosts, n: int) -> None:
    cluster = Cluster(tmp_path, n, hosts)
    try:
        leader = cluster.wait_one_leader()
        wait_for(lambda: {httpx.get(f"{a.http_addr}/v1/status/leader", timeout=2).json()
                          for _, a in cluster.members} == {f"{leader.host}:8300"}, 10,
                 what="every server to name the same leader")
        peers = httpx.get(f"{leader.http_addr}/v1/status/peers", timeout=2).json()
        assert sorted(peers) == sorted(f"{h.address}:8300" for h, _ in cluster.members)
        # Writes through any server, reads back through any other.
        for i, (_, a) in enumerate(cluster.members):
            assert httpx.put(f"{a.http_addr}/v1/kv/k{i}", content=f"v{i}".encode(), timeout=10).json() is True
        for i, (_, a) in enumerate(reversed(cluster.members)):
            r = httpx.get(f"{a.http_addr}/v1/kv/k{n - 1 - i}", params={"raw": ""}, timeout=10)
            assert r.content == f"v{n - 1 - i}".encode()
            assert r.headers["X-Consul-KnownLeader"] == "true"
        # The operator's view through the CLI: Consul's list-peers columns, and `info` with Raft figures.
        _, follower = next((h, a) for h, a in cluster.members if a is not leader)
        peers_out = _cli("operator", "raft", "list-peers", "-http-addr", follower.http_addr)
        lines = peers_out.stdout.splitlines()
        assert lines[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
        rows = [line.split() for line in lines[1:]]
        assert sorted(r[0] for r in rows) == sorted(f"s{i}" for i in range(n))
        assert sorted(r[3] for r in rows) == ["follower"] * (n - 1) + ["leader"]
        assert {r[4] for r in rows} == {"true"}
        info = dict(line.lstrip().split(" = ", 1) for line in
                    _cli("info", "-http-addr", follower.http_addr).stdout.splitlines() if " = " in line)
        assert info["state"] == "follower" and info["num_peers"] == str(n - 1)
        assert int(info["commit_index"]) >= n and int(info["applied_index"]) >= n and int(info["term"]) >= 1
    finally:
        cluster.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([MESHAGENT, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result


class Recorder:
    """Clients running put / cas / ?consistent get against random live servers, recording a history."""

    def __init__(self, cluster: Cluster, clients: int, seed: int) -> None:
        self.cluster = cluster
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acked = 0
        self.threads = [threading.Thread(target=self._client, args=(f"c{i}", random.Random(seed + i)))
                        for i in range(clients)]
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def _client(self, name: str, rng: random.Random) -> None:
        n = 0
        with httpx.Client(timeout=4.0) as http:
            while not self.stop.is_set() and n < 5000:
                n += 1
                live = [a for _, a in self.cluster.members if a.proc and a.proc.poll() is None]
                agent = rng.choice(live)
                key = f"k{rng.randrange(2)}"
                url = f"{agent.http_addr}/v1/kv/lin/{key}"
                kind = rng.choice(["put", "cas", "get"])
                if kind in ("get", "cas"):
                    got = self._get(http, name, key, url)
                    if kind == "get" or got is None:
                        continue
                    value, index = got
                    self._write(http, name, key, url, f"{name}-{n}", "cas", value, index)
                else:
                    self._write(http, name, key, url, f"{name}-{n}", "put", None, None)

    def _get(self, http: httpx.Client, name: str, key: str, url: str) -> tuple[str | None, int] | None:
        op = Op(client=name, kind="get", key=key, invoke=self.now())
        try:
            r = http.get(url, params={"consistent": ""})
        except httpx.HTTPError:
            return None
        if r.status_code == 404:
            op.result, op.complete = None, self.now()
            self._record(op)
            return None, 0
        if r.status_code != 200:
            return None
        entry = r.json()[0]
        value = base64.b64decode(entry["Value"]).decode() if entry["Value"] is not None else ""
        op.result, op.complete = value, self.now()
        self._record(op)
        return value, int(entry["ModifyIndex"])

    def _write(self, http: httpx.Client, name: str, key: str, url: str, value: str, kind: str,
               expected: str | None, index: int | None) -> None:
        op = Op(client=name, kind=kind, key=key, value=value, expected=expected, invoke=self.now())  # type: ignore[arg-type]
        params = {"cas": str(index)} if kind == "cas" else {}
        try:
            r = http.put(url, content=value.encode(), params=params)
            ok = r.status_code == 200
            result = r.json() if ok else None
        except (httpx.HTTPError, ValueError):
            ok, result = False, None
        if ok and isinstance(result, bool):
            op.complete, op.result = self.now(), result if kind == "cas" else True
            if result:
                self.acked += 1
        else:
            op.complete = None  # unknown outcome: it may or may not have been applied
        self._record(op)

    def __enter__(self) -> Recorder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5])
def test_kv_history_is_linearizable_through_kill9_restarts_and_a_cut_link(tmp_path: Path, hosts: Hosts,
                                                                          n: int) -> None:
    cluster = Cluster(tmp_path, n, hosts)
    try:
        cluster.wait_one_leader()
        with Recorder(cluster, clients=4, seed=1) as rec:
            wait_for(lambda: rec.acked >= 20, 30, what="the first acknowledged writes")
            # 1. kill -9 the leader: a new one must serve within 10 s (a quorum is still there).
            old = cluster.leaders()[0]
            old.kill()
            t = time.monotonic()
            wait_for(lambda: len(cluster.leaders()) == 1, 10, what="a new leader after kill -9 of the old")
            before = rec.acked
            wait_for(lambda: rec.acked > before, 10, what="writes to resume under the new leader")
            assert time.monotonic() - t < 10
            old.start(wait=False)
            old.wait_ready(30)
            # 2. cut a follower's link, let the others carry on, then heal it.
            leader = cluster.wait_one_leader()
            host, follower = next((h, a) for h, a in cluster.members if a is not leader)
            hosts.cut(host, follower.proc.pid if follower.proc else None)
            before = rec.acked
            wait_for(lambda: rec.acked > before + 10, 20, what="progress while a follower is cut off")
            hosts.heal(host, follower.proc.pid if follower.proc else None)
            # 3. kill -9 the new leader too and bring it back.
            leader = cluster.wait_one_leader()
            leader.kill()
            wait_for(lambda: len(cluster.leaders()) == 1, 10, what="a leader after the second kill -9")
            leader.start(wait=False)
            leader.wait_ready(30)
            before = rec.acked
            wait_for(lambda: rec.acked > before + 10, 20, what="progress after everything healed")
            if n == 5:
                # 4. lose the quorum (three of five down, the leader among them), then bring one back:
                # a leader must serve within 10 s of the quorum being back.
                leader = cluster.wait_one_leader()
                down = [leader, *[a for _, a in cluster.members if a is not leader][:2]]
                for agent in down:
                    agent.kill()
                down[0].start(wait=False)
                down[0].wait_ready(30)
                t = time.monotonic()
                before = rec.acked
                wait_for(lambda: rec.acked > before, 10, what="writes within 10 s of the quorum being back")
                assert time.monotonic() - t < 10
                for agent in down[1:]:
                    agent.start(wait=False)
                for agent in down[1:]:
                    agent.wait_ready(30)
                before = rec.acked
                wait_for(lambda: rec.acked > before + 10, 20, what="progress with all five back")
        # Every server converges; a final read on each key through each server joins the history.
        cluster.wait_one_leader()
        final = Recorder(cluster, clients=0, seed=0)
        final.t0 = rec.t0
        with httpx.Client(timeout=10) as http:
            for _, agent in cluster.members:
                for key in ("k0", "k1"):
                    final._get(http, "final", key, f"{agent.http_addr}/v1/kv/lin/{key}")
        history = rec.ops + final.ops
        result = check_history(history)
        writes = sum(1 for o in history if o.kind != "get" and o.complete is not None)
        assert writes > 50, f"too little happened to judge: {writes} acknowledged writes"
        assert result.ok, result.explanation
    finally:
        cluster.stop()


@pytest.mark.slow
def test_restart_all_servers_keeps_catalog_and_a_corrupt_log_is_named(tmp_path: Path, hosts: Hosts) -> None:
    config = tmp_path / "raft.hcl"
    config.write_text("raft_snapshot_threshold = 40\nraft_trailing_logs = 10\n")
    cluster = Cluster(tmp_path, 3, hosts, extra=("-config-file", str(config)))
    try:
        leader = cluster.wait_one_leader()
        with httpx.Client(timeout=10) as http:
            for i in range(150):
                assert http.put(f"{leader.http_addr}/v1/kv/keep/{i}", content=str(i).encode()).json() is True
        for _, agent in cluster.members:
            assert agent.stop() == 0
        assert any((tmp_path / f"s{i}" / "raft" / "snapshots").glob("*.snap") for i in range(3))
        for _, agent in cluster.members:
            agent.start(wait=False)
        for _, agent in cluster.members:
            agent.wait_ready(30)
        leader = cluster.wait_one_leader()
        for _, agent in cluster.members:
            keys = httpx.get(f"{agent.http_addr}/v1/kv/keep/", params={"keys": "", "consistent": ""},
                             timeout=10).json()
            assert len(keys) == 150
        # Corrupt the first record of one server's newest segment, with records after it: it must refuse to
        # start and name the file. (Its last record would be a torn write, cut and started from: the middle
        # byte of a segment holding few records sometimes was, and the server rightly started.)
        _, victim = cluster.members[0]
        with httpx.Client(timeout=10) as http:
            for i in range(5):
                assert http.put(f"{leader.http_addr}/v1/kv/more/{i}", content=b"x").json() is True

        def victim_has_them() -> bool:
            r = httpx.get(f"{victim.http_addr}/v1/kv/more/", params={"keys": "", "stale": ""}, timeout=5)
            return r.status_code == 200 and len(r.json()) == 5

        wait_for(victim_has_them, 10, what="the victim to hold 5 more writes")
        victim.stop()
        segment = sorted((tmp_path / "s0" / "raft").glob("*.seg"))[-1]
        data = bytearray(segment.read_bytes())
        first_size = int.from_bytes(data[:4], "big")
        assert 8 + first_size < len(data), "the newest segment must hold more than one record"
        data[8 + first_size // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
        victim.start(wait=False)
        assert victim.proc is not None
        victim.proc.wait(30)
        assert victim.proc.returncode == 1
        log = victim.log()
        assert str(segment) in log and "corrupt record at offset" in log and "Traceback" not in log
    finally:
        cluster.stop()


def _late_bootstrapper(tmp_path: Path, addrs: list[Host]) -> list[AgentProcess]:
    """Two servers that see each other, then a third that bootstraps the three and leads."""
    agents = []
    for i, host in enumerate(addrs):
        joins = [a for h in addrs if h is not host for a in ("-retry-join", h.address)]
        agents.append(AgentProcess(host=host.address, workdir=tmp_path, prefix=host.prefix, args=[
            "-server", "-bootstrap-expect", "3", "-data-dir", str(tmp_path / f"s{i}"), "-node", f"s{i}",
            "-bind", host.address, "-client", host.address, *joins]))
    tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        for agent in agents[:2]:
            agent.start(wait=False)
        for agent in agents[:2]:
            agent.wait_ready(30)
        # The first two see each other but not a third: no bootstrap yet.
        assert all(httpx.get(f"{a.http_addr}/v1/status/leader", timeout=2).json() == "" for a in agents[:2])
        late = agents[2].start(wait=False)
        late.wait_ready(30)
        wait_for(lambda: any(httpx.get(f"{a.http_addr}/v1/agent/self", timeout=2).json()["Stats"]["raft"]["state"]
                             == "leader" for a in agents), 20, what="a leader")
        if not any("bootstrapping with" in a.log() for a in agents[:2]):
            wait_for(lambda: httpx.get(f"{late.http_addr}/v1/agent/self", timeout=2).json()["Stats"]["raft"]
                     ["state"] == "leader", 20, what="the late server, which bootstrapped alone, to lead")
    except BaseException:
        for agent in agents:
            agent.kill()
        raise
    return agents


@pytest.mark.slow
@pytest.mark.parametrize("when", ["at-once", "after-append"])
def test_followers_that_never_bootstrapped_elect_after_the_bootstrapper_dies(tmp_path: Path, hosts: Hosts,
                                                                              when: str) -> None:
    """Two servers start first, the third arrives late and bootstraps alone; it leads and is killed.

    Killed at once, the other two hold a vote but an empty log: they must still bootstrap. Killed once
    they hold the configuration, perhaps without a commit index, they must still reach each other
    (membership counts from append, not commit). Both bugs were real; either way a survivor leads.
    """
    addrs = [hosts.add() for _ in range(3)]
    # An early server whose once-a-second bootstrap round reaches the late one in the few milliseconds
    # between its start and its own bootstrap bootstraps too, with the same configuration (safe, as in
    # Consul), and then the scenario is not the one under test: start over, a few times at most.
    for attempt in range(4):
        agents = _late_bootstrapper(tmp_path / f"try{attempt}", addrs)
        if not any("bootstrapping with" in a.log() for a in agents[:2]):
            break
        for agent in agents:
            agent.kill()
    else:
        raise AssertionError("an early server bootstrapped too in every attempt")
    try:
        late = agents[2]
        if when == "after-append":
            wait_for(lambda: all(int(httpx.get(f"{a.http_addr}/v1/agent/self", timeout=2).json()["Stats"]["raft"]
                                     ["last_log_index"]) >= 1 for a in agents[:2]), 10, what="the entries to arrive")
        late.kill()
        t = time.monotonic()

        def survivor_leads() -> bool:
            return any(httpx.get(f"{a.http_addr}/v1/agent/self", timeout=2).json()["Stats"]["raft"]["state"]
                       == "leader" for a in agents[:2])

        wait_for(survivor_leads, 10, what="a survivor to lead after the bootstrapper died")
        assert time.monotonic() - t < 10
    finally:
        for agent in agents:
            agent.kill()
