"""ACLInitializer (agent/server/acl_init.py) on a -dev-like store (no replicator) and trio's MockClock: the
builtins come back whenever missing, the initial management token once per leadership term."""

from __future__ import annotations

import trio
import trio.testing
from meshagent.agent.acl.objects import Token
from meshagent.agent.catalog import commands
from meshagent.agent.config.types import ACLTokens
from meshagent.agent.server.acl_init import LEADERSHIP_POLL, ACLInitializer
from meshagent.agent.store import CatalogStore

INITIAL = "5b0e1d7c-3f0a-4c1e-9b7e-0a6f1c2d3e4f"


def test_a_deleted_initial_management_token_stays_deleted_until_the_next_term() -> None:
    # Review F4: the leader re-created a deleted (leaked) initial management token within one poll, so it
    # could not be revoked while a leading server's config carried it. Consul writes it once per election.
    store = CatalogStore()
    leading = [True]
    init = ACLInitializer(store, ACLTokens(initial_management=INITIAL), lambda: leading[0])

    def initial_token() -> Token | None:
        return store.catalog.acl.token_by_secret(INITIAL)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(init.run)
            token = initial_token()
            assert token is not None and init.writes == 1
            await store.apply(commands.acl_token_delete(token.accessor_id))
            await trio.sleep(LEADERSHIP_POLL * 10)  # virtual time: ten polls
            assert initial_token() is None and init.writes == 1
            leading[0] = False  # a new term: Consul's leader writes it again
            await trio.sleep(LEADERSHIP_POLL * 2)
            leading[0] = True
            await trio.sleep(LEADERSHIP_POLL * 2)
            assert initial_token() is not None and init.writes == 2
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
