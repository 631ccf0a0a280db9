"""What GET /v1/agent/metrics renders: the agent's registry (or, for a view without one, its typed Metrics),
with the telemetry block's prefix, hostname and Prometheus retention applied."""

from __future__ import annotations

import socket
import weakref
from typing import Any

from .registry import Point, Registry
from .render import Retention, metrics_json, metrics_prometheus

_RETENTION: weakref.WeakKeyDictionary[Registry, Retention] = weakref.WeakKeyDictionary()


def registry_of(agent: Any) -> Registry:
    """The agent's registry; an AgentView without one (a test stand-in) gets one over its `metrics()`."""
    registry = getattr(agent, "telemetry", None)
    if isinstance(registry, Registry):
        return registry
    registry = Registry()
    registry.collect(lambda: [("counter", name, float(value)) for name, value in agent.metrics().counters]
                     + [("gauge", name, float(value)) for name, value in agent.metrics().gauges])
    return registry


def _settings(agent: Any) -> tuple[str, str, float]:
    telemetry = getattr(agent.config, "telemetry", None)
    if telemetry is None:
        return "meshagent", "", 0.0
    hostname = "" if telemetry.disable_hostname else socket.gethostname().split(".")[0]
    return telemetry.metrics_prefix, hostname, telemetry.prometheus_retention_time


def scrape_json(agent: Any, timestamp: str) -> dict[str, Any]:
    """Consul's JSON shape for every series."""
    prefix, hostname, _ = _settings(agent)
    return metrics_json(registry_of(agent).points(), prefix, timestamp, hostname)


def scrape_prometheus(agent: Any, now: float) -> str:
    """Prometheus text for every series (labelled series and summaries unchanged for the retention time left
    out when telemetry.prometheus_retention_time is set)."""
    prefix, hostname, retention_time = _settings(agent)
    registry = registry_of(agent)
    points: list[Point] = list(registry.points())
    if retention_time > 0:
        retention = _RETENTION.get(registry)
        if retention is None or retention.seconds != retention_time:
            retention = _RETENTION[registry] = Retention(retention_time)
        points = retention.keep(points, now)
    if hostname:
        # Consul puts the hostname into gauge names (disable_hostname = false): prefix.host.name.
        points = [Point(f"{hostname}.{p.name}", p.kind, p.labels, p.metric, p.help) if p.kind == "gauge" else p
                  for p in points]
    return metrics_prometheus(points, prefix)
