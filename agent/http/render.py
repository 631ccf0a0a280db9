"""Consul-shaped JSON (CamelCase dicts) for catalog rows and local state, plus the JSON encoder.

Field names and omissions follow Consul's Go structs (`omitempty` fields are left out when empty), so
unmodified Consul clients (py-consul, Prometheus consul_sd, consul-template) parse our answers.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from ...build_info import revision
from ...gossip.member import Member
from ..catalog import MAINTENANCE, NODE_MAINT_CHECK_ID, SERVICE_MAINT_PREFIX, Check, KVEntry, Node, Service
from ..catalog.state import Instance

if TYPE_CHECKING:
    from ...gossip.key_query import KeyQueryResult
    from ..config.types import ServiceDefinition
    from ..local_sync import LocalCheck
    from ..server.peers import RaftPeer
    from ..user_events import UserEventRecord
    from .view import AgentView, Metrics

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_pretty = json.JSONEncoder(indent=4, ensure_ascii=False, check_circular=False).encode


def dumps(data: Any, pretty: bool = False) -> bytes:
    """JSON bytes: compact like Go's encoder, or indented by four spaces for `?pretty`."""
    if pretty:
        return (_pretty(data) + "\n").encode()
    return _compact(data).encode()


def _proxy(proxy: dict[str, Any]) -> dict[str, Any]:
    # Consul always renders the (possibly empty) proxy block with these sub-objects.
    return proxy if proxy else {"MeshGateway": {}, "Expose": {}}


def connect_json(connect: dict[str, Any]) -> dict[str, Any]:
    """A service's `Connect` as Consul shows it: `{"Native": true}` or `{}`. `sidecar_service` is kept by local
    state (it re-expands the sidecar on reload and restart) but never shown: Consul drops it once the sidecar
    is registered ("SidecarService is meant to be a registration syntax sugar", agent_endpoint.go)."""
    return {"Native": True} if connect.get("native", connect.get("Native")) is True else {}


def node_json(node: Node) -> dict[str, Any]:
    """A node as in /v1/catalog/nodes and the `Node` of /v1/health/service entries."""
    return {
        "ID": node.id,
        "Node": node.node,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses or None,
        "Meta": node.meta or None,
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    }


def service_json(svc: Service) -> dict[str, Any]:
    """A service as in the `Service` of /v1/health/service entries and /v1/catalog/node."""
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out.update({
        "ID": svc.id,
        "Service": svc.service,
        "Tags": list(svc.tags),
        "Address": svc.address,
        "TaggedAddresses": svc.tagged_addresses or None,
        "Meta": svc.meta or None,
        "Port": svc.port,
        "Weights": dict(svc.weights),
        "EnableTagOverride": svc.enable_tag_override,
        "Proxy": _proxy(svc.proxy),
        "Connect": connect_json(svc.connect),
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    })
    return out


def catalog_service_json(node: Node, svc: Service) -> dict[str, Any]:
    """One row of /v1/catalog/service/:name (Consul's flattened ServiceNode)."""
    return {
        "ID": node.id,
        "Node": node.node,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses or None,
        "NodeMeta": node.meta or None,
        "ServiceKind": svc.kind,
        "ServiceID": svc.id,
        "ServiceName": svc.service,
        "ServiceTags": list(svc.tags),
        "ServiceAddress": svc.address,
        "ServiceTaggedAddresses": svc.tagged_addresses or None,
        "ServiceWeights": dict(svc.weights),
        "ServiceMeta": svc.meta or {},
        "ServicePort": svc.port,
        "ServiceEnableTagOverride": svc.enable_tag_override,
        "ServiceProxy": _proxy(svc.proxy),
        "ServiceConnect": connect_json(svc.connect),
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    }


def _duration(seconds: float | None) -> str:
    """Seconds as a Go duration string ("10s", "1m30s", "1.5s"); "" when unset."""
    if not seconds:
        return ""
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs:g}s"


def _definition_duration(definition: dict[str, Any], name: str) -> str:
    """A check row's interval or timeout as a Go duration: seconds (what anti-entropy writes) are formatted, a
    short duration string (a /v1/catalog/register body's Definition) is kept, anything else is ""."""
    value = next((v for k, v in definition.items() if isinstance(k, str) and k.lower() == name), None)
    if isinstance(value, bool):
        return ""
    if isinstance(value, (int, float)):
        return _duration(value) if 0 < value < 1e9 else ""
    if isinstance(value, str) and len(value) <= 32 and value.isprintable():
        return value
    return ""


def check_json(check: Check) -> dict[str, Any]:
    """A check as in /v1/health/* and the `Checks` of health entries."""
    definition = check.definition or {}
    return {
        "Node": check.node,
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": list(check.service_tags),
        "Type": check.type,
        "Interval": _definition_duration(definition, "interval"),
        "Timeout": _definition_duration(definition, "timeout"),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index,
    }


def health_entry_json(inst: Instance) -> dict[str, Any]:
    """One entry of /v1/health/service/:name: node, service and every check deciding its health."""
    return {
        "Node": node_json(inst.node),
        "Service": service_json(inst.service),
        "Checks": [check_json(c) for c in inst.checks],
    }


def catalog_node_json(node: Node, services: list[Service]) -> dict[str, Any]:
    """/v1/catalog/node/:node: the node and its services by ID."""
    return {"Node": node_json(node), "Services": {s.id: service_json(s) for s in services}}


def kv_json(entry: KVEntry) -> dict[str, Any]:
    """One KV entry; an empty value is null, as in Consul."""
    out: dict[str, Any] = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }
    if entry.session:
        out["Session"] = entry.session
    return out


# ---------------------------------------------------------------------- local (agent) views


def agent_service_json(defn: ServiceDefinition, datacenter: str) -> dict[str, Any]:
    """A locally registered service (a ServiceDefinition) as in /v1/agent/services."""
    out: dict[str, Any] = {}
    if defn.kind:
        out["Kind"] = defn.kind
    out.update({
        "ID": defn.id or defn.name,
        "Service": defn.name,
        "Tags": list(defn.tags),
        "Meta": dict(defn.meta),
        "Port": defn.port,
        "Address": defn.address,
        "TaggedAddresses": dict(defn.tagged_addresses) or None,
        "Weights": {"Passing": defn.weights.passing, "Warning": defn.weights.warning},
        "EnableTagOverride": defn.enable_tag_override,
        "Datacenter": datacenter,
    })
    if defn.proxy:
        out["Proxy"] = dict(defn.proxy)
    connect = connect_json(defn.connect)
    if connect:
        out["Connect"] = connect
    if out["TaggedAddresses"] is None:
        del out["TaggedAddresses"]
    return out


def local_check_json(check: LocalCheck, node: str, service_tags: list[str]) -> dict[str, Any]:
    """A locally owned check as in /v1/agent/checks."""
    definition = check.definition
    interval = _duration(definition.interval) if definition is not None else ""
    timeout = _duration(definition.timeout) if definition is not None else ""
    return {
        "Node": node,
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": list(service_tags),
        "Type": check.type,
        "Interval": interval,
        "Timeout": timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def local_health_json(defn: ServiceDefinition, checks: list[LocalCheck], node: str,
                      datacenter: str) -> dict[str, Any]:
    """{AggregatedStatus, Service, Checks} for one local service, as /v1/agent/health/service/* shows it."""
    rendered = [local_check_json(c, node, list(defn.tags)) for c in checks]
    return {"AggregatedStatus": aggregated_status(rendered),
            "Service": agent_service_json(defn, datacenter), "Checks": rendered}


def aggregated_status(checks: list[dict[str, Any]]) -> str:
    """Consul api.HealthChecks.AggregatedStatus: maintenance beats critical beats warning beats passing."""
    status = "passing"
    for check in checks:
        cid = check["CheckID"]
        if cid == NODE_MAINT_CHECK_ID or cid.startswith(SERVICE_MAINT_PREFIX):
            return MAINTENANCE
        if check["Status"] == "critical":
            status = "critical"
        elif check["Status"] == "warning" and status == "passing":
            status = "warning"
    return status


# ---------------------------------------------------------------------- events, metrics


def event_json(record: UserEventRecord) -> dict[str, Any]:
    """A user event as Consul's /v1/event API (and an event watch handler's stdin) shows it."""
    return {"ID": record.id, "Name": record.name,
            "Payload": base64.b64encode(record.payload).decode() if record.payload else None,
            "NodeFilter": "", "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": record.ltime}


def _counter(name: str, value: int) -> dict[str, Any]:
    return {"Name": name, "Count": value, "Rate": 0.0, "Sum": float(value), "Min": 0.0, "Max": 0.0,
            "Mean": 0.0, "Stddev": 0.0, "Labels": {}}


def metrics_json(metrics: Metrics, timestamp: str) -> dict[str, Any]:
    """/v1/agent/metrics in Consul's JSON shape, names prefixed `meshagent.`."""
    return {"Timestamp": timestamp,
            "Gauges": [{"Name": f"meshagent.{name}", "Labels": {}, "Value": value} for name, value in metrics.gauges],
            "Points": [], "Counters": [_counter(f"meshagent.{name}", value) for name, value in metrics.counters],
            "Samples": []}


def metrics_prometheus(metrics: Metrics) -> str:
    """The agent's own counters and gauges as Prometheus text 0.0.4: `meshagent_<name>`, counters `_total`."""
    lines: list[str] = []
    for name, value in metrics.counters:
        metric = _prometheus_name(name) + "_total"
        lines += [f"# TYPE {metric} counter", f"{metric} {int(value)}"]
    for name, gauge in metrics.gauges:
        metric = _prometheus_name(name)
        lines += [f"# TYPE {metric} gauge", f"{metric} {float(gauge)!r}"]
    return "\n".join(lines) + "\n" if lines else ""


def _prometheus_name(name: str) -> str:
    return "meshagent_" + "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)


def agent_self_json(agent: AgentView, member: dict[str, Any], stats: dict[str, dict[str, str]],
                    version: str) -> dict[str, Any]:
    """/v1/agent/self: Config, DebugConfig, Coord, Member, Stats, Meta."""
    config = agent.config
    server = agent.is_server
    return {
        "Config": {
            "Datacenter": agent.datacenter,
            "PrimaryDatacenter": agent.datacenter,
            "NodeName": agent.node_name,
            "NodeID": agent.node_id,
            "Server": server,
            "Revision": revision(),
            "Version": version,
            "BuildDate": "",
        },
        "DebugConfig": {
            "Datacenter": agent.datacenter,
            "NodeName": agent.node_name,
            "NodeID": agent.node_id,
            "ServerMode": server,
            "DevMode": config.dev,
            "ClientAddrs": config.client_addr.split(),
            "AdvertiseAddrLAN": agent.advertise_addr or config.advertise_addr or config.bind_addr,
            "DNSDomain": config.domain,
            "HTTPPort": config.ports.http,
            "DNSPort": config.ports.dns,
            "DataDir": config.data_dir,
            "EnableLocalScriptChecks": config.enable_local_script_checks,
            "EnableScriptChecks": config.enable_script_checks,
        },
        "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
        "Member": member,
        "Stats": stats,
        "Meta": dict(config.node_meta),
    }


def member_json(member: Member) -> dict[str, Any]:
    """A gossip member in /v1/agent/members' shape (Serf's status number, memberlist's six versions)."""
    v = member.vsn
    return {"Name": member.name, "Addr": member.addr, "Port": member.port, "Tags": dict(member.tags),
            "Status": int(member.status), "ProtocolMin": v[0], "ProtocolMax": v[1], "ProtocolCur": v[2],
            "DelegateMin": v[3], "DelegateMax": v[4], "DelegateCur": v[5]}


def raft_configuration_json(index: int, servers: list[RaftPeer]) -> dict[str, Any]:
    """/v1/operator/raft/configuration: the servers of the configuration in effect and its index."""
    return {"Servers": [{"ID": s.id, "Node": s.node, "Address": s.address, "Leader": s.leader, "Voter": s.voter,
                         "ProtocolVersion": "3"} for s in servers], "Index": index}


def keyring_json(result: KeyQueryResult) -> dict[str, Any]:
    """One pool's entry of /v1/operator/keyring (Consul's KeyringResponse)."""
    return {"WAN": False, "Datacenter": result.datacenter, "Segment": "", "Messages": result.messages,
            "Keys": result.keys, "PrimaryKeys": result.primary_keys, "NumNodes": result.num_nodes,
            "NumResp": result.num_resp, "NumErr": result.num_err}
