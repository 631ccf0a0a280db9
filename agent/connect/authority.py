"""CAAuthority: how any part of an agent asks the mesh CA for a leaf signature or a CA configuration change.

Servers and -dev implement it with ca_manager.CAManager (the leader signs, followers forward to it); client
agents with forwarded_ca.ForwardedCA (over :8300 to a server). Callers never see RateLimited: `sign`
retries it with jittered backoff. `SignedLeaf` is also the wire shape of the `connect_ca_sign` RPC answer
(`to_wire`/`from_wire`; the serial travels as text, it is wider than msgpack's integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..rpc.errors import ServerError

MAX_PEM = 64 * 1024  # a signed leaf's PEM (or one intermediate's) is far below this

MAX_EPOCH = 253402300800  # 10000-01-01: past the last second a datetime (and an X.509 time) can hold


@dataclass(frozen=True, slots=True)
class SignedLeaf:
    """A leaf certificate the CA signed, with what Consul's leaf JSON reports of it (never the key)."""

    cert_pem: str
    serial_number: int
    service: str
    service_uri: str
    valid_after: float  # epoch seconds
    valid_before: float
    root_id: str  # the root that signed it
    intermediate_pems: tuple[str, ...]  # chain to the root (the cross-signed cert after a rotation)
    index: int  # catalog index when signed (Consul's CreateIndex/ModifyIndex)

    def to_wire(self) -> dict[str, Any]:
        """As the `connect_ca_sign` RPC answers it."""
        return {"cert_pem": self.cert_pem, "serial_number": format(self.serial_number, "x"),
                "service": self.service, "service_uri": self.service_uri, "valid_after": self.valid_after,
                "valid_before": self.valid_before, "root_id": self.root_id,
                "intermediate_pems": list(self.intermediate_pems), "index": self.index}

    @classmethod
    def from_wire(cls, raw: Any) -> SignedLeaf:
        """From a server's answer; a malformed one is a ServerError naming the field."""
        if not isinstance(raw, dict):
            raise ServerError("connect_ca_sign answer is not a map")

        def text(name: str) -> str:
            v = raw.get(name)
            if not isinstance(v, str) or len(v) > MAX_PEM:
                raise ServerError(f"connect_ca_sign answer: bad {name}")
            return v

        def number(name: str) -> float:
            v = raw.get(name)
            # Epoch seconds a datetime can hold: NaN or 1e300 would end the leaf endpoint in an OverflowError.
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < MAX_EPOCH:
                raise ServerError(f"connect_ca_sign answer: bad {name}")
            return float(v)

        inter = raw.get("intermediate_pems")
        if not isinstance(inter, list | tuple) or len(inter) > 8 or not all(
                isinstance(p, str) and len(p) <= MAX_PEM for p in inter):
            raise ServerError("connect_ca_sign answer: bad intermediate_pems")
        try:
            serial = int(text("serial_number"), 16)
        except ValueError:
            raise ServerError("connect_ca_sign answer: bad serial_number") from None
        index = raw.get("index")
        if type(index) is not int or index < 0:
            raise ServerError("connect_ca_sign answer: bad index")
        valid_after, valid_before = number("valid_after"), number("valid_before")
        if valid_after > valid_before:
            raise ServerError("connect_ca_sign answer: valid_after is after valid_before")
        return cls(text("cert_pem"), serial, text("service"), text("service_uri"), valid_after, valid_before,
                   text("root_id"), tuple(inter), index)


class CAAuthority(Protocol):
    """The mesh CA as an agent sees it: sign CSRs, change the CA configuration."""

    async def sign(self, csr_pem: str, token: str | None = None) -> SignedLeaf:
        """Have the leader sign `csr_pem`; retries RateLimited itself. `token`: the ACL secret the request acts
        as, which servers check (service:write on the CSR's service). Raises ServerError subclasses:
        Rejected (the CSR's problem), ACLDenied/ACLNotFound, NoLeader, Unreachable."""
        ...

    async def set_config(self, provider: str, config: dict[str, Any],
                         force_without_cross_signing: bool = False, *, token: str | None = None) -> None:
        """Store a new CA configuration (Consul's `Config` map); rotates the root when the key changes.
        Rejected names the bad field; servers check `token` for operator:write."""
        ...
