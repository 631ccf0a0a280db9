"""`meshagent snapshot save` on one 3-server cluster, `restore` on a fresh one: the same catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.netns import Hosts
from tests.support.raft_cluster import Cluster
from tests.support.wait import wait_for

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHAGENT, *args], capture_output=True, text=True, timeout=60)


def _catalog(http_addr: str, nodes: list[str], stale: bool = False) -> dict[str, Any]:
    """KV with values, flags and indexes, and every named node with its services, from one server."""
    params = {"stale": ""} if stale else {"consistent": ""}
    with httpx.Client(base_url=http_addr, timeout=10, params=params) as http:
        return {
            "kv": http.get("/v1/kv/", params={"recurse": ""}).json(),
            "nodes": {n: http.get(f"/v1/catalog/node/{n}").json() for n in nodes},
            "db": http.get("/v1/catalog/service/db").json(),
        }


@pytest.mark.slow
def test_snapshot_saved_on_one_cluster_restores_identically_on_a_fresh_one(tmp_path: Path, hosts: Hosts) -> None:
    source = Cluster(tmp_path / "a", 3, hosts, name="a")
    try:
        leader = source.wait_one_leader()
        with httpx.Client(timeout=10) as http:
            # Over 1 MB of values: the archive is larger than the API's default 512 KB body limit.
            for i in range(300):
                assert http.put(f"{leader.http_addr}/v1/kv/app/{i:03}", content=bytes([65 + i % 26]) * 4096,
                                params={"flags": str(i)}).json() is True
            for _, agent in source.members:
                r = http.put(f"{agent.http_addr}/v1/agent/service/register",
                             json={"Name": "db", "ID": "db-1", "Port": 5432, "Tags": ["primary"],
                                   "Check": {"TTL": "60s", "Status": "passing"}})
                assert r.status_code == 200, r.text
        names = [f"a{i}" for i in range(3)]

        def db_everywhere() -> bool:
            return len(httpx.get(f"{leader.http_addr}/v1/catalog/service/db", timeout=5).json()) == 3

        wait_for(db_everywhere, 30, what="each server's db instance in the catalog")
        saved = _cli("snapshot", "save", "-http-addr", leader.http_addr, str(tmp_path / "backup.snap"))
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.startswith("Saved and verified snapshot to index "), saved.stdout
        before = _catalog(leader.http_addr, names)
    finally:
        source.stop()

    target = Cluster(tmp_path / "b", 3, hosts, name="b")
    try:
        leader = target.wait_one_leader()
        # Through a follower: it forwards the restore to the leader with the server-only raft_restore call.
        follower = next(agent for _, agent in target.members if agent is not leader)
        restored = _cli("snapshot", "restore", "-http-addr", follower.http_addr, str(tmp_path / "backup.snap"))
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.strip() == "Restored snapshot"
        after = _catalog(leader.http_addr, names)
        assert after["kv"] == before["kv"]  # values, flags and Create/ModifyIndex alike
        assert after["nodes"] == before["nodes"]
        assert after["db"] == before["db"]
        # Every server applied the restore, not just the leader.
        for _, agent in target.members:
            wait_for(lambda a=agent: _catalog(a.http_addr, names, stale=True)["kv"] == before["kv"], 15,
                     what=f"the restored KV on {agent.host}")
    finally:
        target.stop()
