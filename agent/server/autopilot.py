"""Autopilot's rules as a pure planner: configuration, replication progress and time in, one decision out.

A non-voter that has answered the leader continuously for `stabilization_time` is promoted; while a voter
has been silent for `dead_server_after`, a healthy non-voter first replaces it (the dead voter is removed).
One decision per call, as the leader can change only one server at a time. The caller (the server's
autopilot runner, or the Raft simulator in tests) carries the decision out and keeps `nonvoter_since`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ...raft.entry import Membership, Server
from ...raft.node import ProgressView

SERVER_STABILIZATION_TIME = 10.0  # Consul's server_stabilization_time
DEAD_SERVER_AFTER = 10.0  # a voter silent this long is dead, once a replacement is ready


@dataclass(frozen=True, slots=True)
class AutopilotConfig:
    """The planner's timings; `healthy_within` is the election timeout (a live server answers within it)."""

    healthy_within: float
    stabilization_time: float = SERVER_STABILIZATION_TIME
    dead_server_after: float = DEAD_SERVER_AFTER


@dataclass(frozen=True, slots=True)
class Promote:
    """Make `server` (now a non-voter) a voter: `voter` is its entry in the new configuration."""

    voter: Server


@dataclass(frozen=True, slots=True)
class RemoveDead:
    """Remove the dead voter `server_id`; `replacement` is the healthy non-voter that is ready to follow."""

    server_id: str
    replacement: str


Decision = Promote | RemoveDead


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision (or None) and the non-voters' stabilization start times to pass to the next call."""

    decision: Decision | None
    nonvoter_since: Mapping[str, float]

    def apply_to(self, membership: Membership) -> Membership:
        """The configuration after the decision."""
        d = self.decision
        if isinstance(d, Promote):
            return membership.with_server(d.voter)
        if isinstance(d, RemoveDead):
            return membership.without(d.server_id)
        return membership


def healthy(progress: Mapping[str, ProgressView], server_id: str, now: float, window: float) -> bool:
    """Whether the leader heard from `server_id` within `window` (False for a server it does not replicate to)."""
    pr = progress.get(server_id)
    return pr is not None and now - pr.last_response < window


def plan(leader_id: str, membership: Membership, progress: Mapping[str, ProgressView],
         nonvoter_since: Mapping[str, float], now: float, config: AutopilotConfig) -> Plan:
    """The next autopilot decision of leader `leader_id`, from its configuration and progress view at `now`."""
    since_map = dict(nonvoter_since)
    for s in membership.servers:
        if s.voter or s.id == leader_id:
            continue
        since = since_map.setdefault(s.id, now)
        if not healthy(progress, s.id, now, config.healthy_within):
            since_map[s.id] = now  # stability restarts when it next answers
            continue
        dead = [v.id for v in membership.servers if v.voter and v.id != leader_id and
                not healthy(progress, v.id, now, config.dead_server_after)]
        if dead:
            return Plan(RemoveDead(dead[0], s.id), since_map)
        if now - since >= config.stabilization_time:
            return Plan(Promote(Server(s.id, s.address, True)), since_map)
    return Plan(None, since_map)
