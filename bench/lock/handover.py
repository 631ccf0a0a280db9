"""bench/lock: leader-election handover with `meshagent lock` on a namespace fleet (3 servers + 3 clients).

  .venv/bin/python bench/lock/handover.py [--runs 5]

Each run kills (-9) the agent of the client whose child holds service/election and times, from the kill:
  * failure detection: a server's catalog shows the dead node's serfHealth critical (SWIM + reconcile + Raft);
  * invalidation: the lock key has no Session (the leader's session runner destroyed the session);
  * lock-delay, retry and wake-up: the next child starts. A waiting contender wakes from its blocking read when
    the key is released, is refused during the session's 15 s lock-delay, and retries every 5 s (Consul's
    DefaultLockRetryTime): the attempt 15 s after the release passes, so this part is 15 s + one acquire and
    the child's start (~0.5 s); it could reach 20 s only if a retry fell just short of the deadline.
The killed agent is restarted and a new contender started on it before the next run. Prints each run and the
median of each phase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.cluster.run import machine
from tests.support.cluster_hosts import Cluster
from tests.support.lock_election import Election, Handover, kill_holder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-lock-"))
    cluster = Cluster(root / "cluster", servers=3, clients=3)
    run_dir = root / "run"
    run_dir.mkdir()
    election = Election(cluster, run_dir)
    print(f"machine: {machine()}")
    results: list[Handover] = []
    try:
        cluster.start(timeout=90)
        cluster.wait_for_members(60)
        for client in cluster.clients:
            election.start(client)
        server = cluster.servers[0]
        for i in range(args.runs):
            cluster.wait_until(lambda: len(server.http("/v1/session/list")) == 3, 60, "three contenders")
            result = kill_holder(election, server, timeout=90)
            overlaps = election.overlaps()
            print(f"  run {i + 1}: {result.describe()}{'  OVERLAP ' + str(overlaps) if overlaps else ''}",
                  flush=True)
            results.append(result)
            host = cluster.host(result.old)
            old = election.contenders.pop(result.old)
            old.proc.wait(30)  # its agent is gone: the lock is lost and the process ends on its own
            host.start()
            cluster.wait_for_members(60)
            election.start(host)
    finally:
        election.stop_all()
        cluster.stop()
    if results:
        def med(values: list[float]) -> float:
            return statistics.median(values)
        print(f"median of {len(results)}: handover {med([r.started for r in results]):.1f} s = "
              f"failure detection {med([r.failed for r in results]):.1f} s + invalidation "
              f"{med([r.invalidation for r in results]):.1f} s + lock-delay, retry and wake-up "
              f"{med([r.started - r.released for r in results]):.1f} s (lock-delay 15 s, retry step 5 s)")


if __name__ == "__main__":
    main()
