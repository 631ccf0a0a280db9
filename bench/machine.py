"""The machine a benchmark ran on, as one line; shared by the scripts under bench/.

The scripts run as files (`.venv/bin/python bench/<name>/run.py`), so they put bench/ on sys.path and
`from machine import machine_info`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model(default: str = "unknown") -> str:
    """The first `model name` of /proc/cpuinfo, or `default` when there is none (not Linux, ARM, ...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def machine_info() -> str:
    """One line: core count, CPU model, Python version and implementation, kernel release."""
    return (f"nproc={os.cpu_count()}  cpu={cpu_model()}  python={platform.python_version()} "
            f"({platform.python_implementation()})  kernel={platform.release()}")


if __name__ == "__main__":
    print(machine_info())
