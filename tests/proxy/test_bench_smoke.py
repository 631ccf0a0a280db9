"""bench/proxy/run.py --quick end to end: every figure measured for both pairs, zero errors, the same TLS on
both server sides, and no process of the benchmark left behind. A smoke run (1 s per figure), not the figures
themselves: no target is asserted (a loaded 2-core machine decides those, not the code)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "bench" / "proxy" / "run.py"
N = r"[\d,.]+"
ROWS = {"l4": ("L4 small requests, req/s", "  CPU per request (pair), us"),
        "l7": ("L7 http + intention, req/s",),
        "bulk": ("bulk transfer, MB/s",),
        "newconn": ("new mTLS connection per request, req/s", "  CPU per connection (pair), us"),
        "c1": ("added p50 at -c1 over the app alone, ms",)}


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


def check_rows(out: str, figures: tuple[str, ...], ours: bool) -> None:
    value = rf"\+?{N}"
    for figure in figures:
        for label in ROWS[figure]:
            both = rf"{value}\s+{value}" if ours else rf"-\s+{value}"
            assert re.search(rf"^{re.escape(label)}\s+{both}", out, re.M), f"{label!r} without figures:\n{out}"
    errors = r"0\s+0\s+0  met" if ours else r"-\s+0\s+0  met"
    assert re.search(rf"^runs with errors \(must be 0\)\s+{errors}$", out, re.M), out


def test_quick_reference_run_measures_every_figure_with_zero_errors_and_cleans_up() -> None:
    out = run_quick("--reference-only")
    check_rows(out, tuple(ROWS), ours=False)
    assert "TLS (server side, as a client sees it): haproxy TLSv1.3 TLS_AES_256_GCM_SHA384" in out
    pids = started_pids(out)
    assert len(pids) == 8  # the app, the bulk app, three haproxy pairs
    assert not [pid for pid in pids if alive(pid)], "benchmark processes left running"


def test_quick_run_of_both_pairs_measures_every_figure_with_zero_errors_and_cleans_up() -> None:
    figures = ("l4", "bulk", "newconn", "c1")
    out = run_quick("--figures", ",".join(figures))
    check_rows(out, figures, ours=True)
    tls = re.search(r"^TLS \(server side, as a client sees it\): ours (.+); haproxy (.+)$", out, re.M)
    assert tls and tls.group(1) == tls.group(2) == "TLSv1.3 TLS_AES_256_GCM_SHA384", out
    pids = started_pids(out)
    assert len(pids) == 10  # the app, the bulk app, two pairs of ours, two of haproxy
    assert not [pid for pid in pids if alive(pid)], "benchmark processes left running"
