"""ACLInitializer: while this server leads (or under -dev), the ACL builtins and the initial management token.

With ACLs enabled, the leader writes `acl_init` whenever the catalog lacks the global-management policy or the
anonymous token, and, once per leadership term (as Consul's establishLeadership), the token for
`acl.tokens.initial_management` if none has that secret: an operator who deletes a leaked initial management
token sees it stay deleted until the next election (then rolls the config). The write is idempotent in the
FSM; failures retry with a bounded backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..acl.authorizer import GLOBAL_MANAGEMENT_POLICY_ID
from ..acl.secrets import ANONYMOUS_ACCESSOR_ID
from ..catalog import commands
from ..catalog.state import CommandError
from ..config.types import ACLTokens
from ..rpc.errors import ServerError
from ..store import CatalogStore

log = logging.getLogger("meshagent.acl")

LEADERSHIP_POLL = 0.25  # how soon a new leader notices it leads (as the CA manager)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0


def init_needed(store: CatalogStore, initial_management: str) -> bool:
    """Whether the catalog lacks a builtin or the initial management token."""
    acl = store.catalog.acl
    return (acl.policy(GLOBAL_MANAGEMENT_POLICY_ID) is None or acl.token(ANONYMOUS_ACCESSOR_ID) is None
            or (bool(initial_management) and acl.token_by_secret(initial_management) is None))


class ACLInitializer:
    """A nursery task of a server (or -dev) agent with ACLs enabled: writes `acl_init` while leading."""

    def __init__(self, store: CatalogStore, tokens: ACLTokens, is_leader: Callable[[], bool]) -> None:
        self.store = store
        self.tokens = tokens  # the resolver's (mutable) tokens: initial_management as configured
        self.is_leader = is_leader
        self.writes = 0  # acl_init commands applied
        self.failures = 0  # attempts that failed (and were retried)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leadership until cancelled; `started` once a first attempt (if one was due) is over."""
        started = False
        backoff = BACKOFF_MIN
        was_leader = False
        initial_due = False  # the initial management token is looked at once per leadership term
        while True:
            delay = LEADERSHIP_POLL
            leading = self.is_leader()
            if leading and not was_leader:
                initial_due = True
            was_leader = leading
            initial = self.tokens.initial_management if initial_due else ""
            if leading and not init_needed(self.store, initial):
                initial_due = False
            elif leading:
                try:
                    await self.store.apply(commands.acl_init(initial))
                except (ServerError, CommandError) as exc:  # lost leadership, no quorum, a refused init
                    self.failures += 1
                    log.warning("writing the builtin policy and tokens failed: %s; retrying in %.1fs",
                                exc, backoff)
                    delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
                else:
                    self.writes += 1
                    backoff = BACKOFF_MIN
                    initial_due = False
                    log.info("builtin policy and tokens written (global-management, anonymous%s)",
                             ", initial management" if initial else "")
            if not started:
                task_status.started()
                started = True
            await trio.sleep(delay)
