"""One metrics registry: counters, gauges and summaries, each with optional labels, registered once by name.

Names are Consul's keys without the prefix (`raft.apply`, `http.GET.v1.kv._`); the renderers add the
prefix. A metric is a plain object its owner keeps and updates in place (`counter.value += 1`): the agent
runs on one trio thread, so no lock, and an update costs an attribute add. Figures that already live as
attributes elsewhere are read at scrape time through `collect(fn)` instead of being copied on every change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable, stable order
MAX_SERIES = 1000  # label sets per labelled metric: a runaway label (a path, an ID) cannot grow memory


def labels_of(labels: dict[str, str] | None) -> Labels:
    """Labels as the sorted pairs the registry keys series by."""
    return tuple(sorted(labels.items())) if labels else ()


class Counter:
    """A monotonic count. `value += n` is the whole update."""

    __slots__ = ("value",)
    kind = "counter"

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int = 1) -> None:
        """Count n more."""
        self.value += n


class Gauge:
    """A value that goes up and down; set it, or give a function read at scrape time."""

    __slots__ = ("read", "value")
    kind = "gauge"

    def __init__(self, read: Callable[[], float] | None = None) -> None:
        self.value = 0.0
        self.read = read

    def set(self, value: float) -> None:
        """The current value."""
        self.value = value

    def current(self) -> float:
        """The value now (the function's, when there is one)."""
        return float(self.read()) if self.read is not None else float(self.value)


class Summary:
    """Observations (Consul's timers and samples: milliseconds for timers): count, sum, min, max and the sum
    of squares for the standard deviation. Cumulative since start (Prometheus reads rates from _count/_sum)."""

    __slots__ = ("count", "max", "min", "sum", "sum_sq")
    kind = "summary"

    def __init__(self) -> None:
        self.count = 0
        self.sum = self.sum_sq = 0.0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        """One observation."""
        self.count += 1
        self.sum += value
        self.sum_sq += value * value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def stddev(self) -> float:
        """The sample standard deviation (0 below two observations)."""
        if self.count < 2:
            return 0.0
        mean = self.sum / self.count
        return math.sqrt(max(0.0, (self.sum_sq - self.count * mean * mean) / (self.count - 1)))


Metric = Counter | Gauge | Summary


class Family:
    """One name's series by label set, all of one kind; `series(labels)` creates a series on first use."""

    __slots__ = ("dropped", "factory", "help", "kind", "members")

    def __init__(self, kind: str, factory: Callable[[], Metric], help_: str) -> None:
        self.kind = kind
        self.factory = factory
        self.help = help_
        self.members: dict[Labels, Metric] = {}
        self.dropped = 0  # observations refused because MAX_SERIES label sets exist

    def series(self, labels: Labels = ()) -> Metric | None:
        """The series for these labels (created if new; None once MAX_SERIES exist: the caller skips it)."""
        metric = self.members.get(labels)
        if metric is None:
            if len(self.members) >= MAX_SERIES:
                self.dropped += 1
                return None
            metric = self.members[labels] = self.factory()
        return metric


@dataclass(frozen=True, slots=True)
class Point:
    """One series at scrape time: its name (unprefixed), kind, labels and metric."""

    name: str
    kind: str
    labels: Labels
    metric: Metric
    help: str = ""


Collector = Callable[[], Iterable[tuple[str, str, float]]]  # yields (kind "counter"|"gauge", name, value)


class Registry:
    """Every metric of one agent by name; `points()` is what the renderers read."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._collectors: list[Collector] = []

    def _family(self, name: str, kind: str, factory: Callable[[], Metric], help_: str) -> Family:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(kind, factory, help_)
        elif family.kind != kind:
            raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
        return family

    def counter(self, name: str, help_: str = "", labels: dict[str, str] | None = None) -> Counter:
        """The counter `name` (with these labels), registered on first use."""
        metric = self._family(name, "counter", Counter, help_).series(labels_of(labels))
        return metric if isinstance(metric, Counter) else Counter()  # over MAX_SERIES: counted nowhere

    def gauge(self, name: str, help_: str = "", labels: dict[str, str] | None = None,
              read: Callable[[], float] | None = None) -> Gauge:
        """The gauge `name` (with these labels); `read` makes it a scrape-time function."""
        metric = self._family(name, "gauge", Gauge, help_).series(labels_of(labels))
        if not isinstance(metric, Gauge):
            return Gauge()
        if read is not None:
            metric.read = read
        return metric

    def summary(self, name: str, help_: str = "", labels: dict[str, str] | None = None) -> Summary:
        """The summary `name` (with these labels), registered on first use."""
        metric = self._family(name, "summary", Summary, help_).series(labels_of(labels))
        return metric if isinstance(metric, Summary) else Summary()

    def add(self, name: str, metric: Metric, help_: str = "", labels: dict[str, str] | None = None) -> None:
        """Register a metric object a component already keeps (it updates it; the registry reads it)."""
        family = self._family(name, metric.kind, type(metric), help_)
        family.members[labels_of(labels)] = metric

    def collect(self, collector: Collector) -> None:
        """Register a function read at every scrape, yielding (kind, name, value) for figures kept elsewhere."""
        self._collectors.append(collector)

    def points(self) -> Iterator[Point]:
        """Every series now: registered ones (sorted by name), then the collectors' figures."""
        for name in sorted(self.families):
            family = self.families[name]
            for labels, metric in family.members.items():
                yield Point(name, family.kind, labels, metric, family.help)
        for collector in self._collectors:
            for kind, name, value in collector():
                figure: Metric
                if kind == "counter":
                    figure = Counter()
                    figure.value = int(value)
                else:
                    figure = Gauge()
                    figure.value = float(value)
                yield Point(name, kind, (), figure)
