"""Who may use the mesh CA over :8300: `connect_ca_sign` needs service:write on the service the CSR's SPIFFE ID
names, `connect_ca_set_config` operator:write (as Consul's servers check). Pure: no clock, sockets or trio.

Every server that receives a call checks it, the leader again when a follower forwards it with the token:
roles are not known on a plaintext :8300, so a raw caller's `forwarded` flag must not skip the check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509

from ..acl.identity import ACLIdentity, require
from ..acl.secrets import ANONYMOUS_SECRET_ID, MAX_SECRET_LEN
from ..rpc.errors import ACLNotFound, Rejected
from .ca import MAX_CSR_BYTES
from .spiffe import SpiffeIDError, parse_service_id

if TYPE_CHECKING:
    from ..acl.resolver import ACLResolver

MAX_TOKEN_LEN = MAX_SECRET_LEN  # old names, kept for importers
ANONYMOUS_SECRET = ANONYMOUS_SECRET_ID


def token_arg(args: dict[str, Any], method: str, acl: ACLResolver | None) -> str | None:
    """The `token` an RPC's args carry (None: none). Not text: Rejected. Longer than any secret: ACLNotFound
    with ACLs on (as RPC apply), dropped unread with them off (tokens mean nothing then)."""
    token = args.get("token")
    if token is None:
        return None
    if not isinstance(token, str):
        raise Rejected(f"{method}: token must be a string")
    if len(token) > MAX_SECRET_LEN:
        if acl is not None and acl.enabled:
            raise ACLNotFound()
        return None
    return token or None


def rpc_identity(acl: ACLResolver, token: str | None) -> ACLIdentity:
    """Who an RPC caller acts as: its token, else the anonymous token. Never the server's own `default` token,
    which is for this server's HTTP API (ACLResolver.resolve_rpc, as RPC apply and acl_http)."""
    return acl.resolve_rpc(token)


def csr_service(csr_pem: str) -> str:
    """The service a CSR's SPIFFE ID names, read without verifying anything else (the leader's ca.check_csr
    does, from the same bytes and with the same parser). Rejected when there is no such ID."""
    data = csr_pem.encode("utf-8", "replace")
    if len(data) > MAX_CSR_BYTES:
        raise Rejected(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1 or len(list(sans)) != 1:
            raise Rejected("CSR refused: the CSR must name exactly one subject alternative name, its SPIFFE ID")
        return parse_service_id(uris[0]).service
    except x509.ExtensionNotFound:
        raise Rejected("CSR refused: the CSR has no SPIFFE ID (no subject alternative name)") from None
    except SpiffeIDError as exc:
        raise Rejected(f"CSR refused: the CSR's SPIFFE ID: {exc}") from None
    except ValueError as exc:
        raise Rejected(f"CSR refused: not a readable certificate signing request: {exc}") from None


def authorize_sign(acl: ACLResolver | None, token: str | None, csr_pem: str) -> str | None:
    """Raise ACLNotFound/ACLDenied unless `token` has service:write on the CSR's service; that service's name
    (None with ACLs off: nothing is read)."""
    if acl is None or not acl.enabled:
        return None
    service = csr_service(csr_pem)
    identity = rpc_identity(acl, token)
    require(identity, identity.authorizer.service_write(service))
    return service


def authorize_operator_write(acl: ACLResolver | None, token: str | None) -> None:
    """Raise ACLNotFound/ACLDenied unless `token` has operator:write (nothing with ACLs off)."""
    if acl is None or not acl.enabled:
        return
    identity = rpc_identity(acl, token)
    require(identity, identity.authorizer.operator_write())
