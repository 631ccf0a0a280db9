"""A config entry checked in full before it is written: `normalize_entry` (one entry's fields and rules) and
`check_references` (rules across entries: routers and splitters need an HTTP protocol ...), pure.

The HTTP API, the CLI and `config_entries.bootstrap` all call `normalize_entry`; its result is the canonical
Consul JSON the catalog stores (CamelCase keys, `Kind` and `Name` first, no indexes). Input is hostile: every
problem is an EntryError naming the field's dotted path, never another exception.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .entry_schema import HTTP_PROTOCOLS, KIND_SPECS, FieldProblem, fold, join, kind_of
from .intentions import precedence

MAX_ENTRY_BYTES = 256 * 1024
Lookup = Callable[[str, str], "dict[str, Any] | None"]


class EntryError(ValueError):
    """A refused entry: `field` is the dotted path (`Routes[0].Match.HTTP.PathPrefix`), `problem` the reason;
    str() is "<Kind> <Name>: field <path>: <problem>"."""

    def __init__(self, kind: str, name: str, field: str, problem: str) -> None:
        super().__init__(f"{kind or 'config entry'} {name or '(no name)'}: field {field or '(entry)'}: {problem}")
        self.kind, self.name, self.field, self.problem = kind, name, field, problem


def normalize_entry(raw: Any) -> dict[str, Any]:
    """Check one entry (Consul JSON or HCL-style snake_case keys) and return its canonical form."""
    kind, name = _identity(raw)
    try:
        return _normalize(raw, kind)
    except FieldProblem as exc:
        raise EntryError(kind, name, exc.path, exc.problem) from None
    except RecursionError:
        raise EntryError(kind, name, "", "nested too deeply") from None


def check_references(entry: Mapping[str, Any], lookup: Lookup, stored: Stored | None = None) -> None:
    """Rules across entries, given a canonical entry and `lookup(kind, name)` of stored ones; raises EntryError.
    With `stored(kind)` (the stored entries of a kind) the chains of services that reach the entry's are
    re-compiled too (see check_chains)."""
    kind, name = str(entry.get("Kind", "")), str(entry.get("Name", ""))

    def need_http(service: str, field: str, what: str) -> None:
        proto = protocol_of(service, lookup)
        if proto not in HTTP_PROTOCOLS:
            raise EntryError(kind, name, field, f'{what} needs service "{service}" to use protocol http, http2 or '
                             f'grpc (set Protocol in its service-defaults), but it uses "{proto}"')

    if kind in ("service-router", "service-splitter"):
        need_http(name, "Name", f"a {kind}")
    if kind == "service-router":
        for i, route in enumerate(entry.get("Routes", [])):
            dest = route.get("Destination", {})
            target = dest.get("Service") or name
            if target != name:
                need_http(target, f"Routes[{i}].Destination.Service", "a route")
            _need_subset(entry, lookup, target, dest.get("ServiceSubset", ""), f"Routes[{i}].Destination.ServiceSubset")
    if kind == "service-splitter":
        for i, split in enumerate(entry.get("Splits", [])):
            target = split.get("Service") or name
            if target != name:
                need_http(target, f"Splits[{i}].Service", "a split")
            _need_subset(entry, lookup, target, split.get("ServiceSubset", ""), f"Splits[{i}].ServiceSubset")
    if kind == "service-intentions" and name != "*":
        for i, source in enumerate(entry.get("Sources", [])):
            if "Permissions" in source:
                need_http(name, f"Sources[{i}].Permissions", "an intention with L7 Permissions")
    if kind == "service-defaults" and entry.get("Protocol", "tcp") not in HTTP_PROTOCOLS:
        for other in ("service-router", "service-splitter"):
            if lookup(other, name) is not None:
                raise EntryError(kind, name, "Protocol", f'a {other} exists for "{name}", which needs protocol '
                                 "http, http2 or grpc")
        intentions = lookup("service-intentions", name) or {}
        if any("Permissions" in s for s in intentions.get("Sources", [])):
            raise EntryError(kind, name, "Protocol", f'intentions with L7 Permissions exist for "{name}", which '
                             "need protocol http, http2 or grpc")
    check_chains(entry, lookup, stored=stored)


CHAIN_KINDS = ("service-router", "service-splitter", "service-resolver", "service-defaults")
LINK_KINDS = ("service-router", "service-splitter", "service-resolver")  # entries that name other services
Stored = Callable[[str], "Iterable[Mapping[str, Any]]"]
MAX_CHECKED_CHAINS = 1024  # chains re-compiled per write (~0.1 ms each); past it the snapshot's check remains
_PLACEHOLDER_DC = "dc1"  # cycles and bounds do not depend on which datacenter compiles


def check_chains(entry: Mapping[str, Any], lookup: Lookup, *, partial: bool = False,
                 stored: Stored | None = None) -> None:
    """Compile every chain the entry's write touches (its own service's and those it names) with the entry in
    place; a redirect or splitter cycle, a chain past the bounds, a missing subset or mixed protocols is a
    ChainError (an EntryError) naming the written entry when it is on the cycle. With `stored`, also every
    chain that reaches the entry's service through stored routers, splitters and resolvers (Consul's
    validateProposedConfigEntryInGraph); its break names the written entry and the broken chain's field.
    `partial`: `lookup` holds only some entries (the agent config's bootstrap list): a service without
    service-defaults counts as http and only cycles and bounds are errors."""
    kind, name = str(entry.get("Kind", "")), str(entry.get("Name", ""))
    if kind not in (*CHAIN_KINDS, "proxy-defaults"):
        return

    def placed(k: str, n: str) -> dict[str, Any] | None:
        if (k, n) == (kind, name):
            return dict(entry)
        found = lookup(k, n)
        if found is None and partial and k == "service-defaults":
            return {"Kind": k, "Name": n, "Protocol": "http"}
        return found

    _check_graph(kind, name, placed, entry, partial, stored)


def check_delete(kind: str, name: str, lookup: Lookup, stored: Stored) -> None:
    """A delete's check: the chains that reach `name` must still compile without the entry; raises ChainError
    naming the deleted entry and the broken chain's field."""
    if kind not in (*CHAIN_KINDS, "proxy-defaults") or lookup(kind, name) is None:
        return

    def without(k: str, n: str) -> dict[str, Any] | None:
        return None if (k, n) == (kind, name) else lookup(k, n)

    _check_graph(kind, name, without, None, False, stored)


def _check_graph(kind: str, name: str, placed: Lookup, entry: Mapping[str, Any] | None, partial: bool,
                 stored: Stored | None) -> None:
    from .chain_compile import ChainError, compile_chain  # chain_compile imports this module

    own = [] if kind == "proxy-defaults" else [name, *sorted(named_services(entry or {}) - {name})]
    for service in own:
        try:
            compile_chain(service, placed, datacenter=_PLACEHOLDER_DC, trust_domain="validate")
        except ChainError as exc:
            if partial and exc.reason not in ("cycle", "bound"):
                continue
            raise exc.blame(kind, name) from None
    if stored is None:
        return
    for service in _reaching(kind, name, placed, stored, set(own)):
        try:
            compile_chain(service, placed, datacenter=_PLACEHOLDER_DC, trust_domain="validate")
        except ChainError as exc:
            blamed = exc.blame(kind, name)
            if blamed is not exc:
                raise blamed from None
            field = "Protocol" if exc.reason == "protocol" and kind == "service-defaults" else ""
            raise ChainError(kind, name, field, f'breaks the discovery chain of "{service}": {exc}', exc.involved,
                             exc.reason) from None


def _reaching(kind: str, name: str, placed: Lookup, stored: Stored, done: set[str]) -> list[str]:
    """Services (not in `done`) whose chains can reach `name` through routers, splitters and resolvers as
    they are with the change in place; every chain entry's service for a proxy-defaults change. Bounded."""
    referrers: dict[str, set[str]] = {}
    owners: set[str] = set()
    for k in LINK_KINDS:
        for stored_entry in stored(k):
            owner = str(stored_entry.get("Name", ""))
            current = placed(k, owner)  # the written entry in place of its stored self; None if deleted
            if current is None:
                continue
            owners.add(owner)
            for target in named_services(current):
                referrers.setdefault(target, set()).add(owner)
    written = placed(kind, name) if kind in LINK_KINDS else None
    if written is not None:  # a new entry is not among the stored ones yet
        for target in named_services(written):
            referrers.setdefault(target, set()).add(name)
    if kind == "proxy-defaults":
        return sorted(owners - done)[:MAX_CHECKED_CHAINS]
    out: list[str] = []
    seen, todo = {name}, [name]
    while todo and len(out) < MAX_CHECKED_CHAINS:
        for referrer in sorted(referrers.get(todo.pop(), ())):
            if referrer not in seen:
                seen.add(referrer)
                todo.append(referrer)
                if referrer not in done:
                    out.append(referrer)
    return out[:MAX_CHECKED_CHAINS]


def named_services(entry: Mapping[str, Any]) -> set[str]:
    """The services a router, splitter or resolver sends to (Consul's ListRelatedServices). The one definition
    for the HTTP check and the servers' re-check (agent/acl/command_rights.py), which reads raw commands: any
    shape is taken, what is not a service name is skipped, and every kind's fields are read (never fewer)."""
    out: set[str] = set()

    def add(target: object) -> None:
        if isinstance(target, Mapping) and isinstance(target.get("Service"), str) and target["Service"]:
            out.add(target["Service"])

    for route in _items(entry.get("Routes")):
        if isinstance(route, Mapping):
            add(route.get("Destination"))
    for split in _items(entry.get("Splits")):
        add(split)
    add(entry.get("Redirect"))
    failover = entry.get("Failover")
    for fo in failover.values() if isinstance(failover, Mapping) else ():
        add(fo)
        if isinstance(fo, Mapping):
            for target in _items(fo.get("Targets")):
                add(target)
    return out


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _need_subset(entry: Mapping[str, Any], lookup: Lookup, service: str, subset: str, field: str) -> None:
    """A route or split to a subset needs that subset in the service's resolver (Consul checks the chain)."""
    if not subset:
        return
    resolver = lookup("service-resolver", service) or {}
    if subset not in resolver.get("Subsets", {}):
        raise EntryError(str(entry.get("Kind", "")), str(entry.get("Name", "")), field,
                         f'service "{service}" has no subset "{subset}" (define it in its service-resolver)')


def protocol_of(service: str, lookup: Lookup) -> str:
    """A service's protocol: its service-defaults `Protocol`, else proxy-defaults global `Config.protocol`,
    else tcp."""
    defaults = lookup("service-defaults", service)
    if defaults and isinstance(defaults.get("Protocol"), str) and defaults["Protocol"]:
        return str(defaults["Protocol"])
    proxy = lookup("proxy-defaults", "global")
    config = proxy.get("Config") if proxy else None
    if isinstance(config, Mapping) and isinstance(config.get("protocol"), str) and config["protocol"]:
        return str(config["protocol"]).lower()
    return "tcp"


# ---------------------------------------------------------------------- one entry


def _identity(raw: Any) -> tuple[str, str]:
    """The entry's Kind and Name for error messages (checked properly later)."""
    kind = name = ""
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if isinstance(key, str) and isinstance(value, str):
                if fold(key) == "kind":
                    kind = value[:64]
                elif fold(key) == "name":
                    name = value[:256]
    return kind, name


def _normalize(raw: Any, kind: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise FieldProblem("", f"must be a map, got {kind_of(raw)}")
    try:
        size = len(json.dumps(raw, separators=(",", ":")))
    except (TypeError, ValueError):
        raise FieldProblem("", "is not JSON data") from None
    if size > MAX_ENTRY_BYTES:
        raise FieldProblem("", f"is larger than {MAX_ENTRY_BYTES // 1024} KiB")
    if not kind:
        raise FieldProblem("Kind", "is required (a string)")
    spec = KIND_SPECS.get(kind)
    if spec is None:
        raise FieldProblem("Kind", f"unknown kind {kind!r} (one of {', '.join(KIND_SPECS)})")
    body = spec.check(raw, "")
    body["Kind"] = kind  # the spec accepts any casing of the key; the value is the kind itself
    if body["Name"] == "*" and kind != "service-intentions":
        raise FieldProblem("Name", f'"*" is only a name for service-intentions, not {kind}')
    RULES[kind](body)
    return {"Kind": kind, "Name": body.pop("Name"), **{k: v for k, v in body.items() if k != "Kind"}}


def _proxy_defaults(e: dict[str, Any]) -> None:
    if e["Name"] != "global":
        raise FieldProblem("Name", f'must be "global" for proxy-defaults, got {e["Name"]!r}')
    proto = e.get("Config", {}).get("protocol")
    if proto is not None and (not isinstance(proto, str) or proto.lower() not in ("tcp", *HTTP_PROTOCOLS)):
        raise FieldProblem("Config.protocol", "must be one of 'tcp', 'http', 'http2', 'grpc'")
    _expose(e)


def _service_defaults(e: dict[str, Any]) -> None:
    _expose(e)
    names: set[str] = set()
    for i, o in enumerate(e.get("UpstreamConfig", {}).get("Overrides", [])):
        if o["Name"] in names:
            raise FieldProblem(f"UpstreamConfig.Overrides[{i}].Name", f"{o['Name']!r} is given more than once")
        names.add(o["Name"])


def _expose(e: dict[str, Any]) -> None:
    for i, p in enumerate(e.get("Expose", {}).get("Paths", [])):
        if p.get("Path") and not p["Path"].startswith("/"):
            raise FieldProblem(f"Expose.Paths[{i}].Path", "must begin with '/'")


def _intentions(e: dict[str, Any]) -> None:
    seen: set[tuple[str, str]] = set()
    for i, src in enumerate(e.get("Sources", [])):
        at = f"Sources[{i}]"
        ns = src.get("Namespace") or "default"
        if (ns, src["Name"]) in seen:
            raise FieldProblem(join(at, "Name"), f"source {src['Name']!r} is given more than once")
        seen.add((ns, src["Name"]))
        if ns == "*" and src["Name"] != "*":
            raise FieldProblem(join(at, "Name"), 'must be "*" when Namespace is "*"')
        if "Action" in src and "Permissions" in src:
            raise FieldProblem(join(at, "Permissions"), "cannot be set together with Action (use one)")
        if "Action" not in src and "Permissions" not in src:
            raise FieldProblem(join(at, "Action"), "is required (allow or deny) unless Permissions are set")
        if "Permissions" in src and not src["Permissions"]:
            raise FieldProblem(join(at, "Permissions"), "must not be empty")
        for j, perm in enumerate(src.get("Permissions", [])):
            http = perm.get("HTTP")
            where = f"{at}.Permissions[{j}].HTTP"
            if not http:
                raise FieldProblem(where, "is required: a permission matches on HTTP paths, methods or headers")
            _path_match(http, where)
            _headers(http.get("Header", []), f"{where}.Header")
            _unique(http.get("Methods", []), f"{where}.Methods")
        if src.get("LegacyID"):
            try:
                uuid.UUID(src["LegacyID"])
            except ValueError:
                raise FieldProblem(join(at, "LegacyID"), "must be a UUID") from None
        src.setdefault("Type", "consul")
        src["Precedence"] = precedence(ns, src["Name"], "default", e["Name"])


def _router(e: dict[str, Any]) -> None:
    for i, route in enumerate(e.get("Routes", [])):
        http = route.get("Match", {}).get("HTTP", {})
        where = f"Routes[{i}].Match.HTTP"
        _path_match(http, where)
        _headers(http.get("Header", []), f"{where}.Header")
        _unique(http.get("Methods", []), f"{where}.Methods")
        for j, q in enumerate(http.get("QueryParam", [])):
            given = [k for k in ("Present", "Exact", "Regex") if k in q and q[k] is not False]
            if len(given) != 1:
                raise FieldProblem(f"{where}.QueryParam[{j}]", "must set exactly one of Present, Exact or Regex")
        dest = route.get("Destination", {})
        if dest.get("PrefixRewrite") and not (http.get("PathPrefix") or http.get("PathExact")):
            raise FieldProblem(f"Routes[{i}].Destination.PrefixRewrite", "needs Match.HTTP.PathPrefix or PathExact")


def _splitter(e: dict[str, Any]) -> None:
    splits = e.get("Splits", [])
    if not splits:
        raise FieldProblem("Splits", "must have at least one split")
    total, seen = 0, set()
    for i, split in enumerate(splits):
        hundredths = round(split["Weight"] * 100)
        if abs(split["Weight"] * 100 - hundredths) > 1e-6:
            raise FieldProblem(f"Splits[{i}].Weight", "has a resolution of 0.01 at most")
        total += hundredths
        target = (split.get("Service") or e["Name"], split.get("ServiceSubset", ""))
        if target in seen:
            raise FieldProblem(f"Splits[{i}]", f"sends to {target[0]!r} subset {target[1]!r} more than once")
        seen.add(target)
    if total != 10000:
        raise FieldProblem("Splits", f"weights must add up to 100, they add up to {total / 100:g}")


def _resolver(e: dict[str, Any]) -> None:
    subsets = e.get("Subsets", {})
    if e.get("DefaultSubset") and e["DefaultSubset"] not in subsets:
        raise FieldProblem("DefaultSubset", f"{e['DefaultSubset']!r} is not one of the Subsets")
    redirect = e.get("Redirect")
    if redirect is not None:
        for other in ("Subsets", "DefaultSubset", "Failover"):
            if e.get(other):
                raise FieldProblem("Redirect", f"cannot be set together with {other}")
        if not any(redirect.values()):
            raise FieldProblem("Redirect", "must name a Service, ServiceSubset, Namespace or Datacenter")
        if (redirect.get("Service") or e["Name"]) == e["Name"] and not any(
                redirect.get(k) for k in ("ServiceSubset", "Datacenter", "Peer")):
            raise FieldProblem("Redirect.Service", "redirects the resolver to itself")
    for key, fo in e.get("Failover", {}).items():
        where = f"Failover.{key}"
        if key != "*" and key not in subsets:
            raise FieldProblem(where, f'{key!r} is neither "*" nor one of the Subsets')
        if not any(fo.get(k) for k in ("Service", "ServiceSubset", "Namespace", "Datacenters", "Targets")):
            raise FieldProblem(where, "must set Service, ServiceSubset, Namespace, Datacenters or Targets")
        if fo.get("Targets") and any(fo.get(k) for k in ("Service", "ServiceSubset", "Namespace", "Datacenters")):
            raise FieldProblem(join(where, "Targets"), "cannot be combined with Service, ServiceSubset, "
                               "Namespace or Datacenters")
    _load_balancer(e.get("LoadBalancer", {}))


def _load_balancer(lb: dict[str, Any]) -> None:
    policy = lb.get("Policy", "")
    if "RingHashConfig" in lb and policy != "ring_hash":
        raise FieldProblem("LoadBalancer.RingHashConfig", 'needs Policy "ring_hash"')
    ring = lb.get("RingHashConfig", {})
    if ring.get("MinimumRingSize") and ring.get("MaximumRingSize") and \
            ring["MinimumRingSize"] > ring["MaximumRingSize"]:
        raise FieldProblem("LoadBalancer.RingHashConfig.MinimumRingSize", "must not exceed MaximumRingSize")
    if "LeastRequestConfig" in lb and policy != "least_request":
        raise FieldProblem("LoadBalancer.LeastRequestConfig", 'needs Policy "least_request"')
    if lb.get("HashPolicies") and policy not in ("ring_hash", "maglev"):
        raise FieldProblem("LoadBalancer.HashPolicies", 'need Policy "ring_hash" or "maglev"')
    for i, hp in enumerate(lb.get("HashPolicies", [])):
        where = f"LoadBalancer.HashPolicies[{i}]"
        if hp.get("Field") and hp.get("SourceIP"):
            raise FieldProblem(join(where, "SourceIP"), "cannot be set together with Field")
        if not hp.get("Field") and not hp.get("SourceIP"):
            raise FieldProblem(join(where, "Field"), "is required unless SourceIP is true")
        if hp.get("Field") and not hp.get("FieldValue"):
            raise FieldProblem(join(where, "FieldValue"), "is required with Field")
        cookie = hp.get("CookieConfig")
        if cookie is not None and hp.get("Field") != "cookie":
            raise FieldProblem(join(where, "CookieConfig"), 'needs Field "cookie"')
        if cookie and cookie.get("Session") and cookie.get("TTL"):
            raise FieldProblem(join(where, "CookieConfig.TTL"), "cannot be set together with Session")


def _path_match(http: Mapping[str, Any], where: str) -> None:
    given = [k for k in http if k in ("PathExact", "PathPrefix", "PathRegex")]  # as written: name the later
    if len(given) > 1:
        raise FieldProblem(join(where, given[1]), f"cannot be set together with {given[0]} (one path match at most)")
    for key in ("PathExact", "PathPrefix"):
        if http.get(key) and not http[key].startswith("/"):
            raise FieldProblem(join(where, key), "must begin with '/'")


def _headers(headers: list[dict[str, Any]], where: str) -> None:
    for i, h in enumerate(headers):
        given = [k for k in ("Present", "Exact", "Prefix", "Suffix", "Regex") if k in h and h[k] is not False]
        if len(given) != 1:
            raise FieldProblem(f"{where}[{i}]", "must set exactly one of Present, Exact, Prefix, Suffix or Regex")


def _unique(values: list[Any], where: str) -> None:
    if len(set(values)) != len(values):
        raise FieldProblem(where, "has a value more than once")


RULES: dict[str, Callable[[dict[str, Any]], None]] = {
    "service-defaults": _service_defaults, "proxy-defaults": _proxy_defaults, "service-intentions": _intentions,
    "service-router": _router, "service-splitter": _splitter, "service-resolver": _resolver,
}
