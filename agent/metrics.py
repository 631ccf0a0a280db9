"""The agent's metrics: every part's figures registered once in the agent's telemetry Registry, under Consul's
key names (`raft.apply`, `serf.member.flap`, `memberlist.health.score`, ...) and the names this agent has always
had (`dns.*`, `gossip.*`, `acl.*`, `server.*`, `client.*`, `proxy.*`). The HTTP layer renders them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from .http.view import Metrics
from .logs import FANOUT
from .telemetry.registry import Counter, Registry, Summary

if TYPE_CHECKING:
    from ..gossip.serf import MemberEvent
    from .agent import Agent


DNS_COUNTERS = ("queries", "cache_hits", "stale_queries", "servfail", "formerr", "dropped", "recursed",
                "tcp_refused", "badvers", "recursor_busy")
SERVER_INPUT_COUNTERS = ("bad_frames", "refused", "denied", "handler_errors")
FLAP_TIMEOUT = 60.0  # Serf's FlapTimeout: a failed member back within this long is a flap
LAST_CONTACT_INTERVAL = 1.0  # how often the leader samples raft.leader.lastContact (Consul: per heartbeat)


def figures(agent: Agent) -> Iterator[tuple[str, str, float]]:
    """The figures kept as attributes by their parts, read at scrape time: (kind, name, value)."""
    dns = agent.dns.stats
    for name in DNS_COUNTERS:
        yield "counter", f"dns.{name}", int(getattr(dns, name))
    # Dropped gossip input (issue 11): bad_packets, bad_streams, handler_errors...
    for name, value in agent.lan.agent.counters().items():
        yield "counter", f"gossip.{name}", value
    for name, value in agent.acl.counters().items():  # issue 15
        yield "counter", f"acl.{name}", value
    if agent.replica is not None and agent.forwarder is not None:
        yield "counter", "client.feed_resubscribes", agent.replica.resubscribes
        yield "counter", "client.rpc_forwarded", agent.forwarder.forwarded
        stale_since = agent.store.stale_since
        yield "gauge", "client.stale_seconds", (0.0 if stale_since is None
                                                else round(trio.current_time() - stale_since, 3))
    server = agent.server
    if server is not None:
        yield "gauge", "server.feed_subscribers", float(server.feed.subscribers)
        # Hostile or broken input on :8300 (issue 11): what was dropped, and why, without reading the log.
        listener = server.listener
        for name in SERVER_INPUT_COUNTERS:
            yield "counter", f"server.{name}", int(getattr(listener, name))
        yield "counter", "raft.bad_messages", server.bad_raft_messages
        yield "counter", "raft.dropped_messages", server.node.dropped if server.node else 0
        yield "counter", "raft.followers_lost_entries", server.followers_lost_entries
    yield "gauge", "agent.monitor.clients", float(len(FANOUT.subscribers))  # GET /v1/agent/monitor streams
    yield "counter", "agent.monitor.dropped_lines", FANOUT.dropped  # lines a slow monitor client lost
    runner = agent.proxy_runner
    if runner is not None:
        status = runner.status()
        yield "gauge", "proxy.sidecars", float(len(status))
        yield "gauge", "proxy.config_errors", float(sum(1 for s in status.values() if s["error"]))
        # Monotonic, over every sidecar ever run here: worker processes restarted by their supervisors, and
        # supervisors replaced after failing (a removed sidecar's counts stay in both).
        yield "counter", "proxy.supervisor_restarts", runner.worker_restarts()
        yield "counter", "proxy.supervisor_failures", runner.supervisor_restarts
        yield "counter", "proxy.snapshot_builds", runner.builds


def collect(agent: Agent) -> Metrics:
    """The attribute-kept counters and gauges as the typed Metrics of the AgentView (the old interface)."""
    counters: list[tuple[str, int]] = []
    gauges: list[tuple[str, float]] = []
    for kind, name, value in figures(agent):
        if kind == "counter":
            counters.append((name, int(value)))
        else:
            gauges.append((name, float(value)))
    return Metrics(counters, gauges)


class AgentTelemetry:
    """Registers every part's metrics in `registry`, and keeps the few that need the agent's events or a timer."""

    def __init__(self, agent: Agent, registry: Registry) -> None:
        self.agent = agent
        self.registry = registry
        self.flaps = registry.counter("serf.member.flap", "Members back alive within 60 s of failing")
        self.last_contact = registry.summary(
            "raft.leader.lastContact", "ms since the leader last heard from each follower (sampled each second)")
        self._failed_at: dict[str, float] = {}
        server = agent.server
        # Raft's and RPC's figures exist on every agent (zero where there is no Raft), so dashboards and
        # alerts find the same names on clients and -dev.
        registry.add("raft.apply", server.applies if server else Counter(), "Writes proposed to Raft here")
        registry.add("raft.commitTime", server.commit_time if server else Summary(),
                     "ms from proposal to applied, for writes proposed on this leader")
        registry.add("rpc.request", server.rpc_requests if server else Counter(), "RPC calls served on :8300")
        swim = agent.lan.agent.swim
        registry.gauge("memberlist.health.score", "Lifeguard local health (0 is healthy)",
                       read=lambda: float(swim.health_score()))
        registry.gauge("serf.members", "Members known to the LAN pool", read=lambda: float(len(agent.members())))
        registry.collect(lambda: figures(agent))

    def member_event(self, event: MemberEvent) -> None:
        """Serf's flap detection: a member that failed and joins again within FLAP_TIMEOUT."""
        name = event.member.name
        if event.kind == "member-failed":
            if len(self._failed_at) < 10000:  # bounded: a pool of that size is far beyond a LAN
                self._failed_at[name] = trio.current_time()
        elif event.kind == "member-join":
            failed = self._failed_at.pop(name, None)
            if failed is not None and trio.current_time() - failed < FLAP_TIMEOUT:
                self.flaps.value += 1
        elif event.kind in ("member-leave", "member-reap"):
            self._failed_at.pop(name, None)

    async def run(self) -> None:
        """On the leader, sample the time since each follower last answered (Consul's raft.leader.lastContact)."""
        server = self.agent.server
        if server is None:
            return
        while True:
            await trio.sleep(LAST_CONTACT_INTERVAL)
            node = server.driver.node
            if node is None or not server.is_leader():
                continue
            now = trio.current_time()
            for sid, progress in node.progress().items():
                if sid != server.id and progress.last_response > 0.0:
                    self.last_contact.observe(max(0.0, now - progress.last_response) * 1000.0)
