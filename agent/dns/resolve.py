"""Answering one DNS question from the catalog: name forms, health filtering, SRV/A/AAAA/TXT/SOA records."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import dns.exception
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..acl.authorizer import Authorizer
from ..catalog import CRITICAL, WARNING, Catalog, Instance, Node, Service
from ..config.types import AgentConfig

A, AAAA, SRV, TXT, ANY, SOA, NS, CNAME = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV,
                                         dns.rdatatype.TXT, dns.rdatatype.ANY, dns.rdatatype.SOA,
                                         dns.rdatatype.NS, dns.rdatatype.CNAME)


_KINDS = ("service", "connect", "node", "addr")  # the labels that name a lookup's kind
ROWS_MAX = 200_000  # endpoints kept per resolver (each holds its node and service rows)


class OutsideDomain(Exception):
    """The question is not under our domain (recursors or REFUSED decide)."""


class Endpoint(NamedTuple):
    """One healthy instance as DNS serves it: plain values copied off the catalog, so rendering needs no
    catalog (and may run off the event loop). `address` is an IP when `kind` is A/AAAA, else a hostname."""

    target: bytes  # SRV target in wire form (uncompressed, absolute)
    address: str
    kind: int | None
    port: int
    weight: int


@dataclass(slots=True)
class Answer:
    """Records for one question, before size limits; `shufflable` marks answers whose order is free.

    Service answers carry `endpoints` (rendered as `rdtype` records under `qname`, at most `limit` of them
    when limit > 0, Consul's a_record_limit) instead of prebuilt RRsets: building a dnspython RRset costs
    ~150 us, so a 1,000-instance answer is written straight to the wire, and only as far as it fits.
    """

    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    shufflable: bool = False
    endpoints: Sequence[Endpoint] = ()
    rdtype: int = 0
    ttl: int = 0
    limit: int = 0


@functools.lru_cache(maxsize=65536)  # addresses repeat across queries; ipaddress parsing costs ~20 us
def _ip_kind(address: str) -> int | None:
    try:
        return A if ipaddress.ip_address(address).version == 4 else AAAA
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def name_wire(text: str) -> bytes:
    """An absolute name's uncompressed wire form; plain LDH labels skip dnspython's (slower) parser."""
    labels = text.rstrip(".").split(".")
    raw = [label.encode("ascii", "strict") if label.isascii() else b"" for label in labels]
    if all(0 < len(label) < 64 for label in raw) and sum(len(r) + 1 for r in raw) < 255:
        return b"".join(bytes([len(label)]) + label for label in raw) + b"\0"
    return dns.name.from_text(text.rstrip(".") + ".").to_wire() or b""


def hex_address(address: str) -> str:
    """An IP as Consul's `.addr.` label: 8 hex chars for IPv4, 32 for IPv6."""
    return ipaddress.ip_address(address).packed.hex()


class Resolver:
    """Turns (qname, qtype) into records; reads the catalog, never writes."""

    def __init__(self, config: AgentConfig, catalog_ref: CatalogRef) -> None:
        self.config = config
        self.catalog_ref = catalog_ref
        self.domain = dns.name.from_text(config.domain or "mesh.")
        self.dc = config.datacenter.lower()
        self._domain_text = self.domain.to_text()
        # healthy endpoints per (service, tag, SRV?, only_passing) at one catalog index: distinct packets
        # for one name (DNS 0x20 case, EDNS sizes) resolve once per catalog change
        self._memo: dict[tuple[str, str | None, bool, bool, bool, str], tuple[Endpoint, ...]] = {}
        self._memo_at: tuple[int, int] = (-1, -1)
        # endpoint per catalog row (node, service objects, health): a catalog change re-resolves a
        # 1,000-instance service without rebuilding 1,000 endpoints
        self._rows: dict[tuple[int, int, str, bool], tuple[Node, Service, Endpoint | None]] = {}

    def soa(self) -> dns.rrset.RRset:
        """The SOA record for our domain (Authority of negative answers)."""
        d = self.config.dns_config
        text = (f"ns.{self.domain} hostmaster.{self.domain} {self.catalog_ref.catalog.last_index} "
                f"{d.soa_refresh} {d.soa_retry} {d.soa_expire} {d.soa_min_ttl}")
        return dns.rrset.from_text(self.domain, d.soa_min_ttl, "IN", "SOA", text)

    def _negative(self, rcode: int) -> Answer:
        return Answer(rcode=rcode, authority=[self.soa()])

    def resolve(self, qname: dns.name.Name, qtype: int, authz: Authorizer | None = None,
                acl_key: str = "") -> Answer:
        """Records for a question under our domain; raises OutsideDomain otherwise. With `authz` (ACLs on:
        the agent's default token, whose decisions `acl_key` names) what it may not read does not exist."""
        lowered = qname.canonicalize()
        if not lowered.is_subdomain(self.domain):
            raise OutsideDomain(str(qname))
        labels = [label.decode(errors="replace") for label in lowered.relativize(self.domain).labels]
        if lowered == self.domain:
            if qtype in (SOA, ANY):
                return Answer(answer=[self.soa()])
            if qtype == NS:
                return Answer(answer=[dns.rrset.from_text(self.domain, 0, "IN", "NS", f"ns.{self.domain}")])
            return self._negative(dns.rcode.NOERROR)
        dc = self.dc
        if len(labels) >= 3 and labels[-1] == "dc":
            dc, labels = labels[-2], labels[:-2]
        elif len(labels) >= 3 and labels[-2] in _KINDS and labels[-1] not in _KINDS:
            # legacy <svc>.service.<dc>.<domain>; the rightmost kind label wins, as in Consul, so a
            # tagged lookup of a service named "connect" (`v1.connect.service`) stays a service lookup
            dc, labels = labels[-1], labels[:-1]
        if dc != self.dc:
            return self._negative(dns.rcode.NXDOMAIN)  # no WAN federation yet: other DCs are unknown
        kind, parts = labels[-1], labels[:-1]
        if kind == "service" and parts:
            return self._service(qname, qtype, parts, False, authz, acl_key)
        if kind == "connect" and len(parts) == 1:
            return self._service(qname, qtype, parts, True, authz, acl_key)  # no tags, as in Consul
        if kind.startswith("_") and len(labels) == 2 and labels[0].startswith("_"):
            return self._service(qname, qtype, labels, False, authz, acl_key)  # _svc._tag.<domain>
        if kind == "node" and len(parts) == 1:
            if authz is not None and not authz.node_read(parts[0]).allowed:
                return self._negative(dns.rcode.NXDOMAIN)  # as Consul: a node we may not read does not exist
            return self._node(qname, qtype, parts[0])
        if kind == "addr" and len(parts) == 1:
            return self._addr(qname, qtype, parts[0])
        return self._negative(dns.rcode.NXDOMAIN)

    def _endpoints(self, name: str, tag: str | None, srv: bool, connect: bool = False,
                   authz: Authorizer | None = None, acl_key: str = "") -> tuple[Endpoint, ...]:
        """Healthy instances (with `connect`, the service's healthy sidecars and Connect-native instances) as
        endpoints (empty: none healthy), memoized until the catalog moves. With `authz`, only instances whose
        service it may read, memoized per `acl_key`."""
        catalog = self.catalog_ref.catalog
        at = (id(catalog), catalog.last_index)
        if at != self._memo_at or len(self._memo) >= 1024:
            self._memo.clear()
            self._memo_at = at
        only_passing = self.config.dns_config.only_passing
        key = (name.lower(), tag.lower() if tag is not None else None, srv, only_passing, connect, acl_key)
        found = self._memo.get(key)
        if found is None:
            drop = (CRITICAL, WARNING) if only_passing else (CRITICAL,)
            rows = self._rows
            if len(rows) > ROWS_MAX:
                rows.clear()
            out = []
            instances = catalog.connect_instances(name, tag) if connect else catalog.service_instances(name, tag)
            for inst in instances:
                status = inst.status
                if status in drop:
                    continue
                # service:read is enough (issue 15's acceptance: DNS works with an anonymous policy granting
                # `service_prefix "" read` alone); Consul also wants node:read on each instance's node, the
                # step its users most often miss. The HTTP health endpoints keep Consul's node:read filter.
                if authz is not None and not authz.service_read(inst.service.service).allowed:
                    continue
                # the catalog replaces rows on change, never edits them: same objects, same endpoint
                row = rows.get((id(inst.node), id(inst.service), status, srv))
                if row is None or row[0] is not inst.node or row[1] is not inst.service:
                    row = (inst.node, inst.service, self._endpoint(inst, status, srv))
                    rows[(id(inst.node), id(inst.service), status, srv)] = row
                if row[2] is not None:
                    out.append(row[2])
            found = self._memo[key] = tuple(out)
        return found

    def _service_ttl(self, name: str) -> int:
        ttls = self.config.dns_config.service_ttl
        return int(ttls.get(name, ttls.get("*", 0.0)))

    def _service(self, qname: dns.name.Name, qtype: int, parts: list[str], connect: bool = False,
                 authz: Authorizer | None = None, acl_key: str = "") -> Answer:
        tag: str | None = None
        if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
            name, proto = parts[0][1:], parts[1][1:]
            tag = None if proto == "tcp" else proto  # RFC 2782: _tcp means "no tag filter"
        elif len(parts) == 1:
            name = parts[0]
        elif len(parts) == 2:
            tag, name = parts
        else:
            return self._negative(dns.rcode.NXDOMAIN)
        if authz is not None and not authz.service_read(name).allowed:
            return self._negative(dns.rcode.NXDOMAIN)  # as Consul: a service we may not read does not exist
        healthy = self._endpoints(name, tag, qtype == SRV, connect, authz, acl_key)
        if not healthy:
            return self._negative(dns.rcode.NXDOMAIN)
        ttl = self._service_ttl(name)
        endpoints: Sequence[Endpoint] = ()
        if qtype in (SRV, ANY):
            endpoints = healthy
        elif qtype in (A, AAAA):
            # a hostname address is served as a CNAME whatever address type was asked
            endpoints = [ep for ep in healthy if ep.kind is None or ep.kind == qtype]
        if not endpoints:
            return self._negative(dns.rcode.NOERROR)  # NODATA: the name exists, not this type
        limit = self.config.dns_config.a_record_limit if qtype != SRV else 0
        return Answer(shufflable=True, endpoints=endpoints, rdtype=qtype, ttl=ttl, limit=max(0, limit))

    def _endpoint(self, inst: Instance, status: str, srv: bool) -> Endpoint | None:
        """The instance's DNS values; None when its target cannot be a DNS name (it is left out)."""
        weights = inst.service.weights or {}
        weight = int(weights.get("Warning" if status == WARNING else "Passing", 1))
        svc_addr = inst.service.address
        if not srv:
            address = svc_addr or inst.node.address
            return Endpoint(b"", address, _ip_kind(address), 0, 0)
        if svc_addr and _ip_kind(svc_addr) is not None:
            target, address = f"{hex_address(svc_addr)}.addr.{self.dc}.{self._domain_text}", svc_addr
        elif svc_addr:
            target, address = svc_addr.rstrip(".") + ".", svc_addr
        else:
            target, address = f"{inst.node.node}.node.{self.dc}.{self._domain_text}", inst.node.address
        try:
            wire = name_wire(target)
        except (dns.exception.DNSException, UnicodeError):
            return None
        return Endpoint(wire, address, _ip_kind(address), max(0, min(inst.service.port, 65535)),
                        max(0, min(weight, 65535)))

    def _node(self, qname: dns.name.Name, qtype: int, name: str) -> Answer:
        node = self.catalog_ref.catalog.node(name)
        if node is None:
            return self._negative(dns.rcode.NXDOMAIN)
        ttl = int(self.config.dns_config.node_ttl)
        out = Answer()
        kind = _ip_kind(node.address)
        if kind is not None and qtype in (kind, ANY):
            out.answer.append(dns.rrset.from_text(qname, ttl, "IN", dns.rdatatype.RdataType.make(kind), node.address))
        if qtype in (TXT, ANY) and node.meta:
            texts = [(v if k.startswith("rfc1035-") else f"{k}={v}") for k, v in sorted(node.meta.items())]
            out.answer.append(dns.rrset.from_text_list(qname, ttl, "IN", "TXT",
                                                       ['"' + t.replace('"', '\\"') + '"' for t in texts]))
        if not out.answer:
            return self._negative(dns.rcode.NOERROR)
        return out

    def _addr(self, qname: dns.name.Name, qtype: int, label: str) -> Answer:
        try:
            packed = bytes.fromhex(label)
            address = str(ipaddress.ip_address(packed))
        except ValueError:
            return self._negative(dns.rcode.NXDOMAIN)
        kind = _ip_kind(address)
        if qtype not in (kind, ANY):
            return self._negative(dns.rcode.NOERROR)
        return Answer(answer=[dns.rrset.from_text(qname, 0, "IN", dns.rdatatype.RdataType.make(kind or A), address)])


class CatalogRef:
    """Indirection so the resolver always reads the store's current catalog object."""

    def __init__(self, get: object) -> None:
        self._get = get

    @property
    def catalog(self) -> Catalog:
        """The live catalog."""
        return self._get.catalog  # type: ignore[attr-defined,no-any-return]
