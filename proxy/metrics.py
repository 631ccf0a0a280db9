"""ProxyMetrics: the data plane's counters, gauges and latency histograms, cheap on the hot path.

A worker counts into plain dicts keyed by label tuples (one dict lookup and one add per call, no locks: a
worker is one thread). `to_wire` turns them into a msgpack-able map with every label spelled out; the
supervisor `merge`s the maps of its workers (and the agent those of several proxies, before rendering once)
and `render_prometheus` writes Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

# Request duration buckets (seconds, upper bounds, inclusive as Prometheus' `le`); +Inf is implicit.
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0)
_NB = len(BUCKETS)
PREFIX = "meshagent_proxy_"
MAX_SERIES = 100_000  # series per metric in one merge: hostile or runaway input stays bounded
MAX_LABEL = 1024  # characters of one label value on the wire
MAX_SOURCES = 256  # distinct inbound callers named per proxy; beyond that they count as OTHER_SOURCE
OTHER_SOURCE = "other"

_DIR = ("direction",)
BASE_LABELS = ("source", "destination", "datacenter")
# name (after PREFIX) -> (type, help, label names after BASE_LABELS)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "requests_total": ("counter", "Requests by response class.", ("direction", "code_class")),
    "request_duration_seconds": ("histogram", "Request duration, first byte in to last byte out.", _DIR),
    "connections_active": ("gauge", "Open connections.", _DIR),
    "connections_total": ("counter", "Connections opened.", _DIR),
    "bytes_received_total": ("counter", "Bytes received: from the caller (inbound), from the upstream (outbound).",
                             _DIR),
    "bytes_sent_total": ("counter", "Bytes sent: to the caller (inbound), to the upstream (outbound).", _DIR),
    "tls_handshake_failures_total": ("counter", "TLS handshakes that failed, by reason.", ("direction", "reason")),
    "authorization_denials_total": ("counter", "Connections or requests denied, by intention.",
                                    ("intention", "layer")),
    "target_requests_total": ("counter", "Requests through a discovery chain by target and response class.",
                              ("target", "code_class")),
    "retries_total": ("counter", "Upstream requests tried again.", ()),
    "retry_budget_overflows_total": ("counter", "Retries refused by the retry budget.", ()),
    "circuit_breaker_trips_total": ("counter", "Requests or connections refused by a circuit breaker.",
                                    ("limit",)),
    "ejections_total": ("counter", "Upstream endpoints ejected by outlier detection (target: a chain target's id).",
                        ("target",)),
    "endpoints": ("gauge", "Upstream endpoints by state, as each worker sees them (max over workers; target: a "
                  "chain target's id).", ("target", "state")),
}
# Gauges every worker reports about the same thing (its view of an upstream's endpoints): merged by max.
_MAX_GAUGES = frozenset({"endpoints"})
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
DEFAULT_INTENTION = "default"  # the label of a denial by the default policy (rule "")

Wire = dict[str, Any]


class ProxyMetrics:
    """One worker's metrics for one proxy. `upstream` is the other service of the series: outbound the
    destination, inbound the caller (from `source_label`; "" = not known, counted as this service)."""

    def __init__(self, service: str, datacenter: str) -> None:
        self.service = service
        self.datacenter = datacenter
        self._requests: dict[tuple[str, str, int], int] = {}
        self._hist: dict[tuple[str, str], list[float]] = {}  # _NB + 1 bucket counts, then the sum
        self._active: dict[tuple[str, str], int] = {}
        self._conns: dict[tuple[str, str], int] = {}
        self._rx: dict[tuple[str, str], int] = {}
        self._tx: dict[tuple[str, str], int] = {}
        self._tls: dict[tuple[str, str], int] = {}
        self._denials: dict[tuple[str, str], int] = {}
        self._targets: dict[tuple[str, str, int], int] = {}
        self._retries: dict[str, int] = {}
        self._overflows: dict[str, int] = {}
        self._trips: dict[tuple[str, str], int] = {}
        # (upstream, target): a chained upstream's targets each have series ("" for a flat upstream), so two
        # upstreams reaching one target never share or erase each other's
        self._ejections: dict[tuple[str, str], int] = {}
        self._endpoints: dict[tuple[str, str], tuple[int, int]] = {}
        self._sources: set[str] = set()

    def source_label(self, source: str | None) -> str:
        """The `upstream` argument for inbound series of a caller (its service from its SPIFFE ID): the name
        itself for the first MAX_SOURCES callers, OTHER_SOURCE after that, so callers cannot grow the series
        without bound. Call once per connection, not per request."""
        if not source:
            return ""
        sources = self._sources
        if source in sources:
            return source
        if len(sources) >= MAX_SOURCES:
            return OTHER_SOURCE
        sources.add(source)
        return source

    # ------------------------------------------------------------------ the hot path

    def request(self, direction: str, upstream: str, code: int, duration_s: float) -> None:
        """One request answered with `code` after `duration_s` seconds."""
        key = (direction, upstream, code // 100)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        hkey = (direction, upstream)
        h = self._hist.get(hkey)
        if h is None:
            h = self._hist[hkey] = [0.0] * (_NB + 2)
        h[bisect_left(BUCKETS, duration_s)] += 1
        h[-1] += duration_s

    def target_request(self, upstream: str, target: str, code: int) -> None:
        """One request of `upstream`'s discovery chain sent to target `target` (its id), answered `code`."""
        key = (upstream, target, code // 100)
        self._targets[key] = self._targets.get(key, 0) + 1

    def connection_opened(self, direction: str, upstream: str) -> None:
        """A connection was accepted (inbound, outbound listener) and counts as active."""
        key = (direction, upstream)
        self._active[key] = self._active.get(key, 0) + 1
        self._conns[key] = self._conns.get(key, 0) + 1

    def connection_closed(self, direction: str, upstream: str) -> None:
        """A connection counted by `connection_opened` ended."""
        key = (direction, upstream)
        self._active[key] = self._active.get(key, 0) - 1

    def bytes(self, direction: str, upstream: str, received: int, sent: int) -> None:
        """Bytes moved: inbound from/to the caller, outbound from/to the upstream (call per connection end or
        per request, not per read)."""
        key = (direction, upstream)
        if received:
            self._rx[key] = self._rx.get(key, 0) + received
        if sent:
            self._tx[key] = self._tx.get(key, 0) + sent

    def tls_failure(self, direction: str, reason: str) -> None:
        """A TLS handshake failed (reason: a short fixed word such as "no-client-cert", "unknown-ca")."""
        key = (direction, reason)
        self._tls[key] = self._tls.get(key, 0) + 1

    def denial(self, rule: str, layer: str) -> None:
        """A connection (layer "l4") or request ("l7") denied by intention `rule` ("" = default policy)."""
        key = (rule or DEFAULT_INTENTION, layer)
        self._denials[key] = self._denials.get(key, 0) + 1

    def retry(self, upstream: str) -> None:
        """An upstream request was tried again."""
        self._retries[upstream] = self._retries.get(upstream, 0) + 1

    def retry_overflow(self, upstream: str) -> None:
        """A retry was refused by the retry budget."""
        self._overflows[upstream] = self._overflows.get(upstream, 0) + 1

    def breaker_trip(self, upstream: str, limit: str) -> None:
        """A circuit breaker refused (limit: max_connections|max_pending_requests|max_concurrent_requests)."""
        key = (upstream, limit)
        self._trips[key] = self._trips.get(key, 0) + 1

    def ejection(self, upstream: str, target: str = "") -> None:
        """Outlier detection ejected one endpoint of `upstream` (of its chain target `target`)."""
        key = (upstream, target)
        self._ejections[key] = self._ejections.get(key, 0) + 1

    def endpoints(self, upstream: str, healthy: int, ejected: int, target: str = "") -> None:
        """The current number of available and ejected endpoints of `upstream` (of its target `target`)."""
        self._endpoints[(upstream, target)] = (healthy, ejected)

    def forget_upstream(self, upstream: str, target: str = "") -> None:
        """Drop the endpoint gauges of an upstream (or one chain target of it) the snapshot no longer has
        (counters stay; target_requests_total series too: one per target and code class ever seen)."""
        self._endpoints.pop((upstream, target), None)

    # ------------------------------------------------------------------ the wire

    def to_wire(self) -> Wire:
        """Every series as {"counter"|"gauge"|"histogram": {name: [[labels, value], ...]}}, labels in the order
        of BASE_LABELS + METRICS[name][2]; a histogram's value is [bucket counts (not cumulative), +Inf, sum]."""
        src, dc = self.service, self.datacenter

        def ends(direction: str, other: str) -> tuple[str, str]:
            # (source, destination): inbound the caller calls us, outbound we call the upstream
            if direction == "inbound":
                return other or src, src
            return src, other or src

        def cls(c: int) -> str:
            return _CLASSES[c] if 1 <= c <= 5 else "other"

        counters: dict[str, list[list[Any]]] = {
            "requests_total": [[[*ends(d, u), dc, d, cls(c)], n] for (d, u, c), n in self._requests.items()],
            "connections_total": [[[*ends(d, u), dc, d], n] for (d, u), n in self._conns.items()],
            "bytes_received_total": [[[*ends(d, u), dc, d], n] for (d, u), n in self._rx.items()],
            "bytes_sent_total": [[[*ends(d, u), dc, d], n] for (d, u), n in self._tx.items()],
            "tls_handshake_failures_total": [[[src, src, dc, d, r], n] for (d, r), n in self._tls.items()],
            "authorization_denials_total": [[[src, src, dc, r, la], n] for (r, la), n in self._denials.items()],
            "target_requests_total": [[[src, u, dc, t, cls(c)], n] for (u, t, c), n in self._targets.items()],
            "retries_total": [[[src, u, dc], n] for u, n in self._retries.items()],
            "retry_budget_overflows_total": [[[src, u, dc], n] for u, n in self._overflows.items()],
            "circuit_breaker_trips_total": [[[src, u, dc, lim], n] for (u, lim), n in self._trips.items()],
            "ejections_total": [[[src, u, dc, t], n] for (u, t), n in self._ejections.items()],
        }
        gauges: dict[str, list[list[Any]]] = {
            "connections_active": [[[*ends(d, u), dc, d], n] for (d, u), n in self._active.items()],
            "endpoints": [s for (u, t), (h, e) in self._endpoints.items()
                          for s in ([[src, u, dc, t, "healthy"], h], [[src, u, dc, t, "ejected"], e])],
        }
        hist = {"request_duration_seconds": [[[*ends(d, u), dc, d], [int(x) for x in h[:-1]] + [h[-1]]]
                                             for (d, u), h in self._hist.items()]}
        return {"counter": counters, "gauge": gauges, "histogram": hist}


# ---------------------------------------------------------------------- merging


def counters_only(wire: Wire) -> Wire:
    """`wire` without its gauges: what a dead worker still contributes (its totals, not its open sockets)."""
    return {"counter": wire.get("counter", {}), "gauge": {}, "histogram": wire.get("histogram", {})}


def merge(wires: list[Wire]) -> Wire:
    """One wire map of several (workers of one proxy, or several proxies): counters, histograms and gauges
    summed per label set, except the endpoint gauges (max). Malformed series are skipped, never raised."""
    acc: dict[str, dict[str, dict[tuple[str, ...], Any]]] = {"counter": {}, "gauge": {}, "histogram": {}}
    for wire in wires:
        if not isinstance(wire, dict):
            continue
        for kind, table in acc.items():
            by_name = wire.get(kind)
            if not isinstance(by_name, dict):
                continue
            for name, series in by_name.items():
                spec = METRICS.get(name) if isinstance(name, str) else None
                if spec is None or spec[0] != kind or not isinstance(series, list):
                    continue
                _merge_series(table.setdefault(name, {}), name, kind, len(BASE_LABELS) + len(spec[2]), series)
    out: Wire = {}
    for kind, table in acc.items():
        out[kind] = {name: [[list(labels), value] for labels, value in rows.items()] for name, rows in table.items()}
    return out


def _merge_series(rows: dict[tuple[str, ...], Any], name: str, kind: str, nlabels: int,
                  series: list[Any]) -> None:
    for item in series:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            continue
        labels, value = item
        if not (isinstance(labels, (list, tuple)) and len(labels) == nlabels
                and all(isinstance(x, str) and len(x) <= MAX_LABEL for x in labels)):
            continue
        key = tuple(labels)
        if key not in rows and len(rows) >= MAX_SERIES:
            continue
        if kind == "histogram":
            h = _histogram(value)
            if h is None:
                continue
            old = rows.get(key)
            rows[key] = h if old is None else [a + b for a, b in zip(old, h, strict=True)]
        else:
            if not _number(value):
                continue
            old = rows.get(key)
            if old is None:
                rows[key] = value
            elif name in _MAX_GAUGES:
                rows[key] = max(old, value)
            else:
                rows[key] = old + value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _histogram(v: Any) -> list[float] | None:
    if not (isinstance(v, (list, tuple)) and len(v) == _NB + 2 and all(_number(x) for x in v)):
        return None
    return list(v)


# ---------------------------------------------------------------------- Prometheus text


def render_prometheus(wire: Wire) -> str:
    """Prometheus text exposition format 0.0.4 of a wire map (one HELP/TYPE per metric, every metric listed
    even with no series yet)."""
    wire = merge([wire])  # checked and in one shape, whatever the caller passes
    out: list[str] = []
    for short, (kind, help_text, extra) in METRICS.items():
        name = PREFIX + short
        names = BASE_LABELS + extra
        out.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {kind}\n")
        rows = wire[kind].get(short, [])
        for labels, value in sorted(rows, key=lambda r: r[0]):
            # An empty `target` (a flat upstream's series) is left out: the same series for Prometheus
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in zip(names, labels, strict=False)
                            if v or k != "target")
            if kind != "histogram":
                out.append(f"{name}{{{text}}} {_num(value)}\n")
                continue
            cumulative = 0.0
            for le, count in zip(BUCKETS, value, strict=False):
                cumulative += count
                out.append(f'{name}_bucket{{{text},le="{le!r}"}} {_num(cumulative)}\n')
            cumulative += value[_NB]
            out.append(f'{name}_bucket{{{text},le="+Inf"}} {_num(cumulative)}\n')
            out.append(f"{name}_sum{{{text}}} {_num(value[_NB + 1])}\n")
            out.append(f"{name}_count{{{text}}} {_num(cumulative)}\n")
    return "".join(out)


def _num(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 2**53):
        return str(int(v))
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")
