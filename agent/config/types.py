"""Typed, validated configuration: what the loader produces and the rest of the agent consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .connect_defaults import LEAF_TTL_MIN, default_ca_config


@dataclass(slots=True)
class Source:
    """Where a definition came from, for error messages: a file (and line) or the HTTP API."""

    path: str = "<api>"
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(slots=True)
class CheckDefinition:
    """A health check as written in a file or an API body, durations in seconds."""

    id: str = ""
    name: str = ""
    notes: str = ""
    service_id: str = ""
    status: str = "critical"  # initial status
    interval: float | None = None
    timeout: float | None = None
    ttl: float | None = None
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    args: list[str] = field(default_factory=list)
    alias_service: str = ""  # the id of a local service whose health this check mirrors
    deregister_critical_service_after: float | None = None
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    source: Source = field(default_factory=Source)

    @property
    def type(self) -> str:
        """Consul's check type name: http, tcp, script, ttl, alias (or '' when none is set)."""
        if self.alias_service:
            return "alias"
        if self.ttl is not None:
            return "ttl"
        if self.http:
            return "http"
        if self.tcp:
            return "tcp"
        if self.args:
            return "script"
        return ""


@dataclass(slots=True)
class Weights:
    """DNS SRV weights by aggregated check status."""

    passing: int = 1
    warning: int = 1


@dataclass(slots=True)
class ServiceDefinition:
    """A service as written in a file or an API body."""

    name: str
    id: str = ""  # defaults to name after parsing
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    weights: Weights = field(default_factory=Weights)
    checks: list[CheckDefinition] = field(default_factory=list)
    enable_tag_override: bool = False
    kind: str = ""
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    # connect { native, sidecar_service {...} } as written; sidecar_service is expanded by agent/connect/sidecar.py.
    connect: dict[str, Any] = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    # The ACL secret anti-entropy writes this service as when it was not registered with one (config files);
    # never rendered nor logged.
    token: str = field(default="", repr=False)


@dataclass(slots=True)
class TelemetryConfig:
    """The `telemetry` block (agent/telemetry/config.py parses it)."""

    prometheus_retention_time: float = 0.0  # 0: series are never expired from the Prometheus text
    disable_hostname: bool = True  # Consul's default is false (gauges as prefix.<host>.name); see docs
    metrics_prefix: str = "meshagent"


@dataclass(slots=True)
class DNSConfig:
    """The `dns_config` block."""

    only_passing: bool = False
    node_ttl: float = 0.0
    service_ttl: dict[str, float] = field(default_factory=dict)  # "*" is the fallback
    udp_answer_limit: int = 3
    enable_truncate: bool = True
    a_record_limit: int = 0  # 0 = unlimited
    recursor_timeout: float = 2.0
    allow_stale: bool = True
    max_stale: float = 87600 * 3600.0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    soa_min_ttl: int = 0


@dataclass(slots=True)
class Ports:
    """The `ports` block (-1 disables a listener)."""

    dns: int = 8600
    http: int = 8500
    serf_lan: int = 8301
    serf_wan: int = 8302
    server: int = 8300
    sidecar_min_port: int = 21000  # the range sidecar_service ports are picked from; 0 in either: no picking
    sidecar_max_port: int = 21255


@dataclass(slots=True)
class TLSConfig:
    """Consul's `tls { defaults {...} internal_rpc {...} }` plus `auto_encrypt`, for the server port :8300.

    With no files set and a gossip key, :8300 still runs mutual TLS under a CA derived from the keyring
    (docs/security.md); plaintext :8300 only when there is neither.
    """

    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False
    # auto_encrypt: a client asks the servers for its certificate (`tls`); a server hands them out (`allow_tls`).
    auto_encrypt_tls: bool = False
    auto_encrypt_allow_tls: bool = False
    source: Source = field(default_factory=Source)  # where the tls block was defined, for error messages


@dataclass(slots=True)
class ACLTokens:
    """`acl { tokens { ... } }`: secrets the agent itself uses (never logged, never rendered)."""

    initial_management: str = ""  # servers: created in the catalog by the leader, global-management
    default: str = ""  # requests without a token (HTTP, DNS) act as this one; "" = anonymous
    agent: str = ""  # anti-entropy and the agent's own writes; "" = default
    agent_recovery: str = ""  # local only: agent:write on this agent even when no server answers
    replication: str = ""  # accepted (PUT /v1/agent/token/replication); no ACL replication yet
    config_file_service_registration: str = ""  # file services without their own `token` sync as this

    def __repr__(self) -> str:
        return "ACLTokens(<secrets hidden>)"


@dataclass(slots=True)
class ACLConfig:
    """`acl { ... }` (docs/acl.md): off unless `enabled`; TTLs and durations in seconds."""

    enabled: bool = False
    default_policy: str = "allow"  # allow | deny
    down_policy: str = "extend-cache"  # extend-cache | async-cache | allow | deny
    token_ttl: float = 30.0
    policy_ttl: float = 30.0
    role_ttl: float = 30.0
    enable_token_persistence: bool = False
    enable_key_list_policy: bool = False  # KV recursive reads/key lists need key:list (Consul's, off by default)
    tokens: ACLTokens = field(default_factory=ACLTokens)


@dataclass(slots=True)
class AgentConfig:
    """The merged agent configuration: defaults < files (lexical order) < command-line flags."""

    node_name: str = ""
    node_id: str = ""
    datacenter: str = "dc1"
    data_dir: str = ""
    dev: bool = False
    server: bool = False
    bootstrap_expect: int = 0
    raft_snapshot_threshold: int = 16384  # applied entries between Raft snapshots (Consul's default)
    raft_trailing_logs: int = 10000  # entries kept behind a snapshot for slow followers
    bind_addr: str = "0.0.0.0"
    advertise_addr: str = ""
    client_addr: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    domain: str = "mesh."
    log_level: str = "info"
    log_json: bool = False
    enable_local_script_checks: bool = False
    enable_script_checks: bool = False
    node_meta: dict[str, str] = field(default_factory=dict)
    recursors: list[str] = field(default_factory=list)
    dns_config: DNSConfig = field(default_factory=DNSConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    retry_join: list[str] = field(default_factory=list)
    retry_interval: float = 30.0  # seconds between -retry-join attempts
    retry_max: int = 0  # attempts before the agent gives up and exits; 0 retries forever
    reconnect_timeout: float = 72 * 3600.0  # a failed member is reaped (forgotten) after this long
    # Consul's watches; type "event" runs `args` with the matching events as JSON on stdin.
    watches: list[dict[str, Any]] = field(default_factory=list)
    encrypt: str = ""
    # Turning encryption on in a live cluster: first accept plaintext and send encrypted (incoming false),
    # then require it everywhere (both true, the default).
    encrypt_verify_incoming: bool = True
    encrypt_verify_outgoing: bool = True
    tls: TLSConfig = field(default_factory=TLSConfig)
    check_update_interval: float = 300.0
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    leave_on_terminate: bool | None = None
    skip_leave_on_interrupt: bool | None = None
    # At start, rejoin the peers of the last run (<data-dir>/serf/peers.json) even after a graceful leave.
    rejoin_after_leave: bool = False
    services: list[ServiceDefinition] = field(default_factory=list)
    checks: list[CheckDefinition] = field(default_factory=list)
    # The mesh (issue 13, docs/config-keys.md): the CA runs on servers and -dev unless connect.enabled = false;
    # on clients the setting is only validated (they follow the servers).
    connect_enabled: bool = True
    ca_provider: str = "consul"
    # connect.ca_config, snake_case keys as written, durations in seconds; Consul's defaults filled in.
    ca_config: dict[str, Any] = field(default_factory=default_ca_config)
    # config_entries.bootstrap: each entry normalized (canonical CamelCase JSON) at load.
    config_entries_bootstrap: list[dict[str, Any]] = field(default_factory=list)
    acl_default_policy: str = "allow"  # the intention decision when nothing matches
    acl: ACLConfig = field(default_factory=ACLConfig)  # issue 15; acl.default_policy mirrors acl_default_policy
    # For tests only (connect.test_min_leaf_ttl): the lowest leaf_cert_ttl accepted, Consul's 1 h by default.
    connect_test_min_leaf_ttl: float = LEAF_TTL_MIN
    config_files: list[str] = field(default_factory=list)  # every file that was loaded, in order
    warnings: list[str] = field(default_factory=list)  # from loading: keys not acted on yet, clamped values
