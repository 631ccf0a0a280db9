"""A compiled discovery chain as Consul's JSON (`structs.CompiledDiscoveryChain` as its HTTP API prints it),
pure. Field names, omissions and value types follow Consul's: a resolver's ConnectTimeout and a target's are Go
duration strings ("5s"), a resolver's RequestTimeout is nanoseconds (Consul marshals that one as a number),
empty optional fields are left out as Go's `omitempty` leaves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain_model import ChainNode, ChainTargetSpec, CompiledChain

_HASH_POLICIES = ("ring_hash", "maglev")


def go_duration(ms: int) -> str:
    """Milliseconds as Go's `time.Duration.String()` prints them: "5s", "1.5s", "1m30s", "500ms", "1h0m0s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    frac = f".{millis:03d}".rstrip("0") if millis else ""
    return f"{out}{seconds}{frac}s"


def chain_json(chain: CompiledChain) -> dict[str, Any]:
    """The chain's `Chain` object."""
    out: dict[str, Any] = {"ServiceName": chain.service_name, "Namespace": "default", "Partition": "default",
                           "Datacenter": chain.datacenter}
    if chain.customization_hash:
        out["CustomizationHash"] = chain.customization_hash
    if chain.default:
        out["Default"] = True
    out["Protocol"] = chain.protocol
    if chain.service_meta:
        out["ServiceMeta"] = dict(chain.service_meta)
    out["StartNode"] = chain.start_node
    out["Nodes"] = {key: _node(node, chain) for key, node in sorted(chain.nodes.items())}
    out["Targets"] = {tid: _target(t) for tid, t in sorted(chain.targets.items())}
    return out


def _node(node: ChainNode, chain: CompiledChain) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": node.type, "Name": node.name}
    if node.routes:
        out["Routes"] = [{"Definition": dict(r.definition), "NextNode": r.next_node} for r in node.routes]
    if node.splits:
        out["Splits"] = [{"Definition": dict(s.definition), "Weight": s.weight, "NextNode": s.next_node}
                         for s in node.splits]
        # Consul: a splitter carries the first hash-based load balancer among the resolvers it leads to.
        for split in node.splits:
            nxt = chain.nodes.get(split.next_node)
            lb = nxt.resolver.load_balancer if nxt is not None and nxt.resolver is not None else None
            if lb and lb.get("Policy") in _HASH_POLICIES:
                out["LoadBalancer"] = dict(lb)
                break
    if node.resolver is not None:
        r = node.resolver
        resolver: dict[str, Any] = {}
        if r.default:
            resolver["Default"] = True
        resolver["ConnectTimeout"] = go_duration(r.connect_timeout_ms)
        if r.request_timeout_ms:
            resolver["RequestTimeout"] = r.request_timeout_ms * 1_000_000
        resolver["Target"] = r.target
        if r.failover:
            resolver["Failover"] = {"Targets": list(r.failover)}
        out["Resolver"] = resolver
        if r.load_balancer:
            out["LoadBalancer"] = dict(r.load_balancer)
    return out


def _target(t: ChainTargetSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": t.id, "Service": t.service}
    if t.service_subset:
        out["ServiceSubset"] = t.service_subset
    out.update({"Namespace": t.namespace, "Partition": t.partition, "Datacenter": t.datacenter,
                "MeshGateway": {"Mode": t.mesh_gateway} if t.mesh_gateway else {}})
    subset: dict[str, Any] = {}
    if t.filter:
        subset["Filter"] = t.filter
    if t.only_passing:
        subset["OnlyPassing"] = True
    out["Subset"] = subset
    out["TransparentProxy"] = {}
    out["ConnectTimeout"] = go_duration(t.connect_timeout_ms)
    if t.external:
        out["External"] = True
    out["SNI"] = t.sni
    out["Name"] = t.name or t.sni
    return out


__all__ = ["chain_json", "go_duration"]
