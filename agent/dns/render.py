"""Answers to wire bytes within a size limit, in one pass: each record is added only if it still fits.

The old way (drop one record, re-encode everything) was quadratic in the record count: a 1,000-instance
SRV answer took 10-28 s on the event loop. Service answers are written straight to the wire (a dnspython
RRset costs ~150 us to build, a hand-written SRV ~3 us), each record's additional address counted against
the limit as the record goes in, so an answer never keeps an SRV whose address did not fit.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.renderer

from .resolve import AAAA, SRV, Answer, Endpoint, name_wire

PLAIN_UDP_MAX = 512  # RFC 1035 UDP limit, for queries without EDNS
TCP_MAX = 65535
MAX_UDP_PAYLOAD = 4096  # the most an EDNS client gets over UDP, whatever it advertises (bounds amplification)
UDP_RECORD_CAP = 8  # Consul's maxUDPAnswerLimit: udp_answer_limit never goes above it

_CNAME = 5
_QNAME_PTR = b"\xc0\x0c"  # every answer's owner is the question name, at offset 12
_OPT = b"\x00" + struct.pack("!HHIH", 41, MAX_UDP_PAYLOAD, 0, 0)  # our EDNS0 OPT: root, no options


def size_limit(query: dns.message.Message, tcp: bool) -> int:
    """Bytes an answer to this query may take: 64 KiB over TCP; over UDP the client's EDNS size, at least
    512 and at most MAX_UDP_PAYLOAD."""
    if tcp:
        return TCP_MAX
    if query.edns < 0:
        return PLAIN_UDP_MAX
    return max(PLAIN_UDP_MAX, min(int(query.payload), MAX_UDP_PAYLOAD))


def udp_count_limit(max_size: int, udp_answer_limit: int) -> int:
    """Consul's record cap for a 512-byte UDP answer (min(8, udp_answer_limit)); 0 (none) otherwise."""
    if max_size != PLAIN_UDP_MAX:
        return 0
    return min(UDP_RECORD_CAP, udp_answer_limit) if udp_answer_limit > 0 else UDP_RECORD_CAP


def badvers(query: dns.message.Message) -> bytes:
    """RFC 6891 6.1.3: a query with an EDNS version we do not implement gets BADVERS, with our version 0."""
    resp = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
    resp.use_edns(0, 0, MAX_UDP_PAYLOAD)
    resp.set_rcode(dns.rcode.BADVERS)
    return bytes(resp.to_wire(max_size=PLAIN_UDP_MAX))


def render(query: dns.message.Message, ans: Answer, max_size: int, *, recursion: bool, count_limit: int = 0,
           set_tc: bool = True, shuffle: bool = False, rng: random.Random | None = None) -> tuple[bytes, bool]:
    """Wire bytes for `ans` in at most max_size bytes and at most count_limit answers (0: no cap);
    returns (wire, truncated). TC is set on a truncated answer when set_tc (Consul's enable_truncate)."""
    if ans.endpoints:
        return _render_endpoints(query, ans, max_size, recursion, count_limit, set_tc,
                                 _order(ans.endpoints, rng or random.Random()) if shuffle else iter(ans.endpoints))
    return _render_records(query, ans, max_size, recursion, count_limit, set_tc)


def _order(endpoints: Sequence[Endpoint], rng: random.Random) -> Iterator[Endpoint]:
    """A lazy Fisher-Yates shuffle: only as many draws as records fit."""
    pool = list(endpoints)
    n = len(pool)
    for i in range(n):
        j = rng.randrange(i, n)
        pool[i], pool[j] = pool[j], pool[i]
        yield pool[i]


def _packed(ep: Endpoint) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ep.kind == AAAA else socket.AF_INET, ep.address)


def _render_endpoints(query: dns.message.Message, ans: Answer, max_size: int, recursion: bool, count_limit: int,
                      set_tc: bool, order: Iterator[Endpoint]) -> tuple[bytes, bool]:
    question = query.question[0]
    out = bytearray(12)
    out += (question.name.to_wire() or b"") + struct.pack("!HH", question.rdtype, question.rdclass)
    opt = _OPT if query.edns >= 0 else b""
    budget = max_size - len(opt)
    extras: list[bytes] = []
    extra_len = 0
    seen: set[bytes] = set()
    count = 0
    truncated = False
    for ep in order:
        if ans.limit and count >= ans.limit:
            break  # a_record_limit is policy, not truncation: no TC
        if count_limit and count >= count_limit:
            truncated = True
            break
        extra = b""
        if ans.rdtype == SRV:
            rdata = struct.pack("!HHH", 1, ep.weight, ep.port) + ep.target
            rec = _QNAME_PTR + struct.pack("!HHIH", SRV, 1, ans.ttl, len(rdata)) + rdata
            if ep.kind is not None and ep.target not in seen:
                where = len(out) + 18  # the target's offset: owner 2 + type/class/ttl/len 10 + prio/weight/port 6
                owner = struct.pack("!H", 0xC000 | where) if where < 0x4000 else ep.target  # pointers are 14 bits
                packed = _packed(ep)
                extra = owner + struct.pack("!HHIH", ep.kind, 1, ans.ttl, len(packed)) + packed
        elif ep.kind is None:
            try:
                rdata = name_wire(ep.address)
            except (dns.exception.DNSException, UnicodeError):
                continue  # a hostname that is no DNS name: leave it out
            rec = _QNAME_PTR + struct.pack("!HHIH", _CNAME, 1, ans.ttl, len(rdata)) + rdata
        else:
            rdata = _packed(ep)
            rec = _QNAME_PTR + struct.pack("!HHIH", ep.kind, 1, ans.ttl, len(rdata)) + rdata
        if len(out) + len(rec) + extra_len + len(extra) > budget:
            truncated = True
            break
        out += rec
        count += 1
        if extra:
            extras.append(extra)
            extra_len += len(extra)
            seen.add(ep.target)
    for extra in extras:
        out += extra
    out += opt
    flags = (dns.flags.QR | dns.flags.AA | (query.flags & dns.flags.RD) | (dns.flags.RA if recursion else 0)
             | (dns.flags.TC if truncated and set_tc else 0))
    struct.pack_into("!HHHHHH", out, 0, query.id, flags, 1, count, 0, len(extras) + (1 if opt else 0))
    return bytes(out), truncated


def _render_records(query: dns.message.Message, ans: Answer, max_size: int, recursion: bool, count_limit: int,
                    set_tc: bool) -> tuple[bytes, bool]:
    """Prebuilt RRsets (node, addr, SOA, negative answers) through dnspython's renderer, which rolls back an
    RRset that does not fit; additional records are optional and never set TC (RFC 2181 9)."""
    resp = dns.message.make_response(query, recursion_available=recursion, our_payload=MAX_UDP_PAYLOAD)
    resp.flags |= dns.flags.AA
    resp.set_rcode(dns.rcode.Rcode.make(ans.rcode))
    r = dns.renderer.Renderer(resp.id, resp.flags, max_size)
    if resp.opt is not None:
        r.reserve(len(_OPT))
    for q in resp.question:
        r.add_question(q.name, q.rdtype, q.rdclass)
    truncated = False
    for section, rrsets in ((dns.renderer.ANSWER, ans.answer), (dns.renderer.AUTHORITY, ans.authority)):
        for i, rrset in enumerate(rrsets):
            if section == dns.renderer.ANSWER and count_limit and i >= count_limit:
                truncated = True
                break
            try:
                r.add_rrset(section, rrset)
            except dns.exception.TooBig:
                truncated = True
                break
        if truncated:
            break
    if not truncated:
        for rrset in ans.additional:
            try:
                r.add_rrset(dns.renderer.ADDITIONAL, rrset)
            except dns.exception.TooBig:
                break
    r.release_reserved()
    if resp.opt is not None:
        r.add_opt(resp.opt)
    if truncated and set_tc:
        r.flags |= dns.flags.TC
    r.write_header()
    return bytes(r.get_wire()), truncated
