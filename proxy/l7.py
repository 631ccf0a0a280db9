"""The L7 (HTTP/1.1) handlers the data plane hands connections to: InboundL7 on the public listener when the
service's protocol is http (intentions per request, a keep-alive pool to the local application), OutboundL7
on an http upstream listener (per request: circuit breakers, balancer pick, pooled mTLS connections,
retries within the budget, outlier feedback, metrics). The per-connection relay is l7_session.Session.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .access_log import logger_for
from .balancer import hash_key
from .http1 import Head, HTTPError, request_path, rewrite_target
from .l7_common import LOCAL_FAILURE, WatchedHeaders, reply
from .l7_pool import Pool, UpConn
from .l7_session import Session
from .l7_state import SessionState
from .snapshot import Endpoint, HashPolicy, Retries
from .stream import Cancel, Stream

if TYPE_CHECKING:
    from .authorize import Authorizer, Verdict
    from .dataplane import Chain, DataPlane, UpstreamState

NO_RETRIES = Retries(num_retries=0)
BREAKER_HEADER = b"x-meshagent-circuit-breaker"
DENIED_HEADER = b"x-meshagent-denied-by"
BYTES_FLUSH = 1 << 20
VERDICTS_MAX = 64  # remembered L7 verdicts per downstream connection
NO_ROUTE = reply(404, b"no route\n").replace(b" 404 Error\r\n", b" 404 Not Found\r\n", 1)
_HASHED = ("ring_hash", "maglev")

# Pools outlive connections: one per data plane (local application) and per upstream state.
_local_pools: weakref.WeakKeyDictionary[Any, Pool] = weakref.WeakKeyDictionary()
_upstream_pools: weakref.WeakKeyDictionary[Any, _UpstreamPool] = weakref.WeakKeyDictionary()


def _host(key: Hashable) -> str:
    if isinstance(key, Endpoint):
        return f"{key.address}:{key.port}"
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[0]}:{key[1]}"
    return ""


def close_idle(us: UpstreamState) -> None:
    """Close the idle pooled connections of `us` (it left the snapshot: nothing will reuse them)."""
    pools = _upstream_pools.get(us)
    if pools is not None:
        pools.pool.close()


def _peer_ip(stream: Stream) -> str:
    try:
        return str(stream.sock.getpeername()[0])
    except (OSError, IndexError):
        return ""


class _Base:
    """What both directions share: metrics, access log, byte counts."""

    direction = ""

    def __init__(self, dp: DataPlane, label: str) -> None:
        self.dp = dp
        self.label = label
        self.metrics = dp.metrics
        self.source = ""
        self.rx_reported = self.tx_reported = 0

    def _log(self, s: SessionState, code: int, duration_s: float, flags: str = "") -> None:
        snap = self.dp.snapshot
        if snap is None or not snap.access_log.enabled:
            return
        logger = logger_for(snap.access_log)
        if logger is None:
            return
        req = s.req
        logger.log(start=time.time() - duration_s, duration_s=duration_s,
                   source=self.source if self.direction == "inbound" else snap.service,
                   destination=snap.service if self.direction == "inbound" else self.label,
                   method=req.method.decode("latin-1") if req else "",
                   path=req.target.decode("latin-1") if req else "", code=code,
                   upstream_host=_host(s.key), flags=flags,
                   direction=self.direction)

    def closed(self, s: SessionState, received: int, sent: int) -> None:
        """The downstream connection closed."""
        self._bytes(received, sent)
        self.metrics.connection_closed(self.direction, self.label)

    def _bytes(self, rx: int, tx: int) -> None:
        """Report what moved since the last report; `rx`/`tx` are totals from/to the downstream peer, which
        outbound means sent to/received from the upstream (the metric's point of view, as L4 reports it)."""
        drx, dtx = rx - self.rx_reported, tx - self.tx_reported
        self.rx_reported, self.tx_reported = rx, tx
        if drx or dtx:
            if self.direction == "outbound":
                drx, dtx = dtx, drx
            self.metrics.bytes(self.direction, self.label, drx, dtx)

    def _count(self, s: SessionState, code: int, duration_s: float) -> None:
        self.metrics.request(self.direction, self.label, code, duration_s)
        if s.rx - self.rx_reported + s.tx - self.tx_reported >= BYTES_FLUSH:
            self._bytes(s.rx, s.tx)
        if self.dp.snapshot is not None and self.dp.snapshot.access_log.enabled:
            self._log(s, code, duration_s, s.flags)


class InboundL7(_Base):
    """Requests from client sidecars over verified mTLS, authorized one by one, relayed to the local app."""

    direction = "inbound"
    retries = NO_RETRIES

    def __init__(self, dp: DataPlane) -> None:
        super().__init__(dp, "")
        snap = dp.snapshot
        self.timeout_s = snap.local_request_timeout_ms / 1000.0 if snap is not None else 0.0
        self.key: Hashable = (snap.local_service_address, snap.local_service_port) if snap else None
        pool = _local_pools.get(dp)
        if pool is None:
            pool = _local_pools[dp] = Pool(dp.reactor)
        self.pool = pool
        self.dial: Cancel | None = None
        # Verdicts by (method, target) for this connection's source, while the authorizer stays the same
        # object (a snapshot swap builds a new one): the common request skips path normalisation and rules.
        self.verdicts: dict[tuple[bytes, bytes], Verdict] = {}
        self.verdicts_of: Authorizer | None = None

    def handle(self, stream: Stream) -> None:
        """Serve HTTP/1.1 requests on a verified TLS stream from the mesh."""
        source = self.dp.authorizer.source_of(stream.peer_spiffe_id)
        self.source = source or ""
        self.label = self.metrics.source_label(source)  # inbound series name the caller (bounded)
        self.metrics.connection_opened("inbound", self.label)
        Session(self.dp.reactor, self, stream)
        stream.resume_reading()

    def begin(self, s: SessionState, head: Head) -> bytes | None:
        """Authorize the request against the current intentions (L7)."""
        authorizer = self.dp.authorizer
        if authorizer is not self.verdicts_of:
            self.verdicts_of = authorizer
            self.verdicts = {}
        key = (head.method, head.target)
        verdict = self.verdicts.get(key)
        if verdict is None:  # (a remembered one implies a valid path and a source)
            try:
                path = request_path(head.target).decode("latin-1")
            except HTTPError as exc:
                return reply(exc.status, exc.reason.encode() + b"\n")
            if not self.source:
                s.flags = "DENY"
                self.metrics.denial("", "l7")
                return reply(403, b"RBAC: access denied: no service identity\n", ((DENIED_HEADER, b"default"),))
            headers = WatchedHeaders(head)
            verdict = authorizer.l7(self.source, head.method.decode("latin-1"), path, headers)
            if not headers.used and len(self.verdicts) < VERDICTS_MAX:
                self.verdicts[key] = verdict
        if verdict.allowed:
            return None
        s.flags = "DENY"
        self.metrics.denial(verdict.rule, "l7")
        rule = (verdict.rule or "default").encode("utf-8", "replace")[:256].replace(b"\r", b"").replace(b"\n", b"")
        return reply(403, b"RBAC: access denied\n", ((DENIED_HEADER, rule),))

    def acquire(self, s: SessionState) -> None:
        """A pooled connection to the local application, or a new one."""
        conn = self.pool.get(self.key)
        if conn is not None:
            s.attached(conn, True)
            return
        key = self.key
        breakers = self.dp.local_breakers
        if not breakers.acquire_connection():  # Envoy's local_app cluster: 1024 connections (finding 9)
            self.metrics.breaker_trip("", "max_connections")
            s.flags = "UO"
            s.attach_failed("breaker", None, reply(503, b"local application overflow: max_connections\n",
                                                   ((BREAKER_HEADER, b"max_connections"),)))
            return

        def ready(stream: Stream) -> None:
            self.dial = None
            stream.pause_reading()
            s.attached(UpConn(stream, key, breakers.release_connection), False)

        def failed(reason: str) -> None:
            self.dial = None
            breakers.release_connection()
            s.attach_failed(reason, key)

        s.t_attempt = self.dp.reactor.now()
        self.dial = self.dp.connect_local(ready, failed)

    def cancel_acquire(self, s: SessionState) -> None:
        """Abandon a dial in progress (its connection slot with it)."""
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
            self.dp.local_breakers.release_connection()

    def attempt_done(self, s: SessionState, key: Hashable, latency_s: float, ok: bool | None) -> None:
        """Nothing to learn: there is one local application."""

    def try_retry(self) -> bool:
        """Inbound never retries (the client sidecar does)."""
        return False

    def retry_finished(self) -> None:
        """No retries inbound."""

    def give_back(self, conn: UpConn) -> None:
        """Keep a local connection for the next request."""
        self.pool.put(conn)

    end = _Base._count  # counting is all the inbound end does (one call less per request)

    def failure_reply(self, reason: str) -> bytes:
        """The local application is unreachable: the client sidecar treats this as a connect failure."""
        return reply(503, b"local application unreachable: " + reason.encode() + b"\n", ((LOCAL_FAILURE, b"1"),))


class _Waiter:
    __slots__ = ("ep", "session")

    def __init__(self, session: SessionState, ep: Endpoint) -> None:
        self.session = session
        self.ep = ep


class _UpstreamPool:
    """The idle connections of one upstream, and the requests waiting for a connection slot."""

    def __init__(self, dp: DataPlane, us: UpstreamState) -> None:
        self.dp = dp
        self._us = weakref.ref(us)  # the map's value must not keep its key alive
        self.pool = Pool(dp.reactor)
        self.pool.on_idle = self._offer
        self.waiters: deque[_Waiter] = deque()

    @property
    def us(self) -> UpstreamState:
        """The upstream state this pool belongs to."""
        us = self._us()
        assert us is not None  # callers hold it
        return us

    def _offer(self, conn: UpConn) -> bool:
        while self.waiters:
            w = self.waiters.popleft()
            s = w.session
            if not s.busy or s.down.closed or s.conn is not None:
                continue
            self.us.breakers.release_pending()
            route = s.route
            assert isinstance(route, OutboundL7) and isinstance(conn.key, Endpoint)
            if conn.key != w.ep:  # the balancer picked another endpoint: account the attempt to this one
                self.us.balancer.finished(w.ep, 0.0, True, self.dp.reactor.now())
                self.us.balancer.started(conn.key)
                route.picked = conn.key
            s.t_attempt = self.dp.reactor.now()
            s.attached(conn, True)
            return True
        return False

    def released(self) -> None:
        """A connection slot came free: dial for the first waiter."""
        while self.waiters:
            w = self.waiters.popleft()
            s = w.session
            if not s.busy or s.down.closed or s.conn is not None:
                continue
            route = s.route
            assert isinstance(route, OutboundL7)
            if self.us.breakers.acquire_connection():
                self.us.breakers.release_pending()
                route._dial(s, w.ep, self)
            else:
                self.waiters.appendleft(w)
            return

    def forget(self, s: SessionState) -> None:
        """Drop `s` from the waiters (it gave up)."""
        for w in self.waiters:
            if w.session is s:
                self.waiters.remove(w)
                self.us.breakers.release_pending()
                return


class OutboundL7(_Base):
    """Requests from the local application to one upstream, each balanced, guarded and retried."""

    direction = "outbound"

    def __init__(self, dp: DataPlane, upstream_name: str) -> None:
        super().__init__(dp, upstream_name)
        self.name = upstream_name
        self.us: UpstreamState | None = dp.upstream(upstream_name)
        cfg = self.us.config if self.us is not None else None
        self.retries = cfg.retries if cfg is not None else NO_RETRIES
        self.timeout_s = cfg.request_timeout_ms / 1000.0 if cfg is not None else 0.0
        self.hash_key: int | None = None
        self.target = ""  # the chain target of the request in flight ("" on a flat upstream)
        self.dial: Cancel | None = None
        self.picked: Endpoint | None = None  # the endpoint of the attempt in progress (balancer started)
        self.peer_ip = ""
        self._pool: _UpstreamPool | None = None
        snap = dp.snapshot
        self.source = snap.service if snap is not None else ""

    def handle(self, stream: Stream) -> None:
        """Serve HTTP/1.1 requests from the local application on this upstream's listener."""
        self.metrics.connection_opened("outbound", self.name)
        self.peer_ip = _peer_ip(stream)
        Session(self.dp.reactor, self, stream)
        stream.resume_reading()

    def _pools(self, us: UpstreamState) -> _UpstreamPool:
        found = self._pool
        if found is not None and found._us() is us:  # the common case, without a weak-map lookup
            return found
        found = _upstream_pools.get(us)
        if found is None:
            found = _upstream_pools[us] = _UpstreamPool(self.dp, us)
        self._pool = found
        return found

    def begin(self, s: SessionState, head: Head) -> bytes | None:
        """The request's target state (the upstream's, or on a chain the route's split's), its breaker, and
        the hash key for ring_hash/maglev."""
        us = self.dp.upstream(self.name)
        if us is None:
            return reply(503, b"no such upstream\n")
        if us.chain is not None:
            return self._begin_chain(s, head, us, us.chain)
        self.target = ""
        return self._admit(s, head, us, us.config.retries, us.config.request_timeout_ms / 1000.0)

    def _admit(self, s: SessionState, head: Head, us: UpstreamState, retries: Retries, timeout_s: float,
               split_hash: int | None = None, split_policies: tuple[HashPolicy, ...] = ()) -> bytes | None:
        """The request takes `us`: its breaker and budget, the hash key for ring_hash/maglev (the split's
        when it was computed from the same policies)."""
        self.us = us
        self.retries = retries
        self.timeout_s = timeout_s
        if not us.breakers.acquire_request():
            s.flags = "UO"
            return self._trip("max_concurrent_requests")
        us.budget.request_started()
        lb = us.config.load_balancer
        self.hash_key = None
        if lb.hash_policies and lb.policy in _HASHED:
            self.hash_key = (split_hash if lb.hash_policies == split_policies
                             else self._hash(lb.hash_policies, head))
        return None

    def _hash(self, policies: Any, head: Head) -> int | None:
        q = head.target.find(b"?")
        query = head.target[q + 1:].decode("latin-1") if q >= 0 else None
        return hash_key(policies, head.headers, None, query, self.peer_ip)

    def _begin_chain(self, s: SessionState, head: Head, parent: UpstreamState, chain: Chain) -> bytes | None:
        """First matching route, one of its splits, that target's state for the whole request (retries
        included, whatever snapshot comes meanwhile); the route's timeout, retries and PrefixRewrite."""
        router = chain.router
        self.target = ""
        try:
            route = router.match(head)
        except HTTPError as exc:
            return reply(exc.status, exc.reason.encode() + b"\n")
        if route is None:
            return NO_ROUTE
        split_hash = None
        if router.hash_policies:  # the split is the request's hash's (Consul's hash policies), not a draw
            split_hash = self._hash(router.hash_policies, head)
        target = route.single or router.pick(route, split_hash)
        us = chain.targets.get(target)
        if us is None:  # a checked snapshot names only its targets
            return reply(503, b"no such target\n")
        if route.rewrite is not None:
            try:
                rewrite_target(head, router.rewritten(route, head))
            except ValueError:  # a checked rewrite of a parsed target cannot make one: refuse, never crash
                return reply(400, b"prefix rewrite made no valid target\n")
        self.target = target
        cfg = us.config
        return self._admit(s, head, us, route.retries or cfg.retries,
                           route.timeout_s or cfg.request_timeout_ms / 1000.0, split_hash, router.hash_policies)

    def _trip(self, limit: str) -> bytes:
        self.metrics.breaker_trip(self.name, limit)
        return reply(503, b"upstream overflow: " + limit.encode() + b"\n", ((BREAKER_HEADER, limit.encode()),))

    def acquire(self, s: SessionState) -> None:
        """Pick an endpoint (another one than tried when there is one); an idle connection to it, a new
        one within max_connections, or a wait within max_pending_requests."""
        us = self.us
        assert us is not None
        ep = us.balancer.pick(self.hash_key, s.tried)
        if ep is None and s.tried:
            ep = us.balancer.pick(self.hash_key)
        if ep is None:
            s.flags = "UH"
            s.attach_failed("no healthy endpoints", None, reply(503, b"no healthy upstream\n"))
            return
        s.tried.append(ep)
        us.balancer.started(ep)
        self.picked = ep
        pools = self._pools(us)
        conn = pools.pool.get(ep, us.tls_generation)
        if conn is not None:
            s.attached(conn, True)  # which starts the attempt's clock
            return
        s.t_attempt = self.dp.reactor.now()
        if not us.breakers.acquire_pending():
            self.picked = None
            us.balancer.finished(ep, 0.0, True, s.t_attempt)
            s.flags = "UO"
            s.attach_failed("breaker", None, self._trip("max_pending_requests"))
            return
        if not us.breakers.acquire_connection():
            idle = pools.pool.take_any()
            if idle is None:
                pools.waiters.append(_Waiter(s, ep))  # until a connection goes idle or closes
                return
            idle.close()  # an idle connection to another endpoint makes room (its release frees the slot)
            if not us.breakers.acquire_connection():
                pools.waiters.append(_Waiter(s, ep))
                return
        us.breakers.release_pending()
        self._dial(s, ep, pools)

    def _dial(self, s: SessionState, ep: Endpoint, pools: _UpstreamPool) -> None:
        us = pools.us
        breakers = us.breakers
        generation = us.tls_generation  # the rules this dial is verified under (a swap may come meanwhile)

        def release() -> None:
            breakers.release_connection()
            pools.released()

        def ready(stream: Stream) -> None:
            self.dial = None
            stream.pause_reading()
            conn = UpConn(stream, ep, release)
            conn.generation = generation
            s.attached(conn, False)

        def failed(reason: str) -> None:
            self.dial = None
            release()
            s.attach_failed(reason, ep)

        s.t_attempt = self.dp.reactor.now()
        self.dial = us.connect(ep, ready, failed)

    def cancel_acquire(self, s: SessionState) -> None:
        """Stop dialling or waiting; an attempt in progress ends without a verdict."""
        us = self.us
        if us is None:
            return
        if self.dial is not None:
            self.dial.cancel()  # the dial's release does not run: free the slot here
            self.dial = None
            us.breakers.release_connection()
            self._pools(us).released()
        else:
            self._pools(us).forget(s)
        self.attempt_done(s, self.picked, self.dp.reactor.now() - s.t_attempt, None)

    def attempt_done(self, s: SessionState, key: Hashable, latency_s: float, ok: bool | None) -> None:
        """Feed the balancer (latency, success) and the outlier detector (5xx and gateway failures)."""
        us = self.us
        ep = self.picked
        if us is None or ep is None or key != ep:
            return  # this attempt was already accounted
        self.picked = None
        us.balancer.finished(ep, latency_s, ok is not False, self.dp.reactor.now())
        if ok is not None:
            us.record(ep, ok)

    def try_retry(self) -> bool:
        """Take a retry from the budget, or count an overflow."""
        us = self.us
        if us is not None and us.budget.try_retry():
            self.metrics.retry(self.name)
            return True
        self.metrics.retry_overflow(self.name)
        return False

    def retry_finished(self) -> None:
        """Give the retry back to the budget."""
        if self.us is not None:
            self.us.budget.retry_finished()

    def give_back(self, conn: UpConn) -> None:
        """Pool the connection (a waiting request takes it first)."""
        if self.us is None:
            conn.close()
            return
        self._pools(self.us).pool.put(conn, self.us.tls_generation)

    def end(self, s: SessionState, code: int, duration_s: float) -> None:
        """Release the request's breaker and budget slots; count it."""
        if s.admitted and self.us is not None:
            self.us.breakers.release_request()
            self.us.budget.request_finished()
        if self.target:
            self.metrics.target_request(self.name, self.target, code)
        self._count(s, code, duration_s)

    def failure_reply(self, reason: str) -> bytes:
        """No endpoint could be reached."""
        return reply(503, b"upstream connect error: " + reason.encode() + b"\n")
