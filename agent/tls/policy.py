"""RPCTLS: who may talk to :8300 and how, from the `tls` config, the gossip keyring and auto_encrypt.

Trust is the union of the configured CA files and one CA per installed gossip key (certs.keyring_ca);
an agent presents its configured certificate, else one it obtained through auto_encrypt, else one it minted
under the CA of the keyring's primary key. Contexts are rebuilt when the keyring changes (keyring -install,
-use, -remove), so rotation rotates the :8300 CA without splitting the cluster. docs/security.md has the model.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ... import certs
from ...gossip.keyring import Keyring
from ..config.types import TLSConfig

log = logging.getLogger("meshagent.tls")

Role = Literal["server", "client", "bootstrap", "anonymous"]
# What each kind of peer may send: servers anything; client agents their writes, barriers, the feed and
# the mesh CA's calls (their services' CSRs, a CA configuration change from their HTTP API); a bootstrap
# (auto_encrypt) connection only the signing call.
CLIENT_METHODS = frozenset({"apply", "barrier", "auto_encrypt.sign", "connect_ca_sign", "connect_ca_set_config",
                            "acl_http", "http_forward",
                            "session_renew"})
SIGN_METHOD = "auto_encrypt.sign"
# First byte of a connection that asks for the auto_encrypt channel: TLS without a client certificate, only
# SIGN_METHOD allowed (Consul's RPCTLSInsecure). A plaintext frame never starts with it (length <= 64 MiB).
BOOTSTRAP_BYTE = 0x07
TLS_RECORD_BYTE = 0x16  # a TLS ClientHello's first byte
MINTED_DAYS = 365
REMINT_AFTER = 180 * 86400.0  # a minted leaf is replaced after half its life
AUTO_ENCRYPT_DAYS = 30


class TLSSetupError(ValueError):
    """The tls settings cannot work (a missing file, verify_outgoing without a CA ...)."""


def _proof(key: bytes, public_pem: bytes, node: str) -> bytes:
    return hmac.new(key, b"meshagent auto_encrypt\0" + node.encode() + b"\0" + public_pem, hashlib.sha256).digest()


@dataclass
class _Leaf:
    cert_pem: bytes
    key_pem: bytes
    made: float


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl loads chains only from paths: an anonymous memory file keeps the key off the disk.
    fd = os.memfd_create("meshagent-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class RPCTLS:
    """The :8300 security policy of one agent, and the SSL contexts that carry it out."""

    def __init__(self, config: TLSConfig, datacenter: str, *, server: bool, keyring: Keyring | None = None,
                 domain: str = "mesh", encrypt_verify_incoming: bool = True,
                 encrypt_verify_outgoing: bool = True) -> None:
        self.config = config
        self.datacenter = datacenter
        self.domain = domain.strip(".") or "mesh"
        self.is_server = server
        self.keyring = keyring if keyring else None
        self._keyring_in = self.keyring is not None and encrypt_verify_incoming
        self._keyring_out = self.keyring is not None and encrypt_verify_outgoing
        self._ca_pems = self._read_cas()
        self._file_chain = self._read_chain()
        self._file_ca = self._read_ca_key() if server else None
        self._auto: tuple[bytes, bytes, list[bytes]] | None = None  # auto_encrypt cert, key, roots
        self._minted: dict[bytes, _Leaf] = {}
        self._cache: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._derived: dict[bytes, certs.CA] = {}
        if config.verify_outgoing and not self._ca_pems and not self.keyring:
            raise TLSSetupError("verify_outgoing needs ca_file or ca_path (or a gossip key)")
        if config.verify_incoming and server and not self._ca_pems and not self.keyring:
            raise TLSSetupError("verify_incoming needs ca_file or ca_path (or a gossip key)")
        if server and config.verify_incoming and self._file_chain is None and not self.keyring:
            raise TLSSetupError("verify_incoming on a server needs cert_file and key_file")
        if config.auto_encrypt_tls and server:
            raise TLSSetupError("auto_encrypt { tls = true } is for client agents; servers use allow_tls")
        if config.auto_encrypt_tls and not self._ca_pems and not self.keyring:
            raise TLSSetupError("auto_encrypt { tls = true } needs ca_file (or ca_path) to verify the servers")

    def describe(self) -> str:
        """One line for the log: what :8300 requires and presents."""
        parts = []
        if self.keyring is not None:
            parts.append(f"a CA per gossip key ({len(self.keyring)} installed)")
        if self._ca_pems:
            parts.append("the configured CA")
        trust = " and ".join(parts) or "nothing (no CA)"
        incoming = ("mutual TLS required" if self.requires_client_cert
                    else "TLS or plaintext accepted" if self.accepts_tls else "plaintext")
        return (f"incoming: {incoming}; outgoing: {'TLS' if self.sends_tls else 'plaintext'}; trusting {trust}"
                + ("; roles checked (server." + self.datacenter + "." + self.domain + ")"
                   if self.enforces_roles else ""))

    # ------------------------------------------------------------------ files

    def _read_cas(self) -> list[bytes]:
        pems: list[bytes] = []
        try:
            if self.config.ca_file:
                pems.append(Path(self.config.ca_file).read_bytes())
            if self.config.ca_path:
                for p in sorted(Path(self.config.ca_path).iterdir()):
                    if p.suffix in (".pem", ".crt"):
                        pems.append(p.read_bytes())
        except OSError as exc:
            raise TLSSetupError(f"cannot read the CA: {exc}") from exc
        return pems

    def _read_chain(self) -> tuple[bytes, bytes] | None:
        c = self.config
        if bool(c.cert_file) != bool(c.key_file):
            raise TLSSetupError("cert_file and key_file go together")
        if not c.cert_file:
            return None
        try:
            return Path(c.cert_file).read_bytes(), Path(c.key_file).read_bytes()
        except OSError as exc:
            raise TLSSetupError(f"cannot read the certificate: {exc}") from exc

    def _read_ca_key(self) -> certs.CA | None:
        """The CA key beside ca_file (`mesh-agent-ca.pem` -> `mesh-agent-ca-key.pem`), to sign auto_encrypt
        requests; None when there is none (then the keyring's CA signs, if any)."""
        if not self.config.ca_file or not self.config.auto_encrypt_allow_tls:
            return None
        ca = Path(self.config.ca_file)
        key = ca.with_name(ca.stem + "-key" + ca.suffix)
        if not key.exists():
            return None
        try:
            return certs.load_ca(ca.read_bytes(), key.read_bytes())
        except (OSError, ValueError) as exc:
            raise TLSSetupError(f"cannot read the CA key {key}: {exc}") from exc

    # ------------------------------------------------------------------ policy

    @property
    def keyring_state(self) -> tuple[tuple[bytes, ...], bytes | None]:
        """What the keyring holds now (contexts are cached per state)."""
        if self.keyring is None:
            return (), None
        return self.keyring.keys, self.keyring.primary

    @property
    def sends_tls(self) -> bool:
        """Whether outgoing :8300 connections use TLS."""
        return self._keyring_out or self.config.verify_outgoing or self.config.auto_encrypt_tls

    @property
    def accepts_tls(self) -> bool:
        """Whether this server can answer a TLS handshake (it has a certificate to present)."""
        return self._file_chain is not None or self.keyring is not None

    @property
    def accepts_plaintext(self) -> bool:
        """Whether plaintext connections are served (the migration step, or no TLS at all)."""
        return not (self._keyring_in or self.config.verify_incoming)

    @property
    def requires_client_cert(self) -> bool:
        """Whether a TLS client must present a certificate we trust."""
        return self._keyring_in or self.config.verify_incoming

    @property
    def enforces_roles(self) -> bool:
        """Whether only `server.<dc>.<domain>` certificates may send Raft traffic and server-only calls."""
        return self.keyring is not None or self.config.verify_server_hostname

    @property
    def server_hostname(self) -> str:
        """The name a server's certificate must carry."""
        return certs.role_name("server", self.datacenter, self.domain)

    @property
    def auto_encrypt_pending(self) -> bool:
        """A client agent that must get its certificate from the servers before it can connect."""
        return self.config.auto_encrypt_tls and self._auto is None and self._file_chain is None

    def role_of(self, peercert: dict[str, Any] | None) -> Role:
        """The role a verified peer certificate grants ("anonymous" without one)."""
        if not peercert:
            return "anonymous"
        if not self.enforces_roles:
            return "server"
        names = {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
        return "server" if self.server_hostname in names else "client"

    def trusts_issuer(self, common_name: str) -> bool:
        """False for a keyring CA whose key is no longer installed (the peer must reconnect and prove again)."""
        if not common_name.startswith(certs.KEYRING_CA_PREFIX):
            return True
        keys = self.keyring.keys if self.keyring is not None else ()
        return any(self._keyring_ca(k).cert.subject.rfc4514_string() == f"CN={common_name}" for k in keys)

    # ------------------------------------------------------------------ certificates

    def _keyring_ca(self, key: bytes) -> certs.CA:
        ca = self._derived.get(key)
        if ca is None:
            ca = self._derived[key] = certs.keyring_ca(key)
        return ca

    def _trusted(self) -> list[bytes]:
        pems = list(self._ca_pems)
        if self._auto is not None:
            pems += self._auto[2]
        if self.keyring is not None:
            pems += [self._keyring_ca(k).cert_pem for k in self.keyring.keys]
        return pems

    def _own_chain(self) -> tuple[bytes, bytes] | None:
        if self._file_chain is not None:
            return self._file_chain
        if self._auto is not None:
            return self._auto[0], self._auto[1]
        if self.keyring is None or self.keyring.primary is None:
            return None
        primary = self.keyring.primary
        leaf = self._minted.get(primary)
        if leaf is None or time.time() - leaf.made > REMINT_AFTER:
            role: certs.Role = "server" if self.is_server else "client"
            cert, key = certs.issue(self._keyring_ca(primary), role, self.datacenter, domain=self.domain,
                                    days=MINTED_DAYS)
            assert key is not None
            leaf = self._minted[primary] = _Leaf(cert, key, time.time())
        return leaf.cert_pem, leaf.key_pem

    def _context(self, kind: str) -> ssl.SSLContext:
        state = (kind, self.keyring_state, self._auto is not None,
                 int(time.time() // REMINT_AFTER))  # the last one re-mints a long-lived leaf
        ctx = self._cache.get(state)
        if ctx is not None:
            return ctx
        server_side = kind in ("server", "bootstrap-server")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if server_side:
            ctx.num_tickets = 0  # connections are long-lived and never resumed: no session tickets to send
        trusted = self._trusted()
        for pem in trusted:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        chain = self._own_chain() if kind != "bootstrap-client" else None
        if chain is not None:
            _load_chain(ctx, *chain)
        if kind == "server":
            ctx.verify_mode = ((ssl.CERT_REQUIRED if self.requires_client_cert else ssl.CERT_OPTIONAL)
                               if trusted else ssl.CERT_NONE)
        elif kind == "bootstrap-server":
            ctx.verify_mode = ssl.CERT_NONE
        else:
            # Servers are always verified when we have something to verify them with; hostname checks follow
            # verify_server_hostname (keyring certificates always carry the name, so they are checked too).
            ctx.check_hostname = bool(trusted) and (self.config.verify_server_hostname or not self._ca_pems)
            ctx.verify_mode = ssl.CERT_REQUIRED if trusted else ssl.CERT_NONE
        self._cache = {k: v for k, v in self._cache.items() if k[1:] == state[1:]}  # drop stale contexts
        self._cache[state] = ctx
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The listener's context for ordinary (0x16-first) connections."""
        return self._context("server")

    def bootstrap_server_context(self) -> ssl.SSLContext:
        """The listener's context for the auto_encrypt channel: no client certificate asked."""
        return self._context("bootstrap-server")

    def client_context(self) -> ssl.SSLContext:
        """Outgoing connections' context (with our certificate when we have one)."""
        return self._context("client")

    def bootstrap_client_context(self) -> ssl.SSLContext:
        """A client agent's context to ask for its certificate: verifies the server, presents nothing."""
        return self._context("bootstrap-client")

    # ------------------------------------------------------------------ auto_encrypt

    def sign_request(self, node: str) -> tuple[dict[str, Any], certs.PrivateKey]:
        """A client agent's auto_encrypt request (a fresh key; a keyring proof when it has a keyring)."""
        key = certs.new_key()
        public = certs.public_pem(key)
        args: dict[str, Any] = {"node": node, "public_key": public}
        if self.keyring is not None and self.keyring.primary is not None:
            args["proof"] = _proof(self.keyring.primary, public, node)
        return args, key

    def accept_signed(self, answer: Any, key: certs.PrivateKey) -> None:
        """Install the certificate a server signed for us."""
        if not (isinstance(answer, dict) and isinstance(answer.get("cert"), bytes)
                and isinstance(answer.get("roots"), list) and all(isinstance(r, bytes) for r in answer["roots"])):
            raise ValueError("malformed auto_encrypt answer")
        self._auto = (answer["cert"], certs.key_pem(key), list(answer["roots"]))
        self._cache.clear()

    def sign(self, args: Any) -> dict[str, Any]:
        """Server side of auto_encrypt: a client certificate for the caller's public key. Authorized by a
        keyring proof when this server has a keyring; open otherwise (docs/security.md says so)."""
        if not self.config.auto_encrypt_allow_tls:
            raise PermissionError("auto_encrypt is not allowed on this server (auto_encrypt { allow_tls })")
        if not (isinstance(args, dict) and isinstance(args.get("node"), str) and len(args["node"]) <= 128
                and isinstance(args.get("public_key"), bytes) and len(args["public_key"]) <= 1024):
            raise ValueError("auto_encrypt.sign needs {node, public_key}")
        node, public = args["node"], args["public_key"]
        if self.keyring is not None:
            proof = args.get("proof")
            if not isinstance(proof, bytes) or not any(hmac.compare_digest(proof, _proof(k, public, node))
                                                      for k in self.keyring.keys):
                raise PermissionError("auto_encrypt.sign needs a proof made with a gossip key of this cluster")
        ca = self._file_ca
        if ca is None and self.keyring is not None and self.keyring.primary is not None:
            ca = self._keyring_ca(self.keyring.primary)
        if ca is None:
            raise PermissionError("this server has no CA key to sign with (put mesh-agent-ca-key.pem beside "
                                  "ca_file, or set a gossip key)")
        cert, _ = certs.issue(ca, "client", self.datacenter, domain=self.domain, days=AUTO_ENCRYPT_DAYS,
                              public_key=certs.load_public_key(public), common_name=f"{node}.client")
        log.info("auto_encrypt: signed a client certificate for %s", node)
        return {"cert": cert, "roots": self._trusted()}
