"""Mesh identities for data-plane tests and benchmarks without an agent: a CA for a trust domain and leaves
for service SPIFFE IDs, signed by the agent's own CA code (agent/connect/ca.py), so the certificates are the
ones a real cluster issues. Also the odd ones tests need: another CA's leaf, an expired leaf.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from meshagent.agent.connect.ca import CARoot, leaf_key_and_csr, new_root, sign_leaf
from meshagent.agent.connect.spiffe import service_id

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.mesh"
DATACENTER = "dc1"


@dataclass(frozen=True)
class LeafFiles:
    """One service's leaf: PEM strings, and where they were written when `write` was called."""

    service: str
    spiffe_id: str
    cert_pem: str
    key_pem: str

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write `<service>.crt` and `<service>.key` into `directory`; their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / f"{self.service}.crt"
        key = directory / f"{self.service}.key"
        cert.write_text(self.cert_pem)
        key.write_text(self.key_pem)
        key.chmod(0o600)
        return cert, key


class MeshCA:
    """A mesh CA for tests: `leaf("web")` signs a leaf for web's SPIFFE ID."""

    def __init__(self, trust_domain: str = TRUST_DOMAIN, datacenter: str = DATACENTER) -> None:
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.root: CARoot = new_root(trust_domain, _now())

    @property
    def root_pem(self) -> str:
        """The root certificate (PEM), what every proxy trusts."""
        return self.root.root_cert

    def spiffe_id(self, service: str) -> str:
        """`service`'s SPIFFE ID in this mesh."""
        return service_id(self.trust_domain, self.datacenter, service).uri()

    def leaf(self, service: str, ttl: datetime.timedelta = datetime.timedelta(hours=72),
             now: datetime.datetime | None = None) -> LeafFiles:
        """A leaf for `service`, valid from `now` (default: now) for `ttl`."""
        sid = service_id(self.trust_domain, self.datacenter, service)
        key_pem, csr_pem = leaf_key_and_csr(sid)
        leaf = sign_leaf(self.root, csr_pem, self.datacenter, now or _now(), ttl)
        return LeafFiles(service, sid.uri(), leaf.cert_pem, key_pem)

    def expired_leaf(self, service: str) -> LeafFiles:
        """A leaf for `service` that expired an hour ago."""
        return self.leaf(service, datetime.timedelta(hours=1), _now() - datetime.timedelta(hours=3))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
