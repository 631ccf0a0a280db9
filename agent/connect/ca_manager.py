"""CAManager: the mesh CA on a server (runtime). The leader initializes the CA once, signs CSRs under the
CSR rate limit, changes the configuration (rotating the root when the key changes) and prunes old roots;
followers forward signing and configuration calls to it. Under -dev there is no Raft: it always leads.

The plans are ca_plan.py's (pure); this module adds leadership, the clock, the rate limiter and the calls.
Only the leader signs (its catalog holds the root's private key, as every server's does; client agents
never get it). Callers of `sign` never see RateLimited: it is retried with jittered exponential backoff
starting at the leader's wait hint, for up to SIGN_RETRY_BUDGET seconds.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..rpc.errors import NoLeader, NotLeader, RateLimited, Rejected, ServerError, Unreachable
from . import ca, ca_acl, ca_plan
from .authority import SignedLeaf
from .csr_limit import CSRRateLimit
from .entry_bootstrap import bootstrap_commands

if TYPE_CHECKING:
    from ..acl.resolver import ACLResolver
    from ..catalog.connect_state import ConnectState
    from ..config.types import AgentConfig
    from ..store import CatalogStore

log = logging.getLogger("meshagent.connect.ca")

RPC_HOLD_TIMEOUT = 7.0  # as the rest of :8300: how long a call may wait for a leader or an initialized CA
SIGN_RETRY_BUDGET = 60.0  # RateLimited is retried for this long before it reaches the caller
BACKOFF_CAP = 5.0  # the random part of one wait is at most this
LEADERSHIP_POLL = 0.25  # how quickly a new leader notices it leads (and initializes the CA)
NO_LIMIT_RATE = 1e9  # CSRMaxPerSecond 0: no rate limit (the concurrency cap may still apply)


class ServerLink(Protocol):
    """What the CA needs of a server's Raft (RaftServer): who leads, and calls to another server."""

    def is_leader(self) -> bool: ...
    def leader_address(self) -> str | None: ...
    async def call_server(self, address: str, method: str, args: Any, timeout: float = 10.0) -> Any: ...


def backoff(hint: float, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based) after RateLimited with `hint`: the hint, plus a
    random part that doubles per attempt up to BACKOFF_CAP (so that a crowd of callers spreads out)."""
    hint = min(max(hint, 0.0), RateLimited.MAX_RETRY_AFTER)
    spread = min(BACKOFF_CAP, max(hint, 0.02) * 2 ** min(attempt, 10))
    return hint + (rng or random).uniform(0, spread)


class CAManager:
    """The CA of one server (or -dev agent): a CAAuthority, the leader's duties, and the RPC handlers."""

    def __init__(self, store: CatalogStore, datacenter: str, server: ServerLink | None = None, *,
                 enabled: bool = True, provider: str = "consul", ca_config: dict[str, Any] | None = None,
                 min_leaf_ttl: float = ca_plan.LEAF_TTL_MIN, bootstrap_entries: list[dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.datacenter = datacenter
        self.server = server  # None: -dev, no Raft, always the leader
        self.enabled = enabled
        self.provider = provider
        self.ca_config = dict(ca_config or {})
        self.min_leaf_ttl = min_leaf_ttl
        self.bootstrap_entries = list(bootstrap_entries or [])
        self.clock = clock
        self._limit: CSRRateLimit | None = None
        self._limit_key: tuple[float, int] | None = None
        self._config_lock = trio.Lock()
        self._leading = False
        self.signed = 0  # figures (metrics, tests)
        self.rate_limited = 0
        self.forwarded = 0
        # The agent's ACL resolver (set by the agent): with ACLs on, every connect_ca_* call arriving over RPC is
        # checked against its token (ca_acl.py); calls from this agent's own HTTP API were checked there.
        self.acl: ACLResolver | None = None

    @classmethod
    def for_agent(cls, config: AgentConfig, store: CatalogStore, server: ServerLink | None) -> CAManager:
        """The CA of a server or -dev agent, from its configuration."""
        return cls(store, config.datacenter, server, enabled=config.connect_enabled, provider=config.ca_provider,
                   ca_config=config.ca_config, min_leaf_ttl=config.connect_test_min_leaf_ttl,
                   bootstrap_entries=config.config_entries_bootstrap)

    # ------------------------------------------------------------------------------------------ leadership

    def is_leader(self) -> bool:
        """Whether this server leads (always, under -dev)."""
        return self.server is None or self.server.is_leader()

    @property
    def state(self) -> ConnectState:
        """The catalog's CA state."""
        return self.store.catalog.connect

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow leadership until cancelled: set the CA up on each election, prune old roots while leading."""
        task_status.started()
        if not self.enabled:
            return
        last_prune = float("-inf")
        while True:
            if not self.is_leader():
                self._leading = False
            else:
                try:
                    if not self._leading:
                        await self._on_leadership()
                        self._leading = True
                    # The interval follows the current configuration: a shorter LeafCertTTL prunes sooner.
                    if trio.current_time() >= last_prune + ca_plan.settings_of(self.state.config).prune_interval:
                        await self.prune()
                        last_prune = trio.current_time()
                except ServerError as exc:
                    log.warning("connect: CA leader duties: %s; retrying", exc)
                    await trio.sleep(1.0)
                except ValueError as exc:  # a CA configuration the loader let through but the CA refuses
                    log.error("connect: cannot set up the CA: %s", exc)
                    await trio.sleep(30.0)
            await trio.sleep(LEADERSHIP_POLL)

    async def _on_leadership(self) -> None:
        """First leadership ever: create the CA. Every election: write the bootstrap config entries."""
        cmds = ca_plan.leadership_commands(self.state, self.ca_config, self.provider, self._now(),
                                           self.min_leaf_ttl)
        for cmd in cmds:
            try:
                await self.store.apply(cmd)
                log.info("connect: CA initialized, trust domain %s", self.state.trust_domain)
            except Rejected as exc:  # another leader initialized it first: theirs is kept
                log.info("connect: CA init refused (%s)", exc)
        await self._bootstrap_entries()

    async def _bootstrap_entries(self) -> None:
        if not self.bootstrap_entries:
            return
        # Only absent entries are written (cas=0): an election never undoes an operator's change.
        try:
            cmds = bootstrap_commands(self.store.catalog, self.bootstrap_entries)
        except ValueError as exc:  # EntryError: the config loader checks them first, so only a bug gets here
            log.error("connect: config_entries.bootstrap not written: %s", exc)
            return
        for cmd in cmds:
            await self.store.apply(cmd)

    async def prune(self) -> bool:
        """(Leader) drop roots inactive for more than 2 x LeafCertTTL; True when some were."""
        cmd = ca_plan.prune_command(self.state, self.clock())
        if cmd is None:
            return False
        await self.store.apply(cmd)
        log.info("connect: pruned CA roots rotated out before %.0f", cmd["before"])
        return True

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)

    async def initialized(self) -> ConnectState:
        """The CA state once a leader has set it up (waiting up to RPC_HOLD_TIMEOUT)."""
        if not self.enabled:
            raise Rejected("Connect is not enabled on this server (connect { enabled = false })")
        if not self.state.cluster_id and self.is_leader():
            async with self._config_lock:  # the first call may come before run() got to it (-dev, tests)
                if not self.state.cluster_id:
                    try:
                        await self._on_leadership()
                    except ValueError as exc:
                        raise ServerError(f"cannot set up the mesh CA: {exc}") from None
        with trio.move_on_after(RPC_HOLD_TIMEOUT):
            while not self.state.cluster_id or self.state.active_root is None:
                await trio.sleep(0.05)
            return self.state
        raise NoLeader("the mesh CA is not initialized yet (no leader has set it up)")

    # ------------------------------------------------------------------------------------------ signing

    async def sign(self, csr_pem: str, token: str | None = None) -> SignedLeaf:
        """CAAuthority.sign: the leader's signature, RateLimited retried with jittered backoff. `token` is not
        checked here (this agent's HTTP API did); a follower passes it on to the leader, which checks it."""
        deadline = trio.current_time() + SIGN_RETRY_BUDGET
        attempt = 0
        while True:
            try:
                return await self.sign_once(csr_pem, token=token)
            except RateLimited as exc:
                wait = backoff(exc.retry_after, attempt)
                if trio.current_time() + wait > deadline:
                    raise
                attempt += 1
                await trio.sleep(wait)

    async def sign_once(self, csr_pem: str, forwarded: bool = False, token: str | None = None) -> SignedLeaf:
        """One attempt: signed here when leading, else by the leader (RateLimited reaches the caller).
        `forwarded` (a call another server forwarded): never forward again, NotLeader instead. `token` goes
        with a forwarded call: the leader re-checks it."""
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            if self.is_leader():
                return await self.sign_local(csr_pem)
            if forwarded:
                raise NotLeader("not the leader")
            assert self.server is not None
            leader = self.server.leader_address()
            if leader:
                try:
                    self.forwarded += 1
                    args: dict[str, Any] = {"csr": csr_pem, "forwarded": True}
                    if token:
                        args["token"] = token
                    answer = await self.server.call_server(leader, "connect_ca_sign", args, RPC_HOLD_TIMEOUT)
                    return SignedLeaf.from_wire(answer)
                except (NotLeader, Unreachable) as exc:  # a signature is safe to ask again
                    if trio.current_time() > deadline:
                        raise NoLeader(f"no leader could sign: {exc}") from None
            elif trio.current_time() > deadline:
                raise NoLeader()
            await trio.sleep(0.05)

    async def sign_local(self, csr_pem: str) -> SignedLeaf:
        """(Leader) check the CSR and sign it with the active root, if the rate limit allows now."""
        if not isinstance(csr_pem, str) or len(csr_pem) > ca.MAX_CSR_BYTES:
            raise Rejected(f"csr must be PEM text of at most {ca.MAX_CSR_BYTES} bytes")
        state = await self.initialized()
        if not self.is_leader():
            raise NotLeader("not the leader")
        settings = ca_plan.settings_of(state.config)
        limit = self._rate_limit(settings)
        wait = limit.try_acquire(trio.current_time())
        if wait is not None:
            self.rate_limited += 1
            raise RateLimited(f"CSR rate limit exceeded (CSRMaxPerSecond {settings.csr_max_per_second:g}); "
                              f"retry in {wait:.3f}s", retry_after=wait)
        try:
            active = state.active_root
            if active is None or not active.private_key:
                raise ServerError("this server holds no CA signing key")
            root = ca_plan.ca_root(active, state.trust_domain)
            # Parsing and checking the CSR and signing cost ~1 ms (measured on a loaded 2-core machine): in a
            # worker thread, so the server's Raft and RPC loop does not stall under a CSR burst.
            leaf = await trio.to_thread.run_sync(ca.sign_leaf, root, csr_pem, self.datacenter, self._now(),
                                                 datetime.timedelta(seconds=settings.leaf_ttl))
        except ca.CSRError as exc:
            raise Rejected(f"CSR refused: {exc}") from None
        finally:
            limit.release()
        self.signed += 1
        return SignedLeaf(leaf.cert_pem, leaf.serial_number, leaf.service.service, leaf.service.uri(),
                          leaf.valid_after.timestamp(), leaf.valid_before.timestamp(), root.id,
                          root.intermediate_certs, self.store.catalog.last_index)

    def _rate_limit(self, settings: ca_plan.CASettings) -> CSRRateLimit:
        key = (settings.csr_max_per_second, settings.csr_max_concurrent)
        if self._limit is None or self._limit_key != key:
            self._limit = CSRRateLimit(settings.csr_max_per_second or NO_LIMIT_RATE, settings.csr_max_concurrent)
            self._limit_key = key
        return self._limit

    # ------------------------------------------------------------------------------------------ config

    async def set_config(self, provider: str, config: dict[str, Any], force_without_cross_signing: bool = False,
                         forwarded: bool = False, token: str | None = None) -> None:
        """CAAuthority.set_config: on the leader, or forwarded to it (with `token`, which the leader checks;
        not checked here: this agent's HTTP API did). Rejected names the bad field."""
        deadline = trio.current_time() + RPC_HOLD_TIMEOUT
        while True:
            if self.is_leader():
                await self._set_config_local(provider, config, force_without_cross_signing)
                return
            if forwarded:
                raise NotLeader("not the leader")
            assert self.server is not None
            leader = self.server.leader_address()
            if leader:
                args = {"provider": provider, "config": config, "force_without_cross_signing":
                        force_without_cross_signing, "forwarded": True}
                if token:
                    args["token"] = token
                try:
                    await self.server.call_server(leader, "connect_ca_set_config", args, RPC_HOLD_TIMEOUT)
                    return
                except NotLeader:  # refused before acting: safe to send again
                    if trio.current_time() > deadline:
                        raise
            elif trio.current_time() > deadline:
                raise NoLeader()
            await trio.sleep(0.05)

    async def _set_config_local(self, provider: str, config: dict[str, Any], force: bool) -> None:
        await self.initialized()
        async with self._config_lock:  # one change at a time: a rotation plans from the root in effect
            try:
                cmds = ca_plan.set_config_commands(self.state, provider, config, force, self._now(),
                                                   self.min_leaf_ttl)
            except ca_plan.CAConfigError as exc:
                raise Rejected(str(exc)) from None
            for cmd in cmds:
                await self.store.apply(cmd)
                if cmd["action"] == "rotate":
                    log.info("connect: CA root rotated to %s%s", cmd["root"]["id"],
                             " without cross-signing" if force else "")

    # ------------------------------------------------------------------------------------------ RPC

    async def rpc_sign(self, args: Any) -> dict[str, Any]:
        """The `connect_ca_sign` RPC: args {"csr": PEM, "forwarded": bool (from another server), "token": str}.
        With ACLs on the token (none: anonymous) needs service:write on the CSR's service, checked here before
        any signing work and again at the leader when forwarded (a `forwarded` flag skips no check)."""
        if not isinstance(args, dict) or not isinstance(args.get("csr"), str):
            raise Rejected("connect_ca_sign needs {csr: PEM text}")
        if len(args["csr"]) > ca.MAX_CSR_BYTES:  # before a follower forwards it, not only at the leader
            raise Rejected(f"CSR larger than {ca.MAX_CSR_BYTES} bytes")
        forwarded = args.get("forwarded", False)
        if not isinstance(forwarded, bool):
            raise Rejected("connect_ca_sign: forwarded must be a boolean")
        token = ca_acl.token_arg(args, "connect_ca_sign", self.acl)
        service = ca_acl.authorize_sign(self.acl, token, args["csr"])
        signed = await self.sign_once(args["csr"], forwarded=forwarded, token=token)
        if service is not None and signed.service != service:  # one parser reads both: a bug if ever seen
            raise ServerError("connect_ca_sign: the signed service is not the authorized one")
        return signed.to_wire()

    async def rpc_set_config(self, args: Any) -> bool:
        """The `connect_ca_set_config` RPC: args {provider, config, force_without_cross_signing, forwarded,
        token}. With ACLs on the token (none: anonymous) needs operator:write, here and at the leader."""
        if not isinstance(args, dict):
            raise Rejected("connect_ca_set_config needs a map")
        provider, config = args.get("provider", "consul"), args.get("config")
        force, forwarded = args.get("force_without_cross_signing", False), args.get("forwarded", False)
        if not isinstance(provider, str) or not isinstance(config, dict) or len(provider) > 64:
            raise Rejected("connect_ca_set_config needs provider (text) and config (a map)")
        if len(config) > ca_plan.MAX_CONFIG_KEYS:  # before a follower forwards it; the leader checks each value
            raise Rejected(f"connect_ca_set_config: more than {ca_plan.MAX_CONFIG_KEYS} Config keys")
        if not isinstance(force, bool) or not isinstance(forwarded, bool):
            raise Rejected("connect_ca_set_config: force_without_cross_signing and forwarded must be booleans")
        token = ca_acl.token_arg(args, "connect_ca_set_config", self.acl)
        ca_acl.authorize_operator_write(self.acl, token)
        await self.set_config(provider, config, force, forwarded=forwarded, token=token)
        return True
