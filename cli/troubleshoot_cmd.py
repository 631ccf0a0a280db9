"""`meshagent troubleshoot upstreams`: what a local sidecar does with each upstream's traffic right now.

Consul's `consul troubleshoot upstreams` asks Envoy's admin API; ours reads the agent: the sidecar's snapshot
(`/v1/agent/connect/proxy/:id`, the exact configuration its workers run) for routes, splits, targets and
endpoints, the compiled chain (`/v1/discovery-chain/:svc`) for each target's failover list, and the health API
to tell a target serving its own instances from one that took its failover's (docs/traffic-management.md).
The snapshot holds the sidecar's private key: nothing of its TLS material is ever printed.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click
import httpx

from .config_cmd import segment
from .connect_proxy_cmd import _services, resolve_proxy
from .http_client import AgentClient, error_text, fail, http_options

if TYPE_CHECKING:
    from ..proxy.snapshot import ChainRoute, ChainTarget, Endpoint, ProxySnapshot, RouteMatch, Upstream

MAX_SNAPSHOT_BODY = 64 * 1024 * 1024  # as proxy/http_feed.py: a snapshot with every list at its bound fits
MAX_SIDE_BODY = 8 * 1024 * 1024  # a discovery chain or one service's health entries
NO_ENDPOINTS = "(no healthy endpoints)"
MAX_FAILOVER_LOOKUPS = 16  # failover targets asked about per target: a chain may list up to hundreds
MAX_SIDE_LOOKUPS = 128  # distinct chains and health queries asked per run (each answer may be 8 MiB)
# Per client: answers already read (key -> answer). 256 upstreams x 256 targets sharing a few services asked
# the agent the same health query for each target, up to 17 times each (each answer up to 8 MiB).
_asked: weakref.WeakKeyDictionary[AgentClient, dict[tuple[str, ...], Any]] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------- reading the agent


def _get_bounded(client: AgentClient, path: str, limit: int,
                 params: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """(status, body up to `limit` bytes, error line) of one GET; a body over the limit is an error. Connection
    problems end the command naming the agent's address."""
    try:
        with client.http.stream("GET", path, params=params) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return resp.status_code, b"", f"the answer is larger than {limit // (1024 * 1024)} MiB"
                chunks.append(chunk)
            body = b"".join(chunks)
            status = resp.status_code
        # The agent's error line, bounded and on one line, as every CLI command shows it.
        return status, body, error_text(httpx.Response(status, content=body)) if status != 200 else ""
    except httpx.ConnectError:
        fail(f"Error querying agent: cannot connect to the agent at {client.addr} (connection refused). "
             f"Is the agent running?")
    except httpx.HTTPError as exc:
        fail(f"Error querying agent at {client.addr}: {type(exc).__name__}: {exc}")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def fetch_snapshot(client: AgentClient, proxy_id: str) -> ProxySnapshot:
    """The sidecar's current snapshot, checked as a worker would check it; exits naming any problem."""
    from ..proxy.snapshot import ProxyConfigError, ProxySnapshot

    what = f"Error reading the configuration of proxy {proxy_id!r}"
    status, body, problem = _get_bounded(client, f"/v1/agent/connect/proxy/{segment(proxy_id)}",
                                         MAX_SNAPSHOT_BODY)
    if status == 503:
        fail(f"{what}: the agent has not built it yet ({problem}); try again in a few seconds")
    if status != 200 or problem:
        fail(f"{what}: Unexpected response code: {status} ({problem})")
    raw = _json(body)
    if raw is None:
        fail(f"{what}: the agent's answer is not JSON")
    try:
        return ProxySnapshot.from_wire(raw)
    except ProxyConfigError as exc:
        fail(f"{what}: the agent's answer does not hold together: {exc}")


def _once(client: AgentClient, key: tuple[str, ...], ask: Callable[[], Any]) -> Any:
    """`ask()`'s answer, read once per client and key; None (unknown) past MAX_SIDE_LOOKUPS distinct keys."""
    asked = _asked.setdefault(client, {})
    if key not in asked:
        if len(asked) >= MAX_SIDE_LOOKUPS:
            return None
        asked[key] = ask()
    return asked[key]


def fetch_chain(client: AgentClient, service: str) -> Mapping[str, Any] | None:
    """The compiled chain (`Chain` of /v1/discovery-chain/:svc), or None when the agent has none to give."""
    found: Mapping[str, Any] | None = _once(client, ("chain", service), lambda: _fetch_chain(client, service))
    return found


def _fetch_chain(client: AgentClient, service: str) -> Mapping[str, Any] | None:
    status, body, _ = _get_bounded(client, f"/v1/discovery-chain/{segment(service)}", MAX_SIDE_BODY)
    data = _json(body) if status == 200 else None
    chain = data.get("Chain") if isinstance(data, dict) else None
    return chain if isinstance(chain, dict) else None


def healthy_instances(client: AgentClient, target: Mapping[str, Any]) -> int | None:
    """How many mesh instances a chain target has of its own (its subset's Filter and OnlyPassing, as the
    agent selects them), or None when the health API cannot say."""
    service = target.get("Service")
    raw_subset = target.get("Subset")
    subset: Mapping[str, Any] = raw_subset if isinstance(raw_subset, dict) else {}
    if not isinstance(service, str) or not service:
        return None
    params: dict[str, str] = {}
    filt = subset.get("Filter")
    if isinstance(filt, str) and filt:
        params["filter"] = filt
    only_passing = subset.get("OnlyPassing") is True
    if only_passing:
        params["passing"] = "1"
    found: int | None = _once(client, ("health", service, params.get("filter", ""), params.get("passing", "")),
                              lambda: _healthy(client, service, params))
    return found


def _healthy(client: AgentClient, service: str, params: dict[str, str]) -> int | None:
    status, body, _ = _get_bounded(client, f"/v1/health/connect/{segment(service)}", MAX_SIDE_BODY, params)
    entries = _json(body) if status == 200 else None
    if not isinstance(entries, list):
        return None
    # Without OnlyPassing, warning instances serve too (Consul's rule); a critical check takes one out.
    return sum(1 for e in entries if isinstance(e, dict) and isinstance(e.get("Checks"), list)
               and not any(isinstance(c, dict) and c.get("Status") == "critical" for c in e["Checks"]))


# ---------------------------------------------------------------------- what each target serves


def target_service(target_id: str) -> str:
    """The service of a Consul target ID `[subset.]service.namespace.partition.datacenter` (the data plane's
    parser), or the ID itself when it is not one."""
    from ..proxy.chain_router import target_service as parse  # lazy, like every proxy import of the CLI

    named = parse(target_id)
    return named[0] if named is not None else target_id


def _spiffe_services(spiffe_ids: tuple[str, ...]) -> set[str]:
    return {sid.rsplit("/svc/", 1)[1] for sid in spiffe_ids if "/svc/" in sid}


def _failover_list(chain: Mapping[str, Any] | None, target_id: str) -> list[str]:
    nodes = chain.get("Nodes") if chain else None
    node = nodes.get(f"resolver:{target_id}") if isinstance(nodes, dict) else None
    resolver = node.get("Resolver") if isinstance(node, dict) else None
    failover = resolver.get("Failover") if isinstance(resolver, dict) else None
    targets = failover.get("Targets") if isinstance(failover, dict) else None
    return [t for t in targets if isinstance(t, str) and t != target_id] if isinstance(targets, list) else []


def endpoints_of(client: AgentClient, chain: Mapping[str, Any] | None, target_id: str,
                 service: str, endpoints: tuple[Endpoint, ...], spiffe_ids: tuple[str, ...]) -> str:
    """Whose endpoints a target serves when not its own: a failover target ID or a service name; "" when
    its own (or when nothing says otherwise)."""
    if not endpoints:
        return ""
    named = _spiffe_services(spiffe_ids)
    if named and service not in named:  # the agent gave it another service's endpoints and identities
        return ", ".join(sorted(named))
    failover = _failover_list(chain, target_id)
    targets = chain.get("Targets") if chain else None
    if not failover or not isinstance(targets, dict) or not isinstance(targets.get(target_id), dict):
        return ""
    if healthy_instances(client, targets[target_id]) != 0:
        return ""
    for other in failover[:MAX_FAILOVER_LOOKUPS]:  # the first one with instances is the one the agent took
        spec = targets.get(other)
        if isinstance(spec, dict) and healthy_instances(client, spec):
            return other
    return failover[0]


# ---------------------------------------------------------------------- the report (plain data)


def _endpoint(ep: Endpoint) -> dict[str, Any]:
    return {"Address": ep.address, "Port": ep.port, "Node": ep.node, "ServiceID": ep.service_id,
            "Weight": ep.weight}


def describe_match(match: RouteMatch) -> str:
    """A route's match as one line: `PathPrefix /admin, Header x-canary = 1`; `*` for every request."""
    parts = []
    if match.path_exact is not None:
        parts.append(f"PathExact {match.path_exact}")
    if match.path_prefix is not None:
        parts.append(f"PathPrefix {match.path_prefix}")
    if match.path_regex is not None:
        parts.append(f"PathRegex {match.path_regex}")
    if match.case_insensitive:
        parts.append("CaseInsensitive")
    if match.methods:
        parts.append("Methods " + ",".join(match.methods))
    for h in match.headers:
        test = ("present" if h.present else f"= {h.exact}" if h.exact is not None else
                f"prefix {h.prefix}" if h.prefix is not None else f"suffix {h.suffix}" if h.suffix is not None
                else f"~ {h.regex}")
        parts.append(f"Header {h.name} {'not ' if h.invert else ''}{test}")
    for q in match.query:
        test = "present" if q.present else f"= {q.exact}" if q.exact is not None else f"~ {q.regex}"
        parts.append(f"Query {q.name} {test}")
    return ", ".join(parts) or "*"


def percent(weight: int) -> str:
    """Hundredths of a percent as text: 9000 -> "90%", 1 -> "0.01%"."""
    return f"{weight / 100:g}%"


def _route(route: ChainRoute) -> dict[str, Any]:
    overrides = {"PrefixRewrite": route.prefix_rewrite, "RequestTimeoutMs": route.request_timeout_ms or None,
                 "NumRetries": route.retries.num_retries if route.retries else None}
    return {"Name": route.name, "Match": describe_match(route.match),
            "MatchDefinition": {k: v for k, v in asdict(route.match).items() if v not in (None, (), [])},
            "Splits": [{"Target": s.target, "Weight": s.weight / 100} for s in route.splits],
            **{k: v for k, v in overrides.items() if v is not None}}


def _target(client: AgentClient, chain: Mapping[str, Any] | None, target: ChainTarget) -> dict[str, Any]:
    service = target_service(target.id)
    return {"ID": target.id, "Service": service,
            "ConnectTimeoutMs": target.connect_timeout_ms, "RequestTimeoutMs": target.request_timeout_ms,
            "LoadBalancer": target.load_balancer.policy or "default",
            "EndpointsOf": endpoints_of(client, chain, target.id, service, target.endpoints, target.spiffe_ids),
            "Endpoints": [_endpoint(ep) for ep in target.endpoints]}


def _flat_target(chain: Mapping[str, Any] | None) -> str:
    """The one target a flat upstream's chain resolves to (its start node or its only resolver), or ""."""
    nodes = chain.get("Nodes") if chain else None
    if not isinstance(nodes, dict):
        return ""
    resolvers = [n.get("Resolver") for n in nodes.values() if isinstance(n, dict) and n.get("Type") == "resolver"]
    if len(resolvers) == 1 and isinstance(resolvers[0], dict) and isinstance(resolvers[0].get("Target"), str):
        target: str = resolvers[0]["Target"]
        return target
    return ""


def upstream_report(client: AgentClient, up: Upstream) -> dict[str, Any]:
    """One upstream as plain data: its routes and targets, or (flat) its endpoints."""
    chain = fetch_chain(client, up.destination_name)
    report: dict[str, Any] = {
        "DestinationName": up.destination_name, "Protocol": up.protocol,
        "LocalBindAddress": up.local_bind_address, "LocalBindPort": up.local_bind_port,
        "Chain": None if chain is None else {"StartNode": chain.get("StartNode"), "Protocol": chain.get("Protocol")},
    }
    if up.routes:
        report["Routes"] = [_route(r) for r in up.routes]
        report["Targets"] = [_target(client, chain, t) for t in up.targets]
        return report
    target = _flat_target(chain)
    report["Target"] = target
    report["EndpointsOf"] = endpoints_of(client, chain, target, target_service(target) if target else
                                         up.destination_name, up.endpoints, up.spiffe_ids)
    report["Endpoints"] = [_endpoint(ep) for ep in up.endpoints]
    return report


def build_report(client: AgentClient, snap: ProxySnapshot) -> dict[str, Any]:
    """Everything the command prints, as JSON-ready data (no TLS material)."""
    _asked.pop(client, None)  # answers are read afresh for each report
    return {"ProxyID": snap.proxy_id, "Service": snap.service, "Datacenter": snap.datacenter,
            "Version": snap.version, "Upstreams": [upstream_report(client, up) for up in snap.upstreams]}


# ---------------------------------------------------------------------- text


def printable(text: str) -> str:
    """`text` without control characters (a header value in a router entry must not drive the terminal)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Aligned columns; the header bold (click strips the style when stdout is not a terminal)."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [click.style(line(header), bold=True), *(line(r) for r in rows)]


def _endpoint_rows(first: str, endpoints: list[dict[str, Any]], note: str) -> list[list[str]]:
    if not endpoints:
        return [[first, NO_ENDPOINTS, "", "", note]]
    return [[first if i == 0 else "", f"{ep['Address']}:{ep['Port']}", ep["Node"], ep["ServiceID"],
             note if i == 0 else ""] for i, ep in enumerate(endpoints)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _note(endpoints_of_: str) -> str:
    return f"failover: endpoints of {endpoints_of_}" if endpoints_of_ else ""


def render_text(report: dict[str, Any]) -> list[str]:
    """The report as lines for a person: per upstream, routes then targets with their endpoints."""
    lines = [printable(f"Proxy {report['ProxyID']} (service {report['Service']}, "
                       f"configuration version {report['Version']})")]
    if not report["Upstreams"]:
        lines.append("  no upstreams")
    for up in report["Upstreams"]:
        where = f"{up['LocalBindAddress']}:{up['LocalBindPort']}"
        lines.append("")
        if "Routes" in up:
            lines.append(printable(f"Upstream {up['DestinationName']} ({up['Protocol']}) on {where}: "
                                   f"{_count(len(up['Routes']), 'route')}, {_count(len(up['Targets']), 'target')}"))
            rows = []
            for route in up["Routes"]:
                extra = []
                if "PrefixRewrite" in route:
                    extra.append(f"rewrite to {route['PrefixRewrite']}")
                if "RequestTimeoutMs" in route:
                    extra.append(f"timeout {route['RequestTimeoutMs']} ms")
                if "NumRetries" in route:
                    extra.append(f"retries {route['NumRetries']}")
                splits = ", ".join(f"{s['Weight']:g}% {s['Target']}" for s in route["Splits"])
                rows.append([route["Name"], route["Match"], splits, "; ".join(extra)])
            lines += table(["ROUTE", "MATCH", "SPLITS", "OVERRIDES"], rows)
            rows = []
            for target in up["Targets"]:
                rows += _endpoint_rows(target["ID"], target["Endpoints"], _note(target["EndpointsOf"]))
            lines += table(["TARGET", "ENDPOINT", "NODE", "SERVICE ID", "NOTE"], rows)
        else:
            target = f", target {up['Target']}" if up.get("Target") else ""
            lines.append(printable(f"Upstream {up['DestinationName']} ({up['Protocol']}) on {where}: "
                                   f"{_count(len(up['Endpoints']), 'endpoint')}{target}"))
            rows = [r[1:] for r in _endpoint_rows("", up["Endpoints"], _note(up["EndpointsOf"]))]
            lines += table(["ENDPOINT", "NODE", "SERVICE ID", "NOTE"], rows)
    return lines


# ---------------------------------------------------------------------- commands


@click.group()
def troubleshoot() -> None:
    """Diagnose the service mesh from this agent's point of view."""


@troubleshoot.command("upstreams")
@click.option("-proxy-id", "--proxy-id", "proxy_id", default="", help="The sidecar proxy's own service ID.")
@click.option("-sidecar-for", "--sidecar-for", "sidecar_for", default="",
              help="The ID of the service whose sidecar to inspect.")
@click.option("-format", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="text (a table) or json.")
@http_options
def upstreams(proxy_id: str, sidecar_for: str, fmt: str, http_addr: str | None, token: str | None) -> None:
    """Print each upstream of a local sidecar: its routes, splits, targets and their current endpoints."""
    if bool(sidecar_for) == bool(proxy_id):
        fail("One of -sidecar-for or -proxy-id is required (not both)")
    client = AgentClient(http_addr, token)
    pid, _ = resolve_proxy(_services(client), sidecar_for, proxy_id)
    report = build_report(client, fetch_snapshot(client, pid))
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    for line in render_text(report):
        click.echo(line)
