"""ACL tokens, policies and roles survive a server's restart (issue 15): one real `meshagent agent -server`
process on 127.0.37.N with default deny, written to over its real :8300 RPC `apply` as the initial management
token (the path client agents and /v1/acl take), read back exactly from `GET /v1/snapshot` (the FSM's own
state). First restored from the Raft log alone, then from a Raft snapshot plus the log after it; the leader's
builtins are not written twice. No secret appears in the agent's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio
from meshagent.agent.acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from meshagent.agent.acl.objects import Link, Policy, Role, ServiceIdentity, Token
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.catalog.acl_state import AclState
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import ServerError

from meshagent_root.snapshot_archive import unpack
from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

INITIAL = "11111111-1111-4111-8111-111111111111"
P1, P2 = "22222222-2222-4222-8222-222222222222", "22222222-2222-4222-8222-333333333333"
R1 = "33333333-3333-4333-8333-333333333333"
BOOT, BOOT_SECRET = "44444444-4444-4444-8444-444444444444", "55555555-5555-4555-8555-555555555555"
T1, S1 = "66666666-6666-4666-8666-666666666666", "77777777-7777-4777-8777-777777777777"
SNAPSHOT_THRESHOLD = 8  # phase 2: the server writes a Raft snapshot within a few writes
ACL_HCL = (f'acl {{\n  enabled = true\n  default_policy = "deny"\n'
           f'  tokens {{\n    initial_management = "{INITIAL}"\n  }}\n}}\n')


class Server:
    """The server process and how a test writes ACL commands to it and reads its ACL state."""

    def __init__(self, tmp: Path) -> None:
        host = _host()
        self.config = tmp / "raft.hcl"
        self.config.write_text(ACL_HCL)
        self.data = tmp / "data"
        self.agent = AgentProcess(host=host, workdir=tmp, args=[
            "-server", "-bootstrap-expect", "1", "-data-dir", str(self.data), "-client", host, "-bind", host,
            "-node", "acl-persist", "-config-file", str(self.config)])

    def start(self) -> None:
        self.agent.start(timeout=20)
        wait_for(lambda: self.whoami(INITIAL) == 200, 20, what="the leader's builtins and management token")

    def whoami(self, secret: str) -> int:
        """The status of GET /v1/acl/token/self as `secret`."""
        return httpx.get(f"{self.agent.http_addr}/v1/acl/token/self", headers={"X-Consul-Token": secret},
                         timeout=2).status_code

    def apply(self, *cmds: dict[str, Any]) -> list[Any]:
        """Each command through RPC `apply` on :8300, in order; a refusal comes back as its ServerError."""
        async def run() -> list[Any]:
            out: list[Any] = []
            client = RPCClient(f"{self.agent.host}:8300")
            async with trio.open_nursery() as nursery:
                for cmd in cmds:
                    try:
                        data = msgpack.packb(cmd, use_bin_type=True)
                        out.append(await client.call(nursery, "apply", {"command": data, "token": INITIAL}))
                    except ServerError as exc:
                        out.append(exc)
                nursery.cancel_scope.cancel()
            return out
        return trio.run(run)

    def acl(self) -> AclState:
        """The FSM's ACL state, as `GET /v1/snapshot` archives it."""
        r = httpx.get(f"{self.agent.http_addr}/v1/snapshot", headers={"X-Consul-Token": INITIAL}, timeout=10)
        assert r.status_code == 200, r.text
        return Catalog.restore(unpack(r.content)[1]).acl

    def snapshots(self) -> list[Path]:
        return sorted(self.data.rglob("*.snap"))


def _host() -> str:
    """A 127.0.37.N (this file's range) with the agent's ports free."""
    host = next((f"127.0.37.{n}" for n in range(1, 40) if ports_free(f"127.0.37.{n}")), None)
    if host is None:
        raise RuntimeError("no free address in 127.0.37.1-39")
    return host


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.agent.stop()


def test_acl_state_survives_restarts_from_the_log_and_from_a_snapshot(server: Server) -> None:
    results = server.apply(
        commands.acl_policy_set(Policy(id=P1, name="p1", rules='key_prefix "app/" { policy = "write" }')),
        commands.acl_policy_set(Policy(id=P2, name="p2", rules='service_prefix "" { policy = "read" }')),
        commands.acl_role_set(Role(id=R1, name="r1", policies=(Link("", "p2"),),
                                   service_identities=(ServiceIdentity("web"),))),
        commands.acl_token_set(Token(accessor_id=T1, secret_id=S1, description="app",
                                     policies=(Link(P1, ""),), roles=(Link("", "r1"),))),
        # initial_management was the bootstrap (reset index): a second management token is a plain set
        commands.acl_token_set(Token(accessor_id=BOOT, secret_id=BOOT_SECRET,
                                     policies=(Link(GLOBAL_MANAGEMENT_POLICY_ID, ""),))),
        commands.acl_policy_set(Policy(id=P1, name="p1-renamed", rules='key_prefix "app/" { policy = "write" }')),
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    before = server.acl()
    t1 = before.token_by_secret(S1)
    assert t1 is not None and t1.policies == (Link(P1, "p1-renamed"),) and t1.roles == (Link(R1, "r1"),)
    assert before.bootstrap_index > 0 and before.token_by_secret(INITIAL) is not None

    # 1. From the Raft log alone.
    assert server.agent.stop() == 0
    assert server.snapshots() == []
    server.start()
    after = server.acl()
    assert after == before and after.token_by_secret(BOOT_SECRET) == before.token_by_secret(BOOT_SECRET)
    assert server.whoami(S1) == 200 and server.whoami(BOOT_SECRET) == 200
    [again] = server.apply(commands.acl_bootstrap(Token(accessor_id=T1, secret_id=S1)))
    assert isinstance(again, ServerError)
    assert f"ACL bootstrap no longer allowed (reset index: {before.bootstrap_index})" in str(again)

    # 2. From a Raft snapshot, and the log written after it.
    assert server.agent.stop() == 0
    # Few trailing entries: what came before the snapshot can only come back from it.
    server.config.write_text(f"{ACL_HCL}raft_snapshot_threshold = {SNAPSHOT_THRESHOLD}\nraft_trailing_logs = 2\n")
    server.start()
    tokens = [Token(accessor_id=f"88888888-8888-4888-8888-{i:012d}", secret_id=f"99999999-9999-4999-8999-{i:012d}")
              for i in range(2 * SNAPSHOT_THRESHOLD)]
    server.apply(*(commands.acl_token_set(t) for t in tokens))
    wait_for(server.snapshots, 10, what="a Raft snapshot")
    server.apply(commands.acl_token_delete(tokens[0].accessor_id), commands.acl_role_delete(R1))
    before = server.acl()
    assert before.token(tokens[0].accessor_id) is None and before.token_by_secret(tokens[-1].secret_id) is not None
    assert before.token(T1).roles == ()  # type: ignore[union-attr]
    assert server.agent.stop() == 0
    assert server.snapshots()
    server.start()
    assert server.acl() == before
    assert server.whoami(tokens[-1].secret_id) == 200 and server.whoami(tokens[0].secret_id) == 403
    log = server.agent.log()
    for secret in (INITIAL, S1, BOOT_SECRET, tokens[-1].secret_id):
        assert secret not in log
