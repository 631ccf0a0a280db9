"""wrk, the HTTP load generator the benchmarks share (Debian package): found, or installed with apt-get.

The scripts run as files and put bench/ on sys.path, as for machine.py: `from wrk_tool import ensure_wrk`;
`wrk_summary` reads the figures out of what `wrk --latency` printed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys


def ensure_wrk() -> str:
    """The path of wrk, installing the Debian package when it is missing (the benchmarks run as root)."""
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print(">>> wrk is not installed; installing it with `apt-get install -y wrk` (Debian package)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is still missing after apt-get install; install it and re-run")
    return wrk


def wrk_summary(out: str) -> dict[str, str]:
    """rps, 50%, 99% ("?" if absent), requests and errors ("none", else wrk's line) from `wrk --latency`'s
    output; exits naming the output when it has no rate (wrk failed)."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        sys.exit(f"wrk printed no rate:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    result = {"rps": rate.group(1), "requests": total.group(1) if total else "0"}
    for pct in ("50%", "99%"):
        m = re.search(rf"^\s+{pct}\s+(\S+)", out, re.M)
        result[pct] = m.group(1) if m else "?"
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    result["errors"] = errors.group(0) if errors else "none"
    return result
