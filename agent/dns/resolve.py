"""Answering one DNS question from the catalog: name forms, health filtering, SRV/A/AAAA/TXT/SOA records."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..catalog import CRITICAL, WARNING, Catalog, Instance
from ..config.types import AgentConfig

A, AAAA, SRV, TXT, ANY, SOA, NS, CNAME = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV,
                                         dns.rdatatype.TXT, dns.rdatatype.ANY, dns.rdatatype.SOA,
                                         dns.rdatatype.NS, dns.rdatatype.CNAME)


class OutsideDomain(Exception):
    """The question is not under our domain (recursors or REFUSED decide)."""


@dataclass(slots=True)
class Answer:
    """Records for one question, before size limits; `shufflable` marks answers whose order is free."""

    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    shufflable: bool = False


def _ip_kind(address: str) -> int | None:
    try:
        return A if ipaddress.ip_address(address).version == 4 else AAAA
    except ValueError:
        return None


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

    def soa(self) -> dns.rrset.RRset:
        """The SOA record for our domain (Authority of negative answers)."""
        d = self.config.dns_config
        text = (f"ns.{self.domain} hostmaster.{self.domain} {self.catalog_ref.catalog.last_index} "
                f"{d.soa_refresh} {d.soa_retry} {d.soa_expire} {d.soa_min_ttl}")
        return dns.rrset.from_text(self.domain, d.soa_min_ttl, "IN", "SOA", text)

    def _negative(self, rcode: int) -> Answer:
        return Answer(rcode=rcode, authority=[self.soa()])

    def resolve(self, qname: dns.name.Name, qtype: int) -> Answer:
        """Records for a question under our domain; raises OutsideDomain otherwise."""
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
        elif len(labels) >= 3 and labels[-2] in ("service", "node", "addr"):
            dc, labels = labels[-1], labels[:-1]  # legacy <svc>.service.<dc>.<domain>
        if dc != self.dc:
            return self._negative(dns.rcode.NXDOMAIN)  # no WAN federation yet: other DCs are unknown
        kind, parts = labels[-1], labels[:-1]
        if kind == "service" and parts:
            return self._service(qname, qtype, parts)
        if kind.startswith("_") and len(labels) == 2 and labels[0].startswith("_"):
            return self._service(qname, qtype, labels)  # _svc._tag.<domain>
        if kind == "node" and len(parts) == 1:
            return self._node(qname, qtype, parts[0])
        if kind == "addr" and len(parts) == 1:
            return self._addr(qname, qtype, parts[0])
        return self._negative(dns.rcode.NXDOMAIN)

    def _healthy(self, instances: list[Instance]) -> list[Instance]:
        drop = {CRITICAL, WARNING} if self.config.dns_config.only_passing else {CRITICAL}
        return [i for i in instances if i.status not in drop]

    def _service_ttl(self, name: str) -> int:
        ttls = self.config.dns_config.service_ttl
        return int(ttls.get(name, ttls.get("*", 0.0)))

    def _service(self, qname: dns.name.Name, qtype: int, parts: list[str]) -> Answer:
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
        catalog = self.catalog_ref.catalog
        instances = self._healthy(catalog.service_instances(name, tag))
        if not instances:
            return self._negative(dns.rcode.NXDOMAIN)
        ttl = self._service_ttl(name)
        out = Answer(shufflable=True)
        if qtype == SRV:
            for inst in instances:
                out.answer.append(self._srv(qname, inst, ttl, out))
        elif qtype in (A, AAAA, ANY):
            for inst in instances:
                address = inst.service.address or inst.node.address
                kind = _ip_kind(address)
                if kind is None:
                    out.answer.append(dns.rrset.from_text(qname, ttl, "IN", "CNAME", address.rstrip(".") + "."))
                elif qtype in (kind, ANY):
                    out.answer.append(dns.rrset.from_text(qname, ttl, "IN", dns.rdatatype.to_text(kind), address))
            limit = self.config.dns_config.a_record_limit
            if limit:
                random.shuffle(out.answer)
                out.answer = out.answer[:limit]
        if not out.answer:
            return self._negative(dns.rcode.NOERROR)  # NODATA: the name exists, not this type
        return out

    def _srv(self, qname: dns.name.Name, inst: Instance, ttl: int, out: Answer) -> dns.rrset.RRset:
        weights = inst.service.weights or {}
        weight = int(weights.get("Warning" if inst.status == WARNING else "Passing", 1))
        svc_addr = inst.service.address
        if svc_addr and _ip_kind(svc_addr) is not None:
            target = f"{hex_address(svc_addr)}.addr.{self.dc}.{self.domain}"
            address = svc_addr
        elif svc_addr:
            target, address = svc_addr.rstrip(".") + ".", ""
        else:
            target = f"{inst.node.node}.node.{self.dc}.{self.domain}"
            address = inst.node.address
        kind = _ip_kind(address) if address else None
        if kind is not None:
            out.additional.append(dns.rrset.from_text(target, ttl, "IN", dns.rdatatype.to_text(kind), address))
        return dns.rrset.from_text(qname, ttl, "IN", "SRV", f"1 {weight} {inst.service.port} {target}")

    def _node(self, qname: dns.name.Name, qtype: int, name: str) -> Answer:
        node = self.catalog_ref.catalog.node(name)
        if node is None:
            return self._negative(dns.rcode.NXDOMAIN)
        ttl = int(self.config.dns_config.node_ttl)
        out = Answer()
        kind = _ip_kind(node.address)
        if kind is not None and qtype in (kind, ANY):
            out.answer.append(dns.rrset.from_text(qname, ttl, "IN", dns.rdatatype.to_text(kind), node.address))
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
        return Answer(answer=[dns.rrset.from_text(qname, 0, "IN", dns.rdatatype.to_text(kind or A), address)])


class CatalogRef:
    """Indirection so the resolver always reads the store's current catalog object."""

    def __init__(self, get: object) -> None:
        self._get = get

    @property
    def catalog(self) -> Catalog:
        """The live catalog."""
        return self._get.catalog  # type: ignore[attr-defined,no-any-return]


def build_response(query: dns.message.Message, ans: Answer, max_size: int, recursion: bool) -> tuple[bytes, bool]:
    """Wire bytes for an answer, cut to max_size (TC set when anything was cut); returns (wire, truncated)."""
    answers, additional = list(ans.answer), list(ans.additional)
    truncated = False
    while True:
        resp = dns.message.make_response(query, recursion_available=recursion)
        resp.flags |= dns.flags.AA
        resp.set_rcode(ans.rcode)
        resp.answer = answers
        resp.authority = list(ans.authority)
        resp.additional = additional
        if truncated:
            resp.flags |= dns.flags.TC
        try:
            return resp.to_wire(max_size=max_size), truncated
        except dns.exception.TooBig:
            truncated = True
            if additional:
                additional = additional[: len(additional) // 2] if len(additional) > 1 else []
            elif answers:
                answers = answers[: len(answers) - 1]
            else:
                resp.authority = []
                return resp.to_wire(max_size=max_size), True
