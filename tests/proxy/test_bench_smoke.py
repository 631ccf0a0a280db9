"""bench/proxy/run.py --quick end to end: every figure measured for both pairs, zero errors, the same TLS on
both server sides, and no process of the benchmark left behind. A smoke run (1 s per figure), not the figures
themselves: no target is asserted (a loaded 2-core machine decides those, not the code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dataplane_harness import pid_alive

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "bench" / "proxy" / "run.py"
N = r"[\d,.]+"
ROWS = {"l4": ("L4 small requests, req/s", "  CPU per request (pair), us"),
        "l7": ("L7 http + intention, req/s",),
        "bulk": ("bulk transfer, MB/s",),
        "newconn": ("new mTLS connection per request, req/s", "  CPU per connection (pair), us"),
        "c1": ("added p50 at -c1 over the app alone, ms",)}


def run_quick() -> str:
    done = subprocess.run([sys.executable, str(RUN), "--quick"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def started_pids(out: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith("processes: "))
    pids = [int(p) for p in re.findall(r" (\d+)(?:,|$)", line)]
    assert pids, line
    return pids


def check_rows(out: str) -> None:
    """Every figure's row holds a number for both pairs; the error row says zero for both."""
    value = rf"\+?{N}"
    for labels in ROWS.values():
        for label in labels:
            assert re.search(rf"^{re.escape(label)}\s+{value}\s+{value}", out, re.M), f"{label!r}:\n{out}"
    assert re.search(r"^runs with errors \(must be 0\)\s+0\s+0\s+0  met$", out, re.M), out


def test_quick_run_of_both_pairs_measures_every_figure_with_zero_errors_and_cleans_up() -> None:
    out = run_quick()
    check_rows(out)
    tls = re.search(r"^TLS \(server side, as a client sees it\): ours (.+); haproxy (.+)$", out, re.M)
    assert tls and tls.group(1) == tls.group(2) == "TLSv1.3 TLS_AES_256_GCM_SHA384", out
    pids = started_pids(out)
    assert len(pids) == 14  # the app, the bulk app, three pairs of ours (l4, l7, bulk), three of haproxy
    assert not [pid for pid in pids if pid_alive(pid)], "benchmark processes left running"
