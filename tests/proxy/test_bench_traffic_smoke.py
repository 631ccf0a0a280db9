"""bench/traffic/run.py --quick end to end: one round of 1 s runs on a real -dev agent's sidecars, the plain
L7 path and the chain (router match, split, subset resolver); every figure printed, zero errors, the chain
really compiled into web's snapshot, and no process of the benchmark left behind. A smoke run, not the
figures: no target is asserted (a loaded 2-core machine decides those, not the code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dataplane_harness import pid_alive

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "bench" / "traffic" / "run.py"
N = r"[\d,.]+"


def test_quick_run_measures_the_chain_and_the_plain_path_with_zero_errors_and_cleans_up() -> None:
    done = subprocess.run([sys.executable, str(RUN), "--quick"], capture_output=True, text=True, timeout=90)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert re.search(rf"^L7 req/s \(router \+ split \+ subset resolver\)\s+{N}\s+{N}\s+{N}x  >= 0\.9x", out, re.M), out
    assert re.search(rf"^  p50 / p99 ms\s+{N} / {N}\s+{N} / {N}", out, re.M), out
    assert re.search(rf"^  CPU per request \(sidecars\), us\s+{N}\s+{N}\s+{N}x", out, re.M), out
    assert re.search(r"^runs with errors \(must be 0\)\s+0\s+0\s+0  met$", out, re.M), out
    assert "WARNING" not in out, out  # the chain round did go through a compiled chain
    split = re.search(r"^split seen by web's sidecar \(50/50 written\): v1\.db\S+ ([\d.]+)%, v2\.db\S+ ([\d.]+)%",
                      out, re.M)
    assert split and all(float(share) > 10 for share in split.groups()), out  # both subsets served
    assert re.search(r"^machine: nproc=\d+", out, re.M), out
    line = next(line for line in out.splitlines() if line.startswith("processes: "))
    pids = [int(p) for p in re.findall(r"\b(\d{2,})\b", line.split(", on ")[0])]
    assert len(pids) == 5, line  # the app, the agent, three sidecar workers
    assert not [pid for pid in pids if pid_alive(pid)], "benchmark processes left running"
