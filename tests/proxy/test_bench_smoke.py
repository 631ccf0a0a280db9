"""bench/proxy/run.py --quick end to end: every figure measured for both pairs, zero errors, and no process of
the benchmark left behind. A smoke run (1 s per figure), not the figures themselves: no target is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "bench" / "proxy" / "run.py"
NUMBER = r"[\d,.]+"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"


def run_quick(*extra: str) -> str:
    done = subprocess.run([sys.executable, str(RUN), "--quick", *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def started_pids(out: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith("processes: "))
    pids = [int(p) for p in re.findall(r" (\d+)(?:,|$)", line)]
    assert pids, line
    return pids


def test_quick_reference_run_measures_every_figure_with_zero_errors_and_cleans_up() -> None:
    out = run_quick("--reference-only")
    for label in ("L4 small requests, req/s", "L7 http + intention, req/s", "bulk transfer, MB/s",
                  "new mTLS connection per request, req/s"):
        assert re.search(rf"^{re.escape(label)}\s+-\s+{NUMBER}\s*$", out, re.M), f"{label} missing:\n{out}"
    assert re.search(rf"^  CPU per request \(pair\), us\s+-\s+{NUMBER}", out, re.M), out
    assert re.search(r"^added p50 at -c1 over the app alone, ms\s+-\s+\+[\d.]+", out, re.M), out
    assert re.search(r"^runs with errors \(must be 0\)\s+-\s+0\s+0  met$", out, re.M), out
    assert "TLS (server side, as a client sees it): haproxy TLSv1.3 TLS_AES_256_GCM_SHA384" in out
    pids = started_pids(out)
    assert len(pids) == 8  # the app, the bulk app, three haproxy pairs
    assert not [pid for pid in pids if alive(pid)], "benchmark processes left running"
