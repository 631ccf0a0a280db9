"""Autopilot on a leader: once a second, ask the pure planner (autopilot.py) and carry out its decision
(promote a stable non-voter; remove a dead voter once a healthy replacement is there) through the driver."""

from __future__ import annotations

import logging

import trio

from ...raft.node import LEADER, RaftNode, RoleChange
from ..rpc.errors import ServerError
from .autopilot import AutopilotConfig, Promote, RemoveDead, healthy, plan
from .driver import RaftDriver

log = logging.getLogger("meshagent.server")


class Autopilot:
    """Runs the planner while this server leads; keeps the non-voters' stabilization start times."""

    def __init__(self, server_id: str, driver: RaftDriver) -> None:
        self.id = server_id
        self.driver = driver
        self.config = AutopilotConfig(healthy_within=driver.config.election_timeout)
        self._nonvoter_since: dict[str, float] = {}

    def healthy(self, server_id: str, now: float) -> bool:
        """(Leader) whether `server_id` answered within the election timeout."""
        node = self.driver.node
        return node is not None and healthy(node.progress(), server_id, now, self.config.healthy_within)

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
        p = plan(self.id, node.membership, node.progress(), self._nonvoter_since, now, self.config)
        self._nonvoter_since = dict(p.nonvoter_since)
        d = p.decision
        if isinstance(d, RemoveDead):
            log.info("autopilot: removing dead server %s for its replacement %s", d.server_id, d.replacement)
        elif isinstance(d, Promote):
            log.info("autopilot: promoting %s to voter", d.voter.id)
        if d is not None:
            await self.driver.change_membership(p.apply_to(node.membership))
