"""wrk, the HTTP load generator the benchmarks share (Debian package): found, or installed with apt-get.

The scripts run as files and put bench/ on sys.path, as for machine.py: `from wrk_tool import ensure_wrk`.
"""

from __future__ import annotations

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
