"""PUT /v1/snapshot on a real server: the body streams to a 0600 temp file in the data dir and is verified
from there, so a large upload neither grows the agent's memory nor stalls other clients."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server_agent import start_server_agent
from tests.support.wait import wait_for

UPLOAD_MB = 200
PAUSE_AT_MB = 120


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _archive_with_a_bad_state(reached: threading.Event, resume: threading.Event) -> Iterator[bytes]:
    """A well-formed archive of UPLOAD_MB whose SHA256SUMS does not match state.bin: the server must read
    all of it to find out. Stored deflate blocks keep generating it cheap. Pauses at PAUSE_AT_MB."""
    deflate = zlib.compressobj(0, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    meta = json.dumps({"ID": "1-1-1", "Index": 1, "Term": 1, "Version": 1,
                       "Format": "meshagent-catalog-1"}).encode()
    sums = f"{hashlib.sha256(meta).hexdigest()}  meta.json\n{'0' * 64}  state.bin\n".encode()
    size = UPLOAD_MB << 20
    head = b"".join([_member("SHA256SUMS", len(sums)), sums.ljust(512, b"\0"),
                     _member("meta.json", len(meta)), meta.ljust(512 * ((len(meta) + 511) // 512), b"\0"),
                     _member("state.bin", size)])
    yield deflate.compress(head)
    block = os.urandom(1 << 20)
    for mb in range(UPLOAD_MB):
        if mb == PAUSE_AT_MB:
            reached.set()
            resume.wait(60)
        yield deflate.compress(block)
    yield deflate.compress(bytes(1024)) + deflate.flush()


@pytest.mark.slow
def test_large_upload_streams_to_disk_in_bounded_memory_and_others_are_served(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    agent = start_server_agent(tmp_path, data_dir, "upload")
    try:
        assert agent.proc is not None
        pid = agent.proc.pid
        http = httpx.Client(base_url=agent.http_addr, timeout=30)
        assert http.put("/v1/kv/before", content=b"1").json() is True
        good = http.get("/v1/snapshot").content
        assert http.put("/v1/kv/after", content=b"2").json() is True
        peak_before = _vm_kib(pid, "VmHWM")

        reached, resume = threading.Event(), threading.Event()
        result: dict[str, httpx.Response] = {}

        def upload() -> None:
            with httpx.Client(timeout=120) as c:
                result["r"] = c.put(f"{agent.http_addr}/v1/snapshot", content=_archive_with_a_bad_state(reached,
                                                                                                        resume))
        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        try:
            assert reached.wait(60), "the upload never got going"

            def spooled() -> Path | None:
                files = list(data_dir.glob(".meshagent-upload-*.tmp"))
                return files[0] if files and files[0].stat().st_size >= (PAUSE_AT_MB - 16) << 20 else None
            spool = wait_for(spooled, 30, what="the upload to reach the temp file in the data dir")
            assert spool.stat().st_mode & 0o777 == 0o600
            resume.set()
            # Other clients while the rest of the body streams in: each answered promptly.
            slowest, during = 0.0, 0
            while thread.is_alive() and during < 200:
                started = time.monotonic()
                assert http.get("/v1/kv/before").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                during += thread.is_alive()
            assert during >= 1 and slowest < 2.0, (during, slowest)
        finally:
            resume.set()
            thread.join(120)
        r = result["r"]
        assert r.status_code == 400 and "checksum mismatch for state.bin" in r.text, r.text
        growth_mb = (_vm_kib(pid, "VmHWM") - peak_before) / 1024
        print(f"peak RSS growth {growth_mb:.1f} MB; {during} GETs mid-upload, slowest {slowest:.3f} s")
        assert growth_mb < 50, f"peak RSS grew {growth_mb:.0f} MB for a {UPLOAD_MB} MB upload"
        assert not list(data_dir.glob(".meshagent-upload-*"))  # removed after a failure

        left = data_dir / ".meshagent-upload-killed.tmp"  # as an agent killed mid-upload leaves one
        left.write_bytes(b"x")
        os.utime(left, (time.time() - 7200, time.time() - 7200))
        r = http.put("/v1/snapshot", content=io.BytesIO(good).read())
        assert r.status_code == 200, r.text
        assert http.get("/v1/kv/after").status_code == 404 and http.get("/v1/kv/before").status_code == 200
        assert not list(data_dir.glob(".meshagent-upload-*"))  # and after a success (the stale one too)
    finally:
        agent.stop()


def _zeros_archive(size: int) -> bytes:
    """A valid archive whose state.bin is `size` zero bytes: tiny on the wire, huge inflated."""
    meta = json.dumps({"ID": "1-1-1", "Index": 1, "Term": 1, "Version": 1, "Format": "meshagent-catalog-1"}).encode()
    digest, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
    sums = f"{hashlib.sha256(meta).hexdigest()}  meta.json\n{digest.hexdigest()}  state.bin\n".encode()
    deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflate.compress(_member("SHA256SUMS", len(sums)) + sums.ljust(512, b"\0")
                              + _member("meta.json", len(meta)) + meta.ljust(512, b"\0")
                              + _member("state.bin", size))]
    parts.extend(deflate.compress(block) for _ in range(size >> 20))
    parts.append(deflate.compress(bytes(1024)) + deflate.flush())
    return b"".join(parts)


def test_a_restore_too_large_for_one_raft_frame_is_refused_unread(tmp_path: Path) -> None:
    # 256 MiB of zeros in a ~250 KB upload. Its size is checked before the state is read into memory;
    # replicating even a 16 MiB one would stall every follower (one Raft command, one :8300 frame).
    big = _zeros_archive(256 << 20)
    agent = start_server_agent(tmp_path, tmp_path / "data", "bigrestore")
    try:
        assert agent.proc is not None
        peak_before = _vm_kib(agent.proc.pid, "VmHWM")
        r = httpx.put(f"{agent.http_addr}/v1/snapshot", content=big, timeout=60)
        assert r.status_code == 413 and "one Raft command" in r.text and str(256 << 20) in r.text, r.text
        assert (_vm_kib(agent.proc.pid, "VmHWM") - peak_before) / 1024 < 50
        assert httpx.put(f"{agent.http_addr}/v1/kv/still", content=b"ok", timeout=10).json() is True
    finally:
        agent.stop()
