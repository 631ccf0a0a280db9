"""`meshagent keygen` through the console script: a fresh 32-byte key each time, in base64."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


def test_keygen_prints_a_new_base64_32_byte_key() -> None:
    keys = []
    for _ in range(2):
        result = subprocess.run([MESHAGENT, "keygen"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        line = result.stdout.strip()
        assert len(base64.b64decode(line, validate=True)) == 32
        keys.append(line)
    assert keys[0] != keys[1]
