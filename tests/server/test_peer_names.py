"""A restarted server names its Raft peers at once (issue 16): the names learnt from hellos are kept in
raft/peer-names.json next to the log, and a server with no name for a peer takes its catalog node's. Two
in-process Raft servers on 127.0.55.1-2 (real :8300 sockets, real data dirs); the restart runs one of them
alone, so no hello can teach it anything."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import trio
from meshagent.agent.catalog import commands
from meshagent.agent.catalog.model import Node
from meshagent.agent.server.peers import NAMES_FILE, encode_names, load_names, parse_names
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from tests.support.acl_raft import common_port
from tests.support.wait import wait_for_async

HOSTS = ["127.0.55.1", "127.0.55.2"]
IDS = [str(uuid.UUID(int=0x55 << 64 | i)) for i in (1, 2)]
NAMES = ["names-a", "names-b"]


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'{"a": 1}', b'{"": "x"}', b'{"a": ""}',
                                  b'{"a": "' + b"x" * 300 + b'"}', b'{"a": "b"}' + b" " * 300 * 1024])
def test_a_damaged_names_file_only_loses_names(data: bytes) -> None:
    assert parse_names(data) == {}


def test_the_names_file_keeps_the_configurations_servers(tmp_path: Path) -> None:
    data = encode_names({"a": "one", "b": "two", "gone": "three"}, {"a", "b"})
    assert parse_names(data) == {"a": "one", "b": "two"}
    assert load_names(tmp_path / "missing.json") == {} and load_names(None) == {}
    (tmp_path / NAMES_FILE).write_bytes(data)
    assert load_names(tmp_path / NAMES_FILE) == {"a": "one", "b": "two"}


def _servers(port: int, data: Path, count: int = 2) -> list[RaftServer]:
    servers = []
    for i in range(count):
        store = CatalogStore()
        server = RaftServer(node_id=IDS[i], node_name=NAMES[i], bind=HOSTS[i], advertise=HOSTS[i], port=port,
                            data_dir=str(data / NAMES[i]), store=store, bootstrap_expect=2,
                            join=[h for h in HOSTS if h != HOSTS[i]])
        store.replicator = server
        servers.append(server)
    return servers


def _named(server: RaftServer) -> dict[str, str]:
    return {peer.id: peer.node for peer in server.configuration()[1]}


@pytest.mark.slow
def test_a_restarted_server_names_its_peers_at_once(tmp_path: Path) -> None:
    port = common_port(HOSTS)
    expected = dict(zip(IDS, NAMES, strict=True))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            servers = _servers(port, tmp_path)
            for server in servers:
                await nursery.start(server.run)
            await wait_for_async(lambda: any(s.is_leader() for s in servers), 15, what="a leader")
            await wait_for_async(lambda: all(_named(s) == expected for s in servers), 10,
                                 what="both servers named in both configurations")
            names_file = tmp_path / NAMES[0] / "raft" / NAMES_FILE
            await wait_for_async(lambda: load_names(names_file) == expected, 10, what="the names saved")
            nursery.cancel_scope.cancel()

        # names-a alone, as after a restart: no hello from names-b, no catalog row for it.
        async with trio.open_nursery() as nursery:
            alone = _servers(port, tmp_path, 1)[0]
            await nursery.start(alone.run)
            assert _named(alone) == expected
            nursery.cancel_scope.cancel()

        # Without the file the peer is its ID (what every restart showed before) until the catalog names it.
        names_file.unlink()
        async with trio.open_nursery() as nursery:
            alone = _servers(port, tmp_path, 1)[0]
            await nursery.start(alone.run)
            assert _named(alone) == {IDS[0]: NAMES[0], IDS[1]: IDS[1]}
            # The catalog row a replayed log would hold (the leader registers every member with its ID).
            catalog = alone.store.catalog
            catalog.apply(catalog.last_index + 1, commands.register(Node(node=NAMES[1], address=HOSTS[1], id=IDS[1])))
            assert _named(alone) == expected
            await wait_for_async(lambda: json.loads(names_file.read_bytes()) == expected if names_file.exists()
                                 else False, 10, what="the catalog's name saved")
            nursery.cancel_scope.cancel()

    trio.run(main)
