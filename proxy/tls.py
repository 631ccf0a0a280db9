"""mTLS contexts for one TLSMaterial: a server context that requires a client certificate from the mesh and a
client context that presents the local leaf; peer SPIFFE IDs; the upstream TLS session cache.

Keys never touch the disk: the PEM goes through an anonymous memfd that `load_cert_chain` reads by its
/proc path and that vanishes when closed.
"""

from __future__ import annotations

import os
import ssl
import time
from collections import OrderedDict
from typing import Any

from cryptography import x509

from .snapshot import TLSMaterial

MAX_SESSIONS = 1024  # upstream endpoints whose TLS session we keep
SESSION_REFRESH_S = 300.0  # a resumed dial keeps the cached session this long (well inside ticket lifetimes)


class TLSConfigError(ValueError):
    """The TLSMaterial does not load (bad PEM, key not matching the certificate, no roots)."""


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    cert_fd = os.memfd_create("mesh-cert", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("mesh-key", os.MFD_CLOEXEC)
    try:
        os.write(cert_fd, cert_pem.encode())
        os.write(key_fd, key_pem.encode())
        pid = os.getpid()
        ctx.load_cert_chain(f"/proc/{pid}/fd/{cert_fd}", f"/proc/{pid}/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)


def _base(ctx: ssl.SSLContext, material: TLSMaterial) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    # TLS 1.2 renegotiation: a full handshake's CPU on demand, and a certificate swapped after authorization
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if not material.roots_pem:
        raise TLSConfigError("tls.roots_pem: no trusted roots")
    try:
        # every root: during a rotation, peers with leaves of the old and of the new root are both valid
        ctx.load_verify_locations(cadata="\n".join(material.roots_pem))
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"tls.roots_pem: {exc}") from None
    try:
        _load_chain(ctx, material.cert_pem, material.key_pem)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSConfigError(f"tls.cert_pem/key_pem: {exc}") from None
    # no ALPN at all: never "h2" (consul#4466); L4 carries whatever the application speaks
    return ctx


class TLSContexts:
    """The server and client contexts built from one TLSMaterial, and the client's session cache (sessions
    only resume with the context that made them, so the cache lives and dies with the contexts)."""

    def __init__(self, material: TLSMaterial, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.material = material
        self.server = server
        self.client = client
        self.sessions = SessionCache()

    @classmethod
    def build(cls, material: TLSMaterial) -> TLSContexts:
        """Both contexts for `material`; TLSConfigError naming the field when it does not load."""
        server = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), material)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False  # identity is the URI SAN, checked after the handshake
        client = _base(client, material)
        return cls(material, server, client)


class SessionCache:
    """The latest TLS session per upstream endpoint (bounded, least recently stored dropped first)."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self._limit = limit
        self._sessions: OrderedDict[tuple[str, int], tuple[ssl.SSLSession, float]] = OrderedDict()
        self.resumed = 0  # handshakes that reused a cached session
        self.full = 0  # handshakes that did not

    def get(self, address: str, port: int) -> ssl.SSLSession | None:
        """The session to offer on the next dial to this endpoint, if any."""
        entry = self._sessions.get((address, port))
        return entry[0] if entry is not None else None

    def fresh(self, address: str, port: int, now: float) -> bool:
        """Whether this endpoint's session was stored within SESSION_REFRESH_S: a connection that resumed it
        need not fetch its own (reading SSLObject.session copies the whole session, ~0.3 ms)."""
        entry = self._sessions.get((address, port))
        return entry is not None and now - entry[1] < SESSION_REFRESH_S

    def put(self, address: str, port: int, session: ssl.SSLSession, now: float = 0.0) -> None:
        """Remember `session` for this endpoint (replacing an older one), stored at `now`."""
        key = (address, port)
        self._sessions[key] = (session, now)
        self._sessions.move_to_end(key)
        if len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)

    def forget(self, address: str, port: int) -> None:
        """Drop this endpoint's session (e.g. after a failed resumption)."""
        self._sessions.pop((address, port), None)

    def __len__(self) -> int:
        return len(self._sessions)


# peer certificate (DER) -> (identity, not before, not after as epoch seconds); peers repeat
_IDENTITIES: dict[bytes, tuple[str | None, float, float]] = {}
MAX_IDENTITIES = 4096
_NONE = (None, 0.0, 0.0)


def peer_spiffe_id(obj: ssl.SSLObject, now: float | None = None) -> str | None:
    """The URI SAN of the peer's verified certificate, or None: no certificate, no or several URIs, a CA
    certificate presented as a leaf (whoever holds an intermediate's key may mint identities, not be one), or
    a certificate outside its validity at `now` (default: the clock): a resumed TLS session skips
    verification, so a leaf that expired since would otherwise come back for the ticket's lifetime."""
    try:
        der = obj.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return None
    if not der:
        return None
    entry = _IDENTITIES.get(der)
    if entry is None:
        entry = _identity_of(der)
        if len(_IDENTITIES) >= MAX_IDENTITIES:
            _IDENTITIES.clear()
        _IDENTITIES[der] = entry
    identity, not_before, not_after = entry
    if identity is None:
        return None
    t = time.time() if now is None else now
    return identity if not_before <= t <= not_after else None


def _identity_of(der: bytes) -> tuple[str | None, float, float]:
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return _NONE
        except x509.ExtensionNotFound:
            pass
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return _NONE
        uris: list[Any] = sans.get_values_for_type(x509.UniformResourceIdentifier)
        window = (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
    except (ValueError, TypeError):  # OpenSSL verified it, but a parser disagreeing must not crash the loop
        return _NONE
    return (str(uris[0]), *window) if len(uris) == 1 else _NONE
