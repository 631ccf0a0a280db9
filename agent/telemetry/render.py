"""The registry's series in Consul's /v1/agent/metrics JSON shape and as Prometheus text 0.0.4.

Both add the prefix (`meshagent.` or telemetry.metrics_prefix); Prometheus names use `_` for `.` and any
other character Prometheus does not allow, counters end in `_total`, summaries give `_count` and `_sum`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .registry import Counter, Gauge, Labels, Point, Summary


def prefixed(prefix: str, name: str, kind: str, hostname: str = "") -> str:
    """`prefix.name`; with a hostname (disable_hostname = false), gauges are `prefix.host.name` as in Consul."""
    if hostname and kind == "gauge":
        return f"{prefix}.{hostname}.{name}" if prefix else f"{hostname}.{name}"
    return f"{prefix}.{name}" if prefix else name


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def metrics_json(points: Iterable[Point], prefix: str, timestamp: str, hostname: str = "") -> dict[str, Any]:
    """Consul's JSON: Timestamp, Gauges, Points, Counters and Samples (Count, Sum, Min, Max, Mean, Stddev)."""
    gauges: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for p in points:
        name = prefixed(prefix, p.name, p.kind, hostname)
        labels = dict(p.labels)
        metric = p.metric
        if isinstance(metric, Gauge):
            gauges.append({"Name": name, "Value": metric.current(), "Labels": labels})
        elif isinstance(metric, Counter):
            # Cumulative since start (Consul's in-memory sink resets every 10 s interval).
            value = metric.value
            counters.append({"Name": name, "Count": value, "Rate": 0.0, "Sum": float(value), "Min": 0.0,
                             "Max": 0.0, "Mean": 0.0, "Stddev": 0.0, "Labels": labels})
        else:
            count = metric.count
            samples.append({"Name": name, "Count": count, "Rate": 0.0, "Sum": metric.sum,
                            "Min": _finite(metric.min) if count else 0.0, "Max": _finite(metric.max) if count else 0.0,
                            "Mean": metric.sum / count if count else 0.0, "Stddev": metric.stddev(),
                            "Labels": labels})
    return {"Timestamp": timestamp, "Gauges": gauges, "Points": [], "Counters": counters, "Samples": samples}


def prometheus_name(prefix: str, name: str) -> str:
    """A Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*, `.` and everything else as `_`."""
    text = f"{prefix}_{name}" if prefix else name
    out = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in text)
    return out if out and not out[0].isdigit() else "_" + out


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels:
        safe = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{prometheus_name("", key)}="{safe}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def metrics_prometheus(points: Iterable[Point], prefix: str) -> str:
    """Prometheus text: one `# TYPE` per family (series of names that sanitize alike are kept together; a
    clash of kinds keeps the first)."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for p in points:
        base = prometheus_name(prefix, p.name)
        metric = p.metric
        labels = _label_text(p.labels)
        if isinstance(metric, Counter):
            family = base + "_total"
            lines = [f"{family}{labels} {int(metric.value)}"]
        elif isinstance(metric, Gauge):
            family = base
            lines = [f"{family}{labels} {_number(metric.current())}"]
        else:
            family = base
            lines = [f"{family}_count{labels} {metric.count}", f"{family}_sum{labels} {_number(metric.sum)}"]
        known = families.get(family)
        if known is None:
            families[family] = (p.kind, p.help, lines)
        elif known[0] == p.kind:
            known[2].extend(lines)
    out: list[str] = []
    for family, (kind, help_, lines) in families.items():
        if help_:
            text = help_.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {family} {text}")
        out.append(f"# TYPE {family} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def _fingerprint(metric: Counter | Gauge | Summary) -> float:
    if isinstance(metric, Counter):
        return float(metric.value)
    if isinstance(metric, Gauge):
        return metric.current()
    return float(metric.count)


class Retention:
    """telemetry.prometheus_retention_time: a labelled series, or a summary, that has not changed for that long
    is left out (as Consul's Prometheus sink expires them); plain counters and gauges always stay."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._seen: dict[tuple[str, Labels], tuple[float, float]] = {}  # series -> (value, changed at)

    def keep(self, points: Iterable[Point], now: float) -> list[Point]:
        """The points still to show at `now`."""
        out: list[Point] = []
        seen: dict[tuple[str, Labels], tuple[float, float]] = {}
        for p in points:
            if self.seconds <= 0 or (not p.labels and p.kind != "summary"):
                out.append(p)
                continue
            key = (p.name, p.labels)
            value = _fingerprint(p.metric)
            last = self._seen.get(key)
            changed = now if last is None or last[0] != value else last[1]
            seen[key] = (value, changed)
            if now - changed <= self.seconds:
                out.append(p)
        self._seen = seen
        return out
