"""SPIFFE IDs of services: `spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>`, parsed strictly.

A leaf certificate's only URI SAN is one of these, and the leader signs a CSR only when its ID parses here and
names this trust domain and datacenter, so the parser is the gate: it takes bytes from anyone (a CSR, a peer's
certificate) and accepts exactly the SPIFFE specification's form (lowercase trust domain of [a-z0-9.-_],
path segments of [a-zA-Z0-9.-_], none empty, "." or "..", at most 2,048 bytes) with Consul's service path.
Partitions (`/ap/<partition>`) and the agent and server ID forms are not part of this mesh yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048  # the SPIFFE specification's limit for a whole ID
DEFAULT_NAMESPACE = "default"

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeIDError(ValueError):
    """An ID that is not a service SPIFFE ID of this mesh; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class ServiceID:
    """A service's identity: trust domain, namespace, datacenter and service name."""

    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    def uri(self) -> str:
        """The ID as it appears in a certificate's URI SAN."""
        return (f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}"
                f"/svc/{self.service}")


def service_id(trust_domain: str, datacenter: str, service: str, namespace: str = DEFAULT_NAMESPACE) -> ServiceID:
    """A checked ServiceID (SpiffeIDError when a part could not appear in a valid ID)."""
    _check_trust_domain(trust_domain)
    for what, value in (("namespace", namespace), ("datacenter", datacenter), ("service", service)):
        _check_segment(what, value)
    sid = ServiceID(trust_domain, namespace, datacenter, service)
    if len(sid.uri().encode()) > MAX_ID_BYTES:
        raise SpiffeIDError(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes")
    return sid


def parse_service_id(uri: str) -> ServiceID:
    """Parse a service SPIFFE ID; SpiffeIDError naming the wrong part for anything else."""
    if not isinstance(uri, str):
        raise SpiffeIDError("SPIFFE ID must be a string")
    if len(uri.encode("utf-8", "replace")) > MAX_ID_BYTES:
        raise SpiffeIDError(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes")
    if not uri.startswith(SCHEME):
        raise SpiffeIDError(f"not a SPIFFE ID (must start with {SCHEME})")
    trust_domain, slash, path = uri[len(SCHEME):].partition("/")
    _check_trust_domain(trust_domain)
    if not slash:
        raise SpiffeIDError("SPIFFE ID has no path (a service ID is /ns/<ns>/dc/<dc>/svc/<service>)")
    parts = path.split("/")
    if len(parts) != 6 or parts[0::2] != ["ns", "dc", "svc"]:
        raise SpiffeIDError(f"path /{path[:64]} is not /ns/<namespace>/dc/<datacenter>/svc/<service>")
    namespace, datacenter, service = parts[1::2]
    return service_id(trust_domain, datacenter, service, namespace)


def _check_trust_domain(value: str) -> None:
    if not value:
        raise SpiffeIDError("SPIFFE ID has an empty trust domain")
    if not _TRUST_DOMAIN.fullmatch(value):
        raise SpiffeIDError(f"trust domain {value[:64]!r} may hold only lowercase letters, digits, '.', '-' and '_'")


def _check_segment(what: str, value: str) -> None:
    if not value:
        raise SpiffeIDError(f"SPIFFE ID has an empty {what}")
    if value in (".", "..") or not _SEGMENT.fullmatch(value):
        raise SpiffeIDError(f"{what} {value[:64]!r} may hold only letters, digits, '.', '-' and '_' "
                            "(and is not '.' or '..')")
