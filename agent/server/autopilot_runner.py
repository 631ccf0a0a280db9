"""Autopilot on a leader: promote stable non-voters; remove a dead voter once a healthy replacement is there.

Its decisions are carried out as membership changes through the driver. (The pure planner,
agent/server/autopilot.py, is to take over the deciding; until then the rules live here.)
"""

from __future__ import annotations

import logging

import trio

from ...raft.entry import Server
from ...raft.node import LEADER, RaftNode, RoleChange
from ..rpc.errors import ServerError
from .driver import RaftDriver

log = logging.getLogger("meshagent.server")

SERVER_STABILIZATION_TIME = 10.0
DEAD_SERVER_AFTER = 10.0


class Autopilot:
    """Watches the configuration once a second while this server leads."""

    def __init__(self, server_id: str, driver: RaftDriver) -> None:
        self.id = server_id
        self.driver = driver
        self._nonvoter_since: dict[str, float] = {}

    def healthy(self, server_id: str, now: float, window: float | None = None) -> bool:
        """(Leader) whether `server_id` answered within `window` (default: the election timeout)."""
        node = self.driver.node
        pr = node.progress().get(server_id) if node is not None else None
        if pr is None:
            return False
        return now - pr.last_response < (window or self.driver.config.election_timeout)

    def added(self, server_id: str, now: float) -> None:
        """A non-voter was just added: its stabilization time starts now."""
        self._nonvoter_since[server_id] = now

    def role_changed(self, change: RoleChange) -> None:
        """On becoming leader, the non-voters' stabilization time starts (unless it already did)."""
        node = self.driver.node
        if change.role == LEADER and node is not None:
            now = trio.current_time()
            for s in node.membership.servers:
                if not s.voter:
                    self._nonvoter_since.setdefault(s.id, now)

    async def run(self) -> None:
        """Check once a second, until cancelled."""
        while True:
            await trio.sleep(1.0)
            node = self.driver.node
            if node is None or node.role != LEADER:
                continue
            try:
                await self._step(node, trio.current_time())
            except ServerError as exc:
                log.debug("autopilot: %s", exc)

    async def _step(self, node: RaftNode, now: float) -> None:
        for s in node.membership.servers:
            if s.voter or s.id == self.id:
                continue
            since = self._nonvoter_since.setdefault(s.id, now)
            if not self.healthy(s.id, now):
                self._nonvoter_since[s.id] = now
                continue
            dead = [v.id for v in node.membership.servers
                    if v.voter and v.id != self.id and not self.healthy(v.id, now, DEAD_SERVER_AFTER)]
            if dead:
                log.info("autopilot: removing dead server %s for its replacement %s", dead[0], s.id)
                await self.driver.change_membership(node.membership.without(dead[0]))
                return
            if now - since >= SERVER_STABILIZATION_TIME:
                log.info("autopilot: promoting %s to voter", s.id)
                await self.driver.change_membership(node.membership.with_server(Server(s.id, s.address, True)))
                return
