"""A server whose data dir fills up while it runs: the failing write gets a clear 500, reads keep being
answered, the agent keeps running, and it never says "Error starting agent". Needs a tmpfs (root)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server_agent import start_server_agent

FULL = "no space left on device writing"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs as a data dir, unmounted afterwards."""
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _head_only(host: str, head: bytes) -> bytes:
    """Send a request head and read the answer (the body is never sent)."""
    with socket.create_connection((host, 8500), timeout=10) as sock:
        sock.sendall(head)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


def test_full_disk_fails_the_write_and_keeps_serving(tmp_path: Path, small_disk: Path) -> None:
    agent = start_server_agent(tmp_path, small_disk, "full")
    try:
        http = httpx.Client(base_url=agent.http_addr, timeout=30)
        # A snapshot upload larger than the free space is refused before a byte of it is read.
        reply = _head_only(agent.host, b"PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 507 ") and b"not enough free space" in reply, reply[:300]
        # One of unknown length fills the disk: a clear error, and its temp file is gone.
        r = http.put("/v1/snapshot", content=iter([b"\x1f\x8b" + os.urandom(1 << 20) for _ in range(5)]))
        assert r.status_code == 500 and FULL in r.text and str(small_disk) in r.text, r.text
        assert not list(small_disk.glob(".meshagent-upload-*"))

        value = os.urandom(100_000)
        answers = []
        for i in range(60):
            r = http.put(f"/v1/kv/k{i}", content=value)
            answers.append(r.status_code)
            if r.status_code != 200:
                break
        assert answers[:-1] == [200] * (len(answers) - 1) and len(answers) > 1, answers
        assert answers[-1] == 500 and FULL in r.text and str(small_disk) in r.text, r.text
        r = http.put("/v1/kv/later", content=b"x")  # later writes: the same clear answer
        assert r.status_code == 500 and FULL in r.text
        r = http.put("/v1/agent/service/register", json={"Name": "web", "Port": 80})
        assert r.status_code == 500 and "No space left on device" in r.text, r.text

        assert agent.proc is not None and agent.proc.poll() is None
        assert http.get("/v1/kv/k0", params={"raw": ""}).content == value  # reads, default consistency (the only voter)
        assert http.get("/v1/kv/k0", params={"raw": "", "stale": ""}).content == value
        assert http.get("/v1/catalog/nodes").json()[0]["Node"] == "full"
        assert http.get("/v1/agent/self").status_code == 200
    finally:
        code = agent.stop()
    log = agent.log()
    assert code == 0, log[-2000:]
    assert "Error starting agent" not in log and "Traceback" not in log, log[-3000:]
