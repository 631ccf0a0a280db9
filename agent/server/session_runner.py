"""SessionRunner: the leader's session duties (runtime). TTL timers, and invalidation when a session's node
goes away or one of its checks turns critical or is removed: the runner proposes `session_destroy(id, now)`.

Consul's contract: a TTL session is destroyed no sooner than TTL after its last renew and, here as there, at
2 x TTL (the grace covers clock drift and a leader change). Timers live only on the leader and start again
(2 x TTL from now) for every session on each new leadership; `renew` reaches the leader (followers forward the
`session_renew` RPC, client agents call it) and restarts one. Under -dev without Raft the runner always leads.
Catalog changes arrive through a listener on the catalog (watch keys `node:<name>` and `session:<id>`), so a
check update costs a look at that node's sessions only; a full pass runs on each leadership and restore.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..acl.identity import require
from ..catalog import Catalog, CommandError, commands
from ..catalog.model import CRITICAL
from ..catalog.session_state import Session, SessionError, parse_session, session_to_dict, ttl_seconds
from ..rpc.errors import NoLeader, NotLeader, Rejected, ServerError, Unreachable

if TYPE_CHECKING:
    from ..acl.resolver import ACLResolver
    from ..store import CatalogStore

log = logging.getLogger("meshagent.sessions")

TTL_MULTIPLIER = 2.0  # Consul's SessionTTLMultiplier
LEADERSHIP_POLL = 0.25  # how soon a new leader notices it leads (as the CA manager and ACL initializer)
RETRY_DELAY = 1.0  # after a failed destroy (no quorum, lost leadership)
RPC_HOLD_TIMEOUT = 7.0  # as the rest of :8300: how long a renew may wait for a leader
MAX_SESSION_ID = 64  # a UUID is 36 characters; anything longer is refused unread
EXPIRED = "its TTL expired"


class ServerLink(Protocol):
    """What the runner needs of a server's Raft (RaftServer): who leads, and calls to another server."""

    def is_leader(self) -> bool: ...
    def leader_address(self) -> str | None: ...
    async def call_server(self, address: str, method: str, args: Any, timeout: float = 10.0) -> Any: ...


def invalid_reason(catalog: Catalog, session: Session) -> str | None:
    """Why `session` must be invalidated now (its node is gone, a bound check is missing or critical), or None."""
    if catalog.node(session.node) is None:
        return f"node {session.node!r} is deregistered"
    checks = {c.check_id: c.status for c in catalog.node_checks(session.node)}
    for cid in session.check_ids():
        status = checks.get(cid)
        if status is None:
            return f"check {cid!r} is deregistered"
        if status == CRITICAL:
            return f"check {cid!r} is critical"
    return None


class SessionRunner:
    """A server's (or -dev agent's) session runner: a nursery task that acts while this server leads."""

    def __init__(self, store: CatalogStore, server: ServerLink | None = None, *,
                 clock: Callable[[], float] = trio.current_time, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.server = server  # None: -dev without Raft, always the leader
        self.clock = clock  # timers (trio's: MockClock in tests)
        self.wall = wall  # the `now` stamped into destroy commands (unix seconds: lock-delay deadlines)
        # The agent's ACL resolver (set by the agent): `session_renew` calls over RPC are checked with it.
        self.acl: ACLResolver | None = None
        self._deadlines: dict[str, float] = {}  # session id -> when its TTL timer fires (leader only)
        self._dirty_nodes: set[str] = set()
        self._dirty_sessions: set[str] = set()
        self._full = True
        self._leading = False
        self._catalog: Catalog | None = None
        self._wake = trio.Event()
        self.expired = 0  # figures (metrics, tests)
        self.invalidated = 0
        self.renewed = 0
        self.forwarded = 0
        self.failures = 0

    def is_leader(self) -> bool:
        """Whether this server leads (always, under -dev without Raft)."""
        return self.server is None or self.server.is_leader()

    @property
    def timers(self) -> int:
        """TTL timers running (leader only)."""
        return len(self._deadlines)

    def deadline(self, session_id: str) -> float | None:
        """When a session's TTL timer fires (on `clock`), if one runs here."""
        return self._deadlines.get(session_id)

    # ------------------------------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leadership and the catalog until cancelled."""
        task_status.started()
        while True:
            self._follow_catalog()
            leading = self.is_leader()
            if leading and not self._leading:
                # A new term: every TTL timer starts again (Consul's initializeSessionTimers), a full pass.
                self._deadlines.clear()
                self._full = True
            self._leading = leading
            delay = LEADERSHIP_POLL
            if leading:
                try:
                    await self._pass()
                except (ServerError, CommandError) as exc:  # lost leadership, no quorum: try again soon
                    self.failures += 1
                    log.warning("sessions: invalidation failed: %s; retrying", exc)
                    delay = RETRY_DELAY  # (an expired timer waits for it too: no spinning on a failing write)
                else:
                    if self._deadlines:
                        delay = min(delay, max(0.0, min(self._deadlines.values()) - self.clock()))
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()

    def _follow_catalog(self) -> None:
        """Listen to the store's catalog (a restore replaces it: listen to the new one, and look at everything)."""
        catalog = self.store.catalog
        if catalog is not self._catalog:
            self._catalog = catalog
            catalog.add_listener(self._on_change)
            self._full = True

    def _on_change(self, index: int, changed: frozenset[str]) -> None:
        if not self._leading:
            return
        for key in changed:
            if key.startswith("node:"):
                self._dirty_nodes.add(key[5:])
            elif key.startswith("session:"):
                self._dirty_sessions.add(key[8:])
        if self._dirty_nodes or self._dirty_sessions:
            self._wake.set()

    async def _pass(self) -> None:
        """Start timers of new TTL sessions, then destroy what expired or lost its node or a check."""
        catalog = self.store.catalog
        sessions = catalog.sessions
        now = self.clock()
        if self._full:
            self._full = False
            self._dirty_nodes.clear()
            self._dirty_sessions.clear()
            rows = sessions.list()
            live = {s.id for s in rows}
            for gone in [sid for sid in self._deadlines if sid not in live]:
                del self._deadlines[gone]
        else:
            ids, self._dirty_sessions = self._dirty_sessions, set()
            nodes, self._dirty_nodes = self._dirty_nodes, set()
            rows = []
            for sid in ids:
                found = sessions.get(sid)
                if found is None:
                    self._deadlines.pop(sid, None)  # destroyed (by anyone): its timer goes
                else:
                    rows.append(found)
            for node in nodes:
                rows.extend(sessions.for_node(node))
        doomed: dict[str, str] = {}
        for row in rows:
            self._start_timer(row, now)
            reason = invalid_reason(catalog, row)
            if reason is not None:
                doomed[row.id] = reason
        for sid, deadline in self._deadlines.items():
            if deadline <= now and sid not in doomed:
                doomed[sid] = EXPIRED
        pending = list(doomed.items())
        for n, (sid, reason) in enumerate(pending):
            try:
                await self._destroy(sid, reason)
            except (ServerError, CommandError):
                self._dirty_sessions.update(later for later, _ in pending[n:])  # looked at again next pass
                raise

    def _start_timer(self, row: Session, now: float) -> None:
        if row.ttl and row.id not in self._deadlines:
            seconds = ttl_seconds(row.ttl)
            if seconds > 0:
                self._deadlines[row.id] = now + seconds * TTL_MULTIPLIER

    async def _destroy(self, session_id: str, reason: str) -> None:
        if self.store.catalog.sessions.get(session_id) is None:
            self._deadlines.pop(session_id, None)
            return
        await self.store.apply(commands.session_destroy(session_id, self.wall()))
        self._deadlines.pop(session_id, None)
        if reason == EXPIRED:
            self.expired += 1
        else:
            self.invalidated += 1
        log.info("sessions: session %s invalidated: %s", session_id, reason)

    # ------------------------------------------------------------------------------------------ renew

    async def renew(self, session_id: str, token: str | None = None, forwarded: bool = False) -> Session | None:
        """Restart a session's TTL timer at the leader (forwarded there from a follower, with `token` for the
        leader to check); the session, or None when it does not exist (404). Not checked here: the caller's
        HTTP API (or rpc_renew) did."""
        deadline = self.clock() + RPC_HOLD_TIMEOUT
        while True:
            if self.is_leader():
                return self._renew_local(session_id)
            if forwarded:
                raise NotLeader("not the leader")
            assert self.server is not None
            leader = self.server.leader_address()
            if leader:
                args: dict[str, Any] = {"id": session_id, "forwarded": True}
                if token:
                    args["token"] = token
                try:
                    self.forwarded += 1
                    answer = await self.server.call_server(leader, "session_renew", args, RPC_HOLD_TIMEOUT)
                    return session_from_wire(answer)
                except (NotLeader, Unreachable) as exc:  # a renew is safe to send again
                    if self.clock() > deadline:
                        raise NoLeader(f"no leader could renew the session: {exc}") from None
            elif self.clock() > deadline:
                raise NoLeader()
            await trio.sleep(0.05)

    def _renew_local(self, session_id: str) -> Session | None:
        row = self.store.catalog.sessions.get(session_id)
        if row is None:
            return None
        self.renewed += 1
        if row.ttl:
            seconds = ttl_seconds(row.ttl)
            if seconds > 0:
                self._deadlines[row.id] = self.clock() + seconds * TTL_MULTIPLIER
        return row

    async def rpc_renew(self, args: Any) -> dict[str, Any] | None:
        """The `session_renew` RPC: {"id": str, "token": str (optional), "forwarded": bool (optional)}; the
        session as a dict, or None. With ACLs on, the token (none: anonymous) needs session:write on the
        session's node, here and again at the leader when forwarded."""
        if not isinstance(args, dict) or not set(args) <= {"id", "token", "forwarded"}:
            raise Rejected("session_renew takes a map of id, token and forwarded")
        session_id, token, forwarded = args.get("id"), args.get("token"), args.get("forwarded", False)
        if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_SESSION_ID:
            raise Rejected(f"session_renew: id must be a session ID of at most {MAX_SESSION_ID} characters")
        if token is not None and not isinstance(token, str):
            raise Rejected("session_renew: token must be a string")
        if not isinstance(forwarded, bool):
            raise Rejected("session_renew: forwarded must be a boolean")
        acl = self.acl
        if acl is not None and acl.enabled:
            identity = acl.resolve_rpc(token)  # no token: the anonymous token, never this server's default
            row = self.store.catalog.sessions.get(session_id)
            if row is not None:
                require(identity, identity.authorizer.session_write(row.node))
        renewed = await self.renew(session_id, token, forwarded)
        return session_to_dict(renewed) if renewed is not None else None


def session_from_wire(answer: Any) -> Session | None:
    """A `session_renew` answer (a session's dict, or None) as a row; Rejected if it is neither."""
    if answer is None:
        return None
    if not isinstance(answer, dict):
        raise Rejected("session_renew answered neither a session nor nothing")
    try:
        row = parse_session(answer)
    except SessionError as exc:
        raise Rejected(f"session_renew answered a malformed session: {exc}") from None
    created, modified = answer.get("create_index", 0), answer.get("modify_index", 0)
    if not isinstance(created, int) or not isinstance(modified, int):
        raise Rejected("session_renew answered a session without integer indexes")
    return replace(row, create_index=created, modify_index=modified)


class RenewEndpoint:
    """The `session_renew` RPC method of a server: answered by the runner the agent attaches."""

    def __init__(self) -> None:
        self.runner: SessionRunner | None = None

    async def call(self, args: Any) -> dict[str, Any] | None:
        """Renew through the attached runner (Rejected when none runs here)."""
        if self.runner is None:
            raise Rejected("sessions are not served by this server")
        return await self.runner.rpc_renew(args)


class Caller(Protocol):
    """Something that calls a server's RPC method (a client agent's ServerForwarder.call)."""

    async def call(self, method: str, args: Any) -> Any: ...


class ForwardedSessions:
    """A client agent's renew: the `session_renew` RPC to a server, which passes it on to the leader."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def renew(self, session_id: str, token: str | None = None) -> Session | None:
        """The renewed session, or None when the leader knows none of that ID; `token` travels with the call
        (none: the anonymous token)."""
        args: dict[str, Any] = {"id": session_id}
        if token:
            args["token"] = token
        return session_from_wire(await self.caller.call("session_renew", args))
