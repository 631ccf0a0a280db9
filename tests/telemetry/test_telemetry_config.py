"""The `telemetry { }` block: the three keys the agent acts on are typed and checked; a sink's key (statsd,
dogstatsd, circonus) is an error naming the field and line, as is anything unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshagent.agent.config.loader import load_config, validate_paths


def test_the_three_keys_reach_the_config(tmp_path: Path) -> None:
    (tmp_path / "t.hcl").write_text('telemetry {\n  prometheus_retention_time = "60s"\n'
                                    '  disable_hostname = false\n  metrics_prefix = "consul"\n}\n')
    config = load_config([str(tmp_path / "t.hcl")], [], {})
    assert (config.telemetry.prometheus_retention_time, config.telemetry.disable_hostname,
            config.telemetry.metrics_prefix) == (60.0, False, "consul")


def test_defaults_and_json(tmp_path: Path) -> None:
    assert load_config([], [], {}).telemetry.metrics_prefix == "meshagent"
    (tmp_path / "t.json").write_text(json.dumps({"telemetry": {"prometheus_retention_time": "1h"}}))
    config = load_config([str(tmp_path / "t.json")], [], {})
    assert config.telemetry.prometheus_retention_time == 3600.0 and config.telemetry.disable_hostname


@pytest.mark.parametrize("body,field,reason", [
    ('statsd_address = "127.0.0.1:8125"', "telemetry.statsd_address", "no sink"),
    ('dogstatsd_addr = "127.0.0.1:8125"', "telemetry.dogstatsd_addr", "no sink"),
    ("prometheus_retention_time = \"-5s\"", "telemetry.prometheus_retention_time", "negative"),
    ("prometheus_retention_time = \"soon\"", "telemetry.prometheus_retention_time", ""),
    ('disable_hostname = "perhaps"', "telemetry.disable_hostname", ""),
    ('metrics_prefix = "a b"', "telemetry.metrics_prefix", "letters"),
    ('metrics_prefix = "' + "x" * 65 + '"', "telemetry.metrics_prefix", "1-64"),
    ("metrics_prefix = 5", "telemetry.metrics_prefix", ""),
    ("scrape_me = true", "telemetry.scrape_me", "unknown field"),
])
def test_refused_values_name_the_field_and_line(tmp_path: Path, body: str, field: str, reason: str) -> None:
    path = tmp_path / "t.hcl"
    path.write_text(f"telemetry {{\n  {body}\n}}\n")
    errors, _ = validate_paths([str(path)])
    assert [(e.field, e.line) for e in errors] == [(field, 2)]
    assert reason in errors[0].reason


def test_a_block_that_is_not_a_map_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"telemetry": "prometheus"}))
    errors, _ = validate_paths([str(path)])
    assert [e.field for e in errors] == ["telemetry"]
