"""Issue 16's leader-election acceptance on a VM fleet: 3 servers and 3 clients in network namespaces; one
`meshagent lock` per client contends for service/election. Exactly one child runs at any time (an atomic mkdir,
not sampling); `kill -9` of the holder's agent gets its session invalidated through serfHealth and another child
runs after lock-delay (the handover is printed, phase by phase); a TTL session nobody renews is gone within
2 x TTL. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_hosts import Cluster
from tests.support.lock_election import Election, kill_holder

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

LOCK_DELAY_S = 15.0  # the lock's session (Consul's default)
TTL_S = 10.0  # the shortest TTL Consul accepts
SLACK_S = 3.0  # the leader's timer, a Raft round and this test's polling


@pytest.fixture()
def election(tmp_path: Path) -> Iterator[Election]:
    cluster = Cluster(tmp_path / "cluster", servers=3, clients=3)
    run = tmp_path / "run"
    run.mkdir()
    e = Election(cluster, run)
    try:
        t0 = time.monotonic()
        cluster.start(timeout=60)
        cluster.wait_for_members(30)
        print(f"cluster up in {time.monotonic() - t0:.1f} s")
        yield e
    finally:
        e.stop_all()
        cluster.stop()


def test_one_child_runs_and_another_takes_over_when_the_holders_agent_dies(election: Election) -> None:
    cluster = election.cluster
    server = cluster.servers[0]
    for client in cluster.clients:
        election.start(client)
    holder = cluster.wait_until(election.holder, 30, "a child holds the lock")
    cluster.wait_until(lambda: len(server.http("/v1/session/list")) == 3, 15, "every contender has a session")
    assert [line.split()[1] for line in election.log() if line.startswith("start")] == [holder[0]]
    assert server.http("/v1/kv/service/election/.lock")[0]["Session"]

    # A TTL session created on a client that stays up and never renewed: the leader expires it by 2 x TTL.
    survivor = next(c for c in cluster.clients if c.name != holder[0])
    ttl_sid = survivor.http_put("/v1/session/create", {"Name": "never-renewed", "TTL": f"{TTL_S:g}s"})["ID"]
    ttl_t0 = time.monotonic()
    gone_after: list[float] = []  # seen from a thread, as the handover below outlasts 2 x TTL

    def watch_ttl() -> None:
        while time.monotonic() - ttl_t0 < 2 * TTL_S + SLACK_S + 5:
            try:
                if server.http(f"/v1/session/info/{ttl_sid}") in ([], None):
                    gone_after.append(time.monotonic() - ttl_t0)
                    return
            except Exception:  # a server busy with the kill; ask again
                pass
            time.sleep(0.1)  # the polling step of a measurement, not a synchronisation

    watcher = threading.Thread(target=watch_ttl, daemon=True)
    watcher.start()

    handover = kill_holder(election, server, timeout=LOCK_DELAY_S + 40)
    print(f"handover {handover.describe()}")
    assert handover.new != handover.old
    assert handover.failed - 0.2 <= handover.released <= handover.started, handover  # 50 ms polls of each
    assert handover.started - handover.released >= LOCK_DELAY_S - 1.0, "the lock-delay was not honoured"
    assert election.overlaps() == [], election.report()
    old = election.contenders[handover.old]
    assert old.proc.wait(15) != 0 and f"stop {handover.old}" in " ".join(election.log())

    watcher.join()
    assert gone_after, f"the TTL session was still there {2 * TTL_S + SLACK_S + 5:g} s after its creation"
    print(f"TTL {TTL_S:g}s session gone after {gone_after[0]:.1f} s")
    assert TTL_S <= gone_after[0] <= 2 * TTL_S + SLACK_S

    # Ctrl-C on the new holder releases at once (no lock-delay): the last contender runs next.
    last = next(n for n in election.contenders if n not in (handover.old, handover.new))
    election.contenders[handover.new].interrupt()  # its exit code is its child's (143 when `sh -c` got the TERM)
    assert "Shutdown triggered, killing child" in election.contenders[handover.new].stderr()
    cluster.wait_until(lambda: (h := election.holder()) is not None and h[0] == last, 15, "the third takes over")
    assert election.overlaps() == [], election.report()
