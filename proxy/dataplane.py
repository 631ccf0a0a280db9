"""DataPlane: one sidecar's listeners and upstream state on a Reactor, swapped to each new ProxySnapshot by
`apply` without cutting open connections; routes accepted connections to the L4 or L7 handlers.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .authorize import Authorizer
from .balancer import make_balancer
from .chain_router import ChainRouter, target_upstream
from .dial import accept_tls, connect, plain
from .l4 import OutboundL4, inbound
from .metrics import ProxyMetrics
from .outlier import OutlierDetector
from .reactor import Reactor, Timer
from .resilience import CircuitBreakers, RetryBudget
from .snapshot import Endpoint, Limits, ProxySnapshot, Upstream
from .stream import Cancel, Stream
from .tls import TLSConfigError, TLSContexts

log = logging.getLogger(__name__)

ACCEPTS_PER_WAKE = 64
MAX_HANDSHAKES = 2048  # TLS handshakes in progress on the public listener; beyond, the oldest is closed
LISTEN_BACKLOG = 1024
ACCEPT_BACKOFF_S = 0.5
MAX_LOCAL_CONNECTIONS = 1024  # Envoy's default circuit breaker for the local_app cluster


class Chain:
    """An http upstream's discovery chain in a worker: its router and the state of each target by id."""

    __slots__ = ("router", "targets")

    def __init__(self, router: ChainRouter, targets: dict[str, UpstreamState]) -> None:
        self.router = router
        self.targets = targets


class UpstreamState:
    """One upstream's live state: its config, balancer, breakers, retry budget and outlier detector; kept
    across snapshots for the same destination (counters and ejections survive an endpoint change). A chain
    target's cluster is one too (`name` its target id, `upstream` the upstream whose chain it serves, `config`
    from chain_router.target_upstream); an upstream with a chain has `chain` set and its requests use the
    targets' states."""

    def __init__(self, dp: DataPlane, config: Upstream, name: str | None = None, upstream: str = "") -> None:
        self.dp = dp
        self.config = config
        self.name = name or config.destination_name
        # Metrics series: a target's are its upstream's with the target id as a label (never the id alone: two
        # upstreams may reach one target)
        self.metric_key = (upstream, self.name) if upstream else (self.name, "")
        self.chain: Chain | None = None
        # Any, not Balancer: proxy/l7.py passes pick() a list[Hashable] for exclude (typed, that fails)
        self.balancer: Any = make_balancer(config.load_balancer, config.protocol, dp.rng)
        self.breakers = CircuitBreakers(config.limits)
        self.budget = RetryBudget.from_retries(config.retries)
        self.outlier = OutlierDetector(config.passive_health, dp.rng)
        self.spiffe_ids: tuple[str, ...] = ()
        # Bumped whenever what a pooled connection was verified against changes (the DataPlane's TLS
        # contexts: roots, leaf; or this upstream's SPIFFE IDs): the L7 pool drops idle connections of an
        # older generation instead of reusing them under the old rules.
        self.tls_generation = dp.tls_generation
        self._timer: Timer | None = None
        self.update(config)

    def update(self, config: Upstream) -> None:
        """Take a new config: policies rebuilt when theirs changed, endpoints refreshed."""
        old = self.config
        self.config = config
        if config.load_balancer != old.load_balancer or config.protocol != old.protocol:
            self.balancer = make_balancer(config.load_balancer, config.protocol, self.dp.rng)
        if config.limits != old.limits:
            # Open connections release on the breakers they acquired (they hold the old object).
            self.breakers = CircuitBreakers(config.limits)
        if config.retries != old.retries:
            self.budget = RetryBudget.from_retries(config.retries)
        if config.passive_health != old.passive_health:
            self.outlier = OutlierDetector(config.passive_health, self.dp.rng)
        spiffe_ids = config.spiffe_ids or (self._default_spiffe_id(),)
        if spiffe_ids != self.spiffe_ids:
            self.spiffe_ids = spiffe_ids
            self.tls_generation += 1
        self.refresh()

    def _default_spiffe_id(self) -> str:
        snap = self.dp.snapshot
        assert snap is not None
        dc = self.config.datacenter or snap.datacenter
        return f"spiffe://{snap.tls.trust_domain}/ns/default/dc/{dc}/svc/{self.config.destination_name}"

    def refresh(self) -> None:
        """Hand the balancer the endpoints not ejected now; wake again when an ejection ends."""
        now = self.dp.reactor.now()
        available = self.outlier.available(self.config.endpoints, now)
        self.balancer.update(available)
        if self.config.routes:  # its targets' states report the endpoints; an empty gauge here would alarm
            self.dp.metrics.forget_upstream(*self.metric_key)
        else:
            upstream, target = self.metric_key
            self.dp.metrics.endpoints(upstream, len(available), len(self.config.endpoints) - len(available), target)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.outlier.next_deadline()
        if deadline is not None:
            self._timer = self.dp.reactor.call_later(max(0.0, deadline - now) + 0.001, self.refresh)

    def record(self, ep: Endpoint, ok: bool) -> None:
        """Feed the outlier detector one result on `ep`; an ejection is counted and the balancer updated."""
        if self.outlier.record(ep, ok, self.dp.reactor.now()):
            self.dp.metrics.ejection(*self.metric_key)
            self.refresh()

    def connect(self, ep: Endpoint, on_ready: Callable[[Stream], None], on_fail: Callable[[str], None],
                ) -> Cancel:
        """mTLS dial to `ep` with TLS session resumption, checking the destination's SPIFFE ID."""
        dp = self.dp
        ctxs = dp.contexts
        assert ctxs is not None
        sessions = ctxs.sessions
        address, port = ep.address, ep.port
        offered = sessions.get(address, port)

        def ready(stream: Stream) -> None:
            if stream.session_reused:
                sessions.resumed += 1
                if sessions.fresh(address, port, dp.reactor.now()):
                    stream.on_session = None  # keep offering the cached one
            else:
                sessions.full += 1
            on_ready(stream)

        def fail(reason: str) -> None:
            if reason in ("tls-handshake", "spiffe-mismatch"):
                dp.metrics.tls_failure("outbound", reason)
                if offered is not None:
                    sessions.forget(address, port)
            on_fail(reason)

        def keep(session: Any) -> None:
            sessions.put(address, port, session, dp.reactor.now())

        return connect(dp.reactor, address, port, self.config.connect_timeout_ms / 1000.0, ctxs.client,
                       ready, fail, expected_spiffe_ids=self.spiffe_ids, session=offered, on_session=keep)

    def close(self) -> None:
        """Stop the ejection timer and close idle pooled connections (the upstream or target left the
        snapshot; requests in flight on it finish)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.tls_generation += 1  # a connection given back later (its request was in flight) is closed too
        l7 = _l7()
        if l7 is not None:
            l7.close_idle(self)


class _Listener:
    """One bound, listening socket; `role` is "public" or an upstream's destination name (may change)."""

    def __init__(self, dp: DataPlane, address: str, port: int, role: str) -> None:
        self.dp = dp
        self.role = role
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # workers share the listener
            sock.bind((address, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.address = (address, port)
        self.closed = False
        self._backing_off = False
        dp.reactor.add_reader(self.fd, self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the listener stays readable, so back off instead of spinning.
                    if not self._backing_off:
                        log.warning("accept on %s:%d failed: %s; retrying in %.1f s", *self.address, exc,
                                    ACCEPT_BACKOFF_S)
                        self._backing_off = True
                        self.dp.reactor.remove_reader(self.fd)
                        self.dp.reactor.call_later(ACCEPT_BACKOFF_S, self._resume)
                return  # ECONNABORTED and the like: that one connection is gone
            self.dp._accepted(self.role, conn)

    def _resume(self) -> None:
        self._backing_off = False
        if not self.closed:
            self.dp.reactor.add_reader(self.fd, self._accept)

    def close(self) -> None:
        """Stop accepting (connections already accepted stay)."""
        self.closed = True
        self.dp.reactor.remove_reader(self.fd)
        self.sock.close()


class DataPlane:
    """The data plane of one sidecar in one worker: `apply(snapshot)` to (re)configure, `close()` to stop
    listening. The L7 handlers use `reactor`, `metrics`, `snapshot`, `authorizer`, `upstream()` and
    `connect_local()`."""

    def __init__(self, reactor: Reactor, metrics: ProxyMetrics) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.snapshot: ProxySnapshot | None = None
        self.authorizer: Authorizer = Authorizer.__new__(Authorizer)  # replaced by the first apply
        self.contexts: TLSContexts | None = None
        self.tls_generation = 0  # bumped with each new TLSContexts (UpstreamState.tls_generation follows)
        self.rng = random.Random()
        # Connections to the local application (L4 inbound), bounded as Envoy bounds its local_app cluster
        self.local_breakers = CircuitBreakers(Limits(max_connections=MAX_LOCAL_CONNECTIONS))
        self._pending: OrderedDict[Stream, None] = OrderedDict()  # handshakes in progress, oldest first
        self.refused_handshakes = 0
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._upstreams: dict[str, UpstreamState] = {}
        self._targets: dict[tuple[str, str], UpstreamState] = {}  # chain targets by (upstream, target id)

    # ------------------------------------------------------------------ configuration

    def apply(self, snapshot: ProxySnapshot) -> list[str]:
        """Swap to `snapshot`: new connections use it at once, open ones are never cut. Returns errors
        (bind failures, TLS material that does not load) without raising."""
        errors: list[str] = []
        old = self.snapshot
        contexts = self.contexts
        if contexts is None or contexts.material != snapshot.tls:
            # Built before anything swaps: a snapshot whose TLS material does not load is refused whole (the
            # previous snapshot keeps serving, entirely), never half applied with the old roots trusted.
            try:
                contexts = TLSContexts.build(snapshot.tls)
            except TLSConfigError as exc:
                return [f"snapshot refused, the previous one is kept: {exc}"]
            self.contexts = contexts
            self.tls_generation += 1
            for kept in (*self._upstreams.values(), *self._targets.values()):  # chain targets pool too
                kept.tls_generation += 1
        self.snapshot = snapshot
        self.authorizer = Authorizer(snapshot.intentions, snapshot.service, snapshot.tls.trust_domain)
        wanted_ups: dict[str, UpstreamState] = {}
        wanted_targets: dict[tuple[str, str], UpstreamState] = {}
        moved = old is None or old.tls.trust_domain != snapshot.tls.trust_domain  # default SPIFFE IDs change
        for up in snapshot.upstreams:
            state = self._upstreams.get(up.destination_name) or wanted_ups.get(up.destination_name)
            if state is None:
                state = UpstreamState(self, up)
            elif moved or state.config != up:
                state.update(up)
            wanted_ups[up.destination_name] = state
            if up.routes:
                if state.chain is None:  # flat until now: its endpoints' idle connections have no more use
                    state.close()
                state.chain, problem = self._chain(state, up, wanted_targets, moved)
                if problem:
                    errors.append(problem)
            else:
                state.chain = None
        for name, state in self._upstreams.items():
            if name not in wanted_ups:
                state.close()
                self.metrics.forget_upstream(name)
        for key, state in self._targets.items():
            if key not in wanted_targets:
                state.close()  # requests in flight on it finish there
                self.metrics.forget_upstream(*state.metric_key)
        self._upstreams = wanted_ups
        self._targets = wanted_targets
        errors.extend(self._apply_listeners(snapshot))
        return errors

    def _chain(self, state: UpstreamState, up: Upstream, wanted: dict[tuple[str, str], UpstreamState],
               moved: bool) -> tuple[Chain, str]:
        """The chain of upstream `up` and a problem ("" when none): target states kept by (upstream, target
        id), updated when their config changed; the router rebuilt only when what it is built from changed.
        A chain that does not compile (only an unchecked snapshot has one) routes nothing: 404s."""
        targets: dict[str, UpstreamState] = {}
        for t in up.targets:
            key = (up.destination_name, t.id)
            config = target_upstream(up, t)
            ts = self._targets.get(key) or wanted.get(key)
            if ts is None:
                ts = UpstreamState(self, config, name=t.id, upstream=up.destination_name)
            elif moved or ts.config != config:
                ts.update(config)
            wanted[key] = targets[t.id] = ts
        old = state.chain
        if old is not None and old.router.source == ChainRouter.source_of(up):
            return Chain(old.router, targets), ""
        try:
            return Chain(ChainRouter(up, self.rng), targets), ""
        except ValueError as exc:
            return Chain(ChainRouter(replace(up, routes=()), self.rng), targets), f"upstream {exc}"

    def _apply_listeners(self, snapshot: ProxySnapshot) -> list[str]:
        wanted: dict[tuple[str, int], str] = {}
        if snapshot.local_service_port:
            wanted[(snapshot.public_address, snapshot.public_port)] = "public"
        for up in snapshot.upstreams:
            wanted[(up.local_bind_address, up.local_bind_port)] = up.destination_name
        for key in [k for k in self._listeners if k not in wanted]:
            self._listeners.pop(key).close()
        errors: list[str] = []
        for key, role in wanted.items():
            listener = self._listeners.get(key)
            if listener is not None:
                listener.role = role
                continue
            try:
                self._listeners[key] = _Listener(self, key[0], key[1], role)
            except (OSError, OverflowError, ValueError) as exc:
                what = "public listener" if role == "public" else f"upstream {role}"
                errors.append(f"{what}: cannot listen on {key[0]}:{key[1]}: {exc}")
        return errors

    def listening(self) -> list[tuple[str, int]]:
        """The addresses this data plane listens on now."""
        return list(self._listeners)

    def upstream(self, name: str) -> UpstreamState | None:
        """The live state of upstream `name` (its destination service), if the snapshot has it."""
        return self._upstreams.get(name)

    def close(self) -> None:
        """Stop listening; open connections finish on their own."""
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        for state in self._upstreams.values():
            state.close()
        for state in self._targets.values():
            state.close()

    # ------------------------------------------------------------------ connections

    def connect_local(self, on_ready: Callable[[Stream], None], on_fail: Callable[[str], None]) -> Cancel:
        """Plain dial to the local application within local_connect_timeout_ms."""
        snap = self.snapshot
        assert snap is not None
        return connect(self.reactor, snap.local_service_address, snap.local_service_port,
                       snap.local_connect_timeout_ms / 1000.0, None, on_ready, on_fail)

    def _accepted(self, role: str, sock: socket.socket) -> None:
        snap = self.snapshot
        if snap is None:
            sock.close()
            return
        if role == "public":
            self._accept_public(snap, sock)
            return
        state = self._upstreams.get(role)
        if state is None or self.contexts is None:
            sock.close()
            return
        stream = plain(self.reactor, sock)
        if state.config.protocol == "http":
            l7 = _l7()
            if l7 is not None:
                l7.OutboundL7(self, role).handle(stream)
                return
        OutboundL4(self, state, stream).start()

    @property
    def handshakes(self) -> int:
        """TLS handshakes in progress on the public listener."""
        return len(self._pending)

    def _accept_public(self, snap: ProxySnapshot, sock: socket.socket) -> None:
        if self.contexts is None:
            sock.close()
            return
        if len(self._pending) >= MAX_HANDSHAKES:
            # Evict the oldest, not the newcomer: a real peer finishes in milliseconds, so an attacker holding
            # idle connections must outpace every handshake to lock anyone out (refusing newcomers would let
            # MAX_HANDSHAKES idle sockets, renewed every timeout, keep the whole mesh out).
            oldest, _ = self._pending.popitem(last=False)
            self.refused_handshakes += 1
            oldest.close("too-many-handshakes")  # its handshake's failed() counts it
        http = snap.protocol == "http"
        holder: list[Stream] = []
        finished: list[bool] = []  # set when the handshake ended (even inside accept_tls itself)

        def ready(stream: Stream) -> None:
            finished.append(True)
            self._pending.pop(stream, None)
            if http:
                l7 = _l7()
                if l7 is not None:
                    l7.InboundL7(self).handle(stream)
                    return
            inbound(self, stream)

        def failed(reason: str) -> None:
            finished.append(True)
            if holder:
                self._pending.pop(holder[0], None)
            if reason != "closed-before-hello":  # the agent's TCP check of this listener, every 10 s
                self.metrics.tls_failure("inbound", reason)

        try:
            stream = accept_tls(self.reactor, sock, self.contexts.server, ready, failed)
        except (OSError, ValueError):
            sock.close()
            return
        if not finished:
            holder.append(stream)
            self._pending[stream] = None


_L7: list[Any] = []  # HB's module, imported once on first use (lazily: proxy.l7 imports this module)


def _l7() -> Any:
    """HB's proxy.l7 module, or None while it does not exist yet (then L4 serves http too)."""
    if not _L7:
        mod: Any
        try:
            from . import l7 as mod  # type: ignore[attr-defined,unused-ignore]
        except ImportError:  # pragma: no cover - development only
            mod = None
        _L7.append(mod)
    return _L7[0]
