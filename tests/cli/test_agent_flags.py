"""`meshagent agent` refuses a port flag outside 0-65535 (or -1) before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("flag", ["-http-port", "-dns-port"])
def test_a_port_flag_out_of_range_is_refused_with_its_name(flag: str) -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("meshagent")), "agent", "-dev", flag, "99999"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert flag in done.stderr and "99999 is not in the range" in done.stderr
