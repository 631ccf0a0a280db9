"""Red team of the ACL system on :8300 (issue 15): 3 in-process servers under default deny on 127.0.46.2-4,
attacked by a caller that can reach :8300 (plaintext here: as one holding the cluster's credentials, see
docs/security.md) with no token, weak tokens, unknown and malformed ones.

A disguised ACL write (an "acl" token-set carrying action = "bootstrap") is refused end to end, and a seeded
fuzz of every ACL-relevant RPC method (`apply` in both argument forms, batches, `acl_http`, the CA's methods,
reads) leaves every server up with one leader, answers every call with a typed error or a result, and lets
no write through that its token had no right to.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
from meshagent.agent.acl.objects import Link, Policy, Token
from meshagent.agent.catalog import commands
from meshagent.agent.catalog.acl_state import GLOBAL_MANAGEMENT_POLICY_ID
from meshagent.agent.catalog.model import Check, Node, Service
from meshagent.agent.http.api import API
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ACLDenied, ServerError, Unreachable
from meshagent.agent.server.raft_server import RaftServer

from tests.support.acl_raft import acl_servers, running
from tests.support.http_harness import FakeAgent
from tests.support.wait import wait_for_async

pytestmark = [pytest.mark.slow]  # a 3-server Raft cluster, in process (~4 s with the fuzz)

HOSTS = ["127.0.46.2", "127.0.46.3", "127.0.46.4"]
MGMT = str(uuid.uuid4())
FUZZ_CALLS = int(os.environ.get("MESH_RPC_FUZZ_CALLS", "1000"))
KV_RULES = 'key_prefix "app/" { policy = "write" }\n'
WEB_RULES = 'service "web" { policy = "write" }\nnode_prefix "" { policy = "read" }\n'


def pack(command: Any) -> bytes:
    return bytes(msgpack.packb(command, use_bin_type=True))


@asynccontextmanager
async def cluster() -> AsyncIterator[list[RaftServer]]:
    servers = acl_servers(HOSTS, "acl-red")
    for i, server in enumerate(servers):
        # acl_http runs the server's own /v1/acl API: an API over this server's store and resolver.
        acl = server.endpoints.acl
        assert acl is not None
        view = FakeAgent(node_name=f"acl-red-{i}")
        view.store, view.config, view.acl = acl.store, acl.config, acl
        server.endpoints.acl_http.api = API(view)
    async with running(servers):
        yield servers


def _token(rules: str, name: str) -> tuple[Policy, Token]:
    policy = Policy(id=str(uuid.uuid4()), name=name, rules=rules)
    return policy, Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()),
                         policies=(Link(policy.id, policy.name),))


def _evil_token() -> Token:
    return Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()),
                 policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, ""),))


def _command(rng: random.Random) -> dict[str, Any]:
    """One catalog command an attacker might send: every op the FSM knows, with names to play games with."""
    key = rng.choice(["app/x", "app/", "App/x", "secret/x", "", "app/../secret", "APP/y", "app/" + "z" * 300])
    node = rng.choice(["n1", "N1", "n2", "evil", ""])
    svc = rng.choice(["web", "WEB", "db", "web-sidecar-proxy", "evil"])
    pick = rng.randrange(17)
    if pick >= 14:  # plain writes a weak token may or may not make
        return commands.kv_set(rng.choice(["app/ok", "app/also", "secret/y"]), b"v")
    if pick == 0:
        return commands.kv_set(key, b"v")
    if pick == 1:
        return rng.choice([commands.kv_delete(key), commands.kv_delete_tree(key), commands.kv_cas(key, b"v", 0)])
    if pick == 2:
        service = Service(node=node, id=rng.choice([svc, "db1", "web1"]), service=svc, port=80)
        checks = [Check(node=node, check_id=rng.choice(["serfHealth", "service:db1", "c"]),
                        service_id=rng.choice(["", "db1", service.id]))]
        return commands.register(Node(node=node, address="10.0.0.9"), service, checks)
    if pick == 3:
        return commands.deregister(node, rng.choice(["", "db1", "web1"]), rng.choice(["", "serfHealth"]))
    if pick == 4:
        return commands.config_entry_set({"Kind": rng.choice(["service-defaults", "proxy-defaults", "mesh",
                                                             "service-intentions", "service-resolver"]),
                                          "Name": svc, "Redirect": {"Service": "db"}})
    if pick == 5:
        return commands.acl_token_set(_evil_token())
    if pick == 6:
        return {**commands.acl_token_set(_evil_token()), rng.choice(["action", "Verb", "op2"]): "bootstrap"}
    if pick == 7:
        return rng.choice([commands.acl_init(str(uuid.uuid4())), commands.acl_bootstrap(_evil_token()),
                           commands.acl_policy_delete(GLOBAL_MANAGEMENT_POLICY_ID),
                           commands.acl_token_delete("00000000-0000-0000-0000-000000000002")])
    if pick == 8:
        return commands.connect_ca(rng.choice(["init", "rotate", "set-config"]))
    if pick == 9:
        return {"op": "restore", "state": b""}
    if pick == 10:
        return {"op": "batch", "commands": [pack(_command(rng)) for _ in range(rng.randint(1, 3))]}
    if pick == 11:
        return {"op": rng.choice(["acl", "kv", "register", 7, None]), "verb": rng.choice(["set", "token-set", 1])}
    if pick == 12:
        return {"op": "kv", "verb": "set", "key": rng.choice([7, None, key]), "value": "not bytes"}
    return {"op": "config-entry", "verb": "delete", "kind": rng.choice(["mesh", 7]), "name": svc}


def _call(rng: random.Random, tokens: list[Any]) -> tuple[str, Any]:
    """(method, args) of one hostile call."""
    method = rng.choice(["apply"] * 6 + ["acl_http", "connect_ca_sign", "connect_ca_set_config", "barrier",
                                         "read_index", "nope"])
    token = rng.choice(tokens)
    if method == "apply":
        data = pack(_command(rng)) if rng.random() < 0.95 else bytes(rng.randrange(256) for _ in range(20))
        form = rng.choice([0, 1, 1, 1, 2, 3])
        if form == 0:
            return method, data
        if form == 1:
            return method, {"command": data, "token": token}
        if form == 2:
            return method, {"command": data, "token": token, "extra": 1}
        return method, rng.choice([[data], {"command": data}, None, 7, {"token": token}])
    if method == "acl_http":
        return method, {"method": rng.choice(["GET", "PUT", "DELETE", "TRACE"]),
                        "path": rng.choice(["/v1/acl/token", "/v1/acl/tokens", "/v1/acl/bootstrap", "/v1/kv/x",
                                            "/v1/acl/../kv/x", "/v1/acl/policy", "/v1/acl/token/self"]),
                        "query": rng.choice(["", "token=" + MGMT, "pretty", "x=%zz"]),
                        "body": rng.choice([b"", b"{}", b'{"Policies": [{"Name": "global-management"}]}',
                                            b"\xff"]),
                        "token": token if isinstance(token, str) else ""}
    if method == "connect_ca_sign":
        return method, rng.choice([{"csr": "not a pem"}, {"csr": 7}, {}, None, {"csr": "x", "token": token}])
    if method == "connect_ca_set_config":
        return method, rng.choice([{"provider": "consul", "config": {}}, {}, None,
                                   {"provider": "consul", "config": {}, "token": token}])
    return method, rng.choice([True, False, None, 7, "x", b"\x00"])


def test_disguised_acl_writes_and_a_fuzz_of_acl_rpcs_let_nothing_through() -> None:
    kv_policy, kv_token = _token(KV_RULES, "red-kv")
    web_policy, web_token = _token(WEB_RULES, "red-web")
    seed = int(os.environ.get("MESH_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"ACL RPC fuzz seed: {seed} (re-run with MESH_FUZZ_SEED={seed})")
    rng = random.Random(seed)

    async def main() -> None:
        async with cluster() as servers:
            leader = next(s for s in servers if s.is_leader())
            for command in (commands.acl_init(MGMT), commands.acl_policy_set(kv_policy),
                            commands.acl_token_set(kv_token), commands.acl_policy_set(web_policy),
                            commands.acl_token_set(web_token),
                            commands.register(Node(node="n1", address="10.0.0.1"),
                                              Service(node="n1", id="web1", service="web", port=80)),
                            commands.register(Node(node="n2", address="10.0.0.2"),
                                              Service(node="n2", id="db1", service="db", port=5432),
                                              [Check(node="n2", check_id="service:db1", service_id="db1",
                                                     status="critical")]),
                            commands.kv_set("secret/x", b"keep")):
                await leader.apply(command)  # the leader's own writes: not checked
            await wait_for_async(lambda: all(s.store.catalog.acl.token(web_token.accessor_id) for s in servers),
                                 10, what="the tokens on every server")
            acl_before = leader.store.catalog.acl.index, leader.store.catalog.acl.bootstrap_index
            tokens: list[Any] = [None, "", "anonymous", *[kv_token.secret_id, web_token.secret_id] * 3,
                                 str(uuid.uuid4()), "x" * 300, 7, "\x00"]
            async with trio.open_nursery() as nursery:
                clients = [RPCClient(s.address) for s in servers]
                # The finding, end to end: no token, a token-set dressed as a bootstrap, at a follower and
                # the leader (before the fix it reached Raft and the FSM wrote the management token).
                evil = _evil_token()
                disguised = pack({**commands.acl_token_set(evil), "action": "bootstrap"})
                for client in clients:
                    for args in (disguised, {"command": disguised, "token": web_token.secret_id}):
                        with pytest.raises(ACLDenied, match="lacks permission 'acl:write'"):
                            await client.call(nursery, "apply", args, 5)
                assert all(s.store.catalog.acl.token(evil.accessor_id) is None for s in servers)

                outcomes: dict[str, int] = {}
                for _ in range(FUZZ_CALLS):
                    method, args = _call(rng, tokens)
                    client = rng.choice(clients)
                    try:
                        await client.call(nursery, method, args, 5)
                        outcome = "ok"
                    except Unreachable as exc:  # a server hanging up on a well-framed call is a problem
                        raise AssertionError(f"seed {seed}: {method} {args!r:.200} -> {exc!r}") from None
                    except ServerError as exc:
                        outcome = type(exc).__name__
                    outcomes[f"{method}:{outcome}"] = outcomes.get(f"{method}:{outcome}", 0) + 1
                print(sorted(outcomes.items()))
                allowed = {"command": pack(commands.kv_set("app/allowed", b"1")), "token": kv_token.secret_id}
                assert await clients[0].call(nursery, "apply", allowed, 5) is True  # the path still works
                assert outcomes.get("apply:ACLDenied", 0) > 40 and outcomes.get("apply:ok", 0) > 0, outcomes
                for client in clients:
                    client.close()
                nursery.cancel_scope.cancel()

            # Every server up, one leader, the same state; nothing written that its token could not write.
            await wait_for_async(lambda: sum(s.is_leader() for s in servers) == 1, 10,
                                 what="one leader after the fuzz")
            leader = next(s for s in servers if s.is_leader())
            assert await leader.apply(commands.kv_set("after/fuzz", b"ok")) is True
            await wait_for_async(lambda: len({s.store.catalog.last_index for s in servers}) == 1, 10,
                                 what="servers converged")
            for server in servers:
                catalog = server.store.catalog
                assert (catalog.acl.index, catalog.acl.bootstrap_index) == acl_before, seed
                assert catalog.acl.token_by_secret(MGMT) is not None
                keys = [e.key for e in catalog.kv_list("")]
                assert all(k.startswith("app/") for k in keys if k not in ("secret/x", "after/fuzz")), (seed, keys)
                secret = catalog.kv_get("secret/x")
                assert secret is not None and secret.value == b"keep", seed
                assert set(catalog.services()) <= {"web", "db"}, (seed, catalog.services())
                assert [n.node for n in catalog.nodes()] == ["n1", "n2"], seed
                db_checks = {c.check_id: (c.service_id, c.status) for c in catalog.node_checks("n2")}
                assert db_checks.get("service:db1") == ("db1", "critical"), (seed, db_checks)
                assert all(row.kind == "service-defaults" and row.name == "web"
                           for row in catalog.config_entries.all()), seed

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)
