"""Red team (issue 16): a raw :8300 `apply` caller stamps `now` into KV lock, session destroy and txn commands.
The servers stamp it again with their own wall clock, so a hostile proposer can neither skip a key's lock-delay
(a `now` far in the future) nor lock a key for ages (a destroy stamped far ahead). One in-process server."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import pytest
import trio
from meshagent.agent.catalog import PASSING, SERF_CHECK_ID, Check, Node, commands
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.server.endpoints import restamp_now
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from tests.support.acl_raft import running
from tests.support.ports import free_ports, port_free

HOST = "127.0.57.1"
FUTURE = time.time() + 10 * 365 * 86400.0


def test_restamp_replaces_now_in_lock_destroy_txn_and_batches_only() -> None:
    """Pure: every command carrying `now` (also inside a batch) gets the server's; others keep their bytes."""
    cmds = [commands.kv_lock("k", b"v", "s", FUTURE), commands.session_destroy("s", FUTURE),
            commands.txn([], FUTURE),
            {"op": "batch", "commands": [_raw(commands.kv_set("x", b"")),
                                         _raw(commands.kv_lock("k", b"v", "s", FUTURE))]}]
    for cmd in cmds:
        out = msgpack.unpackb(restamp_now(msgpack.packb(cmd, use_bin_type=True), 5.0), raw=False)
        inner = msgpack.unpackb(out["commands"][1], raw=False) if out["op"] == "batch" else out
        assert inner["now"] == 5.0
    plain = msgpack.packb(commands.kv_set("now", b"now"), use_bin_type=True)
    assert restamp_now(plain, 5.0) is plain
    for junk in (b"\xc1now", msgpack.packb(["now"]), msgpack.packb({"op": "batch", "commands": "now"})):
        assert restamp_now(junk, 5.0) == junk  # the FSM / endpoint refuses these, naming why


def _raw(command: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(command, use_bin_type=True))


def test_a_raw_apply_cannot_skip_lock_delay_or_stamp_one_far_ahead() -> None:
    if not port_free(HOST, 0):
        pytest.skip(f"{HOST} is not usable here")

    async def main() -> None:
        port = free_ports(1, HOST)[0]
        store = CatalogStore()
        server = RaftServer(node_id=str(uuid.uuid4()), node_name="s0", bind=HOST, advertise=HOST, port=port,
                            data_dir=None, store=store, bootstrap_expect=1, join=[])
        store.replicator = server
        async with running([server]), trio.open_nursery() as nursery:
            await store.apply(commands.register(Node(node="n1", address="10.0.0.1"), None,
                                                [Check(node="n1", check_id=SERF_CHECK_ID, status=PASSING)]))
            a, b = str(uuid.uuid4()), str(uuid.uuid4())
            for sid in (a, b):
                assert await store.apply(commands.session_create({"id": sid, "node": "n1", "lock_delay": 15.0})) == sid
            client = RPCClient(f"{HOST}:{port}")
            assert await client.call(nursery, "apply", _raw(commands.kv_lock("k", b"a", a, time.time())), 5.0) is True
            # A destroy stamped ten years ahead: the key's lock-delay must end ~15 s from now, not in ten years.
            assert await client.call(nursery, "apply", _raw(commands.session_destroy(a, FUTURE)), 5.0) is True
            until = store.catalog.sessions.lock_delay_until["k"]
            assert until < time.time() + 60, until
            # A lock stamped ten years ahead must not skip the lock-delay now running.
            assert await client.call(nursery, "apply", _raw(commands.kv_lock("k", b"b", b, FUTURE)), 5.0) is False
            txn = commands.txn([{"type": "kv", "verb": "lock", "key": "k", "value": b"b", "session": b}], FUTURE)
            answer = await client.call(nursery, "apply", _raw(txn), 5.0)
            entry = store.catalog.kv_get("k")
            assert answer["errors"] and (entry is None or entry.session != b), answer
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_txn_command_over_sixty_four_ops_is_refused_before_its_ops_are_checked() -> None:
    """command_rights (the servers' re-check of an RPC write) bounds a txn's ops: a 4 MiB command of ~100k ops
    was checked one by one on the leader's event loop (~0.1-0.3 s each time) before the FSM refused it."""
    from meshagent.agent.acl import command_rights
    from meshagent.agent.acl.authorizer import Authorizer
    from meshagent.agent.acl.identity import ACLIdentity
    from meshagent.agent.acl.rules import parse_rules
    from meshagent.agent.catalog.state import Catalog
    from meshagent.agent.catalog.txn import MAX_OPS

    assert command_rights.MAX_TXN_OPS == MAX_OPS
    writer = ACLIdentity("a", Authorizer([parse_rules('key_prefix "" { policy = "write" }')], False))
    ops = [{"type": "kv", "verb": "set", "key": f"k{i}", "value": b""} for i in range(MAX_OPS + 1)]
    with pytest.raises(command_rights.MalformedCommand, match="at most 64"):
        command_rights.authorize(writer, commands.txn(ops, 1.0), Catalog())
    assert command_rights.authorize(writer, commands.txn(ops[:MAX_OPS], 1.0), Catalog()) is None
