"""Consul settings this agent does not act on: each is an error naming why, unless the value given is one
whose meaning the agent already has (docs/config-keys.md lists every decision).

A setting that is silently dropped makes an agent run other than it was told to (metrics sent nowhere), so the
rule is to refuse it at load; only values that ask for what the agent already does are accepted.
"""

from __future__ import annotations

from typing import Any

from .values import plain

_LATER = "not supported yet; remove it"
# Top-level keys: the reason given when they are refused.
TOP_LEVEL: dict[str, str] = {
    "ui": "there is no web UI; remove it (only `ui = false` is accepted)",
    "ui_config": "there is no web UI; remove it (only `ui_config { enabled = false }` is accepted)",
    "performance": f"{_LATER} — Raft timing cannot be tuned yet",
    "autopilot": f"{_LATER} — autopilot (dead server cleanup, stabilization) does not exist yet",
    "start_join": "not supported (Consul removed it in 1.15); use retry_join",
    "start_join_wan": "not supported (WAN federation does not exist); remove it",
    "addresses": f"{_LATER} — HTTP and DNS bind to client_addr only",
    "limits": f"{_LATER} — the agent's connection and request limits are fixed",
    "raft_protocol": f"{_LATER} — the Raft protocol version is not configurable",
    "server_name": f"{_LATER} — servers are named server.<datacenter>.<domain> in certificates",
    "disable_update_check": "only `true` is accepted: this agent never checks for updates",
    "log_file": f"{_LATER} — the agent logs to stderr only (use systemd's journal)",
    "log_rotate_max_files": f"{_LATER} — the agent logs to stderr only",
    "log_rotate_bytes": f"{_LATER} — the agent logs to stderr only",
    "log_rotate_duration": f"{_LATER} — the agent logs to stderr only",
    "enable_syslog": "only `false` is accepted: the agent logs to stderr only (use systemd's journal)",
    "syslog_facility": f"{_LATER} — the agent logs to stderr only",
    "pid_file": f"{_LATER} — no pid file is written",
    "primary_datacenter": f"{_LATER} — there is one datacenter, without federation",
    "leave_drain_time": f"{_LATER} — the leave drain time is not configurable",
    "rpc_hold_timeout": f"{_LATER} — the RPC hold timeout is not configurable",
    "disable_remote_exec": "only `true` is accepted: this agent has no remote exec",
    "enable_debug": "only `false` is accepted: this agent has no debug endpoints",
    "retry_join_wan": "not supported (WAN federation does not exist); remove it",
    "retry_interval_wan": "not supported (WAN federation does not exist); remove it",
    "advertise_addr_wan": "not supported (WAN federation does not exist); remove it",
    "translate_wan_addrs": "not supported (WAN federation does not exist); remove it",
    "serf_wan": "not supported (WAN federation does not exist); remove it",
    "serf_lan": f"{_LATER} — gossip binds to bind_addr",
    "alt_domain": f"{_LATER} — DNS answers only for `domain`",
    "discovery_max_stale": f"{_LATER} — stale reads are bounded by dns_config.max_stale only",
    "enable_central_service_config": f"{_LATER} — services do not take their settings from service-defaults "
                                     "entries yet",
    "disable_host_node_id": "only `true` is accepted: node IDs are random UUIDs, never derived from the host",
}

# Values that ask for what the agent already does: accepted silently.
HONOURED: dict[str, tuple[Any, ...]] = {
    "ui": (False,),
    "ui_config": ({"enabled": False},),
    "disable_update_check": (True,),
    "enable_syslog": (False,),
    "disable_remote_exec": (True,),
    "enable_debug": (False,),
    "disable_host_node_id": (True,),
}

# ports { ... }: listeners the agent never opens; -1 (disabled) is what it already does.
PORTS = frozenset({"https", "grpc", "grpc_tls", "serf_wan", "expose_min_port", "expose_max_port"})
PORT_REASON = "this listener does not exist yet; remove it (only -1, disabled, is accepted)"

# dns_config { ... }: refused fields, and DNSConfig fields accepted only at the value the agent implements.
DNS: dict[str, str] = {
    "recursor_strategy": f"{_LATER} — the recursor strategy is fixed",
    "disable_compression": f"{_LATER} — name compression in answers is fixed",
    "enable_additional_node_meta_txt": f"{_LATER} — node meta TXT records are not served",
    "use_cache": "only `false` is accepted: there is no agent cache yet",
    "cache_max_age": f"{_LATER} — there is no agent cache yet",
    "prefer_namespace": "not supported (namespaces are a Consul Enterprise feature); remove it",
}
DNS_HONOURED: dict[str, tuple[Any, ...]] = {
    "use_cache": (False,),
    "enable_truncate": (True,),  # truncated UDP answers always set TC
    "allow_stale": (True,),  # every agent answers from its local catalog replica
}
DNS_ONLY_REASON = {
    "enable_truncate": "only `true` is accepted: truncated UDP answers always set the TC bit",
    "allow_stale": "only `true` is accepted: every agent answers DNS from its own catalog replica",
}


def _normal(value: Any) -> Any:
    """Plain data with "true"/"false" strings as bools (Consul's weak decoding), for comparing to HONOURED."""
    value = plain(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def honoured(table: dict[str, tuple[Any, ...]], key: str, value: Any) -> bool:
    """True when `value` for `key` asks only for what the agent already does."""
    return _normal(value) in table.get(key, ())
