"""Writes that queue up together share a log entry, and each still gets its own answer and catalog index."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import msgpack
from meshagent.agent.catalog.commands import kv_cas, kv_set

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for


def _frames(commands: list[bytes]) -> bytes:
    out = []
    for rid, data in enumerate(commands, 1):
        body = msgpack.packb(["req", rid, "apply", data], use_bin_type=True)
        out.append(len(body).to_bytes(4, "big") + body)
    return b"".join(out)


def _answers(sock: socket.socket, n: int) -> dict[int, tuple[object, object]]:
    """(error, result) per request id; an error ([code, message] on the wire) as "code: message"."""
    unpacker = b""
    got: dict[int, tuple[object, object]] = {}
    while len(got) < n:
        data = sock.recv(1 << 16)
        assert data, "server closed the connection"
        unpacker += data
        while len(unpacker) >= 4 and len(unpacker) - 4 >= int.from_bytes(unpacker[:4], "big"):
            size = int.from_bytes(unpacker[:4], "big")
            kind, rid, error, result = msgpack.unpackb(unpacker[4:4 + size], raw=False)
            assert kind == "resp"
            got[rid] = (None if error is None else f"{error[0]}: {error[1]}", result)
            unpacker = unpacker[4 + size:]
    return got


def test_pipelined_writes_share_entries_but_keep_their_own_answers_and_indexes(
        tmp_path: Path, agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory("-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / "data"), dev=False)
    wait_for(lambda: httpx.get(f"{agent.http_addr}/v1/status/leader", timeout=2).json() != "", 20,
             what="the single server to lead")
    raft = httpx.get(f"{agent.http_addr}/v1/agent/self", timeout=5).json()["Stats"]["raft"]
    before = int(raft["last_log_index"])
    # 400 sets and, among them, CAS writes that must fail (index 1 is long gone): one result per write.
    commands = [msgpack.packb(kv_cas(f"b/{i}", b"x", 1) if i % 10 == 9 else kv_set(f"b/{i}", str(i).encode()),
                              use_bin_type=True) for i in range(400)]
    with socket.create_connection((agent.host, 8300), timeout=20) as sock:
        sock.sendall(_frames(commands))
        answers = _answers(sock, len(commands))
    for rid in range(1, 401):
        i = rid - 1
        error, result = answers[rid]
        assert error is None, error
        assert result is (i % 10 != 9), (i, result)
    raft = httpx.get(f"{agent.http_addr}/v1/agent/self", timeout=5).json()["Stats"]["raft"]
    assert int(raft["last_log_index"]) - before < len(commands) // 4  # batched: far fewer entries than writes
    kv = httpx.get(f"{agent.http_addr}/v1/kv/b/", params={"recurse": ""}, timeout=5).json()
    assert len(kv) == 360
    indexes = [e["ModifyIndex"] for e in kv]
    assert len(set(indexes)) == len(indexes)  # every write its own catalog index, as in Consul
