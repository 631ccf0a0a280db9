"""The agent's counters and gauges for /v1/agent/metrics, gathered from its parts as typed values (the HTTP
layer renders them in Consul's shape)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .http.view import Metrics

if TYPE_CHECKING:
    from .agent import Agent

DNS_COUNTERS = ("queries", "cache_hits", "stale_queries", "servfail", "formerr", "dropped", "recursed",
                "tcp_refused", "badvers", "recursor_busy")
SERVER_INPUT_COUNTERS = ("bad_frames", "refused", "denied", "handler_errors")


def collect(agent: Agent) -> Metrics:
    """Every figure by name (without the `meshagent.` prefix), in a stable order."""
    dns = agent.dns.stats
    counters = [(f"dns.{name}", int(getattr(dns, name))) for name in DNS_COUNTERS]
    # Dropped gossip input (issue 11): bad_packets, bad_streams, handler_errors...
    counters.extend((f"gossip.{name}", value) for name, value in agent.lan.agent.counters().items())
    counters.extend((f"acl.{name}", value) for name, value in agent.acl.counters().items())  # issue 15
    gauges: list[tuple[str, float]] = []
    if agent.replica is not None and agent.forwarder is not None:
        counters.append(("client.feed_resubscribes", agent.replica.resubscribes))
        counters.append(("client.rpc_forwarded", agent.forwarder.forwarded))
        stale_since = agent.store.stale_since
        gauges.append(("client.stale_seconds",
                       0.0 if stale_since is None else round(trio.current_time() - stale_since, 3)))
    server = agent.server
    if server is not None:
        gauges.append(("server.feed_subscribers", float(server.feed.subscribers)))
        # Hostile or broken input on :8300 (issue 11): what was dropped, and why, without reading the log.
        listener = server.listener
        counters.extend((f"server.{name}", int(getattr(listener, name))) for name in SERVER_INPUT_COUNTERS)
        counters.append(("raft.bad_messages", server.bad_raft_messages))
        counters.append(("raft.dropped_messages", server.node.dropped if server.node else 0))
        counters.append(("raft.followers_lost_entries", server.followers_lost_entries))
    proxy_runner = agent.proxy_runner
    if proxy_runner is not None:
        status = proxy_runner.status()
        gauges.append(("proxy.sidecars", float(len(status))))
        gauges.append(("proxy.config_errors", float(sum(1 for s in status.values() if s["error"]))))
        # Monotonic, over every sidecar ever run here: worker processes restarted by their supervisors, and
        # supervisors replaced after failing (a removed sidecar's counts stay in both).
        counters.append(("proxy.supervisor_restarts", proxy_runner.worker_restarts()))
        counters.append(("proxy.supervisor_failures", proxy_runner.supervisor_restarts))
        counters.append(("proxy.snapshot_builds", proxy_runner.builds))
    return Metrics(counters, gauges)
