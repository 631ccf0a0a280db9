"""Dissemination at scale, in the simulator: gossip rounds for one new fact to reach every node, vs log2 N.

    .venv/bin/python bench/gossip/sim_rounds.py [--n 1000] [--seeds 3]

A converged cluster of N nodes is built directly (every node merges the full member list, no network),
then one node fires a user event; the simulator runs (no loss) until every node has delivered it. The
figure is the time divided by the gossip interval (200 ms), next to log2 N: first with memberlist's pacing
(eager_gossip off: news waits for the next tick, so this counts gossip rounds), then with our default
(news goes out at once, rounds at least 20 ms apart: the same rounds, less waiting between them).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from machine import machine_info  # noqa: E402
from meshagent.gossip.tunables import GossipConfig  # noqa: E402

from tests.support.sim.gossip_sim import converge_rounds  # noqa: E402

PACINGS = {"memberlist pacing": GossipConfig(eager_gossip=False), "eager gossip (default)": GossipConfig()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"simulator, N = {args.n}, no loss; machine: {machine_info()}")
    for label, config in PACINGS.items():
        print(f" {label}:")
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            r, msgs = converge_rounds(args.n, seed, config)
            print(f"  seed {seed}: {r:.1f} gossip intervals to reach all {args.n} nodes; "
                  f"log2 N = {math.log2(args.n):.1f}; ratio {r / math.log2(args.n):.2f}; {msgs:,} messages; "
                  f"{time.perf_counter() - t0:.1f} s wall")


if __name__ == "__main__":
    main()
