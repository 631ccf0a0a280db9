"""The `telemetry { }` block: prometheus_retention_time, disable_hostname and metrics_prefix; every other
Consul telemetry key (statsd, dogstatsd, circonus, ...) names a sink this agent does not have: an error."""

from __future__ import annotations

import re
from typing import Any

from ..config.errors import Collector
from ..config.types import TelemetryConfig
from ..config.values import duration, node_of, one_block, string_map, typed

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
_SINKS = frozenset({
    "statsd_address", "statsite_address", "dogstatsd_addr", "dogstatsd_tags", "circonus_api_token",
    "circonus_api_app", "circonus_api_url", "circonus_submission_interval", "circonus_submission_url",
    "circonus_check_id", "circonus_check_force_metric_activation", "circonus_check_instance_id",
    "circonus_check_search_tag", "circonus_check_display_name", "circonus_check_tags",
    "circonus_broker_id", "circonus_broker_select_tag", "retry_failed_connection",
})


def telemetry_block(col: Collector, value: Any, line: int | None,
                    base: TelemetryConfig | None = None) -> TelemetryConfig:
    """The block's settings over `base` (an earlier file's block, or the defaults); errors name the field."""
    out = TelemetryConfig() if base is None else TelemetryConfig(
        base.prometheus_retention_time, base.disable_hostname, base.metrics_prefix)
    data = one_block(value)
    if not isinstance(data, dict):
        string_map(col, "telemetry", data, line)  # records "must be a map"
        return out
    node = node_of(col, data, "telemetry", line)
    for key, item in node.raw.items():
        field_, where = f"telemetry.{key}", node.at(key)
        if key == "prometheus_retention_time":
            seconds = duration(col, field_, item, where)
            if seconds is not None:
                out.prometheus_retention_time = seconds
        elif key == "disable_hostname":
            flag = typed(col, field_, item, bool, where)
            if flag is not None:
                out.disable_hostname = flag
        elif key == "metrics_prefix":
            prefix = typed(col, field_, item, str, where)
            if prefix is not None and not _PREFIX.fullmatch(prefix):
                col.error(field_, "must be 1-64 letters, digits, '_' or '.', not starting with a digit", where)
            elif prefix is not None:
                out.metrics_prefix = prefix
        elif key in _SINKS:
            col.error(field_, "not supported: this agent sends metrics to no sink; scrape /v1/agent/metrics "
                      "(?format=prometheus) instead", where)
        else:
            col.error(field_, "unknown field (prometheus_retention_time, disable_hostname or metrics_prefix)", where)
    return out
