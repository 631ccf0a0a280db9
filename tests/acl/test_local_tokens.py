"""The registering token LocalState keeps per check (agent/local_state.py): anti-entropy writes a check as it."""

from __future__ import annotations

import trio
from meshagent.agent.acl.resolver import ACLResolver
from meshagent.agent.catalog import Node
from meshagent.agent.config.check_defs import parse_check
from meshagent.agent.config.types import AgentConfig, Source
from meshagent.agent.local_state import LocalState
from meshagent.agent.store import CatalogStore


def test_a_check_re_registered_without_a_token_drops_the_old_one() -> None:
    # Review F16: register_service dropped an old registering token on a token-less re-registration,
    # register_check kept it, so the check went on syncing as the previous (maybe revoked) token.
    store = CatalogStore()
    local = LocalState(node=Node(node="n1", address="127.0.0.1"), store=store, data_dir=None,
                       enable_local_script_checks=False, enable_script_checks=False)
    cfg = AgentConfig(node_name="n1", datacenter="dc1", server=True)
    cfg.acl.enabled = True
    cfg.acl.tokens.agent = "agent-secret"
    check = parse_check({"CheckID": "c1", "Name": "c1", "TTL": "1h"}, Source("<test>"))

    async def main() -> None:
        await local.register_check(check, token="first-secret", persist=False)  # ACLs off while writing
        local.sync.acl = ACLResolver(cfg, store)
        assert local.sync.check_token("c1") == "first-secret"
        local.sync.acl = None
        await local.register_check(check, token=None, persist=False)
        local.sync.acl = ACLResolver(cfg, store)
        assert local.sync.check_token("c1") == "agent-secret"
        local.sync.acl = None
        await local.register_check(check, token="second-secret", persist=False)
        local.sync.acl = ACLResolver(cfg, store)
        assert local.sync.check_token("c1") == "second-secret"

    trio.run(main)
