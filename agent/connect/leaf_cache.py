"""LeafCache: the agent's leaf certificates for local services, made, renewed and served here (runtime).

For each service asked for, the agent makes an EC P-256 key and a CSR for the service's SPIFFE ID (the key
never leaves the agent: it is not logged, not sent to the servers), has it signed through the CA authority
(agent.ca), and keeps the leaf fresh: renewed in 60-90 % of its life, reissued within 30 s after the active
root changes, retried with backoff while no server answers, the current leaf served meanwhile. Leaves are
made lazily on the first request (as Consul's agent does) and kept while requested within the last 72 h or
while the service is registered here. `get` is a blocking read over the leaf's index. The schedule itself is
pure (leaf_plan.py); this module runs it: one task per service, one watching the roots.

With ACLs on, each signing carries a token the servers check (service:write on the service): the token of
the last HTTP request for the leaf (checked by this agent's API), else `token_for(service)`: the token the
local service was registered with, else the agent token (`leaf_token`). Tokens are never logged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..catalog.connect_state import WATCH_KEY
from ..rpc.errors import ACLDenied, ACLNotFound
from . import ca_plan, leaf_plan
from .ca import leaf_key_and_csr
from .leaf_plan import LeafRecord, LeafState
from .renewal import root_change_window
from .spiffe import SpiffeIDError, service_id

if TYPE_CHECKING:
    from ..config.types import ServiceDefinition
    from ..store import CatalogStore

log = logging.getLogger("meshagent.connect.leaf")

MAX_SERVICES = 1024  # leaves this agent keeps at once: a request for a 1025th distinct service is refused
MAX_SLEEP = 600.0  # re-plan at least this often (a wall-clock jump is noticed within it)
ROOTS_WAIT = 300.0
CLOCK_SLACK = 0.01  # a timer may end a hair before the wall clock reaches the moment it was set for
SIGN_TIMEOUT = 120.0  # one signing attempt, the authority's own rate-limit retries included


class SignedLeafLike(Protocol):
    """What the CA authority's SignedLeaf carries (agent/connect/authority.py), as far as the cache reads it."""

    @property
    def cert_pem(self) -> str: ...
    @property
    def serial_number(self) -> int: ...
    @property
    def service(self) -> str: ...
    @property
    def service_uri(self) -> str: ...
    @property
    def valid_after(self) -> float: ...
    @property
    def valid_before(self) -> float: ...
    @property
    def root_id(self) -> str: ...
    @property
    def intermediate_pems(self) -> tuple[str, ...]: ...
    @property
    def index(self) -> int: ...


class Signer(Protocol):
    """The part of CAAuthority the cache uses (called with `token=` only when there is one)."""

    async def sign(self, csr_pem: str, token: str | None = None) -> SignedLeafLike: ...


class AgentTokens(Protocol):
    """The part of ACLResolver `leaf_token` reads."""

    @property
    def enabled(self) -> bool: ...
    def agent_secret(self) -> str: ...


def leaf_token(service: str, services: Mapping[str, ServiceDefinition], service_token: Callable[[str], str | None],
               acl: AgentTokens) -> str | None:
    """The token a local service's leaf is signed with: the token of a local instance of `service` (or of a
    sidecar fronting it: CatalogSync.service_token), else the agent token; None with ACLs off."""
    if not acl.enabled:
        return None
    for local_id, defn in services.items():
        if defn.name == service or defn.proxy.get("DestinationServiceName") == service:
            token = service_token(local_id)
            if token:
                return token
    return acl.agent_secret() or None


class LeafError(Exception):
    """A leaf that cannot be served now; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LeafCache:
    """Per local service: a key made here, a leaf signed through the authority, kept fresh; `get` blocks."""

    def __init__(self, store: CatalogStore, datacenter: str, authority: Callable[[], Signer | None],
                 local_services: Callable[[], Iterable[str]] = tuple, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 idle_ttl: float = leaf_plan.IDLE_TTL,
                 token_for: Callable[[str], str | None] | None = None) -> None:
        self.store = store
        self.datacenter = datacenter
        self._authority = authority
        self._local_services = local_services
        self._clock = clock
        self._rng = rng or random.Random()
        self._idle_ttl = idle_ttl
        self._states: dict[str, LeafState] = {}
        self._errors: dict[str, Exception] = {}  # the last failed signing per service (until one succeeds)
        self._changed: dict[str, trio.Event] = {}  # set when a service's leaf or error changes
        self._wake: dict[str, trio.Event] = {}  # set to make a service's task re-plan at once
        # (SPIFFE ID, key, CSR) not signed yet: retries resend the same CSR instead of making a key each time.
        self._pending: dict[str, tuple[str, str, str]] = {}
        self._nursery: trio.Nursery | None = None
        self._first_service = trio.Event()  # set when a service is added: the roots watch resumes
        self._token_for = token_for  # a service's own token for signing (None: no tokens, ACLs off)
        # Per service, the token of the last request that asked for its leaf (already checked by the agent's
        # API for service:write): signings use it first. Secrets: never logged nor rendered.
        self._requested: dict[str, str] = {}
        self.signings = 0  # leaves received, all services

    # ------------------------------------------------------------------ running

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: the roots watch here, one task per requested service."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_roots)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def services(self) -> list[str]:
        """The services whose leaves are kept now."""
        return sorted(self._states)

    def peek(self, service: str) -> LeafRecord | None:
        """The current leaf of `service` without asking for one."""
        state = self._states.get(service)
        return state.leaf if state is not None else None

    async def get(self, service: str, min_index: int = 0, wait: float = 300.0,
                  token: str | None = None) -> LeafRecord:
        """The service's leaf, once its index is above `min_index` (or `wait` passed: the current one).

        The first request for a service starts keeping its leaf. Without any leaf yet, the last signing
        error is raised (a ServerError from the authority), or LeafError when the CA is not initialized.
        `token`: the requester's ACL secret (checked by the caller), used for this service's next signings.
        """
        try:
            service_id("x", self.datacenter, service)  # the name must fit in a SPIFFE ID
        except SpiffeIDError as exc:
            raise LeafError(400, f"Invalid service name: {exc}") from None
        state = self._ensure(service)
        if token:
            self._requested[service] = token
        deadline = trio.current_time() + max(0.0, wait)
        while True:
            leaf_plan.requested(state, self._clock())
            leaf = state.leaf
            if leaf is not None and leaf.index > min_index:
                return leaf
            if leaf is None:
                error = self._errors.get(service)
                if error is not None:
                    raise error
                if not self.store.catalog.connect.trust_domain:
                    raise LeafError(500, "Connect CA is not initialized yet (no trust domain)")
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                if leaf is not None:
                    return leaf
                raise LeafError(500, f"no certificate for service {service} yet")
            changed = self._changed.setdefault(service, trio.Event())
            with trio.move_on_after(remaining):
                await changed.wait()
            if self._states.get(service) is not state:  # forgotten meanwhile (cannot happen while asked)
                state = self._ensure(service)

    def _ensure(self, service: str) -> LeafState:
        state = self._states.get(service)
        if state is not None:
            return state
        if self._nursery is None:
            raise LeafError(503, "the leaf certificate cache is not running")
        if len(self._states) >= MAX_SERVICES:
            raise LeafError(429, f"this agent already keeps {MAX_SERVICES} service certificates")
        state = leaf_plan.new_state(service, self._clock())
        self._states[service] = state
        self._first_service.set()
        self._nursery.start_soon(self._keep, state)
        return state

    # ------------------------------------------------------------------ one service

    async def _keep(self, state: LeafState) -> None:
        """Issue, renew and reissue one service's leaf until it goes idle."""
        service = state.service
        try:
            while True:
                now = self._clock()
                registered = service in set(self._local_services())
                if leaf_plan.idle(state, now + CLOCK_SLACK, registered, self._idle_ttl):
                    log.info("leaf for %s: not requested for %.0f s, forgotten", service, self._idle_ttl)
                    return
                if leaf_plan.due(state, now + CLOCK_SLACK):
                    await self._issue(state)
                    continue
                wake = leaf_plan.next_wake(state, now, registered, self._idle_ttl)
                event = self._wake.setdefault(service, trio.Event())
                with trio.move_on_after(min(MAX_SLEEP, max(0.0, wake - now))):
                    await event.wait()
                if event.is_set():
                    self._wake.pop(service, None)
        finally:
            if self._states.get(service) is state:
                del self._states[service]
            self._errors.pop(service, None)
            self._wake.pop(service, None)
            self._pending.pop(service, None)
            self._requested.pop(service, None)
            self._notify(service)

    async def _issue(self, state: LeafState) -> None:
        """One signing attempt: a new key and CSR (kept for the retries until one is signed), signed through
        the authority; a failure keeps the current leaf and backs off."""
        service = state.service
        trust_domain = await self._trust_domain()
        signed: SignedLeafLike | None = None
        try:
            sid = service_id(trust_domain, self.datacenter, service)
            pending = self._pending.get(service)
            if pending is None or pending[0] != sid.uri():
                pending = self._pending[service] = (sid.uri(), *leaf_key_and_csr(sid))
            _, key_pem, csr_pem = pending
            authority = self._authority()
            if authority is None:
                raise LeafError(500, "this agent has no Connect CA authority (connect disabled?)")
            token = self._signing_token(service)
            with trio.move_on_after(SIGN_TIMEOUT):
                # No token, no keyword: the call is as before ACLs.
                signed = await (authority.sign(csr_pem) if token is None else authority.sign(csr_pem, token=token))
            if signed is None:
                raise LeafError(504, f"no signed certificate within {SIGN_TIMEOUT:.0f} s")
            leaf = _record(signed, key_pem, sid.uri(), service)
        except Exception as exc:  # a ServerError, a bad answer: keep the current leaf and retry later
            if isinstance(exc, ACLDenied | ACLNotFound):
                # A requester's token refused (deleted, or lacking rights at the servers): the retry signs as
                # the service's own token, until a request brings one again.
                self._requested.pop(service, None)
            retry = leaf_plan.failed(state, self._clock(), self._rng)
            self._errors[service] = exc
            # Loud on the first failures, then only at powers of two: a long outage is not a log flood.
            level = logging.WARNING if state.failures & (state.failures - 1) == 0 else logging.DEBUG
            log.log(level, "leaf for %s: signing failed %d time(s) (%s); retry in %.1f s", service,
                    state.failures, _short(exc), retry - self._clock())
        else:
            self._pending.pop(service, None)  # the next leaf gets a new key, as Consul's agent does
            active = self.store.catalog.connect.active_root
            kept = leaf_plan.signed(state, leaf, active.id if active is not None else None, self._clock(),
                                    self._rng, self._root_change_window())
            self._errors.pop(service, None)
            self.signings += 1
            log.debug("leaf for %s: serial %x, index %d, renew in %.0f s", service, kept.serial_number,
                      kept.index, state.renew_at - self._clock())
        self._notify(service)

    def _signing_token(self, service: str) -> str | None:
        """The token this signing acts as: the last requester's, else the service's own (token_for)."""
        requested = self._requested.get(service)
        if requested:
            return requested
        return self._token_for(service) if self._token_for is not None else None

    async def _trust_domain(self) -> str:
        """The mesh's trust domain, once the CA is initialized (waits for it)."""
        while True:
            trust_domain = self.store.catalog.connect.trust_domain
            if trust_domain:
                return trust_domain
            await self.store.hub.wait([WATCH_KEY], ROOTS_WAIT)

    def _notify(self, service: str) -> None:
        event = self._changed.pop(service, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ roots

    async def _watch_roots(self) -> None:
        """Every change of the active root schedules the reissue of leaves signed by another root."""
        active: str | None = None
        while True:
            if not self._states:
                # No leaves: hold no watch on the store (blocking-query counts stay the API's own).
                await self._first_service.wait()
                self._first_service = trio.Event()
            root = self.store.catalog.connect.active_root
            current = root.id if root is not None else None
            if current != active:
                active = current
                self._root_changed(current)
            # Registered before it yields: a change after the check above still wakes it.
            await self.store.hub.wait([WATCH_KEY], ROOTS_WAIT)

    def _root_change_window(self) -> float:
        """The reissue window after a root change, from the CA's current leaf TTL (renewal.root_change_window):
        every leaf of the old root is replaced before the CA prunes it, also with a short test TTL."""
        return root_change_window(ca_plan.settings_of(self.store.catalog.connect.config).leaf_ttl)

    def _root_changed(self, active: str | None) -> None:
        now = self._clock()
        window = self._root_change_window()
        for service, state in list(self._states.items()):
            if leaf_plan.root_changed(state, active, now, self._rng, window):
                log.info("leaf for %s: root changed, reissue in %.1f s", service, state.renew_at - now)
                event = self._wake.get(service)
                if event is not None:
                    event.set()


def _record(signed: SignedLeafLike, key_pem: str, uri: str, service: str) -> LeafRecord:
    """The authority's answer as a LeafRecord, once it is the certificate we asked for (our key, our ID)."""
    try:
        cert = x509.load_pem_x509_certificate(signed.cert_pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise LeafError(500, f"the CA answered an unreadable certificate: {exc}") from None
    if sans.get_values_for_type(x509.UniformResourceIdentifier) != [uri]:
        raise LeafError(500, "the CA answered a certificate for another identity")
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if cert.public_key() != key.public_key():
        raise LeafError(500, "the CA answered a certificate for another key")
    return LeafRecord(service=service, service_uri=uri, cert_pem=signed.cert_pem,
                      intermediate_pems=tuple(signed.intermediate_pems), private_key_pem=key_pem,
                      serial_number=int(signed.serial_number), valid_after=float(signed.valid_after),
                      valid_before=float(signed.valid_before), root_id=str(signed.root_id),
                      index=int(signed.index))


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
