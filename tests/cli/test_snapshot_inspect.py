"""`meshagent snapshot inspect` through the real console script: Consul's fields, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from meshagent.snapshot_archive import pack

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHAGENT, *args], capture_output=True, text=True, timeout=60)


def test_inspect_prints_consul_fields(tmp_path: Path) -> None:
    path = tmp_path / "backup.snap"
    path.write_bytes(pack({"ID": "2-5-1477944140022", "Index": 5, "Term": 2, "Version": 1}, b"x" * 667))
    result = _run("snapshot", "inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ID           2-5-1477944140022",
        "Size         667",
        "Index        5",
        "Term         2",
        "Version      1",
    ]
    assert result.stderr == ""


def _corrupt(tmp_path: Path) -> Path:
    data = bytearray(pack({"ID": "1-3-0", "Index": 3, "Term": 1, "Version": 1}, b"state" * 100))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "corrupt.snap"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [
    _corrupt,
    lambda tmp: (tmp / "junk.snap", (tmp / "junk.snap").write_bytes(b"not an archive"))[0],
    lambda tmp: (tmp / "cut.snap", (tmp / "cut.snap").write_bytes(pack(
        {"ID": "a", "Index": 1, "Term": 1, "Version": 1}, b"s" * 1000)[:60]))[0],
    lambda tmp: tmp / "does-not-exist.snap",
    lambda tmp: tmp,  # a directory
], ids=["flipped-byte", "not-gzip", "truncated", "missing-file", "directory"])
def test_inspect_bad_file_is_one_line_exit_1(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    result = _run("snapshot", "inspect", str(make(tmp_path)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(("Error verifying snapshot file: ", "Error opening snapshot file: "))
    assert "Traceback" not in result.stderr
