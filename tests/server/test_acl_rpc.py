"""RPC `apply` under ACLs (default deny) against 3 in-process servers on real :8300 sockets (127.0.41.1-3).

Tokens and policies are written through Raft as the leader's own writes (token None: not checked), so every
server resolves them from its own FSM with the agent's ACLResolver. Then: a client agent's forwarded write
(ServerForwarder -> a follower -> the leader) with a token lacking rights is refused 403 with Consul's text
and lands with the right one; a raw RPCClient sending `apply` bytes (no token) is refused as the anonymous
token, on the leader's task-free path and on a follower's, even where the server has a `default` token; the
{command, token} form is strictly checked; a follower's own write carries its token to the leader, which
re-checks it; a batch is checked command by command; the leader's internal writes are not.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.catalog import commands
from meshagent.agent.client.forward import ServerForwarder
from meshagent.agent.client.replica import CatalogReplica
from meshagent.agent.client.servers import ServerPool
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ACLDenied, ACLNotFound, Rejected
from meshagent.agent.server.raft_server import RaftServer
from meshagent.agent.store import CatalogStore

from tests.support.acl_raft import acl_servers, running
from tests.support.wait import wait_for_async

pytestmark = [pytest.mark.slow]  # a 3-server Raft cluster (in-process: ~3 s)

HOSTS = ["127.0.41.1", "127.0.41.2", "127.0.41.3"]
ANONYMOUS = "00000000-0000-0000-0000-000000000002"



def pack(command: Any) -> bytes:
    return bytes(msgpack.packb(command, use_bin_type=True))


def denied(accessor: str, permission: str, name: str) -> str:
    return f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on \"{name}\""


@asynccontextmanager
async def cluster() -> AsyncIterator[list[RaftServer]]:
    async with running(acl_servers(HOSTS, "acl-rpc")) as servers:
        yield servers


def test_writes_over_rpc_are_rechecked_against_their_token() -> None:
    app_policy = Policy(id=str(uuid.uuid4()), name="app-writer", rules='key_prefix "app/" { policy = "write" }')
    app = Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()),
                policies=(Link(app_policy.id, app_policy.name),))

    async def main() -> None:
        async with cluster() as servers:
            leader = next(s for s in servers if s.is_leader())
            followers = [s for s in servers if s is not leader]
            # The leader's `default` token (for its own HTTP API) may write app/: a :8300 caller without a
            # token still acts as the anonymous token there, not as this one.
            assert leader.endpoints.acl is not None
            leader.endpoints.acl.tokens.default = app.secret_id
            # The leader's own writes (token None) are not checked: the ACL objects go in that way.
            await leader.apply(commands.acl_init(""))
            await leader.apply(commands.acl_policy_set(app_policy))
            await leader.apply(commands.acl_token_set(app))
            await wait_for_async(lambda: all(s.store.catalog.acl.token(app.accessor_id) for s in servers), 10,
                                 what="the token on every server")

            def kv(key: str) -> list[bool]:
                return [s.store.catalog.kv_get(key) is not None for s in servers]

            async with trio.open_nursery() as nursery:
                # A client agent: its forwarder writes through a follower (which forwards to the leader).
                pool = ServerPool(list, "dc1", [followers[0].address.rpartition(":")[0]], leader.port)
                forwarder = ServerForwarder(pool, CatalogReplica(CatalogStore(), pool, "acl-rpc-client"))
                await nursery.start(forwarder.run)

                with pytest.raises(ACLDenied) as refused:
                    await forwarder.apply(commands.kv_set("secret/x", b"1"), token=app.secret_id)
                assert refused.value.status == 403
                assert str(refused.value) == denied(app.accessor_id, "key:write", "secret/x")
                assert await forwarder.apply(commands.kv_set("app/x", b"1"), token=app.secret_id) is True
                await wait_for_async(lambda: all(kv("app/x")), 5, what="app/x on every server")
                with pytest.raises(ACLNotFound) as unknown:
                    await forwarder.apply(commands.kv_set("app/x", b"2"), token=str(uuid.uuid4()))
                assert (unknown.value.status, str(unknown.value)) == (403, "ACL not found")
                # No token (bytes alone) and an empty one act as the anonymous token: no policies.
                for token in (None, ""):
                    with pytest.raises(ACLDenied) as anon:
                        await forwarder.apply(commands.kv_set("app/anon", b"1"), token=token)
                    assert str(anon.value) == denied(ANONYMOUS, "key:write", "app/anon")

                # A raw :8300 caller: bytes without a token, at the leader (its task-free path) and a follower.
                for server in (leader, followers[1]):
                    raw = RPCClient(server.address)
                    with pytest.raises(ACLDenied, match=f"AccessorID '{ANONYMOUS}'"):
                        await raw.call(nursery, "apply", pack(commands.kv_set("app/raw", b"1")), 5)
                    # The {command, token} form, strictly checked.
                    for args in ({"command": pack(commands.kv_set("app/raw", b"1")), "token": 5},
                                 {"command": "not bytes", "token": app.secret_id},
                                 {"command": pack(commands.kv_set("app/raw", b"1")), "token": app.secret_id,
                                  "extra": 1},
                                 {"command": b"\xc1", "token": app.secret_id},
                                 [pack(commands.kv_set("app/raw", b"1"))]):
                        with pytest.raises(Rejected):
                            await raw.call(nursery, "apply", args, 5)
                    with pytest.raises(ACLNotFound):
                        await raw.call(nursery, "apply", {"command": pack(commands.kv_set("app/raw", b"1")),
                                                          "token": "x" * 300}, 5)
                    # A batch is checked command by command: one refused command refuses it all.
                    batch = pack({"op": "batch", "commands": [pack(commands.kv_set("app/b", b"1")),
                                                              pack(commands.kv_set("secret/b", b"1"))]})
                    with pytest.raises(ACLDenied, match='on "secret/b"'):
                        await raw.call(nursery, "apply", {"command": batch, "token": app.secret_id}, 5)
                    raw.close()
                assert not any(kv("app/raw") + kv("app/anon") + kv("app/b") + kv("secret/b") + kv("secret/x"))
                nursery.cancel_scope.cancel()  # the forwarder's connections

            # A follower's own write (its HTTP API's) is not checked there: it carries the token to the leader,
            # which re-checks it. Without a token it reaches the leader as an anonymous write.
            follower = followers[0]
            with pytest.raises(ACLDenied) as forwarded:
                await follower.apply(commands.kv_set("secret/f", b"1"), token=app.secret_id)
            assert str(forwarded.value) == denied(app.accessor_id, "key:write", "secret/f")
            with pytest.raises(ACLDenied, match=f"AccessorID '{ANONYMOUS}'"):
                await follower.apply(commands.kv_set("app/f", b"1"))
            assert await follower.apply(commands.kv_set("app/f", b"1"), token=app.secret_id) is True
            # The leader's internal writes stay unchecked.
            assert await leader.apply(commands.kv_set("secret/internal", b"1")) is True
            await wait_for_async(lambda: all(kv("app/f") + kv("secret/internal")), 5,
                                 what="the allowed writes everywhere")
            assert not any(kv("secret/f"))

    async def bounded() -> None:
        with trio.fail_after(25):
            await main()

    trio.run(bounded)
